//! Offline checks of the manifests in `deploy/`, run by `cargo xtask test`:
//!
//! - the alert rules load in `promtool` and pass their unit tests;
//! - the PrometheusRule carries the same groups as the rules file;
//! - every manifest validates against the Kubernetes JSON schemas
//!   (kubernetes-validate, strict, in a virtual environment under
//!   `target/`). It has no schema for custom resources, so the PodMonitor
//!   and PrometheusRule get a field check of their own here;
//! - the objects refer to each other correctly (ServiceAccount, ConfigMap,
//!   ports, labels, the agent's flags);
//! - every policy in the ConfigMap passes `parapet policy check`.
//!
//! Each check prints one `deploy: PASS` or `deploy: FAIL` line.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize as _;
use serde_yaml::Value;

/// The kubernetes-validate release installed into the virtual environment.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Kubernetes versions whose schemas the manifests must satisfy: an older
/// release still in wide use, and the newest that kubernetes-validate
/// 1.37.0 has schemas for.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Kinds that kubernetes-validate has no schema for; checked here instead.
const CUSTOM_KINDS: [&str; 2] = ["PodMonitor", "PrometheusRule"];

/// The `job` label the alert rules select the agents' series by.
const ALERT_JOB: &str = "parapet";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub passed: u64,
    /// The checks that failed, each named `deploy: NAME`.
    pub failed: Vec<String>,
}

impl Outcome {
    /// Prints one result line and counts it.
    fn record(&mut self, name: &str, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                println!("deploy: PASS {name}");
                self.passed += 1;
            }
            Err(error) => {
                println!("deploy: FAIL {name}: {error:#}");
                self.failed.push(format!("deploy: {name}"));
            }
        }
    }
}

/// Runs every check on `root/deploy`, with `parapet` as the agent binary.
pub fn run(root: &Path, parapet: &Path) -> Outcome {
    let deploy = root.join("deploy");
    let mut outcome = Outcome::default();
    outcome.record(
        "alert rules load in promtool",
        promtool_check_rules(&deploy),
    );
    outcome.record("alert rule unit tests pass", promtool_test_rules(&deploy));
    let manifests = match load_manifests(&deploy) {
        Ok(manifests) => manifests,
        Err(error) => {
            outcome.record("manifests parse as YAML", Err(error));
            return outcome;
        }
    };
    outcome.record(
        "PrometheusRule has the groups of the rules file",
        prometheus_rule_matches_rules_file(&deploy, &manifests),
    );
    match kubernetes_validate(root) {
        Ok(program) => {
            for version in KUBERNETES_VERSIONS {
                outcome.record(
                    &format!("manifests validate against the Kubernetes {version} schemas"),
                    validate_schemas(&program, &manifests, version),
                );
            }
        }
        Err(error) => outcome.record("kubernetes-validate is installed", Err(error)),
    }
    outcome.record(
        "PodMonitor fields and target",
        check_pod_monitor(&manifests),
    );
    outcome.record("PrometheusRule fields", check_prometheus_rule(&manifests));
    outcome.record(
        "DaemonSet refers to existing objects",
        check_daemonset_references(&manifests),
    );
    outcome.record(
        "DaemonSet passes only flags the agent has",
        check_agent_flags(&manifests, parapet),
    );
    outcome.record(
        "example policies pass parapet policy check",
        check_policies(root, &manifests, parapet),
    );
    outcome
}

/// One YAML document of a manifest file.
struct Manifest {
    file: PathBuf,
    value: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
}

