//! The exec tracepoint. It remembers the program each policed process
//! runs, so that every event names its binary even when the process has
//! exited by the time the agent reads the record. It also checks the
//! program against the exec lists of the process's policies. Last, it
//! stops a program whose entry is marked for holding (see `hold`).
//!
//! This is the fallback backend for allowed programs: a tracepoint cannot
//! refuse an exec, so a refused program is killed with SIGKILL. The
//! tracepoint fires after the new program is loaded and before the process
//! returns to user space, so none of its code runs.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_send_signal,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use parapet_common::{
    lsm::backend,
    CgroupPolicies, CounterKey, EventHeader, EventKind, ExecPath, MAX_EXEC_PATH, MAX_EXEC_PATHS,
    MAX_POLICY_SLOTS, Mode, NO_RULE, Verdict,
    exec::{
        CGROUP_EXEC_RESOLVED, EXEC_EVENT_UNRESOLVED, ExeOffsets, ExecEvent, ExecPolicy, ExecRuleKey,
        ExecRuleValue, LIST_ALLOW, LIST_DENY, RULE_IDENTITY, RULE_LIST_SHIFT, RULE_PATH,
    },
};

use crate::{counters::count_decision, events, hold, lsm, policed};

/// Exec part of each policy, by policy slot.
#[map]
static EXEC_POLICIES: Array<ExecPolicy> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// The files on each policy's allow and deny lists, by identity and by
/// path hash.
#[map]
static EXEC_RULES: HashMap<ExecRuleKey, ExecRuleValue> = HashMap::with_max_entries(65536, 0);

/// Struct member offsets for this kernel, set by the agent before load.
#[unsafe(no_mangle)]
static EXE_OFFSETS: ExeOffsets = ExeOffsets {
    valid: 0,
    task_mm: 0,
    mm_exe_file: 0,
    file_dentry: 0,
    dentry_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
};

const SIGKILL: u32 = 9;

/// Program path per process id. Least recently used entries make room for
/// new processes.
#[map]
static EXEC_PATHS: LruHashMap<u32, ExecPath> = LruHashMap::with_max_entries(MAX_EXEC_PATHS, 0);

/// Room to build an `ExecPath`, which is too large for the 512-byte stack
/// next to everything else.
#[map]
static EXEC_PATH_SCRATCH: PerCpuArray<ExecPath> = PerCpuArray::with_max_entries(1, 0);

/// Offset of the `__data_loc char[] filename` field in the
/// `sched_process_exec` record, from
/// `/sys/kernel/tracing/events/sched/sched_process_exec/format`; stable
/// since the tracepoint was added in Linux 3.4.
const FILENAME_LOC_OFFSET: usize = 8;

/// The kernel ignores the return value of tracepoint programs.
const DONE: u32 = 0;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn parapet_exec(ctx: TracePointContext) -> u32 {
    let Some(policed) = policed::current() else {
        return DONE;
    };
    let path = record_exec(&ctx);
    // Where `bprm_check_security` enforces the lists, it has judged this
    // program already; the tracepoint only records the path for events.
    if let Some(path) = path
        && !lsm::active(backend::EXEC)
    {
        let (dev, ino) = exe_identity().unwrap_or((0, 0));
        if judge(&policed, dev, ino, path) == Some(Verdict::Deny) {
            // SAFETY: the helper only signals the current task.
            unsafe { bpf_send_signal(SIGKILL) };
            return DONE;
        }
    }
    hold::hold_if_pending(&policed);
    DONE
}

/// One policy's verdict on a program.
struct Decision {
    verdict: Verdict,
    policy_slot: u32,
    rule: u32,
    matched_by: u32,
    unresolved: bool,
}

