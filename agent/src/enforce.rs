//! Turning policies and the workloads on the node into kernel map entries.
//!
//! Each loaded policy gets a slot in the per-policy kernel maps. A new set
//! of policies always gets fresh slots: the new slots are written first,
//! then every cgroup entry is switched to them, and only then are the old
//! slots cleared. The kernel therefore never reads a half-written policy,
//! and a cgroup is never without one during a reload.

use std::collections::{HashMap, HashSet, VecDeque};

use parapet_common::{
    CgroupPolicies, MAX_POLICIES_PER_CGROUP, MAX_POLICY_SLOTS,
    exec::{
        CGROUP_EXEC_RESOLVED, ExecPolicy, ExecRuleKey, ExecRuleValue, LIST_ALLOW, LIST_DENY, RULE_PATH, path_hash,
    },
    file::FsPolicy,
    net::NetPolicy,
};
use tracing::{error, info, warn};

use crate::{
    cgroups::ContainerCgroup,
    cri::{ContainerInfo, PodInfo},
    identity::Identity,
    kernel::Kernel,
    policy::{self, Policy},
    readonly::Method,
};

/// A loaded policy and its kernel slot.
pub struct SlottedPolicy {
    pub policy: Policy,
    pub slot: u32,
}

/// The kernel entry wanted for one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub policies: CgroupPolicies,
    pub identity: Identity,
    /// Names of the policies, in slot order, for logs.
    pub policy_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("no free policy slot: {MAX_POLICY_SLOTS} slots are in use")]
    NoSlot,
    #[error("failed to write how many policies audit read-only mounts into kernel map FILE_AUDIT_SLOTS")]
    WriteAuditCount(#[source] aya::maps::MapError),
    #[error("failed to write policy {policy} into kernel slot {slot}")]
    WriteSlot {
        policy: String,
        slot: u32,
        #[source]
        source: aya::maps::MapError,
    },
}

pub struct Enforcer {
    free_slots: VecDeque<u32>,
    policies: Vec<SlottedPolicy>,
    /// Entries written to the kernel, by cgroup id.
    applied: HashMap<u64, Entry>,
    /// Slots of a replaced policy set still waiting to be released.
    deferred: Vec<u32>,
    /// Slots whose filesystem part is read-only in audit mode. Their
    /// number is kept in the kernel's `FILE_AUDIT_SLOTS`: while it is 0,
    /// the file syscall programs skip every successful call.
    audit_slots: HashSet<u32>,
    /// Whether `CGROUP_POLICIES` changed since `POLICY_EPOCH` was last
    /// incremented. It starts true, because an agent that stopped between
    /// the two writes may have left the kernel's cache of unpoliced cgroups stale.
    epoch_stale: bool,
}

impl Default for Enforcer {
    fn default() -> Self {
        Self::new()
    }
}

impl Enforcer {
    pub fn new() -> Self {
        Self {
            free_slots: (0..MAX_POLICY_SLOTS).collect(),
            policies: Vec::new(),
            applied: HashMap::new(),
            deferred: Vec::new(),
            audit_slots: HashSet::new(),
            epoch_stale: true,
        }
    }

    /// Starts from the state an earlier agent left in pinned maps: its
    /// slots are not reused before they are released after the first
    /// successful `apply`, and its cgroup entries count as applied, so that
    /// `apply` rewrites those still wanted and removes the others. Slots
    /// that nothing refers to are not free either: the caller releases
    /// them with `release_slots` before it installs policies.
    pub fn adopting(adopted: &crate::adopt::Adopted) -> Self {
        let mut enforcer = Self::new();
        enforcer
            .free_slots
            .retain(|slot| !adopted.slots.contains(slot) && !adopted.unreferenced.contains(slot));
        enforcer.deferred = adopted.slots.iter().copied().collect();
        enforcer.audit_slots = adopted.audit_slots.clone();
        for (cgroup_id, policies) in &adopted.entries {
            let entry = Entry {
                policies: *policies,
                identity: Identity::default(),
                policy_names: Vec::new(),
            };
            enforcer.applied.insert(*cgroup_id, entry);
        }
        enforcer
    }

