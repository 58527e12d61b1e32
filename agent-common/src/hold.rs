//! Holding a new container's programs until the agent has set the
//! container up.
//!
//! The read-only mounts and the exec lists of a container are written by
//! the agent after the container exists, so a pod-level entry alone leaves
//! a window at the container's start. An entry marked
//! `CGROUP_HOLD_NEW_PROGRAMS` closes it: the exec tracepoint stops each
//! program started under that entry with `SIGSTOP` before its first
//! instruction, records it in `HELD_PROCESSES` and wakes the agent through
//! `HELD_EVENTS`. The agent sends `SIGCONT` once the container's entry no
//! longer carries the mark.

/// `CgroupPolicies::flags` bit: programs started under this entry, in the
/// cgroup itself or below it, are stopped until the agent clears the bit
/// on the container's own entry. Set on a pod entry whose policies need
/// per-container set-up (read-only mounts or exec lists), and on a
/// container entry until that set-up is done.
pub const CGROUP_HOLD_NEW_PROGRAMS: u32 = 2;

/// Held processes the kernel records at once. A process held while the
/// map is full is stopped all the same; the agent learns of it from its
/// record in `HELD_EVENTS`.
pub const MAX_HELD_PROCESSES: u32 = 4096;

/// Size of the `HELD_EVENTS` ring buffer in bytes (a power of two, a
/// multiple of the page size).
pub const HELD_RING_BYTES: u32 = 1 << 16;

/// The node's initial pid namespace, set by the agent before load. A
/// container runtime execs its own helper (`runc init` re-executes itself)
/// in that namespace, sometimes after it has moved the helper into the
/// container's cgroup, and holding it would stop the container's
/// creation. The container's own programs run in a pid namespace of their
/// own, or the pod's, so only processes outside the initial one are held.
/// `valid` is 0 when the agent could not read the namespace; nothing is
/// held then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldConfig {
    pub valid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Kernel device number (`major << 20 | minor`) of the nsfs file
    /// system, as `bpf_get_ns_current_pid_tgid` expects it.
    pub pid_ns_dev: u64,
    /// Inode number of the namespace, as `/proc/self/ns/pid` shows it.
    pub pid_ns_ino: u64,
}

/// A process stopped at its first instruction: value of `HELD_PROCESSES`,
/// keyed by process id, and the record sent through `HELD_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldProcess {
    /// Cgroup of the process when it was stopped.
    pub cgroup_id: u64,
    /// Cgroup whose entry carried `CGROUP_HOLD_NEW_PROGRAMS`.
    pub policed_cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns()` when it was stopped.
    pub boot_time_ns: u64,
    /// Process id (thread group id) in the initial pid namespace.
    pub pid: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
