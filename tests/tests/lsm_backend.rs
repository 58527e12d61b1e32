//! The BPF LSM backend, end to end on real pods: mutations of a read-only
//! root, refused programs and connections to peers a policy does not
//! allow fail with EPERM before they happen, nothing is killed, and each
//! refusal is reported.
//!
//! These tests need a kernel that runs BPF LSM programs with `bpf` in its
//! active LSM list, which is why they run in a virtual machine. Each test
//! first reads the backend the agent chose from its status and prints `SKIPPED:` with
//! the reason where the LSM backend is not in use.

use anyhow::Result;
use parapet::event::{Kind, VerdictName};
use parapet_tests::{Containerd, ExecOutput, Pod, agent::Agent};

const NETPROBE: &str = "/usr/local/bin/netprobe";
const EPERM_TEXT: &str = "Operation not permitted";

fn policy(name: &str, app: &str, mode: &str, body: &str) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: {name}
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: {app}}}
  mode: {mode}
{body}"
    )
}

const READ_ONLY: &str = "  filesystem:
    readOnly: true
    writablePaths: [/tmp, /var/scratch]
";

async fn shell(pod: &Pod, command: &str) -> Result<ExecOutput> {
    pod.exec(&["sh", "-c", command]).await
}

/// Returns why the agent does not use the LSM backend for all three
/// promises, or `None` when it does.
async fn lsm_skip_reason(agent: &Agent) -> Result<Option<String>> {
    let status = agent.status().await?;
    for choice in &status.backends {
        let promise = choice.promise.as_str();
        if choice.backend.as_str() != "lsm" {
            return Ok(Some(format!(
                "the agent chose {} for {promise}: {}",
                choice.backend, choice.reason
            )));
        }
    }
    Ok(None)
}

/// Returns early, after printing `SKIPPED:` with the reason, unless the
/// agent uses the LSM backend; stops the agent and containerd first.
macro_rules! skip_unless_lsm {
    ($agent:expr, $containerd:expr) => {
        if let Some(reason) = lsm_skip_reason(&$agent).await? {
            let test = std::thread::current().name().unwrap_or("unnamed test").to_owned();
            println!("SKIPPED: {test}: {reason}");
            $agent.stop()?;
            $containerd.cleanup().await?;
            return Ok(());
        }
    };
}

/// Files and descriptors the bypass cases need, made before the policy
/// arrives: a data file, a hard link to it from a writable directory of the
/// root file system, a directory tree 64 levels deep, a file below a path
/// of over 4096 bytes, and a process that
/// holds a write descriptor and writes through it once `/tmp/go` exists.
const PREPARE: &str = "set -e
echo original > /data.txt && chmod 644 /data.txt && echo other > /other.txt
mkdir -p /var/scratch && ln /data.txt /var/scratch/hard.txt
deep=/deep; i=0; while [ $i -lt 64 ]; do deep=$deep/d$i; i=$((i+1)); done
mkdir -p $deep && echo deep > $deep/file && echo $deep > /tmp/deep-path
long=/long; i=0; while [ $i -lt 20 ]; do long=$long/$(printf 'n%.0s' $(seq 250)); i=$((i+1)); done
echo $long > /tmp/long-name
cd / && for part in $(tr / ' ' < /tmp/long-name); do mkdir $part && cd -P $part; done && echo long > file && cd /
(exec 3>>/data.txt; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
 if echo late >&3; then echo wrote > /tmp/late-result; else echo refused > /tmp/late-result; fi) \
 </dev/null >/dev/null 2>&1 &
";

/// Each mutation of the root file system, as a shell command.
const MUTATIONS: [(&str, &str); 13] = [
    ("create", "touch /created"),
    ("write", "echo changed > /data.txt"),
    ("append", "echo changed >> /data.txt"),
    ("truncate through O_TRUNC", ": > /data.txt"),
    ("truncate", "truncate -s 0 /data.txt"),
    ("unlink", "rm /data.txt"),
    ("rename over", "mv /other.txt /data.txt"),
    ("mkdir", "mkdir /made"),
    ("rmdir", "rmdir /deep/d0/d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/d11/d12/d13/d14/d15/d16/d17/d18/d19/d20/d21/d22/d23/d24/d25/d26/d27/d28/d29/d30/d31/d32/d33/d34/d35/d36/d37/d38/d39/d40/d41/d42/d43/d44/d45/d46/d47/d48/d49/d50/d51/d52/d53/d54/d55/d56/d57/d58/d59/d60/d61/d62/d63"),
    ("link", "ln /data.txt /hard.txt"),
    ("symlink", "ln -s /data.txt /soft.txt"),
    ("mknod", "mkfifo /fifo"),
    ("chmod", "chmod 777 /data.txt"),
];

