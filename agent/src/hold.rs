//! New containers held at their first instruction until their set-up is
//! done (see `parapet_common::hold`).
//!
//! The agent marks with `CGROUP_HOLD_NEW_PROGRAMS` every pod entry whose
//! policies need per-container set-up (read-only mounts or exec lists), and
//! each container entry of such policies until that set-up is done. The
//! exec tracepoint stops a program started under a marked entry. Once the
//! container's own entry is written without the mark, the agent judges the
//! held program against the container's exec lists, then sends it
//! `SIGCONT`, or `SIGKILL` when an enforce-mode list refuses it.
//!
//! A held program stays stopped while no agent runs: a container that
//! starts while the agent is down, after the kernel marked its pod, waits
//! for the next agent.

use std::{
    collections::{HashMap, HashSet},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use parapet_common::hold::{CGROUP_HOLD_NEW_PROGRAMS, HeldProcess, HoldConfig};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use crate::{
    cgroups::ContainerCgroup,
    enforce::{Entry, SlottedPolicy},
    kernel::Kernel,
    policy::{Mode, Policy},
    readonly::Method,
};

/// A held process as `parapet status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStatus {
    pub pid: u32,
    pub cgroup_id: u64,
    pub container_id: Option<String>,
    /// How long it has been stopped, in milliseconds.
    pub held_ms: u64,
    /// The condition the agent waits for before it lets the process run.
    pub waiting_for: String,
}

/// Totals since the agent started, for `parapet status` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeldTotals {
    /// Held processes let run.
    pub released: u64,
    /// Held processes killed because an exec list refuses their program.
    pub killed: u64,
    /// Held processes that exited or left their cgroup while held.
    pub gone: u64,
    /// Time the released and killed processes were held, in seconds.
    pub held_seconds: f64,
}

/// The agent's decision on one held process.
pub enum Decision {
    Wait(String),
    Run,
    /// Kill it, for the reason given, which the log shows.
    Kill(String),
}

/// The way a held process left the held set.
pub enum Outcome {
    Released { held: Duration },
    Killed { held: Duration },
    Gone,
}

/// How long the agent remembers a settled hold, so that a record of it
/// that arrives late through `HELD_EVENTS` is not taken for a new one.
const SETTLED_MEMORY: Duration = Duration::from_secs(60);

/// Held processes the agent has learned of, by process id.
#[derive(Default)]
pub struct Tracker {
    held: HashMap<u32, HeldProcess>,
    waiting_for: HashMap<u32, String>,
    /// Holds settled in the last `SETTLED_MEMORY`: process id and the
    /// kernel's time of the hold.
    settled: HashSet<(u32, u64)>,
    totals: HeldTotals,
}

impl Tracker {
    /// Adds a process that the kernel reported through `HELD_EVENTS`,
    /// unless the agent settled that hold already.
    pub fn note(&mut self, record: HeldProcess) {
        if !self.settled.contains(&(record.pid, record.boot_time_ns)) {
            self.held.insert(record.pid, record);
        }
    }

