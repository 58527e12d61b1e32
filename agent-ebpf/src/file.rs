//! Reporting file mutations by workloads under a `readOnly: true` policy,
//! on kernels without BPF LSM. The agent makes such a container's mounts
//! read-only, so the kernel itself refuses a mutation with EROFS; these
//! syscall tracepoints only report. On entry a mutating syscall's path
//! argument is kept. On exit, in enforce mode, a call that failed with
//! EROFS is reported as denied. In audit mode nothing is remounted, so
//! every call that succeeded is reported as an audit.
//!
//! When the LSM file programs are attached they report audits themselves,
//! by mount, so these programs report no audit. They still report EROFS:
//! the agent remounts nothing then, so an EROFS comes from a mount that was
//! read-only already (a read-only volume, `readOnlyRootFilesystem`). The
//! VFS checks the mount flag (`mnt_want_write`) before it calls the LSM
//! hooks of these operations, so no LSM program runs for that attempt and
//! this report is its only one.
//!
//! Calls on a file descriptor (`fchmod`, `fchown`, `fsetxattr`,
//! `fremovexattr`, `utimensat` without a path) are reported with the
//! descriptor; the agent reads its path from `/proc`. `write`, `ftruncate`
//! and `fallocate` are not watched: they need a descriptor open for
//! writing, and the kernel gives none out on a read-only mount.
//!
//! NOTE: 32-bit compat syscalls and io_uring operations are refused by the
//! kernel but not reported: syscall tracepoints do not see them.
//!
//! NOTE: these tracepoints slow down every process on the node, policed or
//! not, on each watched syscall: open and close took 8 to 10% more CPU
//! time in `cargo xtask bench` on Linux 6.18. A profile puts most of it in
//! the kernel's syscall tracepoint path (`perf_syscall_enter` and
//! `perf_syscall_exit` copy the arguments into a perf record before any
//! program runs), not in these programs, which leave a read-only open
//! after one flag test. The BPF LSM file hooks do not have that cost.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use parapet_common::{
    CgroupPolicies, CounterKey, EventHeader, EventKind, MAX_POLICY_SLOTS,
    Mode, NO_RULE, Verdict,
    file::{AT_FDCWD, FileEvent, FsPolicy, PendingFileOp, op},
    lsm::backend,
};

use crate::{counters::count_decision, events, exec, lsm, policed};

/// Filesystem part of each policy, by policy slot.
#[map]
static FS_POLICIES: Array<FsPolicy> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// Mutating syscalls between entry and exit, by pid and thread id.
#[map]
static PENDING_FILE_OPS: LruHashMap<u64, PendingFileOp> = LruHashMap::with_max_entries(16384, 0);

/// The kernel ignores the return value of tracepoint programs.
const DONE: u32 = 0;
/// Offset of `long ret` in every `syscalls/sys_exit_*` record.
const RET_OFFSET: usize = 16;
/// Argument offset meaning "this syscall has no such argument".
const NONE: usize = 0;
const EROFS: i64 = 30;
/// `open` flags that ask to change the file: O_WRONLY, O_RDWR, O_CREAT,
/// O_TRUNC.
const OPEN_WRITE_FLAGS: u64 = 0o1 | 0o2 | 0o100 | 0o1000;

/// Defines the entry and exit programs of one syscall. Offsets are those
/// of its arguments in `/sys/kernel/tracing/events/syscalls/sys_enter_*/format`.
macro_rules! file_syscall {
    ($enter:ident, $exit:ident, $op:expr, path: $path:expr, dirfd: $dirfd:expr, flags: $flags:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, $op, $path, $dirfd, $flags);
            DONE
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx);
            DONE
        }
    };
}

