//! Types shared by the kernel programs and the agent: map keys and values,
//! event records, and the names of maps and programs.
//!
//! Every record is `#[repr(C)]`, uses fixed-width integers only and has no
//! hidden padding, so both sides read the same bytes.
#![no_std]

pub mod exec;
pub mod file;
pub mod hold;
pub mod lsm;
pub mod net;

/// Names of the kernel maps, as the agent looks them up after loading.
pub mod map_names {
    pub const CGROUP_POLICIES: &str = "CGROUP_POLICIES";
    pub const POLICY_EPOCH: &str = "POLICY_EPOCH";
    pub const NET_POLICIES: &str = "NET_POLICIES";
    pub const DECISION_COUNTERS: &str = "DECISION_COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const LOSSES: &str = "LOSSES";
    pub const EXEC_PATHS: &str = "EXEC_PATHS";
    pub const EXEC_POLICIES: &str = "EXEC_POLICIES";
    pub const EXEC_RULES: &str = "EXEC_RULES";
    pub const FS_POLICIES: &str = "FS_POLICIES";
    pub const FILE_AUDIT_SLOTS: &str = "FILE_AUDIT_SLOTS";
    pub const READ_ONLY_MOUNTS: &str = "READ_ONLY_MOUNTS";
    pub const READ_ONLY_SUPERBLOCKS: &str = "READ_ONLY_SUPERBLOCKS";
    pub const LSM_BACKENDS: &str = "LSM_BACKENDS";
    pub const ACTIVE_GENERATION: &str = "ACTIVE_GENERATION";
    pub const POLICY_NAMES: &str = "POLICY_NAMES";
    pub const HELD_PROCESSES: &str = "HELD_PROCESSES";
    pub const HELD_EVENTS: &str = "HELD_EVENTS";
}

/// Names of the kernel programs.
pub mod program_names {
    pub const CONNECT4: &str = "parapet_connect4";
    pub const CONNECT6: &str = "parapet_connect6";
    pub const SENDMSG4: &str = "parapet_sendmsg4";
    pub const SENDMSG6: &str = "parapet_sendmsg6";
    pub const SOCK_CREATE: &str = "parapet_sock_create";
    /// On the `syscalls/sys_enter_socket` tracepoint, for packet sockets.
    pub const SOCKET_ENTER: &str = "parapet_socket_enter";
    /// On the `sched/sched_process_exec` tracepoint.
    pub const EXEC: &str = "parapet_exec";
    /// A BPF LSM program that is loaded at start-up to probe for BPF LSM
    /// support and never attached.
    pub const PROBE_LSM: &str = "parapet_probe_lsm";
    /// The LSM file programs and the hook each attaches to. A hook missing
    /// from the kernel (those in `LSM_FILE_NEWER`) is skipped.
    pub const LSM_FILE: [(&str, &str); 21] = [
        ("parapet_file_open", "file_open"),
        ("parapet_file_permission", "file_permission"),
        ("parapet_file_truncate", "file_truncate"),
        ("parapet_mmap_file", "mmap_file"),
        ("parapet_path_truncate", "path_truncate"),
        ("parapet_path_unlink", "path_unlink"),
        ("parapet_path_mkdir", "path_mkdir"),
        ("parapet_path_rmdir", "path_rmdir"),
        ("parapet_path_mknod", "path_mknod"),
        ("parapet_path_symlink", "path_symlink"),
        ("parapet_path_link", "path_link"),
        ("parapet_path_rename", "path_rename"),
        ("parapet_path_chmod", "path_chmod"),
        ("parapet_path_chown", "path_chown"),
        ("parapet_inode_setxattr", "inode_setxattr"),
        ("parapet_inode_removexattr", "inode_removexattr"),
        ("parapet_inode_set_acl", "inode_set_acl"),
        ("parapet_inode_remove_acl", "inode_remove_acl"),
        ("parapet_file_mprotect", "file_mprotect"),
        ("parapet_file_ioctl", "file_ioctl"),
        ("parapet_file_ioctl_compat", "file_ioctl_compat"),
    ];
    /// Hooks new in Linux 6.2, and `file_ioctl_compat` in 6.8. On older
    /// kernels `ftruncate(2)` reaches `path_truncate`, POSIX ACLs are set
    /// through `inode_setxattr`, and 32-bit ioctls reach `file_ioctl`.
    pub const LSM_FILE_NEWER: [&str; 4] = ["file_truncate", "inode_set_acl", "inode_remove_acl", "file_ioctl_compat"];
    /// The LSM exec program, on `bprm_check_security`.
    pub const LSM_EXEC: &str = "parapet_bprm_check_security";
    /// The LSM network programs and the hook each attaches to.
    pub const LSM_NET: [(&str, &str); 3] = [
        ("parapet_socket_create", "socket_create"),
        ("parapet_socket_connect", "socket_connect"),
        ("parapet_socket_sendmsg", "socket_sendmsg"),
    ];
}