    /// Adds the processes in `HELD_PROCESSES`, which also contains those
    /// whose ring buffer record was lost.
    // The map is pinned, so it also lists the processes that an earlier
    // agent or the programs alone held while no agent ran.
    // NOTE: after an upgrade to maps of another layout the older map is
    // not read, and the processes it lists stay stopped.
    pub fn read_kernel(&mut self, kernel: &Kernel) {
        for (_, record) in kernel.held_processes.iter().flatten() {
            self.note(record);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.held.contains_key(&pid)
    }

    pub fn totals(&self) -> &HeldTotals {
        &self.totals
    }

    /// Decides on every held process with `decide`, carries out each
    /// decision and removes the processes it settled from `HELD_PROCESSES`.
    /// `cgroups` are the container cgroups by cgroup id. Returns how each
    /// settled process left, with its record.
    pub fn settle(
        &mut self,
        kernel: &mut Kernel,
        cgroups: &HashMap<u64, &ContainerCgroup>,
        mut decide: impl FnMut(&HeldProcess, &ContainerCgroup) -> Decision,
    ) -> Vec<(HeldProcess, Option<String>, Outcome)> {
        let mut settled = Vec::new();
        let now = boot_time_ns();
        for record in self.held.values().copied().collect::<Vec<_>>() {
            let held = Duration::from_nanos(now.saturating_sub(record.boot_time_ns));
            let Ok(pidfd) = pidfd_open(record.pid) else {
                settled.push((record, None, Outcome::Gone));
                continue;
            };
            let Some(cgroup) = cgroups.get(&record.cgroup_id) else {
                // NOTE: a program held in a cgroup that is not a container's
                // (one a process made below its container) waits until its
                // cgroup is removed: the agent does not know its container.
                self.waiting_for
                    .insert(record.pid, "its cgroup to be listed as a container's".to_owned());
                continue;
            };
            // The pidfd names one process for good, so a pid reused after
            // this check cannot receive the signal.
            if !crate::cgroups::pids(&cgroup.path).contains(&record.pid) {
                warn!(pid = record.pid, cgroup_id = record.cgroup_id, "a held process left its cgroup; it stays stopped");
                settled.push((record, Some(cgroup.container_id.clone()), Outcome::Gone));
                continue;
            }
            let (signal, outcome) = match decide(&record, cgroup) {
                Decision::Wait(reason) => {
                    self.waiting_for.insert(record.pid, reason);
                    continue;
                }
                Decision::Run => (libc::SIGCONT, Outcome::Released { held }),
                Decision::Kill(reason) => {
                    warn!(pid = record.pid, container_id = %cgroup.container_id, reason = %reason, "killing a held program");
                    (libc::SIGKILL, Outcome::Killed { held })
                }
            };
            if let Err(error) = pidfd_send_signal(&pidfd, signal) {
                warn!(pid = record.pid, signal, error = %error, "failed to signal a held process; will retry");
                continue;
            }
            settled.push((record, Some(cgroup.container_id.clone()), outcome));
        }
        let memory = SETTLED_MEMORY.as_nanos() as u64;
        self.settled.retain(|(_, at)| now.saturating_sub(*at) < memory);
        for (record, _, outcome) in &settled {
            self.settled.insert((record.pid, record.boot_time_ns));
            self.held.remove(&record.pid);
            self.waiting_for.remove(&record.pid);
            let _ = kernel.held_processes.remove(&record.pid);
            match outcome {
                Outcome::Released { held } => {
                    self.totals.released += 1;
                    self.totals.held_seconds += held.as_secs_f64();
                }
                Outcome::Killed { held } => {
                    self.totals.killed += 1;
                    self.totals.held_seconds += held.as_secs_f64();
                }
                Outcome::Gone => self.totals.gone += 1,
            }
        }
        settled
    }

    /// Returns the processes still held, for `parapet status`.
    pub fn statuses(&self, container_of: impl Fn(u64) -> Option<String>) -> Vec<HeldStatus> {
        let now = boot_time_ns();
        let mut statuses: Vec<HeldStatus> = self
            .held
            .values()
            .map(|record| HeldStatus {
                pid: record.pid,
                cgroup_id: record.cgroup_id,
                container_id: container_of(record.cgroup_id),
                held_ms: now.saturating_sub(record.boot_time_ns) / 1_000_000,
                waiting_for: self
                    .waiting_for
                    .get(&record.pid)
                    .cloned()
                    .unwrap_or_else(|| "the agent's next look".to_owned()),
            })
            .collect();
        statuses.sort_by_key(|status| status.pid);
        statuses
    }
}

/// Returns whether a container under `policy` needs set-up by the agent
/// before its programs may run: read-only mounts, where `method` enforces
/// the policy's read-only section, or the files on its exec lists.
pub fn needs_setup(policy: &Policy, method: Method) -> bool {
    read_only_needed(policy, method) || policy.exec.is_some()
}

/// Sets `CGROUP_HOLD_NEW_PROGRAMS` on the entries in `entries` whose
/// policies need set-up: on each pod entry, and on each container entry
/// until `read_only_done` and `exec_done` return true for the container.
pub fn mark_pending(
    entries: &mut HashMap<u64, Entry>,
    policies: &[SlottedPolicy],
    method: Method,
    read_only_done: impl Fn(&str) -> bool,
    exec_done: impl Fn(&str) -> bool,
) {
    for entry in entries.values_mut() {
        let slots = &entry.policies.slots[..entry.policies.count as usize];
        let applying: Vec<&Policy> = policies
            .iter()
            .filter(|slotted| slots.contains(&slotted.slot))
            .map(|slotted| &slotted.policy)
            .collect();
        let read_only = applying.iter().any(|policy| read_only_needed(policy, method));
        let exec = applying.iter().any(|policy| policy.exec.is_some());
        let pending = match &entry.identity.container_id {
            None => read_only || exec,
            Some(container_id) => (read_only && !read_only_done(container_id)) || (exec && !exec_done(container_id)),
        };
        if pending {
            entry.policies.flags |= CGROUP_HOLD_NEW_PROGRAMS;
        }
    }
}

fn read_only_needed(policy: &Policy, method: Method) -> bool {
    policy.filesystem.as_ref().is_some_and(|fs| fs.read_only) && (policy.mode == Mode::Enforce || method == Method::Lsm)
}

/// Returns the ids of the sandbox (pause) containers among `cgroups`:
/// they need no set-up, so a program held in one runs at once.
pub fn sandbox_ids(pod_ids: &HashSet<&str>, cgroups: &HashMap<String, ContainerCgroup>) -> HashSet<u64> {
    cgroups
        .values()
        .filter(|cgroup| pod_ids.contains(cgroup.container_id.as_str()))
        .map(|cgroup| cgroup.id)
        .collect()
}

/// Starts a task that forwards each record of `HELD_EVENTS` to the
/// returned channel.
pub fn spawn_reader(ring: RingBuf<MapData>) -> mpsc::UnboundedReceiver<HeldProcess> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(error) = read_ring(ring, sender).await {
            warn!(error = %error, "the held-process reader stopped; held programs are found at each scan instead");
        }
    });
    receiver
}

