//! `parapet status` against the real state of a node: one pod enforced, one
//! selected but not enforceable, read through the command line as an
//! operator would.

use std::process::Command;

use anyhow::{Context as _, Result};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value, parapet_bin},
};
use serde_json::Value;

const POLICY: &str = "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: db-read-only
spec:
  selector:
    namespace: clinic
    matchLabels: {app: db}
  mode: enforce
  filesystem:
    readOnly: true
    writablePaths: [/tmp]
";

fn status_cli(agent: &Agent, output: &str) -> Result<String> {
    let result = Command::new(parapet_bin()?)
        .args(["status", "--output", output, "--api-socket"])
        .arg(&agent.api_socket)
        .output()
        .context("failed to run parapet status")?;
    anyhow::ensure!(result.status.success(), "parapet status failed: {result:?}");
    Ok(String::from_utf8(result.stdout)?)
}

/// Returns the read-only entry of a container in the JSON status.
fn read_only_entry<'a>(status: &'a Value, container_id: &str) -> Option<&'a Value> {
    status["read_only"]
        .as_array()?
        .iter()
        .find(|entry| entry["container_id"] == container_id)
}

#[tokio::test]
async fn status_shows_enforced_and_unenforceable_pods() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let enforced = Pod::run(&containerd, "db-a", "clinic", &[("app", "db")]).await?;
    let blocked = Pod::run(&containerd, "db-b", "clinic", &[("app", "db")]).await?;
    // A file held open for writing makes the remount fail with EBUSY.
    let holder = "sleep 3600 3>/held.txt >/dev/null 2>&1 &";
    assert_eq!(blocked.exec(&["sh", "-c", holder]).await?.exit_code, 0);
    let mut agent = Agent::start(&containerd, &[("db.yaml", POLICY)])?;
    agent.wait_ready()?;
    agent.wait_for_log(&["filesystem made read-only", &enforced.container_id])?;
    agent.wait_for_log(&["failed to make the filesystem read-only", &blocked.container_id])?;

    let status: Value = serde_json::from_str(&status_cli(&agent, "json")?)?;
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()), "{status:#}");
    assert!(status["started_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{status:#}");
    assert!(status["uptime_seconds"].is_u64(), "{status:#}");
    assert_eq!(status["backends"].as_array().map(Vec::len), Some(3), "{status:#}");
    assert_eq!(status["policies"][0]["name"], "db-read-only");
    let hash = status["policies"][0]["hash"].as_str().unwrap_or_default();
    assert_eq!(hash.len(), 16, "{status:#}");
    assert_eq!(status["policy_error"], Value::Null);
    assert_eq!(status["lost"]["counter_map_full"], 0);

    let good = read_only_entry(&status, &enforced.container_id).context("enforced pod missing")?;
    assert_eq!(good["enforced"], true, "{good:#}");
    assert_eq!(good["reason"], Value::Null);
    let bad = read_only_entry(&status, &blocked.container_id).context("blocked pod missing")?;
    assert_eq!(bad["enforced"], false, "{bad:#}");
    let reason = bad["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("open for writing"), "{reason}");

    let workloads = status["workloads"].as_array().context("no workloads")?;
    for pod in [&enforced, &blocked] {
        let listed = workloads.iter().any(|w| w["container_id"] == pod.container_id.as_str());
        assert!(listed, "{} missing from {workloads:#?}", pod.name);
    }

    let text = status_cli(&agent, "text")?;
    assert!(text.contains(&format!("{} NOT ENFORCED:", blocked.container_id)), "{text}");
    assert!(text.contains(&format!("{} enforced", enforced.container_id)), "{text}");
    assert!(text.contains(&format!("hash {hash}")), "{text}");

    let metrics = agent.metrics()?;
    let filesystem = [("promise", "filesystem")];
    assert_eq!(metric_value(&metrics, "parapet_workloads_selected", &filesystem), Some(2.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "parapet_workloads_not_enforced", &filesystem), Some(1.0), "{metrics}");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
