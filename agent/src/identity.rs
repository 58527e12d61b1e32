//! Who a cgroup and a policy slot belong to, for turning kernel records into
//! events and kernel counters into labelled metrics.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::{
    cgroups::ContainerCgroup,
    cri::{ContainerInfo, PodInfo},
};

/// The workload a cgroup belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// `None` for a pod-level cgroup.
    pub container: Option<String>,
    pub container_id: Option<String>,
}

/// Default time an identity, and the kernel counters of its cgroup, stay
/// after the cgroup is removed. It is long enough for records still in the
/// ring buffer to be named and for a few Prometheus scrapes to read the
/// final counts of a short-lived pod.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(300);

/// Identities of cgroups and names of policy slots, written by the enforcer
/// and read by the event reader and the metrics.
pub struct Identities {
    retention: Duration,
    cgroups: HashMap<u64, Identity>,
    retired: VecDeque<(Instant, u64)>,
    slot_policies: HashMap<u32, String>,
    /// Incremented on every change, so that readers can cache what they
    /// derive from the identities.
    revision: u64,
}

impl Identities {
    /// Identities of removed cgroups are kept for `retention`.
    pub fn new(retention: Duration) -> Self {
        Self {
            retention,
            cgroups: HashMap::new(),
            retired: VecDeque::new(),
            slot_policies: HashMap::new(),
            revision: 0,
        }
    }

    /// Returns the count of changes so far: equal values mean that
    /// nothing changed in between.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn cgroup(&self, cgroup_id: u64) -> Option<&Identity> {
        self.cgroups.get(&cgroup_id)
    }

    /// Returns whether a cgroup is live or within its grace period.
    pub fn knows(&self, cgroup_id: u64) -> bool {
        self.cgroups.contains_key(&cgroup_id)
    }

    pub fn policy(&self, slot: u32) -> Option<&str> {
        self.slot_policies.get(&slot).map(String::as_str)
    }

    /// Replaces the live cgroup identities. Cgroups that are gone keep their
    /// identity for a grace period.
    pub fn set_cgroups(&mut self, live: HashMap<u64, Identity>) {
        self.revision += 1;
        let now = Instant::now();
        while let Some(&(since, id)) = self.retired.front() {
            if now.duration_since(since) < self.retention {
                break;
            }
            self.retired.pop_front();
            if !live.contains_key(&id) {
                self.cgroups.remove(&id);
            }
        }
        let gone: Vec<u64> = self
            .cgroups
            .keys()
            .filter(|id| !live.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if !self.retired.iter().any(|&(_, retired)| retired == id) {
                self.retired.push_back((now, id));
            }
        }
        self.cgroups.extend(live);
    }

    /// Names a policy slot. A slot keeps its name until it is reused.
    pub fn set_slot_policy(&mut self, slot: u32, policy: &str) {
        self.revision += 1;
        self.slot_policies.insert(slot, policy.to_owned());
    }
}

/// Names every cgroup of the pods the runtime listed: containers, pod
/// sandboxes and pod cgroups.
pub fn workload_identities(
    pods: &[PodInfo],
    containers: &[ContainerInfo],
    cgroups: &HashMap<String, ContainerCgroup>,
) -> HashMap<u64, Identity> {
    let pods_by_id: HashMap<&str, &PodInfo> = pods.iter().map(|pod| (pod.id.as_str(), pod)).collect();
    let pod_identity = |pod: &PodInfo| Identity {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        container: None,
        container_id: None,
    };
    let mut identities = HashMap::new();
    for pod in pods {
        if let Some(cgroup) = cgroups.get(&pod.id) {
            identities.insert(cgroup.id, pod_identity(pod));
            if let Some(pod_cgroup) = &cgroup.pod {
                identities.insert(pod_cgroup.id, pod_identity(pod));
            }
        }
    }
    for container in containers {
        let (Some(pod), Some(cgroup)) = (
            pods_by_id.get(container.pod_sandbox_id.as_str()),
            cgroups.get(&container.id),
        ) else {
            continue;
        };
        let mut identity = pod_identity(pod);
        identity.container = Some(container.name.clone());
        identity.container_id = Some(container.id.clone());
        identities.insert(cgroup.id, identity);
        if let Some(pod_cgroup) = &cgroup.pod {
            identities.entry(pod_cgroup.id).or_insert_with(|| pod_identity(pod));
        }
    }
    identities
}
