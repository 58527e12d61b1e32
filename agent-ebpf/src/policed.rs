//! Lookup of the policies, if any, that govern the calling process.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use parapet_common::{
    CgroupPolicies, MAX_CGROUP_DEPTH, MAX_POLICED_CGROUPS, MAX_POLICIES_PER_CGROUP, MAX_UNPOLICED_CGROUPS,
};

/// Policies per cgroup id, written by the agent for container and pod
/// cgroups.
#[map]
static CGROUP_POLICIES: HashMap<u64, CgroupPolicies> =
    HashMap::with_max_entries(MAX_POLICED_CGROUPS, 0);

/// A counter at index 0 that the agent increments after each change to
/// `CGROUP_POLICIES`.
#[map]
static POLICY_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Cgroups that no entry of `CGROUP_POLICIES` covered, each with the value
/// of `POLICY_EPOCH` read before that was found. An entry whose epoch is
/// still current spares an unpoliced task the walk over its ancestors.
#[map]
static UNPOLICED_CGROUPS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_UNPOLICED_CGROUPS, 0);

/// The policy entry that governs the current task.
pub struct Policed {
    /// Cgroup of the current task.
    pub cgroup_id: u64,
    /// Cgroup whose entry applies: the task's own or its nearest policed
    /// ancestor's.
    pub policed_cgroup_id: u64,
    pub policies: &'static CgroupPolicies,
}

/// Finds the entry of the current task's cgroup, or else of its deepest
/// ancestor that has one. Returns `None` for a process that no policy
/// covers, and for every process while another load of the programs is the
/// active generation.
#[inline(always)]
pub fn current() -> Option<Policed> {
    let policed = entry()?;
    crate::generation::active().then_some(policed)
}

#[inline(always)]
fn entry() -> Option<Policed> {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the agent only ever replaces whole values of this map, and a
    // value is only read here, within one program run.
    if let Some(policies) = unsafe { CGROUP_POLICIES.get(&cgroup_id) } {
        return Some(Policed {
            cgroup_id,
            policed_cgroup_id: cgroup_id,
            policies,
        });
    }
    // The epoch is read before the walk. If the agent changes the map
    // during the walk, it increments the epoch afterwards, so a result
    // cached here under the older epoch is never used.
    // NOTE: this relies on the epoch read not being reordered after the
    // map reads below. x86 does not reorder loads. On arm64 nothing here
    // orders them, so only the microseconds between the agent's two writes
    // keep a reordered read from caching a stale result.
    let epoch = POLICY_EPOCH.get(0).copied().unwrap_or(0);
    // SAFETY: values of this map are plain numbers, replaced whole.
    if unsafe { UNPOLICED_CGROUPS.get(&cgroup_id) } == Some(&epoch) {
        return None;
    }
    // Level 0 is the root cgroup, which the agent never puts under policy.
    // The walk goes down from level 1, keeps the deepest match and stops
    // at the task's own level. Most tasks sit a few levels deep, so a walk
    // up from the deepest possible level would make a helper call for each
    // empty level on every unpoliced task's hook.
    let mut found: Option<Policed> = None;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH as i32 {
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        // 0 means the task's own cgroup is not that deep.
        if ancestor == 0 || ancestor == cgroup_id {
            break;
        }
        if let Some(policies) = unsafe { CGROUP_POLICIES.get(&ancestor) } {
            found = Some(Policed {
                cgroup_id,
                policed_cgroup_id: ancestor,
                policies,
            });
        }
        level += 1;
    }
    // Each helper call above reads the task's cgroup anew. A task moved to
    // another cgroup during the walk had some ancestors read from that
    // one, so its result must not be cached for `cgroup_id`.
    // NOTE: a task moved out and back again during one walk passes this
    // check. Walking from one cgroup pointer (the `bpf_cgroup_ancestor`
    // kfunc, Linux 6.2 and later) would close that.
    if found.is_none() && unsafe { bpf_get_current_cgroup_id() } == cgroup_id {
        let _ = UNPOLICED_CGROUPS.insert(&cgroup_id, &epoch, 0);
    }
    found
}

/// Calls `visit` with each policy slot of a cgroup, in order, and stops at
/// the first `Some` it returns. Every program that weighs a cgroup's
/// policies walks them through here.
#[inline(always)]
pub fn find_slot<T>(policies: &CgroupPolicies, mut visit: impl FnMut(u32) -> Option<T>) -> Option<T> {
    // Written out once per index, with constant offsets, because the
    // compiler turns a loop over `slots[index]` into a pointer it advances
    // on its own, and the 6.1 verifier does not connect that pointer to
    // the loop counter: it rejects the read ("invalid access to map value,
    // value_size=40 off=40 size=4").
    macro_rules! visit_index {
        ($($index:literal)*) => {$(
            if $index as u32 >= policies.count {
                return None;
            }
            if let Some(found) = visit(policies.slots[$index]) {
                return Some(found);
            }
        )*};
    }
    visit_index!(0 1 2 3 4 5 6 7);
    const _: () = assert!(MAX_POLICIES_PER_CGROUP == 8, "visit_index! lists every slot index");
    None
}
