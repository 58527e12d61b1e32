//! The workload and policy of a record, looked up in the identities once
//! per cgroup and policy slot and kept as JSON fragments, so that naming a
//! record under a flood neither allocates nor escapes them again.

use std::{collections::HashMap, sync::Arc};

use super::line::{push_json_opt_str, push_json_str};
use crate::identity::Identities;

/// The workload fields of an event.
pub struct Workload {
    /// The `namespace`, `pod`, `pod_uid`, `container` and `container_id`
    /// members of the JSON line, without a leading or trailing comma.
    pub json: Box<[u8]>,
    pub namespace: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    pub container: Option<Arc<str>>,
}

/// The policy field of an event.
pub struct Policy {
    /// The JSON value: the name as a string, or `null`.
    pub json: Box<[u8]>,
    pub name: Option<Arc<str>>,
}

/// Entries of each map kept before the cache starts again empty. Records
/// of many short-lived cgroups could otherwise grow it between two changes
/// of the identities.
const MAX_ENTRIES: usize = 4096;

/// Names derived from one revision of [`Identities`].
#[derive(Default)]
pub struct NameCache {
    revision: u64,
    /// Keyed by the record's cgroup and the cgroup whose policy applied,
    /// because an unknown cgroup is named after the policed one.
    workloads: HashMap<(u64, u64), Workload>,
    policies: HashMap<u32, Policy>,
}

impl NameCache {
    /// Returns the workload and policy of a record, from the cache unless
    /// `identities` changed since it was filled.
    pub fn lookup(
        &mut self,
        identities: &Identities,
        cgroup_id: u64,
        policed_cgroup_id: u64,
        policy_slot: u32,
    ) -> (&Workload, &Policy) {
        let full = self.workloads.len() >= MAX_ENTRIES || self.policies.len() >= MAX_ENTRIES;
        if self.revision != identities.revision() || full {
            self.workloads.clear();
            self.policies.clear();
            self.revision = identities.revision();
        }
        let workload = self
            .workloads
            .entry((cgroup_id, policed_cgroup_id))
            .or_insert_with(|| workload(identities, cgroup_id, policed_cgroup_id));
        let policy = self
            .policies
            .entry(policy_slot)
            .or_insert_with(|| policy(identities, policy_slot));
        (workload, policy)
    }
}

/// Names the workload of a cgroup, or of the policed cgroup when the
/// cgroup itself is unknown. Empty namespace, pod and pod UID are `null`.
fn workload(identities: &Identities, cgroup_id: u64, policed_cgroup_id: u64) -> Workload {
    let identity = identities
        .cgroup(cgroup_id)
        .or_else(|| identities.cgroup(policed_cgroup_id))
        .cloned()
        .unwrap_or_default();
    let non_empty = |text: &str| (!text.is_empty()).then(|| Arc::<str>::from(text));
    let namespace = non_empty(&identity.namespace);
    let pod = non_empty(&identity.pod);
    let pod_uid = non_empty(&identity.pod_uid);
    let container = identity.container.as_deref().map(Arc::<str>::from);
    let members = [
        ("namespace", namespace.as_deref()),
        ("pod", pod.as_deref()),
        ("pod_uid", pod_uid.as_deref()),
        ("container", container.as_deref()),
        ("container_id", identity.container_id.as_deref()),
    ];
    let mut json = Vec::new();
    for (index, (key, value)) in members.into_iter().enumerate() {
        if index > 0 {
            json.push(b',');
        }
        push_json_str(&mut json, key);
        json.push(b':');
        push_json_opt_str(&mut json, value);
    }
    Workload { json: json.into_boxed_slice(), namespace, pod, container }
}

fn policy(identities: &Identities, slot: u32) -> Policy {
    let name = identities.policy(slot).map(Arc::<str>::from);
    let mut json = Vec::new();
    push_json_opt_str(&mut json, name.as_deref());
    Policy { json: json.into_boxed_slice(), name }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::Identity;

    fn pod(name: &str) -> Identity {
        Identity { namespace: "clinic".to_owned(), pod: name.to_owned(), ..Identity::default() }
    }

    #[test]
    fn cache_follows_identity_changes() {
        let mut identities = Identities::new(Duration::from_secs(60));
        identities.set_cgroups(HashMap::from([(7, pod("api-0"))]));
        identities.set_slot_policy(1, "egress");
        let mut cache = NameCache::default();

        let (workload, policy) = cache.lookup(&identities, 7, 7, 1);
        assert_eq!(workload.pod.as_deref(), Some("api-0"));
        assert_eq!(&*policy.json, br#""egress""#);

        identities.set_cgroups(HashMap::from([(7, pod("api-1"))]));
        identities.set_slot_policy(1, "egress-v2");
        let (workload, policy) = cache.lookup(&identities, 7, 7, 1);
        assert_eq!(workload.pod.as_deref(), Some("api-1"));
        assert_eq!(policy.name.as_deref(), Some("egress-v2"));
    }

    #[test]
    fn unknown_cgroup_and_slot_are_null() {
        let identities = Identities::new(Duration::from_secs(60));
        let mut cache = NameCache::default();
        let (workload, policy) = cache.lookup(&identities, 7, 7, 1);
        let expected = br#""namespace":null,"pod":null,"pod_uid":null,"container":null,"container_id":null"#;
        assert_eq!(&*workload.json, expected);
        assert!(workload.namespace.is_none());
        assert_eq!(&*policy.json, b"null");
    }
}