file_syscall!(parapet_fe_openat, parapet_fx_openat, op::OPENAT, path: 24, dirfd: 16, flags: 32);
file_syscall!(parapet_fe_open, parapet_fx_open, op::OPEN, path: 16, dirfd: NONE, flags: 24);
file_syscall!(parapet_fe_creat, parapet_fx_creat, op::CREAT, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_truncate, parapet_fx_truncate, op::TRUNCATE, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_unlinkat, parapet_fx_unlinkat, op::UNLINKAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_unlink, parapet_fx_unlink, op::UNLINK, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_renameat2, parapet_fx_renameat2, op::RENAMEAT2, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_renameat, parapet_fx_renameat, op::RENAMEAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_rename, parapet_fx_rename, op::RENAME, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_mkdirat, parapet_fx_mkdirat, op::MKDIRAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_mkdir, parapet_fx_mkdir, op::MKDIR, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_rmdir, parapet_fx_rmdir, op::RMDIR, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_linkat, parapet_fx_linkat, op::LINKAT, path: 40, dirfd: 32, flags: NONE);
file_syscall!(parapet_fe_link, parapet_fx_link, op::LINK, path: 24, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_symlinkat, parapet_fx_symlinkat, op::SYMLINKAT, path: 32, dirfd: 24, flags: NONE);
file_syscall!(parapet_fe_symlink, parapet_fx_symlink, op::SYMLINK, path: 24, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_mknodat, parapet_fx_mknodat, op::MKNODAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_mknod, parapet_fx_mknod, op::MKNOD, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_fchmodat, parapet_fx_fchmodat, op::FCHMODAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_chmod, parapet_fx_chmod, op::CHMOD, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_fchownat, parapet_fx_fchownat, op::FCHOWNAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_chown, parapet_fx_chown, op::CHOWN, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_lchown, parapet_fx_lchown, op::LCHOWN, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_setxattr, parapet_fx_setxattr, op::SETXATTR, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_lsetxattr, parapet_fx_lsetxattr, op::LSETXATTR, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_removexattr, parapet_fx_removexattr, op::REMOVEXATTR, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_lremovexattr, parapet_fx_lremovexattr, op::LREMOVEXATTR, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_fchmodat2, parapet_fx_fchmodat2, op::FCHMODAT2, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_utimensat, parapet_fx_utimensat, op::UTIMENSAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_futimesat, parapet_fx_futimesat, op::FUTIMESAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_utimes, parapet_fx_utimes, op::UTIMES, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_utime, parapet_fx_utime, op::UTIME, path: 16, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fe_fchmod, parapet_fx_fchmod, op::FCHMOD, path: NONE, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_fchown, parapet_fx_fchown, op::FCHOWN, path: NONE, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_fsetxattr, parapet_fx_fsetxattr, op::FSETXATTR, path: NONE, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_fremovexattr, parapet_fx_fremovexattr, op::FREMOVEXATTR, path: NONE, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_setxattrat, parapet_fx_setxattrat, op::SETXATTRAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_removexattrat, parapet_fx_removexattrat, op::REMOVEXATTRAT, path: 24, dirfd: 16, flags: NONE);
file_syscall!(parapet_fe_file_setattr, parapet_fx_file_setattr, op::FILE_SETATTR, path: 24, dirfd: 16, flags: NONE);

/// `openat2` keeps its flags in a `struct open_how` in user memory, whose
/// first field they are.
#[tracepoint]
pub fn parapet_fe_openat2(ctx: TracePointContext) -> u32 {
    const HOW_OFFSET: usize = 32;
    // SAFETY: the offset is that of the 8-byte `how` pointer argument.
    let how = unsafe { ctx.read_at::<u64>(HOW_OFFSET) }.unwrap_or(0);
    // SAFETY: a failed read of user memory returns an error, not a fault.
    let flags = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    if flags & OPEN_WRITE_FLAGS != 0 {
        on_enter(&ctx, op::OPENAT2, 24, 16, NONE);
    }
    DONE
}

