//! Read-only root filesystems on kernels without BPF LSM. For each running
//! container under an enforce-mode `readOnly: true` policy, the agent makes
//! the container's mounts read-only from outside (see `mountns`). It
//! retries where that fails, for instance with EBUSY while a file is open
//! for writing.
//!
//! Mount flags live as long as the container's mount namespace. Kubernetes
//! gives a restarted container a new container id, so the agent treats it
//! as a new target and makes the change again. A policy change that makes
//! more paths read-only is applied at once. NOTE: one that makes a path
//! writable again, or removes the policy, takes effect only when the
//! container restarts, because the fallback never clears the read-only
//! flag it set. The status lists such containers as released.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{identity::Identity, mountns};

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
}

/// The read-only state of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Every mount that should be read-only is.
    Enforced,
    /// The last attempt failed, for the reason given.
    NotEnforced { reason: String },
    /// No policy asks for it any more, but the mounts made read-only (all
    /// of them, or some after a failed attempt) stay so until the container
    /// restarts.
    Released,
}

#[derive(Debug)]
struct Record {
    writable: Vec<PathBuf>,
    state: State,
    attempted_at: Instant,
    /// Mount namespaces made read-only, by device and inode.
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
    pub fn due(&self, target: &Target, namespaces: &[mountns::namespaces::Namespace]) -> bool {
        match self.records.get(&target.container_id) {
            None => true,
            Some(record) => {
                narrower(&target.writable, &record.writable)
                    || (record.state != State::Enforced && record.attempted_at.elapsed() >= RETRY_INTERVAL)
                    || namespaces.iter().any(|ns| !record.namespaces.contains(&(ns.dev, ns.ino)))
            }
        }
    }

    /// Returns every record, for the status.
    pub fn states(&self) -> impl Iterator<Item = (&str, &State)> {
        self.records.iter().map(|(id, record)| (id.as_str(), &record.state))
    }

    /// Makes every mount namespace of the container read-only, through
    /// one process in each, and records the outcome. `pid` is the
    /// container's first process, used when `namespaces` is empty. Blocks
    /// for about a millisecond per namespace: call it from a blocking task.
    pub fn attempt(&mut self, target: Target, pid: u32, namespaces: &[mountns::namespaces::Namespace]) -> Attempt {
        let started = Instant::now();
        let mut missing_writable = Vec::new();
        let mut failures = Vec::new();
        let pids: Vec<u32> = if namespaces.is_empty() {
            vec![pid]
        } else {
            namespaces.iter().map(|ns| ns.pid).collect()
        };
        for &pid in &pids {
            match mountns::make_read_only(pid, &target.writable) {
                Ok(report) if report.is_complete() => {
                    for path in report.missing_writable {
                        if !missing_writable.contains(&path) {
                            missing_writable.push(path);
                        }
                    }
                }
                Ok(report) => failures.push(describe_failures(&report)),
                Err(error) => failures.push(error.to_string()),
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
                namespaces: namespaces.iter().map(|ns| (ns.dev, ns.ino)).collect(),
            },
        );
        let changed = previous.is_none_or(|record| record.state != state);
        Attempt {
            target,
            pid,
            state,
            changed,
            took: started.elapsed(),
            missing_writable,
        }
    }

    /// Forgets containers that are gone, and marks running ones that are
    /// no longer targets as released.
    pub fn retain(&mut self, targets: &[Target], running: &std::collections::HashSet<&str>) {
        self.records.retain(|id, record| {
            if targets.iter().any(|target| &target.container_id == id) {
                return true;
            }
            if !running.contains(id.as_str()) {
                return false;
            }
            record.state = State::Released;
            true
        });
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

fn describe_failures(report: &mountns::ReadOnlyReport) -> String {
    let failures: Vec<String> = report
        .failed
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
    use super::narrower;
    use std::path::PathBuf;

    #[test]
    fn narrower_writable_set_needs_a_new_attempt() {
        let tmp = PathBuf::from("/tmp");
        let data = PathBuf::from("/data");
        assert!(narrower(&[tmp.clone()], &[tmp.clone(), data.clone()]));
        assert!(!narrower(&[tmp.clone(), data.clone()], &[tmp.clone()]));
        assert!(!narrower(&[tmp.clone()], &[tmp]));
    }
}
