//! Allowed-peer enforcement on real pods: the real agent binary against a
//! private containerd, with traffic only between the run's own pods and
//! the host's address on the run's bridge.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::Result;
use parapet::event::{Event, VerdictName};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, REMOVED_RETENTION, Tail, metric_value, socket_programs_attached, wait_socket_programs_detached},
};

const SERVER_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "netprobe listen tcp 8080 & netprobe listen tcp 8081 & netprobe listen udp 9000 & wait",
];

/// A policy that lets pods labelled `app=client` in `clinic` reach only
/// `server` on TCP 8080.
fn client_policy(mode: &str, server: IpAddr) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: client-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: client}}
  mode: {mode}
  network:
    egress:
      - to: [{{address: {server}}}]
        ports: [{{port: 8080, protocol: TCP}}]
"
    )
}

struct Scene {
    containerd: Containerd,
    client: Pod,
    server: Pod,
    bystander: Pod,
}

async fn scene() -> Result<Scene> {
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let bystander = Pod::run_command(&containerd, "bystander", "clinic", &[("app", "other")], &SERVER_COMMAND).await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    Ok(Scene {
        containerd,
        client,
        server,
        bystander,
    })
}

async fn probe(pod: &Pod, args: &[&str]) -> Result<String> {
    let mut command = vec!["netprobe"];
    command.extend_from_slice(args);
    let output = pod.exec(&command).await?;
    Ok(output.stdout_trimmed().to_owned())
}

fn is_eperm(output: &str) -> bool {
    output.starts_with("error errno=1 ")
}

fn denial_of<'a>(events: &'a [Event], port: u16, operation: &str) -> Option<&'a Event> {
    events.iter().find(|event| {
        event.verdict == VerdictName::Deny
            && event.operation == operation
            && event.peer.as_ref().is_some_and(|peer| peer.port == port)
    })
}