/// Judges the program `dev`/`ino`, named `path`, for a policed process:
/// counts and reports the decision and returns its verdict, or `None` when
/// no policy restricts programs. The caller carries out a refusal.
#[inline(always)]
pub fn judge(policed: &policed::Policed, dev: u64, ino: u64, path: &ExecPath) -> Option<Verdict> {
    let hash = hash_path(path);
    let resolved = policed.policies.flags & CGROUP_EXEC_RESOLVED != 0;
    let decision = decide(policed.policies, dev, ino, hash, resolved)?;
    count_decision(&CounterKey {
        cgroup_id: policed.policed_cgroup_id,
        policy_slot: decision.policy_slot,
        rule: decision.rule,
        kind: EventKind::Exec as u32,
        verdict: decision.verdict as u32,
    });
    report(policed, &decision, dev, ino, path);
    Some(decision.verdict)
}

/// Applies every policy with an exec section, as for the network: an
/// enforce-mode refusal denies, audit-mode refusals only are an audit.
/// Returns `None` when no policy restricts programs.
#[inline(always)]
fn decide(policies: &CgroupPolicies, dev: u64, ino: u64, hash: u64, resolved: bool) -> Option<Decision> {
    let mut allowed: Option<Decision> = None;
    let mut audited: Option<Decision> = None;
    let mut denied: Option<Decision> = None;
    // The visitor keeps its findings in the variables above and returns
    // only whether to stop. Where the compiler makes the visitor a BPF
    // function of its own, a `Decision` returned by value travels through
    // a stack pointer, which the 6.1 verifier rejects ("cannot return
    // stack pointer to the caller").
    policed::find_slot(policies, |slot| {
        let policy = EXEC_POLICIES.get(slot)?;
        if policy.restricted == 0 {
            return None;
        }
        let by_identity = lookup(slot, RULE_IDENTITY, dev, ino);
        let by_path = lookup(slot, RULE_PATH, hash, 0);
        let mut decision = Decision {
            verdict: Verdict::Allow,
            policy_slot: slot,
            rule: NO_RULE,
            matched_by: 0,
            unresolved: false,
        };
        if by_identity.lists & LIST_DENY != 0 {
            decision.verdict = Verdict::Deny;
            decision.rule = (LIST_DENY << RULE_LIST_SHIFT) | by_identity.deny_index;
            decision.matched_by = RULE_IDENTITY;
        } else if by_path.lists & LIST_DENY != 0 {
            decision.verdict = Verdict::Deny;
            decision.rule = (LIST_DENY << RULE_LIST_SHIFT) | by_path.deny_index;
            decision.matched_by = RULE_PATH;
        } else if policy.has_allow != 0 {
            if by_identity.lists & LIST_ALLOW != 0 {
                decision.rule = (LIST_ALLOW << RULE_LIST_SHIFT) | by_identity.allow_index;
                decision.matched_by = RULE_IDENTITY;
            } else {
                decision.verdict = Verdict::Deny;
                decision.unresolved = !resolved;
            }
        }
        if decision.verdict == Verdict::Allow {
            if allowed.is_none() {
                allowed = Some(decision);
            }
        } else if policy.mode == Mode::Enforce as u32 && !decision.unresolved {
            denied = Some(decision);
            return Some(());
        } else if audited.is_none() {
            decision.verdict = Verdict::Audit;
            audited = Some(decision);
        }
        None
    });
    denied.or(audited).or(allowed)
}

#[inline(always)]
fn lookup(slot: u32, kind: u32, first: u64, second: u64) -> ExecRuleValue {
    let key = ExecRuleKey {
        slot,
        kind,
        first,
        second,
    };
    // SAFETY: values are only ever replaced whole.
    unsafe { EXEC_RULES.get(&key) }.copied().unwrap_or_default()
}

