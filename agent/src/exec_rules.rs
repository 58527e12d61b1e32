//! The identities of the files on exec lists, per container.
//!
//! An allow or deny list names paths; the kernel matches the device and
//! inode of the program a process runs. The same path is a different file
//! in each container (each has its own root file system), so the agent
//! looks the listed paths up inside every container's mount namespace and
//! writes one kernel rule per policy slot and file. Until it has done so
//! for a container, the kernel reports programs missing from an allow list
//! there instead of blocking them. Deny lists still match by path from the
//! container's first instruction.

use std::collections::{HashMap, HashSet};

use parapet_common::exec::{ExecRuleKey, ExecRuleValue, RULE_IDENTITY};

use crate::{enforce::SlottedPolicy, kernel::Kernel, mountns};

#[derive(Debug, Default)]
pub struct ExecResolver {
    /// Kernel keys written for each container.
    keys: HashMap<String, Vec<ExecRuleKey>>,
    /// Value and number of containers per written key: files on shared
    /// volumes have one identity in several containers.
    written: HashMap<ExecRuleKey, (ExecRuleValue, usize)>,
}

impl ExecResolver {
    /// Returns whether the files on a container's lists are in the kernel.
    pub fn is_resolved(&self, container_id: &str) -> bool {
        self.keys.contains_key(container_id)
    }

    pub fn resolved(&self) -> HashSet<String> {
        self.keys.keys().cloned().collect()
    }

    /// Forgets everything: called after a policy reload, whose old slots
    /// and their kernel rules are cleared by the enforcer.
    pub fn reset(&mut self) {
        self.keys.clear();
        self.written.clear();
    }

    /// Looks up the listed files in the container whose first process is
    /// `pid` and writes their identities. Blocks for a fork and a wait.
    /// Returns how many listed paths exist in the container.
    pub fn resolve(
        &mut self,
        kernel: &mut Kernel,
        container_id: &str,
        pid: u32,
        policies: &[&SlottedPolicy],
    ) -> Result<usize, String> {
        let lookups = crate::enforce::exec_lookups(policies);
        let paths: Vec<_> = lookups.iter().map(|(_, path, _)| path.clone()).collect();
        let identities = mountns::stat_in_container(pid, &paths).map_err(|error| error.to_string())?;
        let mut merged: HashMap<ExecRuleKey, ExecRuleValue> = HashMap::new();
        for ((slot, _, value), identity) in lookups.iter().zip(&identities) {
            let Some(identity) = identity else {
                continue;
            };
            let key = ExecRuleKey {
                slot: *slot,
                kind: RULE_IDENTITY,
                first: identity.dev,
                second: identity.ino,
            };
            let entry = merged.entry(key).or_default();
            merge(entry, value);
        }
        let found = identities.iter().filter(|identity| identity.is_some()).count();
        let mut keys = Vec::with_capacity(merged.len());
        for (key, value) in merged {
            let (stored, users) = self.written.entry(key).or_insert((ExecRuleValue::default(), 0));
            merge(stored, &value);
            *users += 1;
            kernel
                .exec_rules
                .insert(key, *stored, 0)
                .map_err(|error| format!("failed to write an exec rule: {error}"))?;
            keys.push(key);
        }
        self.keys.insert(container_id.to_owned(), keys);
        Ok(found)
    }

    /// Removes the rules of containers that are gone or no longer under an
    /// exec policy.
    pub fn retain(&mut self, kernel: &mut Kernel, wanted: &HashSet<String>) {
        let gone: Vec<String> = self.keys.keys().filter(|id| !wanted.contains(*id)).cloned().collect();
        for container_id in gone {
            for key in self.keys.remove(&container_id).unwrap_or_default() {
                let Some((_, users)) = self.written.get_mut(&key) else {
                    continue;
                };
                *users -= 1;
                if *users == 0 {
                    self.written.remove(&key);
                    let _ = kernel.exec_rules.remove(&key);
                }
            }
        }
    }
}

/// Adds `value`'s lists to `into`, keeping the first index seen per list.
fn merge(into: &mut ExecRuleValue, value: &ExecRuleValue) {
    if value.lists & parapet_common::exec::LIST_ALLOW != 0 && into.lists & parapet_common::exec::LIST_ALLOW == 0 {
        into.allow_index = value.allow_index;
    }
    if value.lists & parapet_common::exec::LIST_DENY != 0 && into.lists & parapet_common::exec::LIST_DENY == 0 {
        into.deny_index = value.deny_index;
    }
    into.lists |= value.lists;
}