/// Reads every document of the `*.yaml` files directly in `deploy`.
fn load_manifests(deploy: &Path) -> anyhow::Result<Vec<Manifest>> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy)
        .with_context(|| format!("failed to read {}", deploy.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| {
        path.extension()
            .is_some_and(|extension| extension == "yaml")
    });
    files.sort();
    ensure!(!files.is_empty(), "no *.yaml files in {}", deploy.display());
    let mut manifests = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file)
            .with_context(|| format!("failed to read {}", file.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .with_context(|| format!("invalid YAML in {}", file.display()))?;
            if !value.is_null() {
                manifests.push(Manifest {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    Ok(manifests)
}

/// Returns the one manifest of `kind`, failing when there is none or more.
fn only<'a>(manifests: &'a [Manifest], kind: &str) -> anyhow::Result<&'a Manifest> {
    let mut found = manifests.iter().filter(|manifest| manifest.kind() == kind);
    let first = found
        .next()
        .with_context(|| format!("no {kind} in deploy/"))?;
    ensure!(found.next().is_none(), "more than one {kind} in deploy/");
    Ok(first)
}

/// Follows `path` through nested mappings.
fn lookup<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

fn lookup_str<'a>(value: &'a Value, path: &[&str]) -> anyhow::Result<&'a str> {
    lookup(value, path)
        .and_then(Value::as_str)
        .with_context(|| format!("{} is missing or not a string", path.join(".")))
}