    /// Gives adopted entries, whose identity the pinned maps do not keep,
    /// the container id and pod uid their cgroup names, so that an entry of
    /// a workload the runtime no longer lists is kept like any other.
    pub fn name_adopted(&mut self, cgroups: &HashMap<String, ContainerCgroup>) {
        for (cgroup_id, entry) in &mut self.applied {
            if entry.identity != Identity::default() {
                continue;
            }
            for cgroup in cgroups.values() {
                if cgroup.id == *cgroup_id {
                    entry.identity.container_id = Some(cgroup.container_id.clone());
                    entry.identity.pod_uid = cgroup.pod.as_ref().map(|pod| pod.uid.clone()).unwrap_or_default();
                    break;
                }
                if let Some(pod) = cgroup.pod.as_ref().filter(|pod| pod.id == *cgroup_id) {
                    entry.identity.pod_uid = pod.uid.clone();
                    break;
                }
            }
        }
    }

    /// Keeps replaced slots until the next successful `apply`.
    pub fn defer_release(&mut self, slots: Vec<u32>) {
        self.deferred.extend(slots);
    }

    pub fn take_deferred_release(&mut self) -> Option<Vec<u32>> {
        (!self.deferred.is_empty()).then(|| std::mem::take(&mut self.deferred))
    }

    pub fn policies(&self) -> &[SlottedPolicy] {
        &self.policies
    }

    pub fn applied(&self) -> &HashMap<u64, Entry> {
        &self.applied
    }

    /// Writes a new set of policies into fresh slots and returns the slots
    /// of the set it replaces, which the caller releases with
    /// `release_slots` once the cgroup entries point at the new ones.
    pub fn install_policies(
        &mut self,
        kernel: &mut Kernel,
        policies: Vec<Policy>,
    ) -> Result<Vec<u32>, EnforceError> {
        if policies.len() > self.free_slots.len() {
            return Err(EnforceError::NoSlot);
        }
        let mut installed = Vec::with_capacity(policies.len());
        let mut audits = Vec::new();
        for policy in policies {
            let slot = self.free_slots.pop_front().ok_or(EnforceError::NoSlot)?;
            let value = policy::net_policy(&policy);
            if let Err(source) = kernel.net_policies.set(slot, value, 0) {
                self.free_slots.push_front(slot);
                for SlottedPolicy { slot, .. } in &installed {
                    self.free_slots.push_front(*slot);
                }
                return Err(EnforceError::WriteSlot {
                    policy: policy.name.clone(),
                    slot,
                    source,
                });
            }
            let filesystem = FsPolicy {
                mode: policy.mode as u32,
                read_only: u32::from(policy.filesystem.as_ref().is_some_and(|fs| fs.read_only)),
            };
            if let Err(source) = kernel.fs_policies.set(slot, filesystem, 0) {
                return Err(EnforceError::WriteSlot {
                    policy: policy.name.clone(),
                    slot,
                    source,
                });
            }
            if audits_read_only(&filesystem) {
                audits.push(slot);
            }
            if let Err(source) = install_exec(kernel, slot, &policy) {
                return Err(EnforceError::WriteSlot {
                    policy: policy.name.clone(),
                    slot,
                    source,
                });
            }
            if let Err(error) = kernel.policy_names.insert(slot, crate::adopt::encode_name(&policy.name), 0) {
                warn!(slot, policy = %policy.name, error = %error, "failed to record a policy name for a later agent");
            }
            installed.push(SlottedPolicy { policy, slot });
        }
        // Written before any cgroup entry refers to the new slots, so that
        // no audit of theirs is skipped. The slots of a failed install are
        // not counted, because no entry ever refers to them.
        let count = self.audit_slots.len() + audits.len();
        kernel
            .file_audit_slots
            .set(0, count as u32, 0)
            .map_err(EnforceError::WriteAuditCount)?;
        self.audit_slots.extend(audits);
        let old = std::mem::replace(&mut self.policies, installed);
        Ok(old.into_iter().map(|slotted| slotted.slot).collect())
    }