/// Ways around a path check, each of which must still be refused.
const BYPASSES: [(&str, &str); 8] = [
    ("write through a symlink in a writable path", "ln -sf /data.txt /tmp/link && echo x > /tmp/link"),
    ("write through a hard link made before the policy", "echo x >> /var/scratch/hard.txt"),
    ("chmod through a hard link made before the policy", "chmod 600 /var/scratch/hard.txt"),
    ("reopen of a read-only descriptor for writing", "exec 3</data.txt && echo x > /proc/self/fd/3"),
    ("write through ..", "cd /tmp && echo x > ../data.txt"),
    ("write 64 directories deep", "echo x > $(cat /tmp/deep-path)/file"),
    ("write below a path over 4096 bytes", "cd / && for part in $(tr / ' ' < /tmp/long-name); do cd -P $part || exit 1; done && echo x > file"),
    ("chown", "chown 1:1 /data.txt"),
];

/// Starts two pods and an agent with no policy yet, so that a test can
/// check the backend before it prepares anything.
async fn start_pods() -> Result<(Containerd, Pod, Pod, Agent)> {
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let db = Pod::run(&containerd, "db", "clinic", &[("app", "db")]).await?;
    let other = Pod::run(&containerd, "other", "clinic", &[("app", "other")]).await?;
    let mut agent = Agent::start(&containerd, &[])?;
    agent.wait_ready()?;
    Ok((containerd, db, other, agent))
}

/// Prepares both pods, then puts `db` under a read-only policy in `mode`.
async fn apply_read_only(agent: &mut Agent, db: &Pod, other: &Pod, mode: &str) -> Result<()> {
    for pod in [db, other] {
        let output = shell(pod, PREPARE).await?;
        assert_eq!(output.exit_code, 0, "{output:?}");
    }
    agent.write_policy("db.yaml", &policy("db-read-only", "db", mode, READ_ONLY))?;
    agent.wait_enforced(&db.container_id)?;
    Ok(())
}