/// Reads the device and inode of the current task's executable, following
/// task->mm->exe_file->f_path.dentry->d_inode with offsets from the agent.
#[inline(always)]
fn exe_identity() -> Option<(u64, u64)> {
    // SAFETY: a volatile read of a global the loader set before load.
    let offsets = unsafe { core::ptr::read_volatile(&EXE_OFFSETS) };
    if offsets.valid == 0 {
        return None;
    }
    // SAFETY: every step is a checked kernel read; a failed one ends the
    // walk.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: *const u8 = bpf_probe_read_kernel(task.add(offsets.task_mm as usize).cast()).ok()?;
        let file: *const u8 = bpf_probe_read_kernel(mm.add(offsets.mm_exe_file as usize).cast()).ok()?;
        let dentry: *const u8 = bpf_probe_read_kernel(file.add(offsets.file_dentry as usize).cast()).ok()?;
        let inode: *const u8 = bpf_probe_read_kernel(dentry.add(offsets.dentry_inode as usize).cast()).ok()?;
        let ino: u64 = bpf_probe_read_kernel(inode.add(offsets.inode_ino as usize).cast()).ok()?;
        let sb: *const u8 = bpf_probe_read_kernel(inode.add(offsets.inode_sb as usize).cast()).ok()?;
        let dev: u32 = bpf_probe_read_kernel(sb.add(offsets.sb_dev as usize).cast()).ok()?;
        Some((u64::from(dev), ino))
    }
}

/// `parapet_common::exec::path_hash` over the recorded path, written out
/// as a bounded loop over the fixed-size buffer for the verifier.
#[inline(always)]
fn hash_path(path: &ExecPath) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < MAX_EXEC_PATH {
        if index as u32 >= path.len {
            break;
        }
        hash ^= u64::from(path.bytes[index]);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        index += 1;
    }
    hash
}

#[inline(always)]
fn report(policed: &policed::Policed, decision: &Decision, dev: u64, ino: u64, path: &ExecPath) {
    let Some(mut entry) = events::reserve::<ExecEvent>() else {
        return;
    };
    let record = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `record` points at reserved ring buffer memory the size of an
    // `ExecEvent`, written field by field because the record is too large
    // for the 512-byte stack.
    unsafe {
        (*record).header = EventHeader {
            kind: EventKind::Exec as u32,
            verdict: decision.verdict as u32,
            boot_time_ns: bpf_ktime_get_boot_ns(),
            cgroup_id: policed.cgroup_id,
            policed_cgroup_id: policed.policed_cgroup_id,
            tid: pid_tgid as u32,
            pid: (pid_tgid >> 32) as u32,
            policy_slot: decision.policy_slot,
            rule: decision.rule,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        (*record).dev = dev;
        (*record).ino = ino;
        (*record).flags = if decision.unresolved { EXEC_EVENT_UNRESOLVED } else { 0 };
        (*record).matched_by = decision.matched_by;
        core::ptr::copy_nonoverlapping(path, &raw mut (*record).binary, 1);
    }
    entry.submit(0);
}

/// Records the path the `execve` call named, and returns the record.
#[inline(always)]
fn record_exec(ctx: &TracePointContext) -> Option<&'static ExecPath> {
    let scratch = EXEC_PATH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch entry belongs to this program run.
    let path = unsafe { &mut *scratch };
    // SAFETY: the offset is that of a 4-byte field inside the record.
    let location = unsafe { ctx.read_at::<u32>(FILENAME_LOC_OFFSET) }.ok()?;
    // A `__data_loc` field contains the string's offset in its low 16 bits.
    let offset = (location & 0xffff) as usize;
    // SAFETY: the kernel placed the NUL-terminated file name at that offset
    // of the record; the helper checks the read.
    let source = unsafe { (ctx.as_ptr() as *const u8).add(offset) };
    let read = unsafe { bpf_probe_read_kernel_str_bytes(source, &mut path.bytes) };
    let len = read.ok()?.len();
    path.len = len as u32;
    // The helper stops one byte short of the buffer to leave room for the
    // NUL, so a path that fills it was cut.
    path.truncated = u32::from(len >= MAX_EXEC_PATH - 1);
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = EXEC_PATHS.insert(&pid, path, 0);
    // SAFETY: the scratch entry stays valid for this program run.
    Some(unsafe { &*scratch })
}

/// Returns the program path recorded for process `pid`.
#[inline(always)]
pub fn path_of(pid: u32) -> Option<&'static ExecPath> {
    // SAFETY: entries are only ever replaced whole.
    unsafe { EXEC_PATHS.get(&pid) }
}
