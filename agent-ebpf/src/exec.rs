//! Remembering the program each policed process runs, so that every event
//! names its binary even when the process has exited by the time the agent
//! reads the record.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use parapet_common::{ExecPath, MAX_EXEC_PATH, MAX_EXEC_PATHS};

use crate::policed;

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
    if policed::current().is_some() {
        record_exec(&ctx);
    }
    DONE
}

#[inline(always)]
fn record_exec(ctx: &TracePointContext) {
    let Some(scratch) = EXEC_PATH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch entry belongs to this program run.
    let path = unsafe { &mut *scratch };
    // SAFETY: the offset is that of a 4-byte field inside the record.
    let Ok(location) = (unsafe { ctx.read_at::<u32>(FILENAME_LOC_OFFSET) }) else {
        return;
    };
    // A `__data_loc` field holds the string's offset in its low 16 bits.
    let offset = (location & 0xffff) as usize;
    // SAFETY: the kernel placed the NUL-terminated file name at that offset
    // of the record; the helper checks the read.
    let source = unsafe { (ctx.as_ptr() as *const u8).add(offset) };
    let read = unsafe { bpf_probe_read_kernel_str_bytes(source, &mut path.bytes) };
    let Ok(bytes) = read else {
        return;
    };
    let len = bytes.len();
    path.len = len as u32;
    // The helper stops one byte short of the buffer to leave room for the
    // NUL, so a path that fills it was cut.
    path.truncated = u32::from(len >= MAX_EXEC_PATH - 1);
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = EXEC_PATHS.insert(&pid, path, 0);
}

/// The program path recorded for process `pid`.
#[inline(always)]
pub fn path_of(pid: u32) -> Option<&'static ExecPath> {
    // SAFETY: entries are only ever replaced whole.
    unsafe { EXEC_PATHS.get(&pid) }
}
