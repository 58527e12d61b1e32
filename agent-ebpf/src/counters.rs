//! Decision counters and loss counters. The counters are the truth about
//! what happened; the ring buffer may drop records, and every drop is
//! counted in `LOSSES`.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use parapet_common::{CounterKey, MAX_COUNTER_KEYS, loss};

#[map]
static DECISION_COUNTERS: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_COUNTER_KEYS, 0);

#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(loss::COUNT, 0);

/// Adds one to the decision counter of `key`. Returns this CPU's count for
/// the key after the addition, or 0 when the map had no room for it.
#[inline(always)]
pub fn count_decision(key: &CounterKey) -> u64 {
    if let Some(count) = DECISION_COUNTERS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value is only touched by this CPU, and programs
        // do not preempt each other on one CPU.
        unsafe {
            *count += 1;
            return *count;
        }
    }
    if DECISION_COUNTERS.insert(key, &1, BPF_NOEXIST as u64).is_ok() {
        return 1;
    }
    // Another CPU may have created the key between the lookup and the
    // insert; only a full map is a loss.
    match DECISION_COUNTERS.get_ptr_mut(key) {
        Some(count) => unsafe {
            *count += 1;
            *count
        },
        None => {
            count_loss(loss::COUNTERS_FULL);
            0
        }
    }
}

/// Adds one to a loss counter, an index from `parapet_common::loss`.
#[inline(always)]
pub fn count_loss(index: u32) {
    if let Some(count) = LOSSES.get_ptr_mut(index) {
        unsafe { *count += 1 };
    }
}
