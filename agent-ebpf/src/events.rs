//! The ring buffer that carries event records to the agent.

use aya_ebpf::{
    macros::map,
    maps::{RingBuf, ring_buf::RingBufEntry},
};
use parapet_common::{EVENT_RING_BYTES, loss};

use crate::counters::count_loss;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Reserves room for one record, which the caller fills in place and
/// submits; counts the record as lost when the ring buffer is full.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_loss(loss::RING_FULL);
    }
    entry
}
