//! The read-only promise on kernels with BPF LSM: every hook that changes
//! a file system refuses the change with EPERM before it happens.
//!
//! The decision is by identity, never by path text. For each container
//! under a read-only policy the agent binds every declared writable path
//! that is not a mount yet onto itself, then writes the ids of the mounts
//! that must stay unchanged into `READ_ONLY_MOUNTS` (mount ids are unique
//! on the whole system while mounted, and reused after an unmount, so each
//! entry names its container's cgroup). A hook finds the mount an
//! operation goes through (`struct path` → `vfsmount` → the `struct mount`
//! around it) and looks its id up. Long or deep paths, symlinks, `..`,
//! renames and bind mounts all end on some mount, so none of them changes
//! the verdict, and a descriptor opened before the policy arrived is
//! checked again at each write (`file_permission`), truncate and shared
//! writable `mmap`.
//!
//! Writes to character devices, pipes and sockets pass: they change no
//! file. A hard link made inside a writable path before the policy arrived
//! can point at a file of the read-only root when the writable path is a
//! directory of the root's file system (same superblock). Such a file is
//! reached through the writable mount, so the mount id cannot tell. The
//! programs therefore refuse content and attribute changes of a regular
//! file with more than one link on a writable mount whose superblock also
//! backs a read-only mount of the same container. Files with one link, and
//! files on a writable file system of their own (a tmpfs, a volume), are
//! unaffected.
//!
//! `inode_setxattr`, `inode_removexattr` and the ACL hooks get a dentry
//! and no mount, so they decide by superblock: they refuse on any superblock that backs a
//! read-only mount of the container, writable paths bound from it included.
//!
//! Only processes of policed cgroups are ever refused: every program
//! returns at once for anyone else.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};
use parapet_common::{
    CounterKey, EventHeader, EventKind, MAX_POLICED_CGROUPS, Mode, NO_RULE, Verdict,
    file::{FileEvent, PATH_FROM_KERNEL, op},
    lsm::{LsmOffsets, ReadOnlyMount, ReadOnlySuperblock, ReadOnlySuperblockKey},
};

use crate::{
    counters::count_decision,
    events, exec,
    lsm::{ALLOW, DENY, offsets, previous_verdict, read, read_ptr, real_mount, rebuild_path},
    policed,
};

/// Mounts that must stay unchanged, by mount id. Written by the agent.
#[map]
static READ_ONLY_MOUNTS: HashMap<u32, ReadOnlyMount> = HashMap::with_max_entries(65536, 0);

/// Superblocks that back a read-only mount, per container.
#[map]
static READ_ONLY_SUPERBLOCKS: HashMap<ReadOnlySuperblockKey, ReadOnlySuperblock> =
    HashMap::with_max_entries(MAX_POLICED_CGROUPS, 0);

/// `FMODE_WRITE` in `file.f_mode`.
const FMODE_WRITE: u32 = 0x2;
/// `FMODE_NOACCOUNT` in `file.f_mode` (bit 29 in Linux 6.1 and 6.12): the
/// kernel's own backing files, such as the file of the upper or lower
/// layer that overlayfs opens and writes for a file of the overlay.
const FMODE_NOACCOUNT: u32 = 1 << 29;
/// `O_TRUNC` in `file.f_flags`.
const O_TRUNC: u32 = 0o1000;
/// `MAY_WRITE` and `MAY_APPEND` in the `file_permission` mask.
const MAY_WRITE_OR_APPEND: i32 = 0x2 | 0x8;
/// `PROT_WRITE` and the `MAP_TYPE` bits of `mmap(2)`; `MAP_SHARED` and
/// `MAP_SHARED_VALIDATE` write through to the file.
const PROT_WRITE: u64 = 0x2;
const MAP_TYPE: u64 = 0x0f;
const MAP_SHARED: u64 = 0x01;
const MAP_SHARED_VALIDATE: u64 = 0x03;
/// The ioctl commands that change inode flags.
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
const FS_IOC_FSSETXATTR: u32 = 0x401c_6620;
/// `VM_SHARED` in `vm_area_struct.vm_flags`.
const VM_SHARED: u64 = 0x08;
/// File type bits of `i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const S_IFCHR: u16 = 0o020000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;
const EPERM: i64 = 1;

