//! The generation gate that lets a restarted agent take over from the
//! programs of the agent before it without a gap.
//!
//! Each load of the programs gets a generation number from the agent. The
//! `ACTIVE_GENERATION` map, pinned under bpffs and shared by every load,
//! names the one generation whose programs act. A new agent attaches its
//! programs while the previous ones still act, fills the maps, and then
//! writes its own number there. From that write on, the old programs step
//! aside and the new ones act. Every operation is therefore judged and
//! counted by exactly one generation.

use aya_ebpf::{macros::map, maps::{Array, HashMap}};
use parapet_common::{MAX_POLICY_SLOTS, PolicyName};

/// This load's generation, set by the agent before load.
#[unsafe(no_mangle)]
static GENERATION: u32 = 0;

/// The generation whose programs act, at index 0.
#[map]
static ACTIVE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Policy names by slot. The programs never read it: the agent keeps the
/// names here, next to the counters keyed by slot, so that a restarted
/// agent can label the counters of the agent before it.
#[map]
static POLICY_NAMES: HashMap<u32, PolicyName> = HashMap::with_max_entries(MAX_POLICY_SLOTS, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Returns whether this load's programs are the ones that act.
#[inline(always)]
pub fn active() -> bool {
    // SAFETY: a volatile read of a global the loader set before load.
    let own = unsafe { core::ptr::read_volatile(&GENERATION) };
    ACTIVE_GENERATION.get(0).is_some_and(|active| *active == own)
}
