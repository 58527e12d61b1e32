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

/// `FileEvent::dirfd` of a path that an LSM program rebuilt from the
/// kernel's dentries: absolute in the container's mount namespace, and
/// marked `truncated` when the kernel cut it short.
pub const PATH_FROM_KERNEL: i32 = i32::MIN;

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
    /// `dirfd` contains the descriptor.
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

    /// Operations seen by the LSM file programs, named after their hooks.
    pub const LSM_FILE_OPEN: u32 = 64;
    pub const LSM_FILE_WRITE: u32 = 65;
    pub const LSM_FILE_TRUNCATE: u32 = 66;
    pub const LSM_MMAP_SHARED_WRITE: u32 = 67;
    pub const LSM_PATH_TRUNCATE: u32 = 68;
    pub const LSM_PATH_UNLINK: u32 = 69;
    pub const LSM_PATH_MKDIR: u32 = 70;
    pub const LSM_PATH_RMDIR: u32 = 71;
    pub const LSM_PATH_MKNOD: u32 = 72;
    pub const LSM_PATH_SYMLINK: u32 = 73;
    pub const LSM_PATH_LINK: u32 = 74;
    pub const LSM_PATH_RENAME: u32 = 75;
    pub const LSM_PATH_CHMOD: u32 = 76;
    pub const LSM_PATH_CHOWN: u32 = 77;
    pub const LSM_INODE_SETXATTR: u32 = 78;
    pub const LSM_INODE_REMOVEXATTR: u32 = 79;
    pub const LSM_INODE_SET_ACL: u32 = 80;
    pub const LSM_INODE_REMOVE_ACL: u32 = 81;
    pub const LSM_FILE_MPROTECT: u32 = 82;
    pub const LSM_FILE_IOCTL: u32 = 83;

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
            LSM_FILE_OPEN => "file_open",
            LSM_FILE_WRITE => "file_permission",
            LSM_FILE_TRUNCATE => "file_truncate",
            LSM_MMAP_SHARED_WRITE => "mmap_file",
            LSM_PATH_TRUNCATE => "path_truncate",
            LSM_PATH_UNLINK => "path_unlink",
            LSM_PATH_MKDIR => "path_mkdir",
            LSM_PATH_RMDIR => "path_rmdir",
            LSM_PATH_MKNOD => "path_mknod",
            LSM_PATH_SYMLINK => "path_symlink",
            LSM_PATH_LINK => "path_link",
            LSM_PATH_RENAME => "path_rename",
            LSM_PATH_CHMOD => "path_chmod",
            LSM_PATH_CHOWN => "path_chown",
            LSM_INODE_SETXATTR => "inode_setxattr",
            LSM_INODE_REMOVEXATTR => "inode_removexattr",
            LSM_INODE_SET_ACL => "inode_set_acl",
            LSM_INODE_REMOVE_ACL => "inode_remove_acl",
            LSM_FILE_MPROTECT => "file_mprotect",
            LSM_FILE_IOCTL => "file_ioctl",
            _ => "unknown",
        }
    }
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
    /// The directory descriptor the path is relative to, `AT_FDCWD`, or
    /// `PATH_FROM_KERNEL` for a path an LSM program rebuilt.
    pub dirfd: i32,
    /// The syscall's return value: `-EROFS` for a mutation the read-only
    /// mounts refused, `-EPERM` for one an LSM program refused, 0 for one
    /// it let through in audit mode.
    pub ret: i64,
    /// The path as the process gave it, or as an LSM program rebuilt it.
    pub path: ExecPath,
    /// The process's program.
    pub binary: ExecPath,
}