/// What an operation changes, which decides the exceptions that apply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The data of an existing file: writes to devices, pipes and sockets
    /// pass, and the hard-link rule applies.
    Content,
    /// Attributes of an existing file: the hard-link rule applies.
    Attributes,
    /// A directory entry is made or removed.
    Entry,
}

#[lsm(hook = "file_open")]
pub fn parapet_file_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    if let Some(verdict) = previous_verdict(ctx.arg(1)) {
        return verdict;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    let mode: u32 = read(file, offsets.file_mode).unwrap_or(0);
    let flags: u32 = read(file, offsets.file_flags).unwrap_or(0);
    if mode & FMODE_WRITE == 0 && flags & O_TRUNC == 0 {
        return ALLOW;
    }
    check_file(&offsets, op::LSM_FILE_OPEN, file)
}

#[lsm(hook = "file_permission")]
pub fn parapet_file_permission(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let mask: i32 = ctx.arg(1);
    if let Some(verdict) = previous_verdict(ctx.arg(2)) {
        return verdict;
    }
    // Every read and write passes here: leave reads before any lookup.
    if mask & MAY_WRITE_OR_APPEND == 0 {
        return ALLOW;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    check_file(&offsets, op::LSM_FILE_WRITE, file)
}

/// `ftruncate(2)` from Linux 6.2 on; older kernels call `path_truncate`.
#[lsm(hook = "file_truncate")]
pub fn parapet_file_truncate(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    if let Some(verdict) = previous_verdict(ctx.arg(1)) {
        return verdict;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    check_file(&offsets, op::LSM_FILE_TRUNCATE, file)
}

#[lsm(hook = "mmap_file")]
pub fn parapet_mmap_file(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    let flags: u64 = ctx.arg(3);
    if let Some(verdict) = previous_verdict(ctx.arg(4)) {
        return verdict;
    }
    let map_type = flags & MAP_TYPE;
    let shared = map_type == MAP_SHARED || map_type == MAP_SHARED_VALIDATE;
    if file.is_null() || prot & PROT_WRITE == 0 || !shared {
        return ALLOW;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    check_file(&offsets, op::LSM_MMAP_SHARED_WRITE, file)
}

#[lsm(hook = "path_truncate")]
pub fn parapet_path_truncate(ctx: LsmContext) -> i32 {
    let path: *const u8 = ctx.arg(0);
    if let Some(verdict) = previous_verdict(ctx.arg(1)) {
        return verdict;
    }
    check_path(op::LSM_PATH_TRUNCATE, path, None, Change::Content)
}

#[lsm(hook = "path_unlink")]
pub fn parapet_path_unlink(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(2)) {
        return verdict;
    }
    check_path(op::LSM_PATH_UNLINK, ctx.arg(0), Some(ctx.arg(1)), Change::Entry)
}

#[lsm(hook = "path_mkdir")]
pub fn parapet_path_mkdir(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_path(op::LSM_PATH_MKDIR, ctx.arg(0), Some(ctx.arg(1)), Change::Entry)
}

#[lsm(hook = "path_rmdir")]
pub fn parapet_path_rmdir(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(2)) {
        return verdict;
    }
    check_path(op::LSM_PATH_RMDIR, ctx.arg(0), Some(ctx.arg(1)), Change::Entry)
}

/// Also the creation of a regular file by `open(O_CREAT)`.
#[lsm(hook = "path_mknod")]
pub fn parapet_path_mknod(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(4)) {
        return verdict;
    }
    check_path(op::LSM_PATH_MKNOD, ctx.arg(0), Some(ctx.arg(1)), Change::Entry)
}

#[lsm(hook = "path_symlink")]
pub fn parapet_path_symlink(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_path(op::LSM_PATH_SYMLINK, ctx.arg(0), Some(ctx.arg(1)), Change::Entry)
}