/// Policies that one cgroup can be under at once. Several policies that
/// select the same workload are all checked, and the stricter verdict wins.
pub const MAX_POLICIES_PER_CGROUP: usize = 8;

/// Policy slots: the size of the per-policy kernel maps.
pub const MAX_POLICY_SLOTS: u32 = 1024;

/// Cgroups under policy at once (containers and pods).
pub const MAX_POLICED_CGROUPS: u32 = 16384;

/// Distinct counter keys the kernel keeps before it starts counting
/// overflows in `LOSSES` instead.
pub const MAX_COUNTER_KEYS: u32 = 65536;

/// Size of the event ring buffer in bytes (a power of two, a multiple of the
/// page size).
pub const EVENT_RING_BYTES: u32 = 1 << 22;

/// Cgroups the kernel remembers as covered by no policy, so that it skips
/// the walk over their ancestors.
pub const MAX_UNPOLICED_CGROUPS: u32 = 16384;

/// Deepest cgroup level the kernel walks when it looks for a policed
/// ancestor. Kubernetes puts containers at level 4 or 5.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Bytes of a program path the kernel keeps per process.
pub const MAX_EXEC_PATH: usize = 256;

/// Processes whose program path the kernel remembers at once.
pub const MAX_EXEC_PATHS: u32 = 16384;

/// The program a policed process runs, as its last `execve` named it: value
/// of `EXEC_PATHS`, keyed by process id, and part of every event record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecPath {
    /// Bytes of `bytes` in use, without the NUL; 0 when the path is unknown.
    pub len: u32,
    /// 1 when the path was longer than `MAX_EXEC_PATH - 1` bytes and is cut.
    pub truncated: u32,
    pub bytes: [u8; MAX_EXEC_PATH],
}

/// Room for a policy name in `POLICY_NAMES`, in bytes: a Kubernetes object
/// name has at most 253, and 256 leaves the struct without padding.
pub const MAX_POLICY_NAME: usize = 256;

/// A policy name: value of `POLICY_NAMES`, keyed by slot.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PolicyName {
    /// Bytes of `bytes` in use.
    pub len: u32,
    pub bytes: [u8; MAX_POLICY_NAME],
}

/// Rule index reported when no rule of a policy matched.
pub const NO_RULE: u32 = u32::MAX;

/// The policies a cgroup is under: value of `CGROUP_POLICIES`, keyed by the
/// cgroup id (the inode number of its cgroup v2 directory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPolicies {
    /// Policy slots; only the first `count` entries are meaningful.
    pub slots: [u32; MAX_POLICIES_PER_CGROUP],
    /// Number of valid entries in `slots`.
    pub count: u32,
    /// `exec::CGROUP_EXEC_RESOLVED` and `hold::CGROUP_HOLD_NEW_PROGRAMS`
    /// bits.
    pub flags: u32,
}

/// What a policy does when its rules do not allow an operation.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Block the operation and report it.
    Enforce = 0,
    /// Let the operation through and report it.
    Audit = 1,
}