    /// Clears slots no cgroup entry refers to any more and makes them free
    /// again, at the back of the queue so that they are reused last. A slot
    /// that an entry still refers to, such as the entry of a workload the
    /// runtime no longer lists, waits for a later call.
    pub fn release_slots(&mut self, kernel: &mut Kernel, slots: Vec<u32>) {
        let referenced: HashSet<u32> = self
            .applied
            .values()
            .flat_map(|entry| {
                let count = (entry.policies.count as usize).min(MAX_POLICIES_PER_CGROUP);
                entry.policies.slots[..count].iter().copied()
            })
            .collect();
        let (still_referenced, released): (Vec<u32>, Vec<u32>) =
            slots.into_iter().partition(|slot| referenced.contains(slot));
        self.deferred.extend(still_referenced);
        for &slot in &released {
            if let Err(error) = kernel.net_policies.set(slot, NetPolicy::default(), 0) {
                warn!(slot, error = %error, "failed to clear a released policy slot");
            }
            match kernel.fs_policies.set(slot, FsPolicy::default(), 0) {
                Ok(()) => {
                    self.audit_slots.remove(&slot);
                }
                Err(error) => warn!(slot, error = %error, "failed to clear a released policy slot"),
            }
            if let Err(error) = kernel.exec_policies.set(slot, ExecPolicy::default(), 0) {
                warn!(slot, error = %error, "failed to clear a released policy slot");
            }
        }
        // One pass over the exec rules serves every released slot. A pass
        // per slot reads every rule again for each one, a million reads
        // for 1,000 slots and 1,000 rules.
        let released_set: HashSet<u32> = released.iter().copied().collect();
        let mut keys = Vec::new();
        let mut keys_unread = false;
        if !released.is_empty() {
            for key in kernel.exec_rules.keys() {
                match key {
                    Ok(key) if released_set.contains(&key.slot) => keys.push(key),
                    Ok(_) => {}
                    Err(error) => {
                        keys_unread = true;
                        warn!(error = %error, "failed to list the exec rules of released policy slots");
                    }
                }
            }
        }
        let mut rules_left = HashSet::new();
        for key in keys {
            if let Err(error) = kernel.exec_rules.remove(&key) {
                warn!(slot = key.slot, error = %error, "failed to remove an exec rule of a released policy slot");
                rules_left.insert(key.slot);
            }
        }
        for slot in released {
            // A policy written into a slot with rules left over would
            // inherit them, so such a slot waits for a later release.
            if keys_unread || rules_left.contains(&slot) {
                self.deferred.push(slot);
            } else {
                self.free_slots.push_back(slot);
            }
        }
        // A count left too high only keeps the programs reading the
        // registers of successful calls.
        if let Err(error) = self.write_audit_count(kernel) {
            warn!(error = %error, "failed to lower the count of policies that audit read-only mounts");
        }
    }

    fn write_audit_count(&self, kernel: &mut Kernel) -> Result<(), aya::maps::MapError> {
        kernel.file_audit_slots.set(0, self.audit_slots.len() as u32, 0)
    }