fn run_output(command: &mut Command) -> anyhow::Result<(bool, String)> {
    let output = command
        .output()
        .with_context(|| format!("failed to start {command:?}"))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

fn promtool_check_rules(deploy: &Path) -> anyhow::Result<()> {
    let (success, output) = run_output(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(deploy.join("alerts/parapet.rules.yaml"))
            .arg(deploy.join("alerts/tests/require-lsm.rules.yaml")),
    )?;
    ensure!(success, "promtool check rules failed:\n{output}");
    Ok(())
}

fn promtool_test_rules(deploy: &Path) -> anyhow::Result<()> {
    let (success, output) = run_output(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(deploy.join("alerts/tests/parapet.rules.test.yaml")),
    )?;
    ensure!(success, "promtool test rules failed:\n{output}");
    Ok(())
}

fn prometheus_rule_matches_rules_file(deploy: &Path, manifests: &[Manifest]) -> anyhow::Result<()> {
    let path = deploy.join("alerts/parapet.rules.yaml");
    let text =
        fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
    let rules: Value = serde_yaml::from_str(&text)
        .with_context(|| format!("invalid YAML in {}", path.display()))?;
    let rule = only(manifests, "PrometheusRule")?;
    compare_groups(
        rules
            .get("groups")
            .context("the rules file has no groups")?,
        lookup(&rule.value, &["spec", "groups"])
            .context("the PrometheusRule has no spec.groups")?,
    )
    .with_context(|| {
        format!(
            "{} differs from {}; copy the groups over",
            rule.file.display(),
            path.display()
        )
    })
}

/// Compares two `groups` lists and names the first group that differs.
fn compare_groups(expected: &Value, found: &Value) -> anyhow::Result<()> {
    let (Some(expected), Some(found)) = (expected.as_sequence(), found.as_sequence()) else {
        bail!("groups is not a list");
    };
    for (index, group) in expected.iter().enumerate() {
        let name = group.get("name").and_then(Value::as_str).unwrap_or("?");
        match found.get(index) {
            Some(other) if other == group => {}
            Some(_) => bail!("group {index} ({name}) differs"),
            None => bail!("group {index} ({name}) is missing"),
        }
    }
    ensure!(
        found.len() == expected.len(),
        "{} groups where the rules file has {}",
        found.len(),
        expected.len()
    );
    Ok(())
}

/// Returns the kubernetes-validate program of a virtual environment under
/// `target/`, creating the environment with the pinned release if needed.
fn kubernetes_validate(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join(format!(
        "target/kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}"
    ));
    let program = venv.join("bin/kubernetes-validate");
    let works = |program: &Path| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if works(&program) {
        return Ok(program);
    }
    eprintln!(
        "deploy: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    crate::setup::run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    crate::setup::run_command(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            )),
    )?;
    ensure!(
        works(&program),
        "{} does not run after installing it",
        program.display()
    );
    Ok(program)
}

/// Validates every manifest file strictly (unknown fields are errors)
/// against the schemas of one Kubernetes `version`. kubernetes-validate
/// reads the schemas from its own package, so this needs no network.
fn validate_schemas(program: &Path, manifests: &[Manifest], version: &str) -> anyhow::Result<()> {
    let files: BTreeSet<&Path> = manifests
        .iter()
        .map(|manifest| manifest.file.as_path())
        .collect();
    let (success, output) = run_output(
        Command::new(program)
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(&files),
    )?;
    ensure!(success, "kubernetes-validate failed:\n{output}");
    let unvalidated = kinds_without_schema(&output);
    let expected: BTreeSet<String> = manifests
        .iter()
        .map(Manifest::kind)
        .filter(|kind| CUSTOM_KINDS.contains(kind))
        .map(str::to_owned)
        .collect();
    ensure!(
        unvalidated == expected,
        "kubernetes-validate skipped the kinds {unvalidated:?}, expected it to skip only {expected:?}:\n{output}"
    );
    Ok(())
}

/// Returns the kinds that kubernetes-validate reported having no schema
/// for, from lines such as `WARN FILE Couldn't find schema for kind
/// PodMonitor with api version monitoring.coreos.com/v1 ...`.
fn kinds_without_schema(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|line| {
            line.split_once("Couldn't find schema for kind ")
                .map(|(_, rest)| rest)
        })
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Fields of monitoring.coreos.com/v1 PodMonitor that these manifests may
/// use: a subset of those in the PodMonitor API reference of OKD 4.14
/// (docs.okd.io, "podmonitor-monitoring-coreos-com-v1"). A field outside
/// the lists fails the check; add it here when you start using it.
const POD_MONITOR_SPEC_FIELDS: &[&str] = &[
    "jobLabel",
    "podTargetLabels",
    "selector",
    "namespaceSelector",
    "podMetricsEndpoints",
    "sampleLimit",
    "labelLimit",
    "attachMetadata",
];
const POD_METRICS_ENDPOINT_FIELDS: &[&str] = &[
    "port",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
];
const RELABEL_CONFIG_FIELDS: &[&str] = &[
    "sourceLabels",
    "separator",
    "targetLabel",
    "regex",
    "modulus",
    "replacement",
    "action",
];
/// Fields of a monitoring.coreos.com/v1 PrometheusRule's `spec` and
/// groups; promtool checks the rules themselves.
const PROMETHEUS_RULE_SPEC_FIELDS: &[&str] = &["groups"];
const RULE_GROUP_FIELDS: &[&str] = &[
    "name",
    "interval",
    "rules",
    "limit",
    "partial_response_strategy",
];

/// Fails on a key of `value` (a mapping) that is not in `allowed`.
fn known_fields(value: &Value, allowed: &[&str], at: &str) -> anyhow::Result<()> {
    let mapping = value
        .as_mapping()
        .with_context(|| format!("{at} is not a mapping"))?;
    for key in mapping.keys() {
        let key = key
            .as_str()
            .with_context(|| format!("{at} has a key that is not a string"))?;
        ensure!(allowed.contains(&key), "{at}.{key} is not a known field");
    }
    Ok(())
}

/// Checks the object header every custom resource needs.
fn check_header(manifest: &Manifest, kind: &str) -> anyhow::Result<()> {
    let api_version = lookup_str(&manifest.value, &["apiVersion"])?;
    ensure!(
        api_version == "monitoring.coreos.com/v1",
        "{kind} apiVersion is {api_version}, expected monitoring.coreos.com/v1"
    );
    lookup_str(&manifest.value, &["metadata", "name"])?;
    lookup_str(&manifest.value, &["metadata", "namespace"])?;
    known_fields(
        &manifest.value,
        &["apiVersion", "kind", "metadata", "spec"],
        kind,
    )
}

/// Checks `value` as a Prometheus duration such as `30s` or `1m30s`.
fn is_duration(value: &str) -> bool {
    let mut rest = value;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|unit| rest.starts_with(unit));
        let Some(unit) = unit else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

fn check_pod_monitor(manifests: &[Manifest]) -> anyhow::Result<()> {
    let monitor = only(manifests, "PodMonitor")?;
    check_header(monitor, "PodMonitor")?;
    let spec = monitor
        .value
        .get("spec")
        .context("PodMonitor has no spec")?;
    known_fields(spec, POD_MONITOR_SPEC_FIELDS, "spec")?;
    let endpoints = spec
        .get("podMetricsEndpoints")
        .and_then(Value::as_sequence)
        .context("spec.podMetricsEndpoints is missing or not a list")?;
    ensure!(!endpoints.is_empty(), "spec.podMetricsEndpoints is empty");

    let daemonset = only(manifests, "DaemonSet")?;
    let pod_labels = lookup(
        &daemonset.value,
        &["spec", "template", "metadata", "labels"],
    )
    .context("the DaemonSet's pods have no labels")?;
    let selector = lookup(spec, &["selector", "matchLabels"])
        .and_then(Value::as_mapping)
        .context("spec.selector.matchLabels is missing")?;
    for (key, value) in selector {
        let key = key.as_str().unwrap_or("?");
        ensure!(
            pod_labels.get(key) == Some(value),
            "spec.selector.matchLabels.{key} does not match the DaemonSet's pod labels"
        );
    }
    ensure!(
        lookup_str(&monitor.value, &["metadata", "namespace"])?
            == lookup_str(&daemonset.value, &["metadata", "namespace"])?,
        "the PodMonitor has no namespaceSelector, so it must be in the DaemonSet's namespace"
    );

    let job_label = lookup_str(spec, &["jobLabel"])?;
    ensure!(
        pod_labels.get(job_label).and_then(Value::as_str) == Some(ALERT_JOB),
        "spec.jobLabel {job_label} must name a pod label whose value is {ALERT_JOB}, the job the alert rules select"
    );

    let ports = container_port_names(daemonset)?;
    for (index, endpoint) in endpoints.iter().enumerate() {
        let at = format!("spec.podMetricsEndpoints[{index}]");
        known_fields(endpoint, POD_METRICS_ENDPOINT_FIELDS, &at)?;
        let port = lookup_str(endpoint, &["port"]).with_context(|| at.clone())?;
        ensure!(
            ports.contains(port),
            "{at}.port {port} is not a port of the DaemonSet's containers"
        );
        if let Some(interval) = endpoint.get("interval") {
            let interval = interval.as_str().unwrap_or("");
            ensure!(
                is_duration(interval),
                "{at}.interval {interval:?} is not a duration"
            );
        }

        let relabelings = endpoint.get("relabelings").and_then(Value::as_sequence);
        let mut sets_node = false;
        for (number, relabeling) in relabelings.into_iter().flatten().enumerate() {
            known_fields(
                relabeling,
                RELABEL_CONFIG_FIELDS,
                &format!("{at}.relabelings[{number}]"),
            )?;
            let sources = relabeling.get("sourceLabels").and_then(Value::as_sequence);
            sets_node |= relabeling.get("targetLabel").and_then(Value::as_str) == Some("node")
                && sources.is_some_and(|sources| {
                    sources
                        .iter()
                        .any(|source| source.as_str() == Some("__meta_kubernetes_pod_node_name"))
                });
        }
        ensure!(
            sets_node,
            "{at} does not set the node label that the alert rules group by"
        );
    }
    Ok(())
}

fn check_prometheus_rule(manifests: &[Manifest]) -> anyhow::Result<()> {
    let rule = only(manifests, "PrometheusRule")?;
    check_header(rule, "PrometheusRule")?;
    let spec = rule
        .value
        .get("spec")
        .context("PrometheusRule has no spec")?;
    known_fields(spec, PROMETHEUS_RULE_SPEC_FIELDS, "spec")?;
    let groups = spec
        .get("groups")
        .and_then(Value::as_sequence)
        .context("spec.groups is missing or not a list")?;
    for (index, group) in groups.iter().enumerate() {
        known_fields(group, RULE_GROUP_FIELDS, &format!("spec.groups[{index}]"))?;
    }
    Ok(())
}

fn container_port_names(daemonset: &Manifest) -> anyhow::Result<BTreeSet<String>> {
    let containers = lookup(
        &daemonset.value,
        &["spec", "template", "spec", "containers"],
    )
    .and_then(Value::as_sequence)
    .context("the DaemonSet has no containers")?;
    Ok(containers
        .iter()
        .filter_map(|container| container.get("ports").and_then(Value::as_sequence))
        .flatten()
        .filter_map(|port| port.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect())
}

/// Returns the `(kind, name)` of every object in `namespace`.
fn objects_in(manifests: &[Manifest], namespace: &str) -> BTreeSet<(String, String)> {
    manifests
        .iter()
        .filter(|manifest| {
            lookup(&manifest.value, &["metadata", "namespace"]).and_then(Value::as_str)
                == Some(namespace)
        })
        .filter_map(|manifest| {
            let name = lookup(&manifest.value, &["metadata", "name"])?.as_str()?;
            Some((manifest.kind().to_owned(), name.to_owned()))
        })
        .collect()
}

fn check_daemonset_references(manifests: &[Manifest]) -> anyhow::Result<()> {
    let daemonset = only(manifests, "DaemonSet")?;
    let namespace = lookup_str(&daemonset.value, &["metadata", "namespace"])?;
    let namespaces: BTreeSet<&str> = manifests
        .iter()
        .filter(|manifest| manifest.kind() == "Namespace")
        .filter_map(|manifest| lookup(&manifest.value, &["metadata", "name"])?.as_str())
        .collect();
    ensure!(
        namespaces.contains(namespace),
        "no Namespace {namespace} in deploy/"
    );

    let objects = objects_in(manifests, namespace);
    let pod = lookup(&daemonset.value, &["spec", "template", "spec"])
        .context("the DaemonSet has no pod spec")?;
    let account = lookup_str(pod, &["serviceAccountName"])?;
    ensure!(
        objects.contains(&("ServiceAccount".to_owned(), account.to_owned())),
        "serviceAccountName {account} names no ServiceAccount in {namespace}"
    );

    let volumes = pod
        .get("volumes")
        .and_then(Value::as_sequence)
        .context("the pod has no volumes")?;
    for volume in volumes {
        if let Some(config_map) = lookup(volume, &["configMap", "name"]).and_then(Value::as_str) {
            ensure!(
                objects.contains(&("ConfigMap".to_owned(), config_map.to_owned())),
                "volume configMap {config_map} names no ConfigMap in {namespace}"
            );
        }
    }

    let ports = container_port_names(daemonset)?;
    let containers = pod
        .get("containers")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten();
    for container in containers {
        let probe_port = lookup(container, &["readinessProbe", "httpGet", "port"])
            .context("a container has no HTTP readiness probe")?;
        if let Some(name) = probe_port.as_str() {
            ensure!(
                ports.contains(name),
                "the readiness probe's port {name} is not a container port"
            );
        }

        let resources = container
            .get("resources")
            .context("a container has no resources")?;
        for key in ["requests", "limits"] {
            ensure!(
                resources.get(key).is_some(),
                "a container has no resources.{key}"
            );
        }
    }
    Ok(())
}

/// Checks that each `--flag` in the DaemonSet's arguments is one that
/// `parapet agent --help` lists.
fn check_agent_flags(manifests: &[Manifest], parapet: &Path) -> anyhow::Result<()> {
    let daemonset = only(manifests, "DaemonSet")?;
    let (success, help) = run_output(Command::new(parapet).args(["agent", "--help"]))?;
    ensure!(success, "parapet agent --help failed:\n{help}");
    let containers = lookup(
        &daemonset.value,
        &["spec", "template", "spec", "containers"],
    )
    .and_then(Value::as_sequence)
    .context("the DaemonSet has no containers")?;
    for container in containers {
        let args = container
            .get("args")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten();
        for argument in args.filter_map(Value::as_str) {
            let Some(flag) = argument.strip_prefix("--") else {
                continue;
            };
            let flag = flag.split('=').next().unwrap_or(flag);
            ensure!(
                help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
                "parapet agent has no --{flag}"
            );
        }
    }
    Ok(())
}

/// Writes each entry of the policy ConfigMap to a file and runs `parapet
/// policy check` on them all.
fn check_policies(root: &Path, manifests: &[Manifest], parapet: &Path) -> anyhow::Result<()> {
    let config_map = only(manifests, "ConfigMap")?;
    let data = lookup(&config_map.value, &["data"])
        .and_then(Value::as_mapping)
        .context("the ConfigMap has no data")?;
    let dir = root.join("target/deploy-checks/policies");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("failed to remove {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;

    let mut files = Vec::new();
    for (key, text) in data {
        let key = key.as_str().context("a ConfigMap key is not a string")?;
        let text = text
            .as_str()
            .with_context(|| format!("ConfigMap entry {key} is not a string"))?;
        let file = dir.join(key);
        fs::write(&file, text).with_context(|| format!("failed to write {}", file.display()))?;
        files.push(file);
    }
    ensure!(!files.is_empty(), "the ConfigMap contains no policies");

    let (success, output) =
        run_output(Command::new(parapet).args(["policy", "check"]).args(&files))?;
    ensure!(success, "parapet policy check failed:\n{output}");
    for file in &files {
        ensure!(
            output.contains(&format!("{}: OK", file.display())),
            "parapet policy check did not report {} as OK:\n{output}",
            file.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_without_schema_from_warnings() {
        let output = "WARN deploy/40-pod-monitor.yaml Couldn't find schema for kind PodMonitor with api version monitoring.coreos.com/v1 for kubernetes version 1.37\n\
                      ERROR something else\n";
        let kinds = kinds_without_schema(output);
        assert_eq!(kinds, BTreeSet::from(["PodMonitor".to_owned()]));
    }

    #[test]
    fn durations() {
        for good in ["30s", "1m30s", "500ms", "2h"] {
            assert!(is_duration(good), "{good}");
        }
        for bad in ["", "30", "s", "1.5m", "30 s"] {
            assert!(!is_duration(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let value: Value = serde_yaml::from_str("{port: metrics, intervall: 30s}").unwrap();
        let error = known_fields(&value, POD_METRICS_ENDPOINT_FIELDS, "endpoint").unwrap_err();
        assert_eq!(error.to_string(), "endpoint.intervall is not a known field");
    }

    #[test]
    fn group_drift_names_the_group() {
        let rules: Value =
            serde_yaml::from_str("[{name: a, rules: []}, {name: b, rules: []}]").unwrap();
        let changed: Value = serde_yaml::from_str(
            "[{name: a, rules: []}, {name: b, rules: [{record: x, expr: '1'}]}]",
        )
        .unwrap();
        let shorter: Value = serde_yaml::from_str("[{name: a, rules: []}]").unwrap();
        assert!(compare_groups(&rules, &rules).is_ok());
        assert_eq!(
            compare_groups(&rules, &changed).unwrap_err().to_string(),
            "group 1 (b) differs"
        );
        assert_eq!(
            compare_groups(&rules, &shorter).unwrap_err().to_string(),
            "group 1 (b) is missing"
        );
    }

    /// The checks that need no external program, on the real deploy/.
    #[test]
    fn deploy_manifests_are_consistent() {
        let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let manifests = load_manifests(&deploy).unwrap();
        prometheus_rule_matches_rules_file(&deploy, &manifests).unwrap();
        check_pod_monitor(&manifests).unwrap();
        check_prometheus_rule(&manifests).unwrap();
        check_daemonset_references(&manifests).unwrap();
    }
}