async fn read_ring(ring: RingBuf<MapData>, sender: mpsc::UnboundedSender<HeldProcess>) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map file descriptor, which stays
    // open for as long as the `AsyncFd` owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|error| error.into_parts().1)?;
    loop {
        let mut guard = ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<HeldProcess>() {
                continue;
            }
            // SAFETY: the record is at least the size of a `HeldProcess`,
            // which any bit pattern is valid for; the read is unaligned.
            let record = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HeldProcess>()) };
            if sender.send(record).is_err() {
                return Ok(());
            }
        }
        guard.clear_ready();
    }
}

/// Returns the kernel programs' view of the node's initial pid namespace,
/// read from `/proc/self/ns/pid`: the agent runs in the host's pid
/// namespace, as it must to signal held processes by pid. Without it
/// nothing is held, and the agent logs a warning.
pub fn config() -> HoldConfig {
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(metadata) => {
            let dev = metadata.dev();
            HoldConfig {
                valid: 1,
                reserved: 0,
                pid_ns_dev: (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev)),
                pid_ns_ino: metadata.ino(),
            }
        }
        Err(error) => {
            warn!(error = %error, "failed to read /proc/self/ns/pid; new containers are not held until their set-up is done");
            HoldConfig::default()
        }
    }
}

/// Returns `CLOCK_BOOTTIME` in nanoseconds, the clock of
/// `bpf_ktime_get_boot_ns`.
fn boot_time_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use parapet_common::CgroupPolicies;

    use super::*;
    use crate::{identity::Identity, policy::parse_str};

    fn slotted(slot: u32, mode: &str, sections: &str) -> SlottedPolicy {
        let text = format!(
            "apiVersion: parapet.dev/v1alpha1\nkind: RuntimePolicy\nmetadata:\n  name: policy-{slot}\n\
             spec:\n  selector: {{namespace: clinic}}\n  mode: {mode}\n{sections}"
        );
        let policy = parse_str(&text, Path::new("test.yaml")).expect("valid policy").remove(0);
        SlottedPolicy { policy, slot }
    }

    fn entry(slot: u32, container_id: Option<&str>) -> Entry {
        let mut policies = CgroupPolicies::default();
        policies.slots[0] = slot;
        policies.count = 1;
        Entry {
            policies,
            identity: Identity {
                namespace: "clinic".to_owned(),
                pod: "api".to_owned(),
                pod_uid: "uid".to_owned(),
                container: container_id.map(|_| "main".to_owned()),
                container_id: container_id.map(str::to_owned),
            },
            policy_names: vec![format!("policy-{slot}")],
        }
    }

    fn held_after_marking(policy: SlottedPolicy, method: Method, read_only_done: bool, exec_done: bool) -> (bool, bool) {
        let slot = policy.slot;
        let mut entries = HashMap::from([(1, entry(slot, None)), (2, entry(slot, Some("c1")))]);
        mark_pending(&mut entries, &[policy], method, |_| read_only_done, |_| exec_done);
        let holds = |id: u64| entries[&id].policies.flags & CGROUP_HOLD_NEW_PROGRAMS != 0;
        (holds(1), holds(2))
    }

    #[test]
    fn read_only_pod_holds_until_set_up() {
        let read_only = || slotted(3, "enforce", "  filesystem: {readOnly: true}\n");
        assert_eq!(held_after_marking(read_only(), Method::Mounts, false, false), (true, true));
        assert_eq!(held_after_marking(read_only(), Method::Mounts, true, false), (true, false));
    }

    #[test]
    fn exec_lists_hold_until_looked_up() {
        let exec = || slotted(4, "enforce", "  exec: {allow: [/bin/app]}\n");
        assert_eq!(held_after_marking(exec(), Method::Mounts, true, false), (true, true));
        assert_eq!(held_after_marking(exec(), Method::Mounts, false, true), (true, false));
    }

    #[test]
    fn network_only_policy_never_holds() {
        let network = slotted(5, "enforce", "  network: {egress: []}\n");
        assert_eq!(held_after_marking(network, Method::Mounts, false, false), (false, false));
    }

    #[test]
    fn audit_read_only_holds_with_lsm_only() {
        let audit = || slotted(6, "audit", "  filesystem: {readOnly: true}\n");
        assert_eq!(held_after_marking(audit(), Method::Mounts, false, false), (false, false));
        assert_eq!(held_after_marking(audit(), Method::Lsm, false, false), (true, true));
    }

    #[test]
    fn settled_hold_is_not_noted_again() {
        let record = HeldProcess {
            cgroup_id: 7,
            policed_cgroup_id: 6,
            boot_time_ns: 1_000,
            pid: 42,
            reserved: 0,
        };
        let mut tracker = Tracker::default();
        tracker.settled.insert((record.pid, record.boot_time_ns));
        tracker.note(record);
        assert!(tracker.is_empty());
        tracker.note(HeldProcess { boot_time_ns: 2_000, ..record });
        assert!(tracker.contains(42));
    }
}