#[tracepoint]
pub fn parapet_fx_openat2(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    DONE
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, op: u32, path_offset: usize, dirfd_offset: usize, flags_offset: usize) {
    // Most opens only read: leave them before the cgroup lookups.
    if flags_offset != NONE {
        let flags = unsafe { ctx.read_at::<u64>(flags_offset) }.unwrap_or(0);
        if flags & OPEN_WRITE_FLAGS == 0 {
            return;
        }
    }
    let Some(policed) = policed::current() else {
        return;
    };
    if !has_read_only_policy(policed.policies) {
        return;
    }
    // SAFETY: the offsets are those of 8-byte argument fields.
    let path = if path_offset == NONE {
        0
    } else {
        let Ok(path) = (unsafe { ctx.read_at::<u64>(path_offset) }) else {
            return;
        };
        path
    };
    let dirfd = if dirfd_offset == NONE {
        AT_FDCWD
    } else {
        unsafe { ctx.read_at::<u64>(dirfd_offset) }.unwrap_or(0) as i32
    };
    let pending = PendingFileOp { op, dirfd, path };
    let _ = PENDING_FILE_OPS.insert(&bpf_get_current_pid_tgid(), &pending, 0);
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: values are only ever replaced whole.
    let Some(pending) = (unsafe { PENDING_FILE_OPS.get(&pid_tgid) }).copied() else {
        return;
    };
    // While a new generation takes over, both generations' exit programs
    // run: the pending entry is left to the active one, which counts it.
    let Some(policed) = policed::current() else {
        return;
    };
    let _ = PENDING_FILE_OPS.remove(&pid_tgid);
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET_OFFSET) }) else {
        return;
    };
    let Some((verdict, slot)) = decide(policed.policies, ret) else {
        return;
    };
    count_decision(&CounterKey {
        cgroup_id: policed.policed_cgroup_id,
        policy_slot: slot,
        rule: NO_RULE,
        kind: EventKind::File as u32,
        verdict: verdict as u32,
    });
    report(&policed, verdict, slot, &pending, ret, pid_tgid);
}

#[inline(always)]
fn has_read_only_policy(policies: &CgroupPolicies) -> bool {
    policed::find_slot(policies, |slot| {
        FS_POLICIES.get(slot).filter(|policy| policy.read_only != 0).map(|_| ())
    })
    .is_some()
}

/// Returns the verdict and slot to report: a refusal with EROFS under a
/// read-only policy is a deny, and a success under an audit-mode one is an
/// audit unless the LSM file programs report audits. Anything else is not
/// reported. An audit-mode policy gets EROFS where an earlier enforce-mode
/// one left the mounts read-only.
#[inline(always)]
fn decide(policies: &CgroupPolicies, ret: i64) -> Option<(Verdict, u32)> {
    let lsm_reports_audits = lsm::active(backend::FILESYSTEM);
    policed::find_slot(policies, |slot| {
        let policy = FS_POLICIES.get(slot)?;
        if policy.read_only == 0 {
            return None;
        }
        if ret == -EROFS {
            return Some((Verdict::Deny, slot));
        }
        if policy.mode == Mode::Audit as u32 && ret >= 0 && !lsm_reports_audits {
            return Some((Verdict::Audit, slot));
        }
        None
    })
}

#[inline(always)]
fn report(policed: &policed::Policed, verdict: Verdict, slot: u32, pending: &PendingFileOp, ret: i64, pid_tgid: u64) {
    let Some(mut entry) = events::reserve::<FileEvent>() else {
        return;
    };
    let record = entry.as_mut_ptr();
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
        (*record).op = pending.op;
        (*record).dirfd = pending.dirfd;
        (*record).ret = ret;
        let path = &mut (*record).path;
        let read = if pending.path == 0 {
            Err(0)
        } else {
            bpf_probe_read_user_str_bytes(pending.path as *const u8, &mut path.bytes)
        };
        match read {
            Ok(bytes) => {
                let len = bytes.len();
                path.len = len as u32;
                path.truncated = u32::from(len >= path.bytes.len() - 1);
            }
            Err(_) => {
                path.len = 0;
                path.truncated = 0;
            }
        }
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
