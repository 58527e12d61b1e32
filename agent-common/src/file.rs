//! Read-only filesystems as the file tracepoint programs read them, and the
//! file event record they send.

use crate::{EventHeader, ExecPath};

/// Filesystem part of one policy: value of `FS_POLICIES`, by policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsPolicy {
    /// A `Mode`.
    pub mode: u32,
    /// 1 when the policy sets `readOnly: true`.
    pub read_only: u32,
}

/// `dirfd` of a path relative to the working directory.
pub const AT_FDCWD: i32 = -100;

/// The mutating syscalls the file programs watch; `FileEvent::op`.
pub mod op {
    pub const OPENAT: u32 = 1;
    pub const OPEN: u32 = 2;
    pub const CREAT: u32 = 3;
    pub const TRUNCATE: u32 = 4;
    pub const UNLINKAT: u32 = 5;
    pub const UNLINK: u32 = 6;
    pub const RENAMEAT2: u32 = 7;
    pub const RENAMEAT: u32 = 8;
    pub const RENAME: u32 = 9;
    pub const MKDIRAT: u32 = 10;
    pub const MKDIR: u32 = 11;
    pub const RMDIR: u32 = 12;
    pub const LINKAT: u32 = 13;
    pub const LINK: u32 = 14;
    pub const SYMLINKAT: u32 = 15;
    pub const SYMLINK: u32 = 16;
    pub const MKNODAT: u32 = 17;
    pub const MKNOD: u32 = 18;
    pub const FCHMODAT: u32 = 19;
    pub const CHMOD: u32 = 20;
    pub const FCHOWNAT: u32 = 21;
    pub const CHOWN: u32 = 22;
    pub const LCHOWN: u32 = 23;
    pub const SETXATTR: u32 = 24;
    pub const LSETXATTR: u32 = 25;
    pub const REMOVEXATTR: u32 = 26;
    pub const LREMOVEXATTR: u32 = 27;
    pub const FCHMODAT2: u32 = 28;
    pub const UTIMENSAT: u32 = 29;
    pub const FUTIMESAT: u32 = 30;
    pub const UTIMES: u32 = 31;
    pub const UTIME: u32 = 32;
    /// Calls on a file descriptor, which give no path: the event's
    /// `dirfd` holds the descriptor.
    pub const FCHMOD: u32 = 33;
    pub const FCHOWN: u32 = 34;
    pub const FSETXATTR: u32 = 35;
    pub const FREMOVEXATTR: u32 = 36;
    pub const OPENAT2: u32 = 37;
    pub const SETXATTRAT: u32 = 38;
    pub const REMOVEXATTRAT: u32 = 39;
    pub const FILE_SETATTR: u32 = 40;

    /// Returns whether the op acts on a descriptor rather than a path.
    pub fn on_descriptor(op: u32) -> bool {
        matches!(op, FCHMOD | FCHOWN | FSETXATTR | FREMOVEXATTR)
    }

    /// Returns the syscall name of an op, as in
    /// `/sys/kernel/tracing/events/syscalls`.
    pub fn name(op: u32) -> &'static str {
        match op {
            OPENAT => "openat",
            OPEN => "open",
            CREAT => "creat",
            TRUNCATE => "truncate",
            UNLINKAT => "unlinkat",
            UNLINK => "unlink",
            RENAMEAT2 => "renameat2",
            RENAMEAT => "renameat",
            RENAME => "rename",
            MKDIRAT => "mkdirat",
            MKDIR => "mkdir",
            RMDIR => "rmdir",
            LINKAT => "linkat",
            LINK => "link",
            SYMLINKAT => "symlinkat",
            SYMLINK => "symlink",
            MKNODAT => "mknodat",
            MKNOD => "mknod",
            FCHMODAT => "fchmodat",
            CHMOD => "chmod",
            FCHOWNAT => "fchownat",
            CHOWN => "chown",
            LCHOWN => "lchown",
            SETXATTR => "setxattr",
            LSETXATTR => "lsetxattr",
            REMOVEXATTR => "removexattr",
            LREMOVEXATTR => "lremovexattr",
            FCHMODAT2 => "fchmodat2",
            UTIMENSAT => "utimensat",
            FUTIMESAT => "futimesat",
            UTIMES => "utimes",
            UTIME => "utime",
            FCHMOD => "fchmod",
            FCHOWN => "fchown",
            FSETXATTR => "fsetxattr",
            FREMOVEXATTR => "fremovexattr",
            OPENAT2 => "openat2",
            SETXATTRAT => "setxattrat",
            REMOVEXATTRAT => "removexattrat",
            FILE_SETATTR => "file_setattr",
            _ => "unknown",
        }
    }
}

/// A mutating syscall seen on entry, kept until its exit: value of
/// `PENDING_FILE_OPS`, keyed by pid and thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingFileOp {
    pub op: u32,
    pub dirfd: i32,
    /// User-space address of the path argument.
    pub path: u64,
}

/// Event record of a refused (enforce mode) or reported (audit mode)
/// mutation.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileEvent {
    pub header: EventHeader,
    /// An `op` value.
    pub op: u32,
    /// The directory descriptor the path is relative to, or `AT_FDCWD`;
    /// for a call on a descriptor, or `utimensat` without a path, the
    /// descriptor itself.
    pub dirfd: i32,
    /// The syscall's return value: `-EROFS` for a refused mutation.
    pub ret: i64,
    /// The path as the process gave it.
    pub path: ExecPath,
    /// The process's program.
    pub binary: ExecPath,
}
