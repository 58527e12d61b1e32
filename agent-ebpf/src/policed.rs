//! Lookup of the policies, if any, that govern the calling process.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::HashMap,
};
use parapet_common::{CgroupPolicies, MAX_CGROUP_DEPTH, MAX_POLICED_CGROUPS, MAX_POLICIES_PER_CGROUP};

/// Policies per cgroup id, written by the agent for container and pod
/// cgroups.
#[map]
static CGROUP_POLICIES: HashMap<u64, CgroupPolicies> =
    HashMap::with_max_entries(MAX_POLICED_CGROUPS, 0);

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
    // Level 0 is the root cgroup, which the agent never puts under policy.
    // The walk goes down from level 1, keeps the deepest match and stops
    // at the task's own level. Most tasks sit a few levels deep, so a walk
    // up from the deepest possible level would make a helper call for each
    // empty level on every unpoliced task's hook.
    // NOTE: an unpoliced task still pays one map lookup per level, about
    // five in a pod, on every connect and datagram: `cargo xtask bench`
    // puts a UDP send 12 to 16% above running without the agent. A cache
    // of the result per cgroup id, dropped whenever the agent changes this
    // map, would make it one lookup.
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