    /// Brings the kernel's cgroup entries in line with `desired`: writes new
    /// and changed entries, then removes entries no longer wanted. Returns
    /// the number of entries that failed to be written.
    pub fn apply(&mut self, kernel: &mut Kernel, desired: HashMap<u64, Entry>) -> usize {
        let mut failures = 0;
        for (cgroup_id, entry) in &desired {
            if self.applied.get(cgroup_id) == Some(entry) {
                continue;
            }
            match kernel.cgroup_policies.insert(cgroup_id, entry.policies, 0) {
                Ok(()) => {
                    // Incremented at once, not after the pass: the pass can
                    // take long, the agent can die during it, and the log
                    // line below must not come before the entry covers
                    // the cgroups nested below this one.
                    self.epoch_stale = true;
                    if !self.settle_epoch(kernel) {
                        failures += 1;
                    }
                    info!(
                        cgroup_id,
                        namespace = %entry.identity.namespace,
                        pod = %entry.identity.pod,
                        container = entry.identity.container.as_deref().unwrap_or(""),
                        container_id = entry.identity.container_id.as_deref().unwrap_or(""),
                        policies = ?entry.policy_names,
                        "workload enforced"
                    );
                    self.applied.insert(*cgroup_id, entry.clone());
                }
                Err(error) => {
                    failures += 1;
                    error!(
                        cgroup_id,
                        namespace = %entry.identity.namespace,
                        pod = %entry.identity.pod,
                        error = %error,
                        "failed to write the policy entry of a workload; will retry"
                    );
                }
            }
        }
        let stale: Vec<u64> = self
            .applied
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for cgroup_id in stale {
            match kernel.cgroup_policies.remove(&cgroup_id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                    let entry = self.applied.remove(&cgroup_id);
                    if let Some(entry) = entry {
                        info!(
                            cgroup_id,
                            namespace = %entry.identity.namespace,
                            pod = %entry.identity.pod,
                            container = entry.identity.container.as_deref().unwrap_or(""),
                            "workload released"
                        );
                    }
                }
                Err(error) => {
                    failures += 1;
                    warn!(cgroup_id, error = %error, "failed to remove a policy entry; will retry");
                }
            }
        }
        if !self.settle_epoch(kernel) {
            failures += 1;
        }
        failures
    }

    /// Increments `POLICY_EPOCH` if `CGROUP_POLICIES` may have changed
    /// since it last was, and returns whether the kernel's cache of
    /// unpoliced cgroups is now current.
    pub fn settle_epoch(&mut self, kernel: &mut Kernel) -> bool {
        if !self.epoch_stale {
            return true;
        }
        match next_epoch(kernel) {
            Ok(()) => self.epoch_stale = false,
            Err(error) => error!(
                error = %error,
                "failed to increment the policy epoch; cgroups the kernel remembers as unpoliced stay so until a retry succeeds"
            ),
        }
        !self.epoch_stale
    }

    /// Returns whether `POLICY_EPOCH` still has to be incremented.
    pub fn epoch_stale(&self) -> bool {
        self.epoch_stale
    }
}

/// Increments `POLICY_EPOCH`, which makes the kernel forget every cgroup it
/// remembered as covered by no policy.
fn next_epoch(kernel: &mut Kernel) -> Result<(), aya::maps::MapError> {
    let epoch = kernel.policy_epoch.get(&0, 0)?;
    kernel.policy_epoch.set(0, epoch.wrapping_add(1), 0)
}

/// Computes the kernel entries for the workloads on the node.
///
/// A pod selected by a policy without a container list gets a pod-level
/// entry, so that a container starting in it is covered through its
/// ancestor from its first instruction. Each container selected by any
/// policy gets its own entry with every policy that applies to it,
/// pod-level ones included, because the kernel stops at the nearest entry.
/// `exec_resolved` contains the containers whose exec list identities are in
/// the kernel; their entries get `CGROUP_EXEC_RESOLVED`.
pub fn desired_entries(
    policies: &[SlottedPolicy],
    pods: &[PodInfo],
    containers: &[ContainerInfo],
    cgroups: &HashMap<String, ContainerCgroup>,
    exec_resolved: &HashSet<String>,
) -> HashMap<u64, Entry> {
    let mut entries = HashMap::new();
    let mut pod_cgroups = HashMap::new();
    for cgroup in cgroups.values() {
        if let Some(pod) = &cgroup.pod {
            pod_cgroups.insert(pod.uid.as_str(), pod);
        }
    }
    let pods_by_id: HashMap<&str, &PodInfo> = pods.iter().map(|pod| (pod.id.as_str(), pod)).collect();
    for pod in pods {
        let labels = &pod.labels;
        let whole_pod: Vec<&SlottedPolicy> = policies
            .iter()
            .filter(|p| p.policy.selects_pod(&pod.namespace, labels) && p.policy.applies_to_whole_pod())
            .collect();
        if whole_pod.is_empty() {
            continue;
        }
        let Some(pod_cgroup) = pod_cgroups.get(pod.uid.as_str()) else {
            continue;
        };
        let identity = Identity {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container: None,
            container_id: None,
        };
        entries.insert(pod_cgroup.id, entry_for(&whole_pod, identity));
    }
    let mut seen_containers = HashSet::new();
    for container in containers {
        let Some(pod) = pods_by_id.get(container.pod_sandbox_id.as_str()) else {
            continue;
        };
        let Some(cgroup) = cgroups.get(&container.id) else {
            continue;
        };
        let labels = &pod.labels;
        let applying: Vec<&SlottedPolicy> = policies
            .iter()
            .filter(|p| {
                p.policy.selects_pod(&pod.namespace, labels)
                    && p.policy.selects_container(&container.name)
            })
            .collect();
        if applying.is_empty() || !seen_containers.insert(container.id.as_str()) {
            continue;
        }
        let identity = Identity {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container: Some(container.name.clone()),
            container_id: Some(container.id.clone()),
        };
        let mut entry = entry_for(&applying, identity);
        if exec_resolved.contains(&container.id) {
            entry.policies.flags |= CGROUP_EXEC_RESOLVED;
        }
        entries.insert(cgroup.id, entry);
    }
    entries
}