#[lsm(hook = "path_link")]
pub fn parapet_path_link(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_path(op::LSM_PATH_LINK, ctx.arg(1), Some(ctx.arg(2)), Change::Entry)
}

/// Both ends are checked; `rename(2)` across mounts fails with EXDEV
/// before this hook, but either end may be the read-only one.
#[lsm(hook = "path_rename")]
pub fn parapet_path_rename(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(5)) {
        return verdict;
    }
    let verdict = check_path(op::LSM_PATH_RENAME, ctx.arg(0), Some(ctx.arg(1)), Change::Entry);
    if verdict != ALLOW {
        return verdict;
    }
    check_path(op::LSM_PATH_RENAME, ctx.arg(2), Some(ctx.arg(3)), Change::Entry)
}

#[lsm(hook = "path_chmod")]
pub fn parapet_path_chmod(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(2)) {
        return verdict;
    }
    check_path(op::LSM_PATH_CHMOD, ctx.arg(0), None, Change::Attributes)
}

#[lsm(hook = "path_chown")]
pub fn parapet_path_chown(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_path(op::LSM_PATH_CHOWN, ctx.arg(0), None, Change::Attributes)
}

#[lsm(hook = "inode_setxattr")]
pub fn parapet_inode_setxattr(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(6)) {
        return verdict;
    }
    check_dentry(op::LSM_INODE_SETXATTR, ctx.arg(1))
}

#[lsm(hook = "inode_removexattr")]
pub fn parapet_inode_removexattr(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_dentry(op::LSM_INODE_REMOVEXATTR, ctx.arg(1))
}

/// POSIX ACL changes, from Linux 6.2 on; older kernels set ACLs through
/// `inode_setxattr`.
#[lsm(hook = "inode_set_acl")]
pub fn parapet_inode_set_acl(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(4)) {
        return verdict;
    }
    check_dentry(op::LSM_INODE_SET_ACL, ctx.arg(1))
}

#[lsm(hook = "inode_remove_acl")]
pub fn parapet_inode_remove_acl(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_dentry(op::LSM_INODE_REMOVE_ACL, ctx.arg(1))
}

