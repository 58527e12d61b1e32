//! Taking over the kernel state an earlier agent left in pinned maps.
//!
//! A restarted agent shares the maps of the one before it (see `pins`), and
//! treats what it finds like a policy set it is about to replace. The
//! policy slots in use stay untouched until every cgroup entry points at
//! the slots of its own policies. Entries of workloads that are gone are
//! removed once the runtime has listed the workloads. Read-only mount
//! entries of containers that are gone are removed after the first pass
//! over the read-only containers.

use std::collections::{BTreeSet, HashMap, HashSet};

use parapet_common::{CgroupPolicies, MAX_POLICY_NAME, PolicyName};
use tracing::{info, warn};

use crate::kernel::Kernel;

/// Kernel state an earlier agent left in the maps.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Slots that a cgroup entry or a read-only entry refers to: released
    /// after the first apply.
    pub slots: BTreeSet<u32>,
    /// Slots that only a policy name refers to, left by replaced policy
    /// sets: cleared and freed before the new agent installs its policies.
    pub unreferenced: BTreeSet<u32>,
    /// Cgroup entries, by cgroup id.
    pub entries: HashMap<u64, CgroupPolicies>,
    /// Of both sets, the slots read-only in audit mode; see `Enforcer`.
    pub audit_slots: HashSet<u32>,
    /// Policy names by slot, to label the counters charged to old slots.
    pub policy_names: Vec<(u32, String)>,
}

/// Reads the cgroup entries, the slots they and the read-only entries
/// refer to, and the slot names.
pub fn read(kernel: &Kernel) -> Adopted {
    let mut adopted = Adopted::default();
    // Whether every entry that can refer to a slot was read.
    let mut complete = true;
    for item in kernel.cgroup_policies.iter() {
        match item {
            Ok((cgroup_id, policies)) => {
                let count = (policies.count as usize).min(policies.slots.len());
                adopted.slots.extend(&policies.slots[..count]);
                adopted.entries.insert(cgroup_id, policies);
            }
            Err(error) => {
                complete = false;
                warn!(error = %error, "failed to read a pinned cgroup entry");
            }
        }
    }
    let mount_slots = kernel
        .read_only_mounts
        .iter()
        .map(|item| ("mount", item.map(|(_, entry)| entry.slot)));
    let superblock_slots = kernel
        .read_only_superblocks
        .iter()
        .map(|item| ("superblock", item.map(|(_, entry)| entry.slot)));
    for (kind, item) in mount_slots.chain(superblock_slots) {
        match item {
            Ok(slot) => {
                adopted.slots.insert(slot);
            }
            Err(error) => {
                complete = false;
                warn!(kind, error = %error, "failed to read a pinned read-only entry");
            }
        }
    }
    // Names are never removed, so after many reloads every slot has one.
    // Named slots nothing else refers to are therefore freed, or a restart
    // would find no free slot. After a failed read, an entry may still
    // refer to any of them, so they all stay reserved instead.
    for (slot, name) in kernel.policy_names.iter().flatten() {
        if complete {
            if !adopted.slots.contains(&slot) {
                adopted.unreferenced.insert(slot);
            }
        } else {
            adopted.slots.insert(slot);
        }
        adopted.policy_names.push((slot, decode_name(&name)));
    }
    adopted.audit_slots = adopted
        .slots
        .iter()
        .chain(&adopted.unreferenced)
        .copied()
        // A slot that cannot be read counts: a count too high only keeps
        // the programs reading the registers of successful calls.
        .filter(|slot| {
            kernel
                .fs_policies
                .get(slot, 0)
                .map_or(true, |filesystem| crate::enforce::audits_read_only(&filesystem))
        })
        .collect();
    info!(
        cgroup_entries = adopted.entries.len(),
        policy_slots = adopted.slots.len(),
        unreferenced_slots = adopted.unreferenced.len(),
        audit_policy_slots = adopted.audit_slots.iter().filter(|slot| adopted.slots.contains(slot)).count(),
        "adopted the kernel state of the previous agent"
    );
    adopted
}

/// Removes read-only mount and superblock entries of cgroups outside
/// `keep`: containers that went away while no agent ran.
pub fn remove_stale_read_only(kernel: &mut Kernel, keep: &HashSet<u64>) {
    let mounts: Vec<u32> = kernel
        .read_only_mounts
        .iter()
        .flatten()
        .filter(|(_, entry)| !keep.contains(&entry.cgroup_id))
        .map(|(mount_id, _)| mount_id)
        .collect();
    for mount_id in &mounts {
        if let Err(error) = kernel.read_only_mounts.remove(mount_id) {
            warn!(mount_id, error = %error, "failed to remove a stale read-only mount entry");
        }
    }
    let superblocks: Vec<_> = kernel
        .read_only_superblocks
        .keys()
        .flatten()
        .filter(|key| !keep.contains(&key.cgroup_id))
        .collect();
    for key in &superblocks {
        if let Err(error) = kernel.read_only_superblocks.remove(key) {
            warn!(cgroup_id = key.cgroup_id, error = %error, "failed to remove a stale read-only superblock entry");
        }
    }
    if !mounts.is_empty() || !superblocks.is_empty() {
        info!(
            mounts = mounts.len(),
            superblocks = superblocks.len(),
            "removed the read-only entries of containers that went away while no agent ran"
        );
    }
}

/// Encodes a policy name for `POLICY_NAMES`, cut at `MAX_POLICY_NAME`
/// bytes (a valid Kubernetes name always fits).
pub fn encode_name(name: &str) -> PolicyName {
    let mut value = PolicyName {
        len: 0,
        bytes: [0; MAX_POLICY_NAME],
    };
    let bytes = name.as_bytes();
    let len = bytes.len().min(MAX_POLICY_NAME);
    value.bytes[..len].copy_from_slice(&bytes[..len]);
    value.len = len as u32;
    value
}

fn decode_name(name: &PolicyName) -> String {
    let len = (name.len as usize).min(MAX_POLICY_NAME);
    String::from_utf8_lossy(&name.bytes[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_long_ones_are_cut() {
        assert_eq!(decode_name(&encode_name("db-read-only")), "db-read-only");
        let long = "a".repeat(300);
        assert_eq!(decode_name(&encode_name(&long)), "a".repeat(MAX_POLICY_NAME));
    }
}
