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
//!
//! A file can appear at a listed path after the lookup (an intruder writes
//! one to a writable path that a deny list names). The agent looks the
//! lists up again every [`REFRESH`], so such a file is matched by identity
//! from then on; before that, only the exact path text matches it. Later
//! look-ups only add denied files: a denied file stays denied after it is
//! moved, and a file put at an allowed path later is not allowed by
//! identity. NOTE: a file overwritten in place keeps its identity, so an
//! allow list holds only where the listed files cannot be written, as
//! under `readOnly: true`.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use parapet_common::exec::{ExecRuleKey, ExecRuleValue, LIST_DENY, RULE_IDENTITY};

use crate::{enforce::SlottedPolicy, kernel::Kernel, mountns};

/// How often the listed files of each container are looked up again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The shell that containers' entry points and `kubectl exec` run.
const SHELL: &str = "/bin/sh";

/// The result of one look-up in a container.
#[derive(Debug, PartialEq, Eq)]
pub struct Lookup {
    /// How many listed paths exist in the container.
    pub found: usize,
    /// Whether the identities differ from the previous lookup.
    pub changed: bool,
    /// Denied paths that are the same file as the container's shell (a
    /// multi-call binary such as busybox): denying them denies the shell.
    pub shell_denied: Vec<PathBuf>,
}

#[derive(Debug)]
struct Resolved {
    keys: Vec<ExecRuleKey>,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct ExecResolver {
    /// Kernel keys written for each container, and when they were looked up.
    keys: HashMap<String, Resolved>,
    /// Value and number of containers per written key: files on shared
    /// volumes have one identity in several containers.
    written: HashMap<ExecRuleKey, (ExecRuleValue, usize)>,
}

impl ExecResolver {
    /// Returns whether the files on a container's lists are in the kernel.
    pub fn is_resolved(&self, container_id: &str) -> bool {
        self.keys.contains_key(container_id)
    }

    /// Returns whether a container's lists were never looked up or were
    /// looked up at least [`REFRESH`] before `now`.
    pub fn is_due(&self, container_id: &str, now: Instant) -> bool {
        self.keys
            .get(container_id)
            .is_none_or(|resolved| now.duration_since(resolved.at) >= REFRESH)
    }

    /// Returns the rule written for a policy slot and file, if any.
    pub fn rule(&self, slot: u32, identity: mountns::FileIdentity) -> Option<ExecRuleValue> {
        let key = ExecRuleKey {
            slot,
            kind: RULE_IDENTITY,
            first: identity.dev,
            second: identity.ino,
        };
        self.written.get(&key).map(|(value, _)| *value)
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
    /// `pid` and writes their identities, replacing those of an earlier
    /// lookup. New keys are written before stale ones are removed, so an
    /// unchanged file is matched throughout. Blocks for a fork and a wait.
    pub fn resolve(
        &mut self,
        kernel: &mut Kernel,
        container_id: &str,
        pid: u32,
        policies: &[&SlottedPolicy],
    ) -> Result<Lookup, String> {
        let lookups = crate::enforce::exec_lookups(policies);
        let mut paths: Vec<_> = lookups.iter().map(|(_, path, _)| path.clone()).collect();
        paths.push(PathBuf::from(SHELL));
        let mut identities = mountns::stat_in_container(pid, &paths).map_err(|error| error.to_string())?;
        let shell = identities.pop().flatten();
        let mut merged: HashMap<ExecRuleKey, ExecRuleValue> = HashMap::new();
        let mut shell_denied = Vec::new();
        for ((slot, path, value), identity) in lookups.iter().zip(&identities) {
            let Some(identity) = identity else {
                continue;
            };
            if value.lists & LIST_DENY != 0 && Some(*identity) == shell && path.as_os_str() != SHELL {
                shell_denied.push(path.clone());
            }
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
        let previous = self.keys.remove(container_id).map(|resolved| resolved.keys);
        let refresh = previous.is_some();
        let mut keys = previous.unwrap_or_default();
        let mut changed = false;
        for (key, mut value) in merged {
            if refresh {
                // A later look-up only adds denied files. A file once
                // denied stays denied under any name it is moved to, and a
                // file put at an allowed path later is not trusted.
                value.lists &= LIST_DENY;
                if value.lists == 0 {
                    continue;
                }
            }
            let already = keys.contains(&key);
            let (stored, users) = self.written.entry(key).or_insert((ExecRuleValue::default(), 0));
            let before = *stored;
            merge(stored, &value);
            if !already {
                *users += 1;
                keys.push(key);
            }
            if already && *stored == before {
                continue;
            }
            changed |= refresh;
            kernel
                .exec_rules
                .insert(key, *stored, 0)
                .map_err(|error| format!("failed to write an exec rule: {error}"))?;
        }
        self.keys.insert(
            container_id.to_owned(),
            Resolved {
                keys,
                at: Instant::now(),
            },
        );
        Ok(Lookup {
            found,
            changed,
            shell_denied,
        })
    }

    /// Removes the rules of containers that are gone or no longer under an
    /// exec policy.
    pub fn retain(&mut self, kernel: &mut Kernel, wanted: &HashSet<String>) {
        let gone: Vec<String> = self.keys.keys().filter(|id| !wanted.contains(*id)).cloned().collect();
        for container_id in gone {
            let keys = self.keys.remove(&container_id).map(|resolved| resolved.keys);
            for key in keys.unwrap_or_default() {
                self.release(kernel, &key);
            }
        }
    }

    /// Drops one container's use of a kernel key, removing the key when no
    /// container uses it any more.
    fn release(&mut self, kernel: &mut Kernel, key: &ExecRuleKey) {
        let Some((_, users)) = self.written.get_mut(key) else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            self.written.remove(key);
            let _ = kernel.exec_rules.remove(key);
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
