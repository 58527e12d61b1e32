//! Allowed programs on a kernel without BPF LSM: the exec tracepoint kills
//! a refused program before its first instruction, matching files by
//! identity (device and inode) as well as by path.

use anyhow::Result;
use parapet::event::{Kind, VerdictName};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value},
};

const NETPROBE: &str = "/usr/local/bin/netprobe";

fn exec_policy(mode: &str, lists: &str) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: tools
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: worker}}
  mode: {mode}
  exec:
{lists}"
    )
}

async fn shell(pod: &Pod, command: &str) -> Result<parapet_tests::ExecOutput> {
    pod.exec(&["sh", "-c", command]).await
}

/// Runs netprobe through `path` and returns what it printed and the
/// shell's view of its exit status.
async fn run_probe(pod: &Pod, path: &str) -> Result<String> {
    let output = shell(pod, &format!("{path} socket udplite; echo status=$?")).await?;
    Ok(output.stdout.trim().to_owned())
}

async fn start(mode: &str, lists: &str) -> Result<(Containerd, Pod, Pod, Agent)> {
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let worker = Pod::run(&containerd, "worker", "clinic", &[("app", "worker")]).await?;
    let other = Pod::run(&containerd, "other", "clinic", &[("app", "other")]).await?;
    for pod in [&worker, &other] {
        let setup = format!("ln {NETPROBE} /linked-probe && cp {NETPROBE} /tmp/copied-probe");
        let output = shell(pod, &setup).await?;
        assert_eq!(output.exit_code, 0, "{output:?}");
    }
    let mut agent = Agent::start(&containerd, &[("tools.yaml", &exec_policy(mode, lists))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&worker.container_id)?;
    agent.wait_for_log(&["exec lists looked up", &worker.container_id])?;
    // The entry with the resolved flag is written on the same pass.
    agent.wait_for_log(&["workload enforced", &worker.container_id])?;
    Ok((containerd, worker, other, agent))
}

#[tokio::test]
async fn denied_program_is_killed_hard_links_too() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (containerd, worker, other, mut agent) = start("enforce", &format!("    deny: [{NETPROBE}]\n")).await?;

    assert_eq!(run_probe(&worker, NETPROBE).await?, "status=137", "killed before it printed");
    assert_eq!(run_probe(&worker, "/linked-probe").await?, "status=137", "a hard link is the same file");
    // A copy is another file; a deny list cannot know it.
    assert_eq!(run_probe(&worker, "/tmp/copied-probe").await?, "ok\nstatus=0");
    assert_eq!(shell(&worker, "echo busybox runs").await?.stdout_trimmed(), "busybox runs");
    // An unpoliced pod runs it all.
    assert_eq!(run_probe(&other, NETPROBE).await?, "ok\nstatus=0");

    let by_path = agent.wait_for_event(|e| {
        e.kind == Kind::Exec && e.binary.as_deref() == Some(NETPROBE) && e.verdict == VerdictName::Deny
    })?;
    assert_eq!(by_path.rule.as_deref(), Some("spec.exec.deny[0]"));
    assert_eq!(by_path.policy.as_deref(), Some("tools"));
    assert_eq!(by_path.pod.as_deref(), Some("worker"));
    let by_identity = agent.wait_for_event(|e| {
        e.kind == Kind::Exec && e.binary.as_deref() == Some("/linked-probe") && e.verdict == VerdictName::Deny
    })?;
    let detail = by_identity.detail.clone().unwrap_or_default();
    assert!(detail.contains("matched by file identity"), "{detail}");
    let metrics = agent.metrics()?;
    let exec = [("promise", "exec")];
    assert_eq!(metric_value(&metrics, "parapet_workloads_selected", &exec), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "parapet_workloads_not_enforced", &exec), Some(0.0), "{metrics}");
    let status = agent.status().await?;
    assert!(status.exec.iter().any(|c| c.container_id == worker.container_id && c.looked_up), "{status:#?}");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn allow_list_refuses_a_copied_program() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let lists = format!("    allow: [/bin/busybox, {NETPROBE}]\n");
    let (containerd, worker, other, mut agent) = start("enforce", &lists).await?;

    assert_eq!(run_probe(&worker, NETPROBE).await?, "ok\nstatus=0");
    assert_eq!(run_probe(&worker, "/linked-probe").await?, "ok\nstatus=0", "a hard link is the same file");
    assert_eq!(run_probe(&worker, "/tmp/copied-probe").await?, "status=137", "a copy is not allowed");
    assert_eq!(run_probe(&other, "/tmp/copied-probe").await?, "ok\nstatus=0");

    let refused = agent.wait_for_event(|e| e.kind == Kind::Exec && e.verdict == VerdictName::Deny)?;
    assert_eq!(refused.binary.as_deref(), Some("/tmp/copied-probe"));
    assert_eq!(refused.rule, None);
    let allowed = agent.wait_for_event(|e| {
        e.kind == Kind::Exec && e.verdict == VerdictName::Allow && e.binary.as_deref() == Some("/linked-probe")
    })?;
    assert_eq!(allowed.rule.as_deref(), Some("spec.exec.allow[1]"));

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn audit_mode_reports_and_runs() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let lists = format!("    allow: [/bin/busybox, {NETPROBE}]\n");
    let (containerd, worker, _other, mut agent) = start("audit", &lists).await?;

    assert_eq!(run_probe(&worker, "/tmp/copied-probe").await?, "ok\nstatus=0");
    let audited = agent.wait_for_event(|e| e.kind == Kind::Exec && e.verdict == VerdictName::Audit)?;
    assert_eq!(audited.binary.as_deref(), Some("/tmp/copied-probe"));

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn file_placed_later_at_a_denied_path_is_refused_by_identity() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let lists = format!("    deny: [{NETPROBE}, /tmp/dropped]\n");
    let (containerd, worker, _other, mut agent) = start("enforce", &lists).await?;

    // The denied path did not exist at the first lookup. Run by another
    // path text, it is only matched once the agent has looked it up again.
    let placed = shell(&worker, "cp /tmp/copied-probe /tmp/dropped").await?;
    assert_eq!(placed.exit_code, 0, "{placed:?}");
    agent.wait_for_log(&["files on the exec lists changed", &worker.container_id])?;
    assert_eq!(run_probe(&worker, "cd /tmp && ./dropped").await?, "status=137");
    let refused = agent.wait_for_event(|e| {
        e.kind == Kind::Exec && e.binary.as_deref() == Some("./dropped") && e.verdict == VerdictName::Deny
    })?;
    assert_eq!(refused.rule.as_deref(), Some("spec.exec.deny[1]"));

    // A denied file moved away from its listed path stays denied after the
    // next look-up no longer finds it there.
    let moved = shell(&worker, &format!("mv {NETPROBE} /renamed-probe")).await?;
    assert_eq!(moved.exit_code, 0, "{moved:?}");
    tokio::time::sleep(parapet::exec_rules::REFRESH + std::time::Duration::from_secs(1)).await;
    assert_eq!(run_probe(&worker, "/renamed-probe").await?, "status=137");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn denying_a_busybox_applet_warns_that_the_shell_is_denied() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (containerd, worker, _other, mut agent) = start("audit", "    deny: [/bin/ls]\n").await?;

    agent.wait_for_log(&["same file as /bin/sh", &worker.container_id, "/bin/ls"])?;

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn refused_program_already_running_is_reported() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let worker = Pod::run(&containerd, "worker", "clinic", &[("app", "worker")]).await?;
    let started = shell(&worker, &format!("{NETPROBE} listen tcp 7070 >/dev/null 2>&1 &")).await?;
    assert_eq!(started.exit_code, 0, "{started:?}");
    let policy = exec_policy("enforce", &format!("    deny: [{NETPROBE}]\n"));
    let mut agent = Agent::start(&containerd, &[("tools.yaml", &policy)])?;
    agent.wait_ready()?;

    let running = agent.wait_for_event(|e| e.kind == Kind::Exec && e.operation == "running")?;
    assert_eq!(running.verdict, VerdictName::NotEnforced, "{running:?}");
    assert_eq!(running.binary.as_deref(), Some(NETPROBE));
    assert_eq!(running.rule.as_deref(), Some("spec.exec.deny[0]"));
    assert_eq!(running.pod.as_deref(), Some("worker"));
    assert!(running.detail.as_deref().is_some_and(|d| d.contains("before the agent looked up")), "{running:?}");
    agent.wait_for_log(&["already running when the policy arrived", &worker.container_id])?;

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
