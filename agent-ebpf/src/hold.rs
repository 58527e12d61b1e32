//! Stopping a program before its first instruction while the agent sets
//! up its container (see `parapet_common::hold`).
//!
//! The exec tracepoint calls `hold_if_pending` after the new program is
//! loaded and judged, and before the process returns to user space. `bpf_send_signal`
//! queues `SIGSTOP` on the current process, and the kernel acts on it on
//! that return, so none of the new program's code runs. The signal counts
//! as sent by the kernel, so it stops a pid namespace's init process too,
//! which ignores a `SIGSTOP` sent from inside its namespace.
//!
//! NOTE: a `SIGCONT` from any other sender (root on the node, or a process
//! of another container in a shared pid namespace) lets the program run
//! before its container is set up, and nothing here stops it again.

use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{bpf_get_current_pid_tgid, bpf_get_ns_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_send_signal},
    macros::map,
    maps::{HashMap, RingBuf},
};
use parapet_common::hold::{CGROUP_HOLD_NEW_PROGRAMS, HELD_RING_BYTES, HeldProcess, HoldConfig, MAX_HELD_PROCESSES};

use crate::policed::Policed;

/// Processes stopped by `hold_if_pending`, by process id. The agent
/// removes an entry when it lets the process run or finds it gone.
#[map]
static HELD_PROCESSES: HashMap<u32, HeldProcess> = HashMap::with_max_entries(MAX_HELD_PROCESSES, 0);

/// One record per stopped process, which wakes the agent.
#[map]
static HELD_EVENTS: RingBuf = RingBuf::with_byte_size(HELD_RING_BYTES, 0);

/// The node's initial pid namespace, set by the agent before load.
#[unsafe(no_mangle)]
static HOLD_CONFIG: HoldConfig = HoldConfig {
    valid: 0,
    reserved: 0,
    pid_ns_dev: 0,
    pid_ns_ino: 0,
};

const SIGSTOP: u32 = 19;

/// Stops the current process when its entry carries
/// `CGROUP_HOLD_NEW_PROGRAMS`.
#[inline(always)]
pub fn hold_if_pending(policed: &Policed) {
    if policed.policies.flags & CGROUP_HOLD_NEW_PROGRAMS == 0 {
        return;
    }
    // SAFETY: a volatile read of a global the loader set before load.
    let config = unsafe { core::ptr::read_volatile(&HOLD_CONFIG) };
    if config.valid == 0 {
        return;
    }

    let mut ids = bpf_pidns_info { pid: 0, tgid: 0 };
    // The helper succeeds only when the current process's pid namespace is
    // the one named, here the initial one: the runtime's own helper.
    let in_initial = unsafe {
        bpf_get_ns_current_pid_tgid(
            config.pid_ns_dev,
            config.pid_ns_ino,
            &mut ids,
            size_of::<bpf_pidns_info>() as u32,
        )
    } == 0;
    if in_initial {
        return;
    }

    let held = HeldProcess {
        cgroup_id: policed.cgroup_id,
        policed_cgroup_id: policed.policed_cgroup_id,
        boot_time_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        reserved: 0,
    };
    // A full map or ring buffer does not let the process run: the agent
    // learns of it from whichever of the two has it.
    let _ = HELD_PROCESSES.insert(&held.pid, &held, 0);
    let _ = HELD_EVENTS.output::<HeldProcess>(&held, 0);
    // SAFETY: the helper only signals the current process.
    unsafe { bpf_send_signal(SIGSTOP) };
}
