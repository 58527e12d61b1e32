//! Reporting file mutations by workloads under a `readOnly: true` policy,
//! on kernels without BPF LSM. The agent makes such a container's mounts
//! read-only, so the kernel itself refuses a mutation with EROFS; these
//! syscall tracepoints only report. Only the exit of each syscall is
//! watched, and its arguments are read from the registers the kernel saved
//! on entry. In enforce mode, a call that failed with EROFS is reported as
//! denied. In audit mode nothing is remounted, so every call that succeeded
//! is reported as an audit.
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
//! not, on each watched syscall: open and close took about 10% more CPU
//! time in `cargo xtask bench` on Linux 6.18, with no policy in audit
//! mode. Most of it is the kernel's own tracepoint path: with a program
//! that returned at once on the exit of `openat`, open and close still
//! took about 8% more. A successful call leaves after one map read unless
//! a policy audits read-only mounts. The exit of an unpoliced `openat`
//! took about 57 ns, against 118 ns when every success read the saved
//! registers. Both were measured with `kernel.bpf_stats_enabled` (run
//! time over run count in `bpftool prog`) during the bench's file flood.
//! While a read-only policy in audit mode is loaded, every success reads
//! the saved registers again.
//! The BPF LSM file hooks do not have that cost.
//!
//! NOTE: the path, and the flags of `openat2`, are read from user memory
//! when the call has returned. Another thread of the process can change
//! them in between, so the report can name a path other than the one the
//! kernel refused, and an audit-mode success can go unreported. A refusal
//! is counted whatever the flags are.
//!
//! NOTE: the exit tracepoint also fires for a call that seccomp or a
//! ptrace tracer skipped, with a return value of its choosing. A skipped
//! call that returns a success or EROFS is reported as if it had run.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint},
    maps::Array,
    programs::TracePointContext,
};
use parapet_common::{
    CgroupPolicies, CounterKey, EventHeader, EventKind, MAX_POLICY_SLOTS,
    Mode, NO_RULE, Verdict,
    file::{AT_FDCWD, FileEvent, FsPolicy, op},
    lsm::backend,
};

use crate::{counters::count_decision, events, exec, lsm, policed, syscall_args};

/// Filesystem part of each policy, by policy slot.
#[map]
static FS_POLICIES: Array<FsPolicy> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// At index 0, how many slots of `FS_POLICIES` contain a read-only policy
/// in audit mode. The agent raises it before any cgroup entry refers to such
/// a slot and lowers it after the slot is cleared. While it is 0, no
/// successful call can be an audit, so the programs leave at once without
/// reading the saved registers.
#[map]
static FILE_AUDIT_SLOTS: Array<u32> = Array::with_max_entries(1, 0);

/// The kernel ignores the return value of tracepoint programs.
const DONE: u32 = 0;
/// Offset of `long ret` in every `syscalls/sys_exit_*` record.
const RET_OFFSET: usize = 16;
/// Argument index meaning "this syscall has no such argument".
const NONE: usize = usize::MAX;
const EROFS: i64 = 30;
/// `open` flags that ask to change the file: O_WRONLY, O_RDWR, O_CREAT,
/// O_TRUNC.
const OPEN_WRITE_FLAGS: u64 = 0o1 | 0o2 | 0o100 | 0o1000;
/// `O_PATH`: the kernel then ignores every flag above and opens for no
/// access at all.
const O_PATH: u64 = 0o10000000;

/// Argument indexes of the path, directory descriptor and open flags.
struct Args {
    path: usize,
    dirfd: usize,
    flags: usize,
}

/// Defines the exit program of one syscall. Indexes follow the argument
/// order in `/sys/kernel/tracing/events/syscalls/sys_enter_*/format`.
macro_rules! file_syscall {
    ($exit:ident, $op:expr, path: $path:expr, dirfd: $dirfd:expr, flags: $flags:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $op, Args { path: $path, dirfd: $dirfd, flags: $flags });
            DONE
        }
    };
}

file_syscall!(parapet_fx_openat, op::OPENAT, path: 1, dirfd: 0, flags: 2);
file_syscall!(parapet_fx_open, op::OPEN, path: 0, dirfd: NONE, flags: 1);
file_syscall!(parapet_fx_creat, op::CREAT, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_truncate, op::TRUNCATE, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_unlinkat, op::UNLINKAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_unlink, op::UNLINK, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_renameat2, op::RENAMEAT2, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_renameat, op::RENAMEAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_rename, op::RENAME, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_mkdirat, op::MKDIRAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_mkdir, op::MKDIR, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_rmdir, op::RMDIR, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_linkat, op::LINKAT, path: 3, dirfd: 2, flags: NONE);
file_syscall!(parapet_fx_link, op::LINK, path: 1, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_symlinkat, op::SYMLINKAT, path: 2, dirfd: 1, flags: NONE);
file_syscall!(parapet_fx_symlink, op::SYMLINK, path: 1, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_mknodat, op::MKNODAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_mknod, op::MKNOD, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_fchmodat, op::FCHMODAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_chmod, op::CHMOD, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_fchownat, op::FCHOWNAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_chown, op::CHOWN, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_lchown, op::LCHOWN, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_setxattr, op::SETXATTR, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_lsetxattr, op::LSETXATTR, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_removexattr, op::REMOVEXATTR, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_lremovexattr, op::LREMOVEXATTR, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_fchmodat2, op::FCHMODAT2, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_utimensat, op::UTIMENSAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_futimesat, op::FUTIMESAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_utimes, op::UTIMES, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_utime, op::UTIME, path: 0, dirfd: NONE, flags: NONE);
file_syscall!(parapet_fx_fchmod, op::FCHMOD, path: NONE, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_fchown, op::FCHOWN, path: NONE, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_fsetxattr, op::FSETXATTR, path: NONE, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_fremovexattr, op::FREMOVEXATTR, path: NONE, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_setxattrat, op::SETXATTRAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_removexattrat, op::REMOVEXATTRAT, path: 1, dirfd: 0, flags: NONE);
file_syscall!(parapet_fx_file_setattr, op::FILE_SETATTR, path: 1, dirfd: 0, flags: NONE);

