//! Read-only root filesystems. For each running container under an
//! enforce-mode `readOnly: true` policy, the agent does one of two things:
//!
//! - With the BPF LSM backend, it binds the declared writable paths onto
//!   themselves and hands the ids of every other mount to the kernel's LSM
//!   programs, which refuse mutations there with EPERM ([`Method::Lsm`]).
//!   Changes of the writable set take effect at the next attempt, because
//!   a path no longer writable keeps its bind mount, whose id then joins
//!   the read-only set.
//! - Without it, it makes the container's mounts read-only from outside
//!   (see `mountns`), and the kernel refuses mutations with EROFS
//!   ([`Method::Mounts`]).
//!
//! It retries where an attempt fails, for instance with EBUSY while a file
//! is open for writing.
//!
//! Mount flags live as long as the container's mount namespace. Kubernetes
//! gives a restarted container a new container id, so the agent treats it
//! as a new target and makes the change again. A policy change that makes
//! more paths read-only is applied at once. NOTE: with the fallback, one
//! that makes a path writable again, or removes the policy, takes effect
//! only when the container restarts, because the fallback never clears the
//! read-only flag it set. The status lists such containers as released.
//!
//! A container's processes can make mount namespaces of their own. Every
//! namespace in the container's cgroup gets the same treatment, and the
//! agent looks for new ones every second. NOTE: with the LSM backend, a
//! namespace made after an attempt has mounts with new ids, which stay
//! writable until the agent finds the namespace.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use parapet_common::{
    Mode,
    lsm::{ReadOnlyMount, ReadOnlySuperblock, ReadOnlySuperblockKey},
};

use crate::{identity::Identity, mountns};

/// The mechanism that makes a container read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The mounts get `MOUNT_ATTR_RDONLY`.
    Mounts,
    /// The mount ids go to the BPF LSM programs.
    Lsm,
}

/// Kernel map entries of the LSM backend for one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelEntries {
    pub mounts: Vec<(u32, ReadOnlyMount)>,
    pub superblocks: Vec<(ReadOnlySuperblockKey, ReadOnlySuperblock)>,
}

/// Delay before a failed attempt is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A container that its policies want read-only.
#[derive(Clone, Debug)]
pub struct Target {
    pub container_id: String,
    pub identity: Identity,
    /// Paths that stay writable.
    pub writable: Vec<PathBuf>,
    /// The policies that make it read-only, for events and logs.
    pub policies: Vec<String>,
    /// Slot of the first enforce-mode policy among them, which counters
    /// and events of the LSM backend are charged to.
    pub slot: u32,
    /// Cgroup id of the container, once its cgroup was found. The LSM
    /// backend needs it and waits for it.
    pub cgroup_id: Option<u64>,
}

/// The read-only state of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Every mount that should be read-only is.
    Enforced,
    /// The last attempt failed, for the reason given.
    NotEnforced { reason: String },
    /// No policy requests it any more, but the mounts made read-only (all
    /// of them, or some after a failed attempt) stay so until the container
    /// restarts.
    Released,
}

#[derive(Debug)]
struct Record {
    writable: Vec<PathBuf>,
    state: State,
    attempted_at: Instant,
    /// Entries written to the kernel for this container by the LSM backend.
    entries: KernelEntries,
    /// Mount namespaces handled, by device and inode.
    namespaces: Vec<(u64, u64)>,
}

/// The outcome of one attempt, for the caller to log and report.
#[derive(Debug)]
pub struct Attempt {
    pub target: Target,
    pub pid: u32,
    pub state: State,
    /// The attempt changed the state: from nothing or from the other state.
    pub changed: bool,
    /// Time the attempt took.
    pub took: Duration,
    /// Declared writable paths that do not exist in the container, and so
    /// stay read-only.
    pub missing_writable: Vec<PathBuf>,
    /// For the LSM backend: entries to write, and the entries of the
    /// previous attempt to remove first.
    pub write: KernelEntries,
    pub remove: KernelEntries,
}

/// The read-only state of every targeted container.
#[derive(Debug, Default)]
pub struct Tracker {
    records: HashMap<String, Record>,
}