fn entry_for(policies: &[&SlottedPolicy], identity: Identity) -> Entry {
    if policies.len() > MAX_POLICIES_PER_CGROUP {
        // NOTE: only the first MAX_POLICIES_PER_CGROUP policies reach the
        // kernel; the rest are reported here and not enforced.
        error!(
            namespace = %identity.namespace,
            pod = %identity.pod,
            selected = policies.len(),
            max = MAX_POLICIES_PER_CGROUP,
            ignored = ?policies[MAX_POLICIES_PER_CGROUP..].iter().map(|p| &p.policy.name).collect::<Vec<_>>(),
            "more policies select this workload than the kernel entry can hold"
        );
    }
    let mut value = CgroupPolicies::default();
    let mut policy_names = Vec::new();
    for (index, slotted) in policies.iter().take(MAX_POLICIES_PER_CGROUP).enumerate() {
        value.slots[index] = slotted.slot;
        value.count += 1;
        policy_names.push(slotted.policy.name.clone());
    }
    Entry {
        policies: value,
        identity,
        policy_names,
    }
}

/// Returns the running containers that a `readOnly: true` policy selects,
/// with the paths that stay writable under their policies.
///
/// With [`Method::Mounts`] only enforce-mode policies make targets, because
/// that backend can only block and never remounts for an audit. With
/// [`Method::Lsm`] audit-mode policies make targets too: the LSM programs
/// let a mutation through and report it when its mount's entry is in audit
/// mode.
pub fn read_only_targets(
    policies: &[SlottedPolicy],
    pods: &[PodInfo],
    containers: &[ContainerInfo],
    method: Method,
) -> Vec<crate::readonly::Target> {
    let pods_by_id: HashMap<&str, &PodInfo> = pods.iter().map(|pod| (pod.id.as_str(), pod)).collect();
    let mut targets = Vec::new();
    for container in containers.iter().filter(|container| container.running) {
        let Some(pod) = pods_by_id.get(container.pod_sandbox_id.as_str()) else {
            continue;
        };
        let applying_slotted: Vec<&SlottedPolicy> = policies
            .iter()
            .filter(|slotted| {
                slotted.policy.selects_pod(&pod.namespace, &pod.labels)
                    && slotted.policy.selects_container(&container.name)
            })
            .collect();
        let applying: Vec<&Policy> = applying_slotted.iter().map(|slotted| &slotted.policy).collect();
        let first_read_only_slot = |mode: policy::Mode| {
            applying_slotted
                .iter()
                .find(|slotted| {
                    slotted.policy.mode == mode && slotted.policy.filesystem.as_ref().is_some_and(|fs| fs.read_only)
                })
                .map_or(0, |slotted| slotted.slot)
        };
        let Some(plan) = policy::read_only_plan(&applying) else {
            continue;
        };
        if plan.enforced_writable_paths.is_none() && method == Method::Mounts {
            // Only audit-mode policies make it read-only: nothing to block.
            continue;
        }
        targets.push(crate::readonly::Target {
            container_id: container.id.clone(),
            identity: Identity {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                pod_uid: pod.uid.clone(),
                container: Some(container.name.clone()),
                container_id: Some(container.id.clone()),
            },
            enforced_writable: plan.enforced_writable_paths,
            audited_writable: plan.writable_paths,
            policies: plan.policies,
            slot: first_read_only_slot(policy::Mode::Enforce),
            audit_slot: first_read_only_slot(policy::Mode::Audit),
            cgroup_id: None,
        });
    }
    targets
}