#[tokio::test]
async fn lsm_backend_reported_for_every_promise() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let mut agent = Agent::start(&containerd, &[])?;
    agent.wait_ready()?;
    // Where the kernel runs BPF LSM, any fallback is a failure, not a skip.
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    if !lsm.split(',').any(|name| name.trim() == "bpf") {
        println!("SKIPPED: lsm_backend_reported_for_every_promise: bpf is not in the active LSM list ({lsm:?})");
        agent.stop()?;
        containerd.cleanup().await?;
        return Ok(());
    }
    let status = agent.status().await?;
    let promises: Vec<&str> = status.backends.iter().map(|choice| choice.promise.as_str()).collect();
    assert_eq!(promises, ["network", "filesystem", "exec"]);
    for choice in &status.backends {
        assert_eq!(choice.backend.as_str(), "lsm", "{choice:?}");
    }
    let log = agent.log();
    let loaded = log.lines().find(|line| line.contains("kernel programs attached"));
    println!("{}", loaded.unwrap_or("no kernel programs line in the log"));
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn read_only_root_refuses_with_eperm() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (containerd, db, other, mut agent) = start_pods().await?;
    skip_unless_lsm!(agent, containerd);
    apply_read_only(&mut agent, &db, &other, "enforce").await?;
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;

    for (what, command) in MUTATIONS {
        let output = shell(&db, command).await?;
        assert_ne!(output.exit_code, 0, "{what} succeeded: {output:?}");
        assert!(output.stderr.contains(EPERM_TEXT), "{what}: {output:?}");
    }
    let content = shell(&db, "cat /data.txt /other.txt; stat -c %a /data.txt").await?;
    assert_eq!(content.stdout.split_whitespace().collect::<Vec<_>>(), ["original", "other", "644"]);
    let listing = shell(&db, "ls /").await?;
    for name in ["created", "made", "hard.txt", "soft.txt", "fifo"] {
        assert!(!listing.stdout.lines().any(|line| line == name), "{name} exists: {}", listing.stdout);
    }
    // The mount flags stay as they were: the kernel programs refuse.
    let mounts = shell(&db, "grep ' / / ' /proc/self/mountinfo").await?;
    assert!(mounts.stdout.contains(" rw,"), "{mounts:?}");

    for (what, command) in [
        ("write in /tmp", "echo scratch > /tmp/scratch && cat /tmp/scratch"),
        ("write in a writable directory of the root", "echo kept > /var/scratch/new && cat /var/scratch/new"),
        ("write to /dev/null", "echo discarded > /dev/null && echo ok"),
    ] {
        let output = shell(&db, command).await?;
        assert_eq!(output.exit_code, 0, "{what}: {output:?}");
    }
    // A pod that no policy selects is untouched.
    let output = shell(&other, "touch /created && mkdir /made && echo x >> /data.txt").await?;
    assert_eq!(output.exit_code, 0, "{output:?}");

    let event = agent.wait_for_event(|e| {
        e.kind == Kind::File && e.verdict == VerdictName::Deny && e.path.as_deref() == Some("/made")
    })?;
    assert_eq!(event.pod.as_deref(), Some("db"), "{event:?}");
    assert_eq!(event.operation, "path_mkdir");
    assert_eq!(event.path_truncated, Some(false));
    assert_eq!(event.resolved_path.as_deref(), Some("/made"));
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn read_only_bypasses_refused() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (containerd, db, other, mut agent) = start_pods().await?;
    skip_unless_lsm!(agent, containerd);
    apply_read_only(&mut agent, &db, &other, "enforce").await?;
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;

    for (what, command) in BYPASSES {
        let output = shell(&db, command).await?;
        assert_ne!(output.exit_code, 0, "{what} succeeded: {output:?}");
        assert!(output.stderr.contains(EPERM_TEXT), "{what}: {output:?}");
    }
    // Changes through descriptors, which no path check sees.
    for operation in ["copy-range", "splice", "fallocate", "ftruncate", "mmap-shared", "acl"] {
        let output = shell(&db, &format!("{NETPROBE} file {operation} /data.txt")).await?;
        assert_ne!(output.exit_code, 0, "{operation} succeeded: {output:?}");
        assert!(output.stdout.contains(EPERM_TEXT), "{operation}: {output:?}");
    }
    // The descriptor opened for writing before the policy arrived.
    shell(&db, "touch /tmp/go").await?;
    let late = shell(&db, "sleep 1; cat /tmp/late-result").await?;
    assert_eq!(late.stdout_trimmed(), "refused", "{late:?}");
    let content = shell(&db, "cat /data.txt; cat $(cat /tmp/deep-path)/file").await?;
    assert_eq!(content.stdout.split_whitespace().collect::<Vec<_>>(), ["original", "deep"]);

    // The deep path is longer than the kernel rebuilds, so it is marked cut.
    let event = agent.wait_for_event(|e| {
        e.kind == Kind::File && e.path.as_deref().is_some_and(|path| path.ends_with("/d63/file"))
    })?;
    assert_eq!(event.path_truncated, Some(true), "{event:?}");
    assert_eq!(event.resolved_path, None, "{event:?}");
    let event = agent.wait_for_event(|e| {
        e.kind == Kind::File && e.operation == "file_permission" && e.path.as_deref() == Some("/data.txt")
    })?;
    assert_eq!(event.verdict, VerdictName::Deny);
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn exec_refused_with_eperm_caller_survives() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let worker = Pod::run(&containerd, "worker", "clinic", &[("app", "worker")]).await?;
    let setup = format!(
        "ln {NETPROBE} /linked-probe && cp {NETPROBE} /tmp/copied-probe && \
         printf '#!/bin/sh\\necho script ran\\n' > /tmp/script && chmod +x /tmp/script"
    );
    let output = shell(&worker, &setup).await?;
    assert_eq!(output.exit_code, 0, "{output:?}");
    let launcher = Pod::run(&containerd, "launcher", "clinic", &[("app", "launcher")]).await?;
    let lists = "  exec:\n    allow: [/bin/busybox, /bin/sh]\n    deny: [/usr/local/bin/netprobe]\n";
    let launcher_lists = format!("  exec:\n    allow: [/bin/busybox, {NETPROBE}]\n");
    let mut agent = Agent::start(
        &containerd,
        &[
            ("tools.yaml", &policy("tools", "worker", "enforce", lists)),
            ("launcher.yaml", &policy("launcher", "launcher", "enforce", &launcher_lists)),
        ],
    )?;
    agent.wait_ready()?;
    skip_unless_lsm!(agent, containerd);
    for pod in [&worker, &launcher] {
        agent.wait_for_log(&["exec lists looked up", &pod.container_id])?;
        agent.wait_for_log(&["workload enforced", &pod.container_id])?;
    }
    // An allowed program that runs a copy of itself from a memfd: the copy
    // is another file, so the allow list does not name it.
    let memfd = shell(&launcher, &format!("{NETPROBE} exec-memfd {NETPROBE}; echo alive")).await?;
    assert!(memfd.stdout.contains(EPERM_TEXT), "memfd exec: {memfd:?}");
    assert!(memfd.stdout.contains("alive"), "memfd exec: {memfd:?}");

    for path in [NETPROBE, "/linked-probe", "/tmp/copied-probe", "/tmp/script"] {
        let output = shell(&worker, &format!("{path} socket udplite; echo status=$?; echo alive")).await?;
        assert!(output.stdout.contains("alive"), "{path}: the shell did not survive: {output:?}");
        assert!(output.stderr.contains(EPERM_TEXT) || output.stderr.contains("Permission denied"), "{path}: {output:?}");
        assert!(!output.stdout.contains("ok"), "{path} ran: {output:?}");
    }
    let allowed = shell(&worker, "busybox true && echo ran").await?;
    assert_eq!(allowed.stdout_trimmed(), "ran", "{allowed:?}");

    let event = agent.wait_for_event(|e| {
        e.kind == Kind::Exec && e.verdict == VerdictName::Deny && e.binary.as_deref() == Some("/linked-probe")
    })?;
    assert!(event.detail.as_deref().is_some_and(|d| d.contains("identity")), "{event:?}");
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

