//! Ways around the connect and sendmsg programs, each closed: sockets the
//! programs cannot check, IPv6 prefixes that would cover IPv4, and a
//! nested cgroup named like its container.

use anyhow::Result;
use parapet::event::VerdictName;
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value},
};

const SERVER_COMMAND: [&str; 3] = ["sh", "-c", "netprobe listen tcp 8080 & netprobe listen tcp 8081 & wait"];

fn policy(mode: &str, peer: &str, containers: &str) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: client-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: client}}
{containers}  mode: {mode}
  network:
    egress:
      - to: [{peer}]
        ports: [{{port: 8080, protocol: TCP}}]
"
    )
}

async fn probe(pod: &Pod, args: &[&str]) -> Result<String> {
    let mut command = vec!["netprobe"];
    command.extend_from_slice(args);
    Ok(pod.exec(&command).await?.stdout_trimmed().to_owned())
}

fn is_eperm(output: &str) -> bool {
    output.starts_with("error errno=1 ")
}

#[tokio::test]
async fn uncheckable_sockets_are_refused() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let bystander = Pod::run(&containerd, "bystander", "clinic", &[("app", "other")]).await?;
    let peer = format!("{{address: {}}}", server.ip);
    let mut agent = Agent::start(&containerd, &[("client.yaml", &policy("enforce", &peer, ""))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;

    for kind in ["udplite", "raw"] {
        let output = probe(&client, &["socket", kind]).await?;
        assert!(is_eperm(&output), "{kind} socket in a policed pod: {output}");
    }
    // Packet sockets pass no cgroup socket hook: without BPF LSM the
    // process is killed before socket(2) returns, so it prints nothing.
    // The LSM socket_create hook refuses them with EPERM instead.
    let status = agent.status().await?;
    let lsm = status
        .backends
        .iter()
        .any(|choice| choice.promise.as_str() == "network" && choice.backend.as_str() == "lsm");
    for kind in ["packet", "inet-packet"] {
        let packet = client.exec(&["netprobe", "socket", kind]).await?;
        if lsm {
            assert!(is_eperm(packet.stdout_trimmed()), "{kind}: {packet:?}");
        } else {
            assert_eq!(packet.exit_code, 128 + libc::SIGKILL, "{kind}: {packet:?}");
            assert_eq!(packet.stdout, "", "{kind}: {packet:?}");
        }
    }
    for kind in ["udplite", "raw", "packet", "inet-packet"] {
        let unpoliced = probe(&bystander, &["socket", kind]).await?;
        assert_eq!(unpoliced, "ok", "{kind} socket in an unpoliced pod");
    }
    // Ordinary TCP and UDP sockets are still created; their peers are
    // checked at connect and send time.
    assert_eq!(probe(&client, &["connect", "tcp", &server.ip.to_string(), "8080"]).await?, "ok");

    let raw = agent.wait_for_event(|e| {
        e.operation == "socket" && e.detail.as_deref().is_some_and(|d| d.starts_with("raw socket"))
    })?;
    assert_eq!(raw.verdict, VerdictName::Deny);
    assert_eq!(raw.pod.as_deref(), Some("client"));
    assert_eq!(raw.policy.as_deref(), Some("client-egress"));
    assert_eq!(raw.peer, None);
    let packet = agent.wait_for_event(|e| {
        e.operation == "socket" && e.detail.as_deref().is_some_and(|d| d.starts_with("packet socket"))
    })?;
    assert_eq!(packet.verdict, VerdictName::Deny);
    let socket_events = agent.events()?.into_iter().filter(|e| e.operation == "socket").count();
    assert_eq!(socket_events, 4);
    let metrics = agent.metrics()?;
    let labels = [("pod", "client"), ("kind", "network"), ("verdict", "deny")];
    assert_eq!(metric_value(&metrics, "parapet_violations_total", &labels), Some(4.0), "{metrics}");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn ipv6_prefix_does_not_cover_ipv4() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let mut agent = Agent::start(&containerd, &[("client.yaml", &policy("enforce", "{cidr: '::/0'}", ""))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;

    let server_ip = server.ip.to_string();
    let ipv4 = probe(&client, &["connect", "tcp", &server_ip, "8080"]).await?;
    assert!(is_eperm(&ipv4), "IPv4 peer under an ::/0 rule: {ipv4}");
    let mapped = probe(&client, &["connect", "tcp", &format!("::ffff:{server_ip}"), "8080"]).await?;
    assert!(is_eperm(&mapped), "IPv4-mapped peer under an ::/0 rule: {mapped}");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn nested_cgroup_named_like_the_container_changes_nothing() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let peer = format!("{{address: {}}}", server.ip);
    let containers = "    containers: [main]\n";
    let mut agent = Agent::start(&containerd, &[("client.yaml", &policy("enforce", &peer, containers))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;

    let decoy = client.cgroup_path.join(&client.container_id);
    std::fs::create_dir(&decoy)?;
    // Give the agent several scans to be fooled, if it can be.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let denied = probe(&client, &["connect", "tcp", &server.ip.to_string(), "8081"]).await;
    let status = agent.status().await;
    std::fs::remove_dir(&decoy)?;
    let denied = denied?;
    assert!(is_eperm(&denied), "connect after the decoy cgroup appeared: {denied}");
    let status = status?;
    assert!(status.kernel_policed_cgroups.contains(&client.cgroup_id), "{status:#?}");
    assert!(!agent.log().contains("workload released"), "{}", agent.log());

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