#[tokio::test]
async fn enforce_mode_blocks_unlisted_peers() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let scene = scene().await?;
    let server_ip = scene.server.ip;
    let bystander_ip = scene.bystander.ip.to_string();
    let server = server_ip.to_string();
    let mapped_server = format!("::ffff:{server}");
    let mut agent = Agent::start(&scene.containerd, &[("client.yaml", &client_policy("enforce", server_ip))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&scene.client.container_id)?;
    // `--since` replays what came before each `tail` subscribed, however
    // late it starts.
    let mut tail = Tail::start(&agent, &["--since", "5m", "--output", "json"])?;
    let mut tail_text = Tail::start(&agent, &["--since", "5m", "--namespace", "clinic", "--pod", "client"])?;

    assert_eq!(probe(&scene.client, &["connect", "tcp", &server, "8080"]).await?, "ok");
    assert_eq!(probe(&scene.client, &["connect", "tcp", &mapped_server, "8080"]).await?, "ok");
    let other_port = probe(&scene.client, &["connect", "tcp", &server, "8081"]).await?;
    assert!(is_eperm(&other_port), "connect to an unlisted port: {other_port}");
    let mapped_other_port = probe(&scene.client, &["connect", "tcp", &mapped_server, "8081"]).await?;
    assert!(is_eperm(&mapped_other_port), "IPv4-mapped connect to an unlisted port: {mapped_other_port}");
    let other_address = probe(&scene.client, &["connect", "tcp", &bystander_ip, "8080"]).await?;
    assert!(is_eperm(&other_address), "connect to an unlisted address: {other_address}");
    let udp = probe(&scene.client, &["send", "udp", &bystander_ip, "9000"]).await?;
    assert!(is_eperm(&udp), "UDP send to an unlisted address: {udp}");
    let udp_to_tcp_rule = probe(&scene.client, &["send", "udp", &server, "8080"]).await?;
    assert!(is_eperm(&udp_to_tcp_rule), "UDP send to a TCP-only rule: {udp_to_tcp_rule}");

    // A pod that no policy selects reaches everything.
    assert_eq!(probe(&scene.bystander, &["connect", "tcp", &server, "8081"]).await?, "ok");
    assert_eq!(probe(&scene.bystander, &["send", "udp", &server, "9000"]).await?, "ok");
    // The host is not under policy either.
    let host_connect = TcpStream::connect_timeout(&SocketAddr::new(server_ip, 8081), Duration::from_secs(2));
    assert!(host_connect.is_ok(), "host connect failed: {host_connect:?}");

    let denied_port = agent.wait_for_event(|e| denial_of(std::slice::from_ref(e), 8081, "connect").is_some())?;
    assert_eq!(denied_port.namespace.as_deref(), Some("clinic"));
    assert_eq!(denied_port.pod.as_deref(), Some("client"));
    assert_eq!(denied_port.container.as_deref(), Some("main"));
    assert_eq!(denied_port.container_id.as_deref(), Some(scene.client.container_id.as_str()));
    assert_eq!(denied_port.node, "test-node");
    assert_eq!(denied_port.policy.as_deref(), Some("client-egress"));
    assert_eq!(denied_port.rule, None);
    assert_eq!(denied_port.process, "netprobe");
    assert!(denied_port.pid > 0);
    assert!(
        denied_port.binary.as_deref().is_some_and(|b| b.ends_with("netprobe")),
        "binary: {:?}",
        denied_port.binary
    );
    let peer = denied_port.peer.as_ref().expect("network event without a peer");
    assert_eq!(peer.address, server_ip);
    assert_eq!(peer.protocol, "tcp");

    let denied_udp = agent.wait_for_event(|e| denial_of(std::slice::from_ref(e), 9000, "sendmsg").is_some())?;
    assert_eq!(denied_udp.peer.as_ref().map(|p| p.protocol.as_str()), Some("udp"));
    let allowed = agent.wait_for_event(|e| e.verdict == VerdictName::Allow)?;
    assert_eq!(allowed.rule.as_deref(), Some("spec.network.egress[0]"));
    // The bystander is not policed, so none of its calls is reported.
    let events = agent.events()?;
    assert!(events.iter().all(|e| e.pod.as_deref() == Some("client")), "{events:#?}");
    let denials = events.iter().filter(|e| e.verdict == VerdictName::Deny).count();
    assert_eq!(denials, 5, "{events:#?}");

    let tail_line = tail.wait_for_line(&["\"verdict\":\"deny\"", "\"port\":9000"])?;
    let tail_event: Event = serde_json::from_str(&tail_line)?;
    assert_eq!(tail_event.pod.as_deref(), Some("client"));
    let text_line = tail_text.wait_for_line(&["deny", "clinic/client/main", ":8081/tcp"])?;
    assert!(text_line.contains("policy=client-egress"), "{text_line}");
    assert!(
        !tail.output().contains("\"verdict\":\"allow\""),
        "tail shows only violations by default:\n{}",
        tail.output()
    );

    let metrics = agent.metrics()?;
    let client_labels = [
        ("namespace", "clinic"),
        ("pod", "client"),
        ("container", "main"),
        ("kind", "network"),
        ("policy", "client-egress"),
    ];
    let mut deny_labels = client_labels.to_vec();
    deny_labels.push(("verdict", "deny"));
    assert_eq!(metric_value(&metrics, "parapet_violations_total", &deny_labels), Some(5.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "parapet_allowed_total", &client_labels), Some(2.0), "{metrics}");
    assert_eq!(
        metric_value(&metrics, "parapet_events_lost_total", &[("reason", "ring_buffer_full")]),
        Some(0.0)
    );
    assert!(!metrics.contains("pod=\"bystander\""), "{metrics}");

    // One more denial raises the counter by exactly one.
    probe(&scene.client, &["connect", "tcp", &server, "8081"]).await?;
    let after = agent.metrics()?;
    assert_eq!(metric_value(&after, "parapet_violations_total", &deny_labels), Some(6.0), "{after}");

    drop(tail);
    drop(tail_text);
    let run_cgroup = scene.containerd.cgroup().v2_path();
    assert_eq!(socket_programs_attached(&run_cgroup)?, 4, "connect4, connect6, sendmsg4, sendmsg6");
    agent.stop()?;
    // Stopping a test agent also removes its pins: the links, and so the
    // attachments, go with them.
    wait_socket_programs_detached(&run_cgroup)?;
    scene.containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn audit_mode_reports_and_allows() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let scene = scene().await?;
    let server = scene.server.ip.to_string();
    let bystander = scene.bystander.ip.to_string();
    let mut agent = Agent::start(&scene.containerd, &[("client.yaml", &client_policy("audit", scene.server.ip))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&scene.client.container_id)?;
    let mut tail = Tail::start(&agent, &["--since", "5m", "--output", "json"])?;

    assert_eq!(probe(&scene.client, &["connect", "tcp", &server, "8081"]).await?, "ok");
    assert_eq!(probe(&scene.client, &["connect", "tcp", &bystander, "8080"]).await?, "ok");
    assert_eq!(probe(&scene.client, &["send", "udp", &bystander, "9000"]).await?, "ok");

    let audited = agent.wait_for_event(|e| {
        e.verdict == VerdictName::Audit && e.peer.as_ref().is_some_and(|p| p.port == 8081)
    })?;
    assert_eq!(audited.policy.as_deref(), Some("client-egress"));
    tail.wait_for_line(&["\"verdict\":\"audit\"", "\"port\":9000"])?;
    let events = agent.events()?;
    assert!(events.iter().all(|e| e.verdict != VerdictName::Deny), "{events:#?}");
    let metrics = agent.metrics()?;
    let labels = [("pod", "client"), ("policy", "client-egress"), ("verdict", "audit")];
    assert_eq!(metric_value(&metrics, "parapet_violations_total", &labels), Some(3.0), "{metrics}");

    drop(tail);
    agent.stop()?;
    scene.containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn late_pods_policed_removed_pods_cleared() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let mut agent = Agent::start(&containerd, &[("client.yaml", &client_policy("enforce", server.ip))])?;
    agent.wait_ready()?;

    let late = Pod::run(&containerd, "late-client", "clinic", &[("app", "client")]).await?;
    agent.wait_enforced(&late.container_id)?;
    let server_ip = server.ip.to_string();
    assert_eq!(probe(&late, &["connect", "tcp", &server_ip, "8080"]).await?, "ok");
    let denied = probe(&late, &["connect", "tcp", &server_ip, "8081"]).await?;
    assert!(is_eperm(&denied), "late pod connect to an unlisted port: {denied}");

    let status = agent.status().await?;
    assert!(status.kernel_policed_cgroups.contains(&late.cgroup_id), "{status:#?}");
    assert!(status.kernel_counter_cgroups.contains(&late.cgroup_id), "{status:#?}");
    let late_pod_cgroup = late.cgroup_path.parent().map(parapet::cgroups::cgroup_id).transpose()?;
    let late_ids: Vec<u64> = [Some(late.cgroup_id), late_pod_cgroup].into_iter().flatten().collect();

    let late_container = late.container_id.clone();
    late.remove().await?;
    agent.wait_for_log(&["workload released", "late-client"])?;
    // Counters stay for REMOVED_RETENTION after the agent saw the pod's
    // cgroups go, so that scrapes see its final counts. That period is
    // short in tests, so the scrape comes before the wait for the entries.
    let metrics = agent.metrics()?;
    let late_denials = [("pod", "late-client"), ("verdict", "deny")];
    assert_eq!(metric_value(&metrics, "parapet_violations_total", &late_denials), Some(1.0), "{metrics}");
    // Policy entries go within a pass or two of the 1 s scan: the pod's
    // entry may go one pass after its container's.
    let released = std::time::Instant::now();
    loop {
        let status = agent.status().await?;
        if late_ids.iter().all(|id| !status.kernel_policed_cgroups.contains(id)) {
            break;
        }
        assert!(released.elapsed() < Duration::from_secs(5), "{status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = std::time::Instant::now() + REMOVED_RETENTION + Duration::from_secs(10);
    loop {
        let status = agent.status().await?;
        let leftover: Vec<u64> = late_ids
            .iter()
            .copied()
            .filter(|id| status.kernel_policed_cgroups.contains(id) || status.kernel_counter_cgroups.contains(id))
            .collect();
        if leftover.is_empty() {
            assert!(status.workloads.iter().all(|w| w.container_id.as_deref() != Some(&late_container)));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "kernel entries left for removed pod: {leftover:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

/// The kernel remembers cgroups that no policy covers. A process in a
/// cgroup nested in a container's sends datagrams before a policy selects
/// the container, and is policed as soon as one does. The container's
/// entry covers it only through the ancestor walk that the cached result
/// skips.
#[tokio::test]
async fn policy_covers_a_nested_cgroup_already_sending() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let scene = scene().await?;
    let mut agent = Agent::start(&scene.containerd, &[])?;
    agent.wait_ready()?;
    let nested = TestCgroup::create(&scene.client.cgroup_path.join("worker"))?;
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = receiver.local_addr()?.port().to_string();
    for _ in 0..3 {
        assert_eq!(nested.probe(&["send", "udp", "127.0.0.1", &port])?, "ok");
    }

    agent.write_policy("client.yaml", &client_policy("enforce", scene.server.ip))?;
    agent.wait_enforced(&scene.client.container_id)?;
    let udp = nested.probe(&["send", "udp", "127.0.0.1", &port])?;
    assert!(is_eperm(&udp), "UDP send from the nested cgroup after the policy arrived: {udp}");

    drop(nested);
    agent.stop()?;
    scene.containerd.cleanup().await?;
    Ok(())
}

/// A task moved to another cgroup while its hook walks the ancestors reads
/// some of them from the new cgroup. Such a walk must not make the kernel
/// remember the task's first cgroup as unpoliced: a fresh process there
/// stays policed after thousands of moves of a busy sender.
#[tokio::test]
async fn sender_moved_between_cgroups_leaves_no_stale_cache() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let scene = scene().await?;
    let mut agent = Agent::start(&scene.containerd, &[("client.yaml", &client_policy("enforce", scene.server.ip))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&scene.client.container_id)?;
    let nested = TestCgroup::create(&scene.client.cgroup_path.join("worker"))?;
    let outside_name = format!("parapet-test-moved-{}", std::process::id());
    let outside = TestCgroup::create(&parapet_tests::cgroup::v2_mount()?.join(outside_name))?;
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = receiver.local_addr()?.port().to_string();
    let before = nested.probe(&["send", "udp", "127.0.0.1", &port])?;
    assert!(is_eperm(&before), "UDP send from the nested cgroup before the moves: {before}");

    // The sender's datagrams are refused while it is in the nested cgroup
    // and go out while it is outside, and it keeps sending either way.
    let sender = KilledOnDrop(
        nested
            .command(NETPROBE, &["flood", "udp", "127.0.0.1", &port, "--seconds", "60"])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let pid = sender.0.id().to_string();
    let mut stale = None;
    for round in 0..10000 {
        let _ = std::fs::write(outside.path.join("cgroup.procs"), &pid);
        let _ = std::fs::write(nested.path.join("cgroup.procs"), &pid);
        if round % 200 == 199 {
            let probe = nested.probe(&["send", "udp", "127.0.0.1", &port])?;
            if !is_eperm(&probe) {
                stale = Some((round, probe));
                break;
            }
        }
    }
    drop(sender);
    drop(outside);
    drop(nested);
    assert_eq!(stale, None, "a fresh process in the nested cgroup got through after the sender's moves");

    agent.stop()?;
    scene.containerd.cleanup().await?;
    Ok(())
}

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

/// A cgroup the test makes, removed on drop.
struct TestCgroup {
    path: std::path::PathBuf,
}

impl TestCgroup {
    fn create(path: &std::path::Path) -> Result<Self> {
        std::fs::create_dir(path)?;
        Ok(Self { path: path.to_owned() })
    }

    /// Returns a command that runs `program` with `args` on the host,
    /// inside this cgroup.
    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.path.join("cgroup.procs"))
            .arg(program)
            .args(args);
        command
    }

    /// Runs `netprobe` with `args` inside this cgroup, for at most 10 s,
    /// and returns its output, trimmed.
    fn probe(&self, args: &[&str]) -> Result<String> {
        let mut limited = vec!["10", NETPROBE];
        limited.extend_from_slice(args);
        let output = self.command("timeout", &limited).output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// A child process, killed and reaped on drop, so that its cgroup can be
/// removed after a failure too.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir(&self.path) {
            eprintln!("failed to remove the nested cgroup {}: {error}", self.path.display());
        }
    }
}

#[tokio::test]
async fn invalid_policy_change_keeps_the_previous_policy() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let scene = scene().await?;
    let server = scene.server.ip.to_string();
    let mut agent = Agent::start(&scene.containerd, &[("client.yaml", &client_policy("enforce", scene.server.ip))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&scene.client.container_id)?;
    let first_hash = policy_hash(&agent).await?;
    assert_eq!(first_hash.len(), 16, "{first_hash}");

    let misspelled = client_policy("enforce", scene.server.ip).replace("egress:", "egres:");
    let bad_cidr = client_policy("enforce", scene.server.ip).replace(&format!("address: {server}"), "cidr: 10.0.0.300/8");
    let malformed = "apiVersion: parapet.dev/v1alpha1\nkind: RuntimePolicy\nspec: [unclosed\n";
    for (bad, expected) in [
        (misspelled.as_str(), "unknown field `egres`"),
        (bad_cidr.as_str(), "10.0.0.300/8"),
        (malformed, "client.yaml:"),
    ] {
        agent.write_policy("client.yaml", bad)?;
        agent.wait_for_log(&["invalid policy", expected])?;
        let status = agent.status().await?;
        let error = status.policy_error.clone().unwrap_or_default();
        assert!(error.contains("client.yaml:"), "status error names the file: {error}");
        let denied = probe(&scene.client, &["connect", "tcp", &server, "8081"]).await?;
        assert!(is_eperm(&denied), "after an invalid change to {expected:?}: {denied}");
        assert_eq!(probe(&scene.client, &["connect", "tcp", &server, "8080"]).await?, "ok");
    }
    // The log line of the last change can match an earlier one, so wait
    // for the count.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut metrics = agent.metrics()?;
    while metric_value(&metrics, "parapet_policy_reload_failures_total", &[]) != Some(3.0) {
        assert!(std::time::Instant::now() < deadline, "three rejected changes expected: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = agent.metrics()?;
    }
    assert_eq!(metric_value(&metrics, "parapet_policy_reload_failed", &[]), Some(1.0), "{metrics}");
    let loaded = [("policy", "client-egress"), ("mode", "enforce"), ("hash", first_hash.as_str())];
    assert_eq!(metric_value(&metrics, "parapet_policy_info", &loaded), Some(1.0), "{metrics}");
    assert_eq!(agent.status().await?.policy_reload_failures, 3);

    // A valid change takes effect: audit mode lets the connect through.
    agent.write_policy("client.yaml", &client_policy("audit", scene.server.ip))?;
    agent.wait_for_log(&["policy loaded", "client-egress"])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if probe(&scene.client, &["connect", "tcp", &server, "8081"]).await? == "ok" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the valid policy change never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(agent.status().await?.policy_error, None);
    let second_hash = policy_hash(&agent).await?;
    assert_ne!(second_hash, first_hash, "the mode changed");
    let metrics = agent.metrics()?;
    assert_eq!(metric_value(&metrics, "parapet_policy_reload_failed", &[]), Some(0.0), "{metrics}");
    let loaded = [("policy", "client-egress"), ("mode", "audit"), ("hash", second_hash.as_str())];
    assert_eq!(metric_value(&metrics, "parapet_policy_info", &loaded), Some(1.0), "{metrics}");
    assert!(metric_value(&metrics, "process_resident_memory_bytes", &[]).is_some_and(|bytes| bytes > 1e6));
    assert!(metric_value(&metrics, "process_cpu_seconds_total", &[]).is_some_and(|seconds| seconds > 0.0));
    assert!(metrics.contains("parapet_build_info{version=\""), "{metrics}");

    agent.stop()?;
    scene.containerd.cleanup().await?;
    Ok(())
}

async fn policy_hash(agent: &Agent) -> Result<String> {
    let status = agent.status().await?;
    let policy = status.policies.iter().find(|policy| policy.name == "client-egress");
    Ok(policy.map(|policy| policy.hash.clone()).unwrap_or_default())
}

/// The agent itself rejects the root of the cgroup v2 hierarchy as its
/// attach point, whatever its flags say.
#[tokio::test]
async fn agent_refuses_the_cgroup_root() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let root = parapet::cgroups::find_v2_mount()?;
    let dir = tempdir()?;
    let bpffs = parapet_tests::bpffs::PrivateBpffs::mount(&dir.join("bpffs"))?;
    let output = std::process::Command::new(parapet_tests::agent::parapet_bin()?)
        .arg("agent")
        .arg("--pin-dir")
        .arg(bpffs.pin_dir())
        .arg("--policy-dir")
        .arg(&dir)
        .arg("--cgroup-root")
        .arg(&root)
        .args(["--metrics-address", "127.0.0.1:0", "--api-socket"])
        .arg(dir.join("api.sock"))
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is the root of the cgroup v2 hierarchy"), "{stderr}");
    drop(bpffs);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("parapet-root-test-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(dir),
        Err(error) => Err(error.into()),
    }
}

/// Pods whose very first action is a denied connect. The agent writes a
/// pod's entry when its cgroup appears, before its containers start. The
/// test prints how many first connects got through, and none may.
#[tokio::test]
async fn first_connect_of_new_pods_is_policed() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    const PODS: usize = 10;
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let policy = client_policy("enforce", server.ip).replace("app: client", "app: racer");
    let mut agent = Agent::start(&containerd, &[("racer.yaml", &policy)])?;
    agent.wait_ready()?;
    let first_action = format!("netprobe connect tcp {} 8081 > /tmp/first; sleep 3600", server.ip);
    let command = ["sh", "-c", first_action.as_str()];
    let mut through = 0;
    for index in 0..PODS {
        let name = format!("racer-{index}");
        let pod = Pod::run_command(&containerd, &name, "clinic", &[("app", "racer")], &command).await?;
        let mut first = String::new();
        for _ in 0..100 {
            first = pod.exec(&["cat", "/tmp/first"]).await?.stdout_trimmed().to_owned();
            if !first.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !is_eperm(&first) {
            println!("racer-{index}: first connect got through: {first:?}");
            through += 1;
        }
        pod.remove().await?;
    }
    println!("first connects of new pods that got through: {through} of {PODS}");
    assert_eq!(through, 0);
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