const SERVER_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "netprobe listen tcp 8080 & netprobe listen tcp 8081 & netprobe listen udp 8082 & netprobe listen udp 8083 & wait",
];

fn is_eperm(output: &ExecOutput) -> bool {
    output.stdout.starts_with("error errno=1 ")
}

#[tokio::test]
async fn network_refused_with_eperm_caller_survives() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let bystander = Pod::run(&containerd, "bystander", "clinic", &[("app", "other")]).await?;
    let egress = format!(
        "  network:\n    egress:\n      - to: [{{address: {}}}]\n        ports: [{{port: 8080, protocol: TCP}}, {{port: 8082, protocol: UDP}}]\n",
        server.ip
    );
    let mut agent = Agent::start(&containerd, &[("client.yaml", &policy("client-egress", "client", "enforce", &egress))])?;
    agent.wait_ready()?;
    skip_unless_lsm!(agent, containerd);
    agent.wait_enforced(&client.container_id)?;
    let server_ip = server.ip.to_string();
    let mapped = format!("::ffff:{server_ip}");

    for (what, args) in [
        ("allowed TCP peer", vec!["connect", "tcp", &server_ip, "8080"]),
        ("allowed UDP peer, connected", vec!["connect", "udp", &server_ip, "8082"]),
        ("allowed UDP peer, sendto", vec!["send", "udp", &server_ip, "8082"]),
        ("allowed peer, IPv4-mapped", vec!["connect", "tcp", &mapped, "8080"]),
    ] {
        let output = client.exec(&[&["netprobe"], args.as_slice()].concat()).await?;
        assert_eq!(output.stdout_trimmed(), "ok", "{what}: {output:?}");
    }
    for (what, args) in [
        ("TCP port not listed", vec!["connect", "tcp", &server_ip, "8081"]),
        ("TCP port not listed, IPv4-mapped", vec!["connect", "tcp", &mapped, "8081"]),
        ("UDP port not listed, connected", vec!["connect", "udp", &server_ip, "8083"]),
        ("UDP port not listed, sendto", vec!["send", "udp", &server_ip, "8083"]),
        ("UDP to a TCP-only port", vec!["send", "udp", &server_ip, "8080"]),
        ("UDP-Lite socket", vec!["socket", "udplite"]),
        ("raw socket", vec!["socket", "raw"]),
        ("packet socket", vec!["socket", "packet"]),
        ("SOCK_PACKET socket", vec!["socket", "inet-packet"]),
    ] {
        // The shell goes on after netprobe: nothing is killed.
        let command = format!("netprobe {}; echo alive", args.join(" "));
        let output = shell(&client, &command).await?;
        assert!(is_eperm(&output), "{what}: {output:?}");
        assert!(output.stdout.ends_with("alive\n"), "{what}: {output:?}");
    }
    for args in [
        vec!["connect", "tcp", &server_ip, "8081"],
        vec!["send", "udp", &server_ip, "8083"],
        vec!["socket", "packet"],
    ] {
        let output = bystander.exec(&[&["netprobe"], args.as_slice()].concat()).await?;
        assert_eq!(output.stdout_trimmed(), "ok", "unpoliced pod, {args:?}: {output:?}");
    }

    let connect = agent.wait_for_event(|e| {
        e.kind == Kind::Network
            && e.operation == "connect"
            && e.verdict == VerdictName::Deny
            && e.peer.as_ref().is_some_and(|peer| peer.port == 8081)
    })?;
    assert_eq!(connect.pod.as_deref(), Some("client"), "{connect:?}");
    assert_eq!(connect.policy.as_deref(), Some("client-egress"), "{connect:?}");
    assert_eq!(connect.peer.as_ref().map(|peer| peer.protocol.as_str()), Some("tcp"), "{connect:?}");
    let sendmsg = agent.wait_for_event(|e| {
        e.operation == "sendmsg" && e.peer.as_ref().is_some_and(|peer| peer.port == 8083)
    })?;
    assert_eq!(sendmsg.verdict, VerdictName::Deny, "{sendmsg:?}");
    let packet = agent.wait_for_event(|e| {
        e.operation == "socket" && e.detail.as_deref().is_some_and(|d| d.starts_with("packet socket"))
    })?;
    assert_eq!(packet.verdict, VerdictName::Deny, "{packet:?}");
    let denied = agent
        .events()?
        .into_iter()
        .filter(|e| e.kind == Kind::Network && e.verdict == VerdictName::Deny)
        .count();
    assert_eq!(denied, 9, "one event per refused call");
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn audit_mode_lets_mutations_through() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (containerd, db, other, mut agent) = start_pods().await?;
    skip_unless_lsm!(agent, containerd);
    apply_read_only(&mut agent, &db, &other, "audit").await?;
    let output = shell(&db, "touch /created && echo x >> /data.txt && mkdir /made").await?;
    assert_eq!(output.exit_code, 0, "{output:?}");
    let event = agent.wait_for_event(|e| e.kind == Kind::File && e.verdict == VerdictName::Audit)?;
    assert_eq!(event.pod.as_deref(), Some("db"), "{event:?}");
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn require_lsm_starts_with_lsm_backend() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let mut agent = Agent::start(&containerd, &[])?;
    agent.wait_ready()?;
    skip_unless_lsm!(agent, containerd);
    agent.stop()?;

    let dir = containerd.dir().join("require-lsm");
    std::fs::create_dir_all(dir.join("policies"))?;
    let api_socket = dir.join("api.sock");
    let stderr = std::fs::File::create(dir.join("stderr.log"))?;
    let mut child = std::process::Command::new(parapet_tests::agent::parapet_bin()?)
        .arg("agent")
        .arg("--require-lsm")
        .arg("--policy-dir")
        .arg(dir.join("policies"))
        .arg("--cri-socket")
        .arg(containerd.socket())
        .arg("--cgroup-root")
        .arg(containerd.cgroup().v2_path())
        .args(["--metrics-address", "127.0.0.1:0", "--api-socket"])
        .arg(&api_socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()?;
    let started = std::time::Instant::now();
    while !api_socket.exists() && started.elapsed() < std::time::Duration::from_secs(120) {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("stderr.log"))?;
            panic!("the agent exited with {status} under --require-lsm:\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let serving = api_socket.exists();
    child.kill()?;
    child.wait()?;
    assert!(serving, "the agent did not serve its API socket under --require-lsm");
    containerd.cleanup().await?;
    Ok(())
}