impl Tracker {
    /// Returns whether `target` needs an attempt now. Kubernetes gives a restarted
    /// container a new container id, so a container id keeps its process
    /// and its mount namespace.
    pub fn due(&self, target: &Target, method: Method, namespaces: &[mountns::namespaces::Namespace]) -> bool {
        match self.records.get(&target.container_id) {
            None => true,
            Some(record) => {
                let changed = match method {
                    Method::Mounts => narrower(&target.writable, &record.writable),
                    Method::Lsm => target.writable != record.writable,
                };
                changed
                    || (record.state != State::Enforced && record.attempted_at.elapsed() >= RETRY_INTERVAL)
                    || namespaces.iter().any(|ns| !record.namespaces.contains(&(ns.dev, ns.ino)))
            }
        }
    }

    /// Returns every record, for the status.
    pub fn states(&self) -> impl Iterator<Item = (&str, &State)> {
        self.records.iter().map(|(id, record)| (id.as_str(), &record.state))
    }

    /// Makes every mount namespace of the container read-only, through one
    /// process in each, and records the outcome. `pid` is the container's
    /// first process, used when `namespaces` is empty. Blocks for about a
    /// millisecond per namespace: call it from a blocking task. With
    /// [`Method::Lsm`] the caller writes `Attempt::write` into the kernel
    /// after removing `Attempt::remove`.
    pub fn attempt(
        &mut self,
        target: Target,
        pid: u32,
        method: Method,
        namespaces: &[mountns::namespaces::Namespace],
    ) -> Attempt {
        let started = Instant::now();
        let mut missing_writable: Vec<PathBuf> = Vec::new();
        let mut entries = KernelEntries::default();
        let mut failures = Vec::new();
        let pids: Vec<u32> = if namespaces.is_empty() {
            vec![pid]
        } else {
            namespaces.iter().map(|ns| ns.pid).collect()
        };
        for &pid in &pids {
            let missing = match method {
                Method::Mounts => match mountns::make_read_only(pid, &target.writable) {
                    Ok(report) => {
                        if !report.is_complete() {
                            failures.push(describe_failures(&report.failed));
                        }
                        report.missing_writable
                    }
                    Err(error) => {
                        failures.push(error.to_string());
                        Vec::new()
                    }
                },
                Method::Lsm => match (target.cgroup_id, mountns::prepare_read_only_by_identity(pid, &target.writable)) {
                    (None, _) => {
                        failures.push("the container's cgroup was not found yet".to_owned());
                        Vec::new()
                    }
                    (Some(_), Err(error)) => {
                        failures.push(error.to_string());
                        Vec::new()
                    }
                    (Some(cgroup_id), Ok(report)) => {
                        let mut found = kernel_entries(&report, target.slot, cgroup_id);
                        entries.mounts.append(&mut found.mounts);
                        for superblock in found.superblocks {
                            if !entries.superblocks.iter().any(|(key, _)| *key == superblock.0) {
                                entries.superblocks.push(superblock);
                            }
                        }
                        if !report.is_complete() {
                            failures.push(describe_failures(&report.failed));
                        }
                        report.missing_writable
                    }
                },
            };
            for path in missing {
                if !missing_writable.contains(&path) {
                    missing_writable.push(path);
                }
            }
        }
        let state = if failures.is_empty() {
            State::Enforced
        } else {
            State::NotEnforced {
                reason: failures.join("; "),
            }
        };
        let previous = self.records.insert(
            target.container_id.clone(),
            Record {
                writable: target.writable.clone(),
                state: state.clone(),
                attempted_at: Instant::now(),
                entries: entries.clone(),
                namespaces: namespaces.iter().map(|ns| (ns.dev, ns.ino)).collect(),
            },
        );
        let changed = previous.as_ref().is_none_or(|record| record.state != state);
        Attempt {
            target,
            pid,
            state,
            changed,
            took: started.elapsed(),
            missing_writable,
            write: entries,
            remove: previous.map(|record| record.entries).unwrap_or_default(),
        }
    }

    /// Forgets containers that are gone and marks running ones that are no
    /// longer targets as released. Returns the kernel entries the LSM
    /// backend wrote for both, for the caller to remove. Without those
    /// entries the LSM programs deny nothing, so an LSM container is
    /// forgotten rather than released.
    pub fn retain(&mut self, targets: &[Target], running: &std::collections::HashSet<&str>) -> KernelEntries {
        let mut removed = KernelEntries::default();
        self.records.retain(|id, record| {
            if targets.iter().any(|target| &target.container_id == id) {
                return true;
            }
            let lsm = !record.entries.mounts.is_empty() || !record.entries.superblocks.is_empty();
            removed.mounts.append(&mut record.entries.mounts);
            removed.superblocks.append(&mut record.entries.superblocks);
            if lsm || !running.contains(id.as_str()) {
                return false;
            }
            record.state = State::Released;
            true
        });
        removed
    }