/// The outcome of one decision, as counted and reported.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Every policy allowed the operation.
    Allow = 0,
    /// A policy in enforce mode refused it; the kernel blocked it.
    Deny = 1,
    /// Only policies in audit mode would have refused it; it went through.
    Audit = 2,
}

impl Verdict {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Allow),
            1 => Some(Self::Deny),
            2 => Some(Self::Audit),
            _ => None,
        }
    }
}

/// The kind of operation an event or counter is about.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `connect(2)` on a TCP or UDP socket.
    Connect = 1,
    /// `sendmsg(2)` or `sendto(2)` with a destination on a UDP socket.
    Sendmsg = 2,
    /// `socket(2)` of a kind the socket programs cannot check, refused for
    /// workloads whose egress is restricted: raw and packet sockets, and IP
    /// protocols other than TCP, UDP and MPTCP (UDP-Lite connects, for one,
    /// pass no connect hook).
    Socket = 3,
    /// `execve(2)` of a program.
    Exec = 4,
    /// A syscall that changes a file system: see `file::op`.
    File = 5,
}

impl EventKind {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Connect),
            2 => Some(Self::Sendmsg),
            3 => Some(Self::Socket),
            4 => Some(Self::Exec),
            5 => Some(Self::File),
            _ => None,
        }
    }
}

/// Key of `DECISION_COUNTERS`, a per-CPU hash of decision counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// Cgroup whose policy entry applied (a container's or a pod's), so
    /// that processes in nested cgroups are counted under their workload.
    pub cgroup_id: u64,
    /// Policy slot the verdict is charged to.
    pub policy_slot: u32,
    /// Rule of that policy that matched, or `NO_RULE`.
    pub rule: u32,
    /// An `EventKind`.
    pub kind: u32,
    /// A `Verdict`.
    pub verdict: u32,
}

/// Indexes into `LOSSES`, a per-CPU array of loss counts.
pub mod loss {
    /// Event records dropped because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// Decisions not counted because `DECISION_COUNTERS` was full.
    pub const COUNTERS_FULL: u32 = 1;
    /// Number of entries in `LOSSES`.
    pub const COUNT: u32 = 2;
}

/// Fields common to every event record; always at the start of a record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An `EventKind`.
    pub kind: u32,
    /// A `Verdict`.
    pub verdict: u32,
    /// `bpf_ktime_get_boot_ns()` at the decision.
    pub boot_time_ns: u64,
    /// Cgroup of the process that made the call.
    pub cgroup_id: u64,
    /// Cgroup whose policy entry applied: the caller's own or an ancestor's.
    pub policed_cgroup_id: u64,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    /// Process id (thread group id) in the initial pid namespace.
    pub pid: u32,
    /// Policy slot the verdict is charged to.
    pub policy_slot: u32,
    /// Rule of that policy that matched, or `NO_RULE`.
    pub rule: u32,
    /// `comm` of the calling thread, NUL-padded.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: each type is `#[repr(C)]`, made of integers and integer arrays
    // only, with no padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::CgroupPolicies {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::net::NetPolicy {}
    unsafe impl aya::Pod for super::ExecPath {}
    unsafe impl aya::Pod for super::PolicyName {}
    unsafe impl aya::Pod for super::exec::ExecRuleKey {}
    unsafe impl aya::Pod for super::exec::ExecRuleValue {}
    unsafe impl aya::Pod for super::exec::ExecPolicy {}
    unsafe impl aya::Pod for super::exec::ExeOffsets {}
    unsafe impl aya::Pod for super::file::FsPolicy {}
    unsafe impl aya::Pod for super::lsm::LsmOffsets {}
    unsafe impl aya::Pod for super::lsm::LsmNetOffsets {}
    unsafe impl aya::Pod for super::lsm::ReadOnlyMount {}
    unsafe impl aya::Pod for super::lsm::ReadOnlySuperblockKey {}
    unsafe impl aya::Pod for super::lsm::ReadOnlySuperblock {}
    unsafe impl aya::Pod for super::hold::HeldProcess {}
    unsafe impl aya::Pod for super::hold::HoldConfig {}
}