/// `mprotect(2)` that makes a shared file mapping writable, which would
/// let stores reach the file as a shared writable `mmap` does.
#[lsm(hook = "file_mprotect")]
pub fn parapet_file_mprotect(ctx: LsmContext) -> i32 {
    let vma: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    if prot & PROT_WRITE == 0 {
        return ALLOW;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    let flags: u64 = read(vma, offsets.vma_flags).unwrap_or(0);
    if flags & VM_SHARED == 0 {
        return ALLOW;
    }
    let Some(file) = read_ptr(vma, offsets.vma_file) else {
        return ALLOW;
    };
    check_file(&offsets, op::LSM_FILE_MPROTECT, file)
}

/// `FS_IOC_SETFLAGS` (and its 32-bit form) and `FS_IOC_FSSETXATTR`, which
/// change inode flags such as immutable or append-only through a
/// descriptor that may be open for reading only.
#[lsm(hook = "file_ioctl")]
pub fn parapet_file_ioctl(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_flags_ioctl(ctx.arg(0), ctx.arg(1))
}

/// Checks the same ioctls from 32-bit callers, from Linux 6.8 on.
#[lsm(hook = "file_ioctl_compat")]
pub fn parapet_file_ioctl_compat(ctx: LsmContext) -> i32 {
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    check_flags_ioctl(ctx.arg(0), ctx.arg(1))
}

#[inline(always)]
fn check_flags_ioctl(file: *const u8, command: u32) -> i32 {
    if command != FS_IOC_SETFLAGS && command != FS_IOC32_SETFLAGS && command != FS_IOC_FSSETXATTR {
        return ALLOW;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    check_file_change(&offsets, op::LSM_FILE_IOCTL, file, Change::Attributes)
}

/// Checks a change of the content through an open file.
#[inline(always)]
fn check_file(offsets: &LsmOffsets, op: u32, file: *const u8) -> i32 {
    check_file_change(offsets, op, file, Change::Content)
}

/// Checks a change of kind `change` through an open file.
///
/// A backing file is skipped. Overlayfs gives it the overlay's path, so
/// without this each open and write of an overlay file would be judged
/// and reported twice. The caller's own file passed the same hook first,
/// so the change was already refused or reported there.
#[inline(always)]
fn check_file_change(offsets: &LsmOffsets, op: u32, file: *const u8, change: Change) -> i32 {
    let mode: u32 = read(file, offsets.file_mode).unwrap_or(0);
    if mode & FMODE_NOACCOUNT != 0 {
        return ALLOW;
    }
    let Some(vfsmount) = read_ptr(file, offsets.file_path_mnt) else {
        return ALLOW;
    };
    let Some(dentry) = read_ptr(file, offsets.file_path_dentry) else {
        return ALLOW;
    };
    check(offsets, op, vfsmount, dentry, change)
}

/// Checks a change at a `struct path`, or at `child` below the directory
/// `path` when the hook names one.
#[inline(always)]
fn check_path(op: u32, path: *const u8, child: Option<*const u8>, change: Change) -> i32 {
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    let Some(vfsmount) = read_ptr(path, offsets.path_mnt) else {
        return ALLOW;
    };
    let dentry = match child {
        Some(child) => child,
        None => match read_ptr(path, offsets.path_dentry) {
            Some(dentry) => dentry,
            None => return ALLOW,
        },
    };
    check(&offsets, op, vfsmount, dentry, change)
}

#[inline(always)]
fn check(offsets: &LsmOffsets, op: u32, vfsmount: *const u8, dentry: *const u8, change: Change) -> i32 {
    let Some(policed) = policed::current() else {
        return ALLOW;
    };
    // A dentry being created has no inode yet.
    let inode = read_ptr(dentry, offsets.dentry_inode);
    let mode: u16 = inode.and_then(|inode| read(inode, offsets.inode_mode)).unwrap_or(0);
    if change == Change::Content {
        let kind = mode & S_IFMT;
        if kind == S_IFCHR || kind == S_IFIFO || kind == S_IFSOCK {
            return ALLOW;
        }
    }
    let mount = real_mount(offsets, vfsmount);
    let Some(mount_id) = read::<i32>(mount, offsets.mount_id) else {
        return ALLOW;
    };
    let Some((slot, entry_mode)) = read_only_entry(offsets, &policed, mount_id as u32, inode, mode, change) else {
        return ALLOW;
    };
    refuse(offsets, &policed, op, slot, entry_mode, dentry, vfsmount)
}

/// Returns the policy slot and mode that make the mount `mount_id` read-only
/// for the caller, or that forbid changing the multiply linked file
/// `inode` on a mount that shares the superblock of a read-only one. The
/// hard-link rule applies on a writable mount, and on an audit-mode mount
/// when the superblock's entry enforces: a hard link there may lead into
/// the enforced root, so it gets the root's verdict.
#[inline(always)]
fn read_only_entry(
    offsets: &LsmOffsets,
    policed: &policed::Policed,
    mount_id: u32,
    inode: Option<*const u8>,
    mode: u16,
    change: Change,
) -> Option<(u32, u32)> {
    // SAFETY: the agent only ever replaces whole values of this map.
    let mount_entry = match unsafe { READ_ONLY_MOUNTS.get(&mount_id) } {
        // A mount id freed with its container and reused by a new mount
        // must not carry the old verdict: it counts only for the container
        // the agent wrote it for.
        Some(entry) if entry.cgroup_id != policed.policed_cgroup_id => return None,
        Some(entry) if entry.mode == Mode::Enforce as u32 => return Some((entry.slot, entry.mode)),
        Some(entry) => Some((entry.slot, entry.mode)),
        None => None,
    };
    if change == Change::Entry || mode & S_IFMT != S_IFREG {
        return mount_entry;
    }
    let Some(inode) = inode else {
        return mount_entry;
    };
    let links: u32 = read(inode, offsets.inode_nlink).unwrap_or(0);
    if links <= 1 {
        return mount_entry;
    }
    let Some(superblock) = superblock_entry(offsets, policed.policed_cgroup_id, inode) else {
        return mount_entry;
    };
    let stricter = mount_entry.is_none() || superblock.mode == Mode::Enforce as u32;
    if superblock.shared_with_writable != 0 && stricter {
        return Some((superblock.slot, superblock.mode));
    }
    mount_entry
}

/// Checks a change known only by its dentry, by superblock.
#[inline(always)]
fn check_dentry(op: u32, dentry: *const u8) -> i32 {
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    let Some(policed) = policed::current() else {
        return ALLOW;
    };
    let Some(inode) = read_ptr(dentry, offsets.dentry_inode) else {
        return ALLOW;
    };
    let Some(entry) = superblock_entry(&offsets, policed.policed_cgroup_id, inode) else {
        return ALLOW;
    };
    refuse(&offsets, &policed, op, entry.slot, entry.mode, dentry, core::ptr::null())
}

#[inline(always)]
fn superblock_entry(offsets: &LsmOffsets, cgroup_id: u64, inode: *const u8) -> Option<ReadOnlySuperblock> {
    let superblock = read_ptr(inode, offsets.inode_sb)?;
    let dev: u32 = read(superblock, offsets.sb_dev)?;
    let key = ReadOnlySuperblockKey {
        cgroup_id,
        dev: u64::from(dev),
    };
    // SAFETY: the agent only ever replaces whole values of this map.
    unsafe { READ_ONLY_SUPERBLOCKS.get(&key) }.copied()
}

/// Counts and reports a mutation of a read-only file system, and returns
/// the verdict: EPERM in enforce mode, allow in audit mode.
#[inline(always)]
fn refuse(
    offsets: &LsmOffsets,
    policed: &policed::Policed,
    op: u32,
    slot: u32,
    mode: u32,
    dentry: *const u8,
    vfsmount: *const u8,
) -> i32 {
    let verdict = if mode == Mode::Enforce as u32 {
        Verdict::Deny
    } else {
        Verdict::Audit
    };
    count_decision(&CounterKey {
        cgroup_id: policed.policed_cgroup_id,
        policy_slot: slot,
        rule: NO_RULE,
        kind: EventKind::File as u32,
        verdict: verdict as u32,
    });
    report(offsets, policed, op, slot, verdict, dentry, vfsmount);
    if verdict == Verdict::Deny { DENY } else { ALLOW }
}

#[inline(always)]
fn report(
    offsets: &LsmOffsets,
    policed: &policed::Policed,
    op: u32,
    slot: u32,
    verdict: Verdict,
    dentry: *const u8,
    vfsmount: *const u8,
) {
    let Some(mut entry) = events::reserve::<FileEvent>() else {
        return;
    };
    let record = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // SAFETY: `record` points at reserved ring buffer memory the size of a
    // `FileEvent`, written field by field because the record is too large
    // for the 512-byte stack.
    unsafe {
        (*record).header = EventHeader {
            kind: EventKind::File as u32,
            verdict: verdict as u32,
            boot_time_ns: bpf_ktime_get_boot_ns(),
            cgroup_id: policed.cgroup_id,
            policed_cgroup_id: policed.policed_cgroup_id,
            tid: pid_tgid as u32,
            pid,
            policy_slot: slot,
            rule: NO_RULE,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        (*record).op = op;
        (*record).dirfd = PATH_FROM_KERNEL;
        (*record).ret = if verdict == Verdict::Deny { -EPERM } else { 0 };
        rebuild_path(offsets, dentry, vfsmount, &mut (*record).path);
        match exec::path_of(pid) {
            Some(binary) => core::ptr::copy_nonoverlapping(binary, &raw mut (*record).binary, 1),
            None => {
                (*record).binary.len = 0;
                (*record).binary.truncated = 0;
            }
        }
    }
    entry.submit(0);
}