/// Returns whether a slot's filesystem part makes successful mutations
/// audits.
pub fn audits_read_only(filesystem: &FsPolicy) -> bool {
    filesystem.read_only != 0 && filesystem.mode == parapet_common::Mode::Audit as u32
}

/// Writes a policy's exec section into its slot: the policy header and the
/// path hashes of its deny list. Identities of listed files differ per
/// container and are written by `exec_identity_rules`.
fn install_exec(kernel: &mut Kernel, slot: u32, policy: &Policy) -> Result<(), aya::maps::MapError> {
    let Some(exec) = &policy.exec else {
        return kernel.exec_policies.set(slot, ExecPolicy::default(), 0);
    };
    for (index, path) in exec.deny.iter().enumerate() {
        let key = ExecRuleKey {
            slot,
            kind: RULE_PATH,
            first: path_hash(path.as_os_str().as_encoded_bytes()),
            second: 0,
        };
        let value = ExecRuleValue {
            lists: LIST_DENY,
            allow_index: 0,
            deny_index: index as u32,
        };
        kernel.exec_rules.insert(key, value, 0)?;
    }
    let header = ExecPolicy {
        mode: policy.mode as u32,
        restricted: 1,
        has_allow: u32::from(exec.allow.is_some()),
        reserved: 0,
    };
    kernel.exec_policies.set(slot, header, 0)
}

/// Returns the paths to look up in a container for its exec lists, and the rule
/// value each identity gets per slot.
pub fn exec_lookups(policies: &[&SlottedPolicy]) -> Vec<(u32, std::path::PathBuf, ExecRuleValue)> {
    let mut lookups = Vec::new();
    for slotted in policies {
        let Some(exec) = &slotted.policy.exec else {
            continue;
        };
        for (index, path) in exec.allow.iter().flatten().enumerate() {
            let value = ExecRuleValue {
                lists: LIST_ALLOW,
                allow_index: index as u32,
                deny_index: 0,
            };
            lookups.push((slotted.slot, path.clone(), value));
        }
        for (index, path) in exec.deny.iter().enumerate() {
            let value = ExecRuleValue {
                lists: LIST_DENY,
                allow_index: 0,
                deny_index: index as u32,
            };
            lookups.push((slotted.slot, path.clone(), value));
        }
    }
    lookups
}

/// Returns the running containers whose policies have an exec section, with those
/// policies.
pub fn exec_targets<'a>(
    policies: &'a [SlottedPolicy],
    pods: &[PodInfo],
    containers: &[ContainerInfo],
) -> Vec<(String, Vec<&'a SlottedPolicy>)> {
    let pods_by_id: HashMap<&str, &PodInfo> = pods.iter().map(|pod| (pod.id.as_str(), pod)).collect();
    let mut targets = Vec::new();
    for container in containers.iter().filter(|container| container.running) {
        let Some(pod) = pods_by_id.get(container.pod_sandbox_id.as_str()) else {
            continue;
        };
        let applying: Vec<&SlottedPolicy> = policies
            .iter()
            .filter(|slotted| {
                slotted.policy.exec.is_some()
                    && slotted.policy.selects_pod(&pod.namespace, &pod.labels)
                    && slotted.policy.selects_container(&container.name)
            })
            .collect();
        if !applying.is_empty() {
            targets.push((container.id.clone(), applying));
        }
    }
    targets
}
