//! Read-only root filesystems. For each running container under a
//! `readOnly: true` policy, the agent does one of two things:
//!
//! - With the BPF LSM backend, it binds the declared writable paths onto
//!   themselves and hands the ids of every other mount to the kernel's LSM
//!   programs ([`Method::Lsm`]). A mount outside the paths that enforce-mode
//!   policies leave writable gets an entry in enforce mode, and the
//!   programs refuse mutations there with EPERM. A mount inside those paths
//!   but outside the paths that every read-only policy leaves writable gets
//!   an entry in audit mode, and the programs let mutations through and
//!   report them. Audit-only containers get audit entries alone.
//!   Changes of the writable set take effect at the next attempt, because
//!   a path no longer writable keeps its bind mount, whose id then joins
//!   the read-only set.
//! - Without it, it makes the container's mounts read-only from outside
//!   (see `mountns`), and the kernel refuses mutations with EROFS
//!   ([`Method::Mounts`]). Audit-mode policies change nothing here: the
//!   syscall tracepoints report what they would refuse.
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
//! agent looks for new ones, and with the LSM backend for new mounts in
//! known ones, every second. NOTE: with the LSM backend, a namespace or a
//! mount made after an attempt has new mount ids, which stay writable
//! until the agent finds them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
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
    /// Paths that stay writable under every enforce-mode read-only policy;
    /// a mutation elsewhere is refused. `None` when only audit-mode
    /// policies make the container read-only.
    pub enforced_writable: Option<Vec<PathBuf>>,
    /// Paths writable under every read-only policy, audit-mode ones
    /// included. Each lies inside `enforced_writable`. A mutation inside
    /// `enforced_writable` but outside these is let through and reported
    /// as an audit (LSM backend only).
    pub audited_writable: Vec<PathBuf>,
    /// The policies that make it read-only, for events and logs.
    pub policies: Vec<String>,
    /// Slot of the first enforce-mode policy among them, which counters
    /// and events of the LSM backend charge refusals to.
    pub slot: u32,
    /// Slot of the first audit-mode policy among them, which counters and
    /// events of the LSM backend charge audits to.
    pub audit_slot: u32,
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
    enforced_writable: Option<Vec<PathBuf>>,
    audited_writable: Vec<PathBuf>,
    state: State,
    attempted_at: Instant,
    /// Entries written to the kernel for this container by the LSM backend.
    entries: KernelEntries,
    /// Mount namespaces handled, by device and inode, with the hash of
    /// their mount ids.
    namespaces: Vec<(u64, u64, u64)>,
    /// Whether the last attempt failed before it changed or listed the
    /// mounts of some namespace, which therefore stay writable.
    untouched: bool,
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
                    Method::Mounts => narrower(
                        target.enforced_writable.as_deref().unwrap_or_default(),
                        record.enforced_writable.as_deref().unwrap_or_default(),
                    ),
                    Method::Lsm => {
                        target.enforced_writable != record.enforced_writable
                            || target.audited_writable != record.audited_writable
                    }
                };
                changed
                    || (record.state != State::Enforced && record.attempted_at.elapsed() >= RETRY_INTERVAL)
                    || namespaces.iter().any(|ns| !record.namespaces.iter().any(|known| same_namespace(*known, ns, method)))
            }
        }
    }

    /// Returns every record, for the status, with whether only audit-mode
    /// policies make the container read-only.
    pub fn states(&self) -> impl Iterator<Item = (&str, &State, bool)> {
        self.records
            .iter()
            .map(|(id, record)| (id.as_str(), &record.state, record.enforced_writable.is_none()))
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
        // The first process's namespace is recorded too, so that a held
        // program can be checked against it (see `covers`).
        let first;
        let namespaces = if namespaces.is_empty() {
            first = mountns::namespaces::of_pid(pid);
            first.as_slice()
        } else {
            namespaces
        };
        let mut missing_writable: Vec<PathBuf> = Vec::new();
        let mut entries = KernelEntries::default();
        let mut failures = Vec::new();
        let mut untouched = false;
        let pids: Vec<u32> = if namespaces.is_empty() {
            vec![pid]
        } else {
            namespaces.iter().map(|ns| ns.pid).collect()
        };
        for &pid in &pids {
            let missing = match method {
                Method::Mounts => match mountns::make_read_only(pid, target.enforced_writable.as_deref().unwrap_or_default()) {
                    Ok(report) => {
                        if !report.is_complete() {
                            failures.push(describe_failures(&report.failed));
                        }
                        report.missing_writable
                    }
                    Err(error) => {
                        failures.push(error.to_string());
                        untouched = true;
                        Vec::new()
                    }
                },
                Method::Lsm => match target.cgroup_id {
                    None => {
                        failures.push("the container's cgroup was not found yet".to_owned());
                        untouched = true;
                        Vec::new()
                    }
                    Some(cgroup_id) => {
                        let (found, missing) = prepare_lsm(pid, &target, cgroup_id, &mut failures, &mut untouched);
                        merge_entries(&mut entries, found);
                        missing
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
                enforced_writable: target.enforced_writable.clone(),
                audited_writable: target.audited_writable.clone(),
                state: state.clone(),
                attempted_at: Instant::now(),
                entries: entries.clone(),
                namespaces: namespaces.iter().map(|ns| (ns.dev, ns.ino, ns.mounts)).collect(),
                untouched,
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

    /// Returns whether the last attempt on the container handled the mount
    /// namespace `ns`. A held program in a namespace that no attempt has
    /// handled waits for the next one. Mounts added to a handled namespace
    /// are found by the periodic look (see the module's NOTE).
    pub fn covers(&self, container_id: &str, ns: &mountns::namespaces::Namespace) -> bool {
        self.records
            .get(container_id)
            .is_some_and(|record| record.namespaces.iter().any(|&(dev, ino, _)| dev == ns.dev && ino == ns.ino))
    }

    /// Returns whether the container's read-only set-up lets its new
    /// programs run: the mounts are enforced, or the last attempt reached
    /// every mount namespace and failed only on some mounts or paths.
    ///
    /// Such a failure leaves a mount writable only while a file on it is
    /// open for writing (fallback backend), and a program of the container
    /// may be the one to close it. A failed writable bind leaves its path
    /// read-only. An attempt that reached no namespace (no cgroup yet, a
    /// process gone, a failed helper) leaves every mount in it writable, so
    /// the programs stay held until a retry succeeds.
    pub fn lets_run(&self, container_id: &str) -> bool {
        self.records.get(container_id).is_some_and(|record| match record.state {
            State::Enforced => true,
            State::NotEnforced { .. } => !record.untouched,
            State::Released => false,
        })
    }
}

/// Returns whether `applied` made some path writable that `wanted` no
/// longer lists, in which case the change must be applied again.
fn narrower(wanted: &[PathBuf], applied: &[PathBuf]) -> bool {
    applied.iter().any(|path| !wanted.contains(path))
}

/// Binds the writable paths of `target` in the mount namespace of `pid`
/// and returns the LSM map entries of its mounts, with the declared
/// writable paths that do not exist. Failures are appended to `failures`,
/// and `untouched` is set when no entry could be made.
///
/// The enforced writable paths are bound first and the audited ones, which
/// lie inside them, second. Each bind checks that its path still resolves
/// onto the mount it planned, so the second pass plans on the mount table
/// that the first one left. A path whose bind fails stays on its parent mount,
/// so a failure never makes more writable than declared.
fn prepare_lsm(
    pid: u32,
    target: &Target,
    cgroup_id: u64,
    failures: &mut Vec<String>,
    untouched: &mut bool,
) -> (KernelEntries, Vec<PathBuf>) {
    let mut missing = Vec::new();
    if let Some(enforced) = &target.enforced_writable
        && *enforced != target.audited_writable
    {
        match mountns::prepare_read_only_by_identity(pid, enforced) {
            Ok(report) => {
                if !report.is_complete() {
                    failures.push(describe_failures(&report.failed));
                }
                missing.extend(report.missing_writable);
            }
            Err(error) => {
                failures.push(error.to_string());
                *untouched = true;
                return (KernelEntries::default(), missing);
            }
        }
    }
    match mountns::prepare_read_only_by_identity(pid, &target.audited_writable) {
        Ok(report) => {
            if !report.is_complete() {
                failures.push(describe_failures(&report.failed));
            }
            let slots = Slots {
                enforce: target.slot,
                audit: target.audit_slot,
            };
            let entries = kernel_entries(&report, target.enforced_writable.as_deref(), slots, cgroup_id);
            for path in &report.missing_writable {
                if !missing.contains(path) {
                    missing.push(path.clone());
                }
            }
            (entries, missing)
        }
        Err(error) => {
            failures.push(error.to_string());
            *untouched = true;
            (KernelEntries::default(), missing)
        }
    }
}

/// Returns whether `ns` is the namespace recorded as `known` and, with the
/// LSM backend, still has the same mounts. The LSM entries name mounts by
/// id, so a mount added later (a bind of `/` inside a user namespace) needs
/// a new attempt. Mounts added to a namespace the fallback made read-only
/// keep the read-only flag they are copied from.
fn same_namespace(known: (u64, u64, u64), ns: &mountns::namespaces::Namespace, method: Method) -> bool {
    let (dev, ino, mounts) = known;
    dev == ns.dev && ino == ns.ino && (method == Method::Mounts || mounts == ns.mounts)
}

/// Returns the mode of the LSM entry for the mount at `mount_point`.
/// `Enforce` applies outside the paths that enforce-mode policies leave
/// writable, and never when no policy enforces. `Audit` applies inside
/// them but outside the paths every read-only policy leaves writable.
/// Inside those, the mount gets no entry (`None`).
fn mount_mode(mount_point: &Path, enforced_writable: Option<&[PathBuf]>, audited_writable: &[PathBuf]) -> Option<Mode> {
    let inside = |paths: &[PathBuf]| paths.iter().any(|path| mount_point.starts_with(path));
    match enforced_writable {
        Some(enforced) if !inside(enforced) => Some(Mode::Enforce),
        _ if !inside(audited_writable) => Some(Mode::Audit),
        _ => None,
    }
}

/// Policy slots that LSM entries charge decisions to, per mode.
#[derive(Clone, Copy, Debug)]
struct Slots {
    enforce: u32,
    audit: u32,
}

/// Builds the LSM map entries of one container from the mounts of one of
/// its namespaces, which `report` lists outside the audited writable paths.
///
/// A superblock entry takes the strictest mode of the container's entries
/// on it, because the xattr hooks decide by superblock alone. It is marked
/// as shared when a writable or audit-mode mount of the container is on it
/// too. The LSM programs then apply the superblock's mode to changes of
/// multiply linked files on that mount, because such a file may be a hard
/// link into the read-only root.
fn kernel_entries(
    report: &mountns::IdentityReport,
    enforced_writable: Option<&[PathBuf]>,
    slots: Slots,
    cgroup_id: u64,
) -> KernelEntries {
    let mut entries = KernelEntries::default();
    let mut lenient_devs: Vec<u64> = report.writable_devs.clone();
    for mount in &report.read_only {
        let Ok(mount_id) = u32::try_from(mount.mount_id) else {
            continue;
        };
        // `report.read_only` lists no mount inside the audited writable
        // paths, so only the enforced ones decide here.
        let Some(mode) = mount_mode(&mount.mount_point, enforced_writable, &[]) else {
            continue;
        };
        let slot = if mode == Mode::Enforce { slots.enforce } else { slots.audit };
        if mode == Mode::Audit {
            lenient_devs.push(mount.dev);
        }
        let mode = mode as u32;
        entries.mounts.push((mount_id, ReadOnlyMount { slot, mode, cgroup_id }));
        let key = ReadOnlySuperblockKey {
            cgroup_id,
            dev: mount.dev,
        };
        let value = ReadOnlySuperblock {
            slot,
            mode,
            shared_with_writable: 0,
            reserved: 0,
        };
        merge_superblock(&mut entries.superblocks, key, value);
    }
    for (key, value) in &mut entries.superblocks {
        value.shared_with_writable = u32::from(lenient_devs.contains(&key.dev));
    }
    entries
}

/// Adds the entries of one more mount namespace of a container.
fn merge_entries(entries: &mut KernelEntries, found: KernelEntries) {
    entries.mounts.extend(found.mounts);
    for (key, value) in found.superblocks {
        merge_superblock(&mut entries.superblocks, key, value);
    }
}

/// Adds a superblock entry, or merges it into the one with the same key:
/// enforce mode wins over audit, and a superblock shared with a writable
/// mount in either stays shared.
fn merge_superblock(
    superblocks: &mut Vec<(ReadOnlySuperblockKey, ReadOnlySuperblock)>,
    key: ReadOnlySuperblockKey,
    value: ReadOnlySuperblock,
) {
    let Some((_, existing)) = superblocks.iter_mut().find(|(existing, _)| *existing == key) else {
        superblocks.push((key, value));
        return;
    };
    let shared = existing.shared_with_writable | value.shared_with_writable;
    if existing.mode != Mode::Enforce as u32 && value.mode == Mode::Enforce as u32 {
        *existing = value;
    }
    existing.shared_with_writable = shared;
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

    fn target(cgroup_id: Option<u64>) -> Target {
        Target {
            container_id: "c1".to_owned(),
            identity: Identity {
                namespace: "clinic".to_owned(),
                pod: "records".to_owned(),
                pod_uid: "uid-1".to_owned(),
                container: Some("main".to_owned()),
                container_id: Some("c1".to_owned()),
            },
            enforced_writable: Some(Vec::new()),
            audited_writable: Vec::new(),
            policies: vec!["read-only".to_owned()],
            slot: 1,
            audit_slot: 0,
            cgroup_id,
        }
    }

    #[test]
    fn unreached_namespace_keeps_programs_held() {
        // No pid is ever u32::MAX - 1 (the kernel's limit is 2^22), so the
        // attempt fails before it reads any mount table.
        let missing_pid = u32::MAX - 1;
        for (method, cgroup_id) in [(Method::Lsm, None), (Method::Lsm, Some(7)), (Method::Mounts, Some(7))] {
            let mut tracker = Tracker::default();
            let attempt = tracker.attempt(target(cgroup_id), missing_pid, method, &[]);
            assert!(
                matches!(attempt.state, State::NotEnforced { .. }),
                "{method:?}, cgroup {cgroup_id:?}: {:?}",
                attempt.state
            );
            assert!(!tracker.lets_run("c1"), "{method:?}, cgroup {cgroup_id:?}");
        }
        assert!(!Tracker::default().lets_run("c1"), "no attempt yet");
    }

    /// Returns a tracker with one record, for container `c1`, from an
    /// attempt that reached every namespace it lists.
    fn tracker_with(state: State, namespaces: Vec<(u64, u64, u64)>) -> Tracker {
        let record = Record {
            enforced_writable: Some(Vec::new()),
            audited_writable: Vec::new(),
            state,
            attempted_at: Instant::now(),
            entries: KernelEntries::default(),
            namespaces,
            untouched: false,
        };
        Tracker {
            records: HashMap::from([("c1".to_owned(), record)]),
        }
    }

    #[test]
    fn failed_mount_lets_programs_run() {
        let reason = describe_failures(&[(PathBuf::from("/"), libc::EBUSY)]);
        let tracker = tracker_with(State::NotEnforced { reason }, Vec::new());
        assert!(tracker.lets_run("c1"));
    }

    #[test]
    fn covers_handled_namespaces_only() {
        let tracker = tracker_with(State::Enforced, vec![(4, 4026532100, 11)]);
        let namespace = |ino, mounts| mountns::namespaces::Namespace {
            dev: 4,
            ino,
            pid: 1000,
            mounts,
        };
        assert!(tracker.covers("c1", &namespace(4026532100, 11)));
        assert!(tracker.covers("c1", &namespace(4026532100, 12)), "mounts added later are the periodic look's");
        assert!(!tracker.covers("c1", &namespace(4026532200, 11)));
        assert!(!tracker.covers("c2", &namespace(4026532100, 11)));
    }

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
        let slots = Slots { enforce: 3, audit: 4 };
        let entries = kernel_entries(&report, Some(&[PathBuf::from("/tmp")]), slots, 5121);
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

    #[test]
    fn mount_mode_enforced_outside_enforced_paths() {
        let enforced = [PathBuf::from("/var")];
        let audited = [PathBuf::from("/var/cache")];
        let mode = |mount: &str| mount_mode(Path::new(mount), Some(&enforced), &audited);
        assert_eq!(mode("/"), Some(Mode::Enforce));
        assert_eq!(mode("/etc/hosts"), Some(Mode::Enforce));
        assert_eq!(mode("/variable"), Some(Mode::Enforce), "a sibling with a common prefix");
        assert_eq!(mode("/var"), Some(Mode::Audit));
        assert_eq!(mode("/var/log"), Some(Mode::Audit));
        assert_eq!(mode("/var/cache"), None);
        assert_eq!(mode("/var/cache/apt"), None);
    }

    #[test]
    fn mount_mode_audit_only_policies() {
        let audited = [PathBuf::from("/tmp")];
        let mode = |mount: &str| mount_mode(Path::new(mount), None, &audited);
        assert_eq!(mode("/"), Some(Mode::Audit));
        assert_eq!(mode("/dev/shm"), Some(Mode::Audit));
        assert_eq!(mode("/tmp"), None);
        assert_eq!(mode("/tmp/x"), None);
    }

    #[test]
    fn mount_mode_same_writable_paths() {
        let writable = [PathBuf::from("/tmp")];
        assert_eq!(mount_mode(Path::new("/"), Some(&writable), &writable), Some(Mode::Enforce));
        assert_eq!(mount_mode(Path::new("/tmp"), Some(&writable), &writable), None);
    }

    #[test]
    fn kernel_entries_mix_enforce_and_audit() {
        let root_dev = 0x2d;
        let mount = |mount_id, mount_point: &str| mountns::IdentityMount {
            mount_id,
            dev: root_dev,
            mount_point: PathBuf::from(mount_point),
        };
        // /var was bound for an enforce-mode policy, /var/cache inside it
        // for the audit-mode one, which the report therefore omits.
        let report = mountns::IdentityReport {
            read_only: vec![mount(229, "/"), mount(300, "/var")],
            writable_devs: vec![root_dev],
            ..Default::default()
        };
        let slots = Slots { enforce: 3, audit: 4 };
        let entries = kernel_entries(&report, Some(&[PathBuf::from("/var")]), slots, 5121);

        let root = ReadOnlyMount {
            slot: 3,
            mode: Mode::Enforce as u32,
            cgroup_id: 5121,
        };
        let var = ReadOnlyMount {
            slot: 4,
            mode: Mode::Audit as u32,
            cgroup_id: 5121,
        };
        assert_eq!(entries.mounts, [(229, root), (300, var)]);

        assert_eq!(entries.superblocks.len(), 1, "one entry per superblock");
        let (_, superblock) = entries.superblocks[0];
        assert_eq!(superblock.mode, Mode::Enforce as u32, "the strictest mode wins");
        assert_eq!(superblock.slot, 3);
        assert_eq!(superblock.shared_with_writable, 1);
    }

    #[test]
    fn kernel_entries_audit_only() {
        let report = mountns::IdentityReport {
            read_only: vec![mountns::IdentityMount {
                mount_id: 229,
                dev: 0x2d,
                mount_point: PathBuf::from("/"),
            }],
            writable_devs: vec![0x99],
            ..Default::default()
        };
        let slots = Slots { enforce: 0, audit: 7 };
        let entries = kernel_entries(&report, None, slots, 5121);
        assert_eq!(entries.mounts.len(), 1);
        assert_eq!(entries.mounts[0].1.mode, Mode::Audit as u32);
        assert_eq!(entries.mounts[0].1.slot, 7);
        let (_, superblock) = entries.superblocks[0];
        assert_eq!(superblock.mode, Mode::Audit as u32);
        assert_eq!(superblock.shared_with_writable, 1, "an audited mount is not an enforced one");
    }

    #[test]
    fn merged_superblock_keeps_enforce_and_sharing() {
        let key = ReadOnlySuperblockKey { cgroup_id: 1, dev: 2 };
        let audit = ReadOnlySuperblock {
            slot: 4,
            mode: Mode::Audit as u32,
            shared_with_writable: 1,
            reserved: 0,
        };
        let enforce = ReadOnlySuperblock {
            slot: 3,
            mode: Mode::Enforce as u32,
            shared_with_writable: 0,
            reserved: 0,
        };
        let mut superblocks = Vec::new();
        merge_superblock(&mut superblocks, key, audit);
        merge_superblock(&mut superblocks, key, enforce);
        assert_eq!(superblocks.len(), 1);
        assert_eq!(superblocks[0].1.mode, Mode::Enforce as u32);
        assert_eq!(superblocks[0].1.slot, 3);
        assert_eq!(superblocks[0].1.shared_with_writable, 1);
    }
}
