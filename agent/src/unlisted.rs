//! Kernel entries of workloads that the runtime stopped listing while
//! their cgroups still exist.
//!
//! A runtime that restarts, or sends incomplete lists, can leave out a
//! container that still runs. Releasing its entry would let it run
//! unpoliced, so the entry stays, with the policies it had, until its
//! cgroup goes away or the runtime lists the workload again. A pod-level
//! entry stays only while a container cgroup of the pod exists: an empty
//! pod cgroup that the kubelet has not removed yet needs no policy.

use std::collections::{HashMap, HashSet};

use tracing::{info, warn};

use crate::{
    cgroups::Scan,
    cri::{ContainerInfo, PodInfo},
    enforce::Entry,
};

#[derive(Default)]
pub struct UnlistedKeeper {
    /// Cgroup ids whose entries are kept although the runtime does not list
    /// their workload.
    kept: HashSet<u64>,
}

impl UnlistedKeeper {
    /// Adds to `desired` every applied entry whose cgroup `scan` found and
    /// whose workload the runtime does not list: the container by id with
    /// its pod, or for a pod-level entry the pod by uid.
    pub fn carry_over(
        &mut self,
        applied: &HashMap<u64, Entry>,
        desired: &mut HashMap<u64, Entry>,
        scan: &Scan,
        pods: &[PodInfo],
        containers: &[ContainerInfo],
    ) {
        let mut kept = HashSet::new();
        for (cgroup_id, entry) in applied {
            if desired.contains_key(cgroup_id) || !scan.live_ids.contains(cgroup_id) {
                continue;
            }
            let identity = &entry.identity;
            let pod_has_containers = || {
                scan.containers.values().any(|cgroup| {
                    cgroup
                        .pod
                        .as_ref()
                        .is_some_and(|pod| pod.uid == identity.pod_uid)
                })
            };
            if identity.container_id.is_none() && !pod_has_containers() {
                continue;
            }
            // A container counts as listed only with its pod, because
            // without the pod's labels no policy can select it.
            let listed = match &identity.container_id {
                Some(id) => containers.iter().any(|container| {
                    &container.id == id && pods.iter().any(|pod| pod.id == container.pod_sandbox_id)
                }),
                None => pods.iter().any(|pod| pod.uid == identity.pod_uid),
            };
            if listed {
                continue;
            }
            if !self.kept.contains(cgroup_id) {
                warn!(
                    cgroup_id,
                    namespace = %identity.namespace,
                    pod = %identity.pod,
                    container_id = identity.container_id.as_deref().unwrap_or(""),
                    "the container runtime no longer lists a policed workload whose cgroup still exists; its entry stays as it was"
                );
            }
            kept.insert(*cgroup_id);
            desired.insert(*cgroup_id, entry.clone());
        }
        for cgroup_id in self.kept.difference(&kept) {
            info!(
                cgroup_id,
                "a kept workload entry follows the runtime's lists again, or its cgroup is gone"
            );
        }
        self.kept = kept;
    }

    /// Returns whether the cgroup of a kept entry is gone, so that its entry
    /// can be released now.
    pub fn any_gone(&self, scan: &Scan) -> bool {
        self.kept
            .iter()
            .any(|cgroup_id| !scan.live_ids.contains(cgroup_id))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use parapet_common::CgroupPolicies;

    use super::UnlistedKeeper;
    use crate::{
        cgroups::{ContainerCgroup, PodCgroup, Scan},
        cri::{ContainerInfo, PodInfo},
        enforce::Entry,
        identity::Identity,
    };

    fn entry(container_id: Option<&str>) -> Entry {
        Entry {
            policies: CgroupPolicies::default(),
            identity: Identity {
                namespace: "clinic".into(),
                pod: "api".into(),
                pod_uid: "uid-1".into(),
                container: container_id.map(|_| "main".into()),
                container_id: container_id.map(Into::into),
            },
            policy_names: vec!["egress".into()],
        }
    }

    #[test]
    fn keeps_unlisted_live_entries_only() {
        let applied = HashMap::from([
            (10, entry(Some("c1"))),
            (11, entry(Some("c2"))),
            (12, entry(None)),
            (13, entry(Some("c3"))),
        ]);
        let pod_cgroup = PodCgroup {
            uid: "uid-1".into(),
            path: "/kubepods/poduid-1".into(),
            id: 12,
        };
        let c1_cgroup = ContainerCgroup {
            container_id: "c1".into(),
            path: "/kubepods/poduid-1/c1".into(),
            id: 10,
            pod: Some(pod_cgroup),
        };
        let scan = Scan {
            containers: HashMap::from([("c1".to_owned(), c1_cgroup)]),
            live_ids: HashSet::from([10, 11, 12]),
        };
        let container = |id: &str, sandbox: &str| ContainerInfo {
            id: id.into(),
            pod_sandbox_id: sandbox.into(),
            name: "main".into(),
            labels: Default::default(),
            running: true,
        };
        let pod = PodInfo {
            id: "s1".into(),
            name: "api".into(),
            namespace: "clinic".into(),
            uid: "other-uid".into(),
            labels: Default::default(),
            ready: true,
        };
        // c1 is listed without its pod, c2 with it (so a policy no longer
        // selects it), the pod-level entry's pod is not listed, and c3's
        // cgroup is gone.
        let listed = [container("c1", "missing-sandbox"), container("c2", "s1")];
        let mut desired = HashMap::new();
        let mut keeper = UnlistedKeeper::default();
        keeper.carry_over(&applied, &mut desired, &scan, &[pod], &listed);
        let mut kept: Vec<u64> = desired.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![10, 12]);

        // Once the pod has no container cgroup left, its entry goes.
        let empty_pod = Scan {
            containers: HashMap::new(),
            live_ids: HashSet::from([12]),
        };
        assert!(keeper.any_gone(&empty_pod));
        let mut desired = HashMap::new();
        keeper.carry_over(&applied, &mut desired, &empty_pod, &[], &[]);
        assert!(desired.is_empty(), "{:?}", desired.keys());
    }
}
