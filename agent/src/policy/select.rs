//! Selection of the policies that apply to a workload.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use super::model::Policy;

/// Pod labels, as a policy selector reads them.
pub trait PodLabels {
    /// Returns the value of label `key`, or `None` when the pod has no such
    /// label.
    fn label(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> PodLabels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl PodLabels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A pod, or one container of a pod, that policies may apply to.
#[derive(Clone, Copy)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub pod_labels: &'a dyn PodLabels,
    /// The container's name, or `None` for the pod itself (its cgroup,
    /// which every container of the pod is under).
    pub container_name: Option<&'a str>,
}

impl Policy {
    /// Returns whether the selector's namespace and labels match a pod.
    /// A selector with neither selects nothing.
    pub fn selects_pod(&self, namespace: &str, labels: &dyn PodLabels) -> bool {
        let selector = &self.selector;
        if selector.namespace.is_none() && selector.match_labels.is_empty() {
            return false;
        }
        let namespace_matches = selector
            .namespace
            .as_deref()
            .is_none_or(|wanted| wanted == namespace);
        let labels_match = selector
            .match_labels
            .iter()
            .all(|(key, value)| labels.label(key) == Some(value.as_str()));
        namespace_matches && labels_match
    }

    /// Returns whether the selector's container list includes `name`, or
    /// true when the selector has no container list.
    pub fn selects_container(&self, name: &str) -> bool {
        match &self.selector.containers {
            None => true,
            Some(names) => names.iter().any(|selected| selected == name),
        }
    }

    /// Returns whether the policy applies to every container of the pods it
    /// selects, so that it can be put on the pod's cgroup.
    pub fn applies_to_whole_pod(&self) -> bool {
        self.selector.containers.is_none()
    }

    /// Returns whether the policy applies to `workload`: a matching pod, and
    /// for a container one that the selector lists (or any container when it
    /// lists none). For the pod itself, only a policy that applies to the
    /// whole pod.
    pub fn selects(&self, workload: &Workload) -> bool {
        if !self.selects_pod(workload.namespace, workload.pod_labels) {
            return false;
        }
        match workload.container_name {
            Some(name) => self.selects_container(name),
            None => self.applies_to_whole_pod(),
        }
    }
}

/// Returns the policies that apply to `workload`, in the order of
/// `policies`. All of them are checked for each operation, and the module
/// documentation describes how their verdicts combine.
pub fn select<'p>(policies: &'p [Policy], workload: &Workload) -> Vec<&'p Policy> {
    policies
        .iter()
        .filter(|policy| policy.selects(workload))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::policy::{Mode, Position, Selector, parse_str};

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn policy_with(selector: &str) -> Policy {
        let text = format!(
            "apiVersion: parapet.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: p}}\n\
             spec:\n  mode: enforce\n  selector: {selector}\n"
        );
        let mut policies = parse_str(&text, Path::new("p.yaml")).unwrap();
        policies.remove(0)
    }

    #[test]
    fn namespace_only_selects_every_pod_there() {
        let policy = policy_with("{namespace: clinic}");
        assert!(policy.selects_pod("clinic", &labels(&[])));
        assert!(policy.selects_pod("clinic", &labels(&[("app", "x")])));
        assert!(!policy.selects_pod("billing", &labels(&[])));
    }

    #[test]
    fn labels_must_all_match() {
        let policy = policy_with("{matchLabels: {app: records-db, tier: data}}");
        let both = labels(&[("app", "records-db"), ("tier", "data"), ("extra", "1")]);
        assert!(policy.selects_pod("any", &both));
        assert!(!policy.selects_pod("any", &labels(&[("app", "records-db")])));
        let wrong_value = labels(&[("app", "records-db"), ("tier", "web")]);
        assert!(!policy.selects_pod("any", &wrong_value));
    }

    #[test]
    fn namespace_and_labels_both_required() {
        let policy = policy_with("{namespace: clinic, matchLabels: {app: db}}");
        assert!(policy.selects_pod("clinic", &labels(&[("app", "db")])));
        assert!(!policy.selects_pod("other", &labels(&[("app", "db")])));
        assert!(!policy.selects_pod("clinic", &labels(&[("app", "web")])));
    }

    #[test]
    fn labels_from_btree_map() {
        let policy = policy_with("{matchLabels: {app: db}}");
        let pod_labels: BTreeMap<String, String> = labels(&[("app", "db")]).into_iter().collect();
        assert!(policy.selects_pod("any", &pod_labels));
    }

    #[test]
    fn container_list_limits_containers() {
        let policy = policy_with("{namespace: clinic, containers: [postgres]}");
        assert!(policy.selects_container("postgres"));
        assert!(!policy.selects_container("sidecar"));
        assert!(!policy.applies_to_whole_pod());
    }

    #[test]
    fn no_container_list_applies_to_whole_pod() {
        let policy = policy_with("{namespace: clinic}");
        assert!(policy.selects_container("anything"));
        assert!(policy.applies_to_whole_pod());
    }

    #[test]
    fn selects_workload_pod_and_containers() {
        let whole = policy_with("{namespace: clinic}");
        let postgres_only = policy_with("{namespace: clinic, containers: [postgres]}");
        let pod_labels = labels(&[]);
        let pod = Workload {
            namespace: "clinic",
            pod_labels: &pod_labels,
            container_name: None,
        };
        let postgres = Workload {
            container_name: Some("postgres"),
            ..pod
        };
        let sidecar = Workload {
            container_name: Some("sidecar"),
            ..pod
        };
        assert!(whole.selects(&pod));
        assert!(whole.selects(&postgres));
        assert!(!postgres_only.selects(&pod));
        assert!(postgres_only.selects(&postgres));
        assert!(!postgres_only.selects(&sidecar));
    }

    #[test]
    fn select_keeps_order_of_matching_policies() {
        let mut first = policy_with("{namespace: clinic}");
        first.name = "first".to_owned();
        let mut other = policy_with("{namespace: billing}");
        other.name = "other".to_owned();
        let mut last = policy_with("{matchLabels: {app: db}}");
        last.name = "last".to_owned();
        let policies = [first, other, last];
        let pod_labels = labels(&[("app", "db")]);
        let workload = Workload {
            namespace: "clinic",
            pod_labels: &pod_labels,
            container_name: Some("postgres"),
        };
        let names: Vec<&str> = select(&policies, &workload)
            .iter()
            .map(|policy| policy.name.as_str())
            .collect();
        assert_eq!(names, ["first", "last"]);
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let policy = Policy {
            name: "hand-made".to_owned(),
            source: PathBuf::new(),
            position: Position::FILE_START,
            selector: Selector::default(),
            mode: Mode::Enforce,
            filesystem: None,
            exec: None,
            network: None,
        };
        assert!(!policy.selects_pod("clinic", &labels(&[])));
    }
}