/// `openat2` keeps its flags in a `struct open_how` in user memory, whose
/// first field they are.
#[tracepoint]
pub fn parapet_fx_openat2(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, op::OPENAT2, Args { path: 1, dirfd: 0, flags: NONE });
    DONE
}

/// Reports the syscall that just returned, if it is a mutation to report.
/// A call that failed other than with EROFS leaves at the first test. A
/// success leaves at the second while no policy audits read-only mounts,
/// or where the LSM programs report audits. A read-only open leaves after
/// the read of the saved registers.
#[inline(always)]
fn on_exit(ctx: &TracePointContext, op: u32, args: Args) {
    // SAFETY: the offset is that of the 8-byte `ret` field.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET_OFFSET) }) else {
        return;
    };
    if ret < 0 && ret != -EROFS {
        return;
    }
    if ret >= 0 && (!audits_loaded() || lsm::active(backend::FILESYSTEM)) {
        return;
    }
    let Some(values) = syscall_args::current() else {
        return;
    };
    // Only a success needs the flags: a refusal with EROFS is reported
    // whatever they are.
    if ret >= 0 {
        let flags = if op == op::OPENAT2 {
            // SAFETY: a failed read of user memory returns an error, not a
            // fault.
            unsafe { bpf_probe_read_user(values[2] as *const u64) }.unwrap_or(0)
        } else if args.flags != NONE {
            values[args.flags]
        } else {
            OPEN_WRITE_FLAGS
        };
        // NOTE: `O_CREAT` on a file that exists already changes nothing,
        // yet it is reported in audit mode, because the exit does not show
        // whether the call created the file.
        if flags & OPEN_WRITE_FLAGS == 0 || flags & O_PATH != 0 {
            return;
        }
    }
    let Some(policed) = policed::current() else {
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
    let path = if args.path == NONE { 0 } else { values[args.path] };
    let dirfd = if args.dirfd == NONE { AT_FDCWD } else { values[args.dirfd] as i32 };
    report(&policed, verdict, slot, Call { op, dirfd, path }, ret);
}

#[inline(always)]
fn audits_loaded() -> bool {
    FILE_AUDIT_SLOTS.get(0).is_some_and(|count| *count != 0)
}

/// Returns the verdict and slot to report: a refusal with EROFS under a
/// read-only policy is a deny, and a success under an audit-mode one is an
/// audit. Anything else is not reported. An audit-mode policy gets EROFS
/// where an earlier enforce-mode one left the mounts read-only. The caller
/// has already left the successes that the LSM file programs report.
#[inline(always)]
fn decide(policies: &CgroupPolicies, ret: i64) -> Option<(Verdict, u32)> {
    policed::find_slot(policies, |slot| {
        let policy = FS_POLICIES.get(slot)?;
        if policy.read_only == 0 {
            return None;
        }
        if ret == -EROFS {
            return Some((Verdict::Deny, slot));
        }
        if policy.mode == Mode::Audit as u32 && ret >= 0 {
            return Some((Verdict::Audit, slot));
        }
        None
    })
}

/// The call as the report names it.
struct Call {
    op: u32,
    dirfd: i32,
    /// User-space address of the path argument, or 0.
    path: u64,
}

#[inline(always)]
fn report(policed: &policed::Policed, verdict: Verdict, slot: u32, call: Call, ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
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
        (*record).op = call.op;
        (*record).dirfd = call.dirfd;
        (*record).ret = ret;
        let path = &mut (*record).path;
        let read = if call.path == 0 {
            Err(0)
        } else {
            bpf_probe_read_user_str_bytes(call.path as *const u8, &mut path.bytes)
        };
        match read {
            Ok(bytes) => {
                let len = bytes.len();
                path.len = len as u32;
                // A full buffer contains either the whole path or its start.
                // The byte after it in user memory shows which.
                let full = len >= path.bytes.len() - 1;
                let next = if full {
                    bpf_probe_read_user((call.path + len as u64) as *const u8).unwrap_or(1)
                } else {
                    0
                };
                path.truncated = u32::from(next != 0);
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