    pub fn state(&self, container_id: &str) -> Option<&State> {
        self.records.get(container_id).map(|record| &record.state)
    }
}

/// Returns whether `applied` made some path writable that `wanted` no
/// longer lists, in which case the change must be applied again.
fn narrower(wanted: &[PathBuf], applied: &[PathBuf]) -> bool {
    applied.iter().any(|path| !wanted.contains(path))
}

/// Builds the LSM map entries of one container. A superblock is marked as
/// shared when a writable mount of the container is on it too, which makes
/// the LSM programs refuse changes to its multiply linked files.
fn kernel_entries(report: &mountns::IdentityReport, slot: u32, cgroup_id: u64) -> KernelEntries {
    let mode = Mode::Enforce as u32;
    let mut entries = KernelEntries::default();
    for mount in &report.read_only {
        let Ok(mount_id) = u32::try_from(mount.mount_id) else {
            continue;
        };
        entries.mounts.push((mount_id, ReadOnlyMount { slot, mode, cgroup_id }));
        let key = ReadOnlySuperblockKey {
            cgroup_id,
            dev: mount.dev,
        };
        if entries.superblocks.iter().any(|(existing, _)| *existing == key) {
            continue;
        }
        let value = ReadOnlySuperblock {
            slot,
            mode,
            shared_with_writable: u32::from(report.writable_devs.contains(&mount.dev)),
            reserved: 0,
        };
        entries.superblocks.push((key, value));
    }
    entries
}

fn describe_failures(failed: &[(PathBuf, i32)]) -> String {
    let failures: Vec<String> = failed
        .iter()
        .map(|(mount, errno)| {
            let error = std::io::Error::from_raw_os_error(*errno);
            let hint = if *errno == libc::EBUSY {
                " (a file on it is open for writing)"
            } else {
                ""
            };
            format!("{}: {error}{hint}", mount.display())
        })
        .collect();
    format!("could not make these mounts read-only: {}", failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrower_writable_set_needs_a_new_attempt() {
        let tmp = PathBuf::from("/tmp");
        let data = PathBuf::from("/data");
        assert!(narrower(&[tmp.clone()], &[tmp.clone(), data.clone()]));
        assert!(!narrower(&[tmp.clone(), data.clone()], &[tmp.clone()]));
        assert!(!narrower(&[tmp.clone()], &[tmp]));
    }

    #[test]
    fn kernel_entries_mark_shared_superblocks() {
        let root = mountns::IdentityMount {
            mount_id: 229,
            dev: 0x2d,
            mount_point: PathBuf::from("/"),
        };
        let hosts = mountns::IdentityMount {
            mount_id: 246,
            dev: (8 << 20) | 1,
            mount_point: PathBuf::from("/etc/hosts"),
        };
        let resolv = mountns::IdentityMount {
            mount_id: 247,
            dev: (8 << 20) | 1,
            mount_point: PathBuf::from("/etc/resolv.conf"),
        };
        let report = mountns::IdentityReport {
            read_only: vec![root, hosts, resolv],
            // /tmp was bound from the root file system.
            writable_devs: vec![0x2d],
            ..Default::default()
        };
        let entries = kernel_entries(&report, 3, 5121);
        let ids: Vec<u32> = entries.mounts.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [229, 246, 247]);
        assert!(entries.mounts.iter().all(|(_, mount)| mount.cgroup_id == 5121));
        assert!(entries.mounts.iter().all(|(_, mount)| mount.slot == 3));
        assert_eq!(entries.superblocks.len(), 2, "one entry per superblock");
        let root_entry = entries.superblocks.iter().find(|(key, _)| key.dev == 0x2d).unwrap();
        assert_eq!(root_entry.1.shared_with_writable, 1);
        let host_entry = entries.superblocks.iter().find(|(key, _)| key.dev == (8 << 20) | 1).unwrap();
        assert_eq!(host_entry.1.shared_with_writable, 0);
    }
}
