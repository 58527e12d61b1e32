//! Read-only root filesystems on a kernel without BPF LSM. The agent makes
//! a policed container's mounts read-only from outside, keeps the declared
//! writable paths writable, and reports loudly when it cannot.

use std::time::{Duration, Instant};

use anyhow::Result;
use parapet::event::{Kind, VerdictName};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, Tail, metric_value},
};

fn read_only_policy(mode: &str) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: db-read-only
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: db}}
  mode: {mode}
  filesystem:
    readOnly: true
    writablePaths: [/tmp]
"
    )
}

/// Each mutation of the root filesystem, as a shell command.
const MUTATIONS: [(&str, &str); 9] = [
    ("create", "touch /created"),
    ("write", "echo changed > /data.txt"),
    ("truncate", ": > /data.txt"),
    ("unlink", "rm /data.txt"),
    ("rename", "mv /data.txt /moved.txt"),
    ("mkdir", "mkdir /made"),
    ("link", "ln /data.txt /hard.txt"),
    ("symlink", "ln -s /data.txt /soft.txt"),
    ("chmod", "chmod 777 /data.txt"),
];

async fn shell(pod: &Pod, command: &str) -> Result<parapet_tests::ExecOutput> {
    pod.exec(&["sh", "-c", command]).await
}

async fn prepare(pod: &Pod) -> Result<()> {
    let output = shell(pod, "echo original > /data.txt && chmod 644 /data.txt").await?;
    assert_eq!(output.exit_code, 0, "{output:?}");
    Ok(())
}

/// Checks that every mutation fails with EROFS and changes nothing.
async fn assert_read_only(pod: &Pod) -> Result<()> {
    for (what, command) in MUTATIONS {
        let output = shell(pod, command).await?;
        assert_ne!(output.exit_code, 0, "{what} succeeded: {output:?}");
        assert!(output.stderr.contains("Read-only file system"), "{what}: {output:?}");
    }
    let content = shell(pod, "cat /data.txt").await?;
    assert_eq!(content.stdout_trimmed(), "original");
    let mode = shell(pod, "stat -c %a /data.txt").await?;
    assert_eq!(mode.stdout_trimmed(), "644");
    let listing = shell(pod, "ls /").await?;
    for name in ["created", "moved.txt", "made", "hard.txt", "soft.txt"] {
        assert!(!listing.stdout.lines().any(|line| line == name), "{name} exists: {}", listing.stdout);
    }
    for file in ["/etc/hosts", "/etc/resolv.conf"] {
        let output = shell(pod, &format!("echo x >> {file}")).await?;
        assert!(output.stderr.contains("Read-only file system"), "{file}: {output:?}");
    }
    for (what, command) in [("a node in /dev", "mknod /dev/extra c 1 3"), ("a file in /dev", "echo x > /dev/kept")] {
        let output = shell(pod, command).await?;
        assert!(output.stderr.contains("Read-only file system"), "{what}: {output:?}");
    }
    let null = shell(pod, "echo discarded > /dev/null").await?;
    assert_eq!(null.exit_code, 0, "writing to /dev/null: {null:?}");
    let tmp = shell(pod, "echo scratch > /tmp/scratch && cat /tmp/scratch").await?;
    assert_eq!(tmp.stdout_trimmed(), "scratch", "{tmp:?}");
    Ok(())
}

#[tokio::test]
async fn read_only_root_refuses_every_mutation() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let db = Pod::run(&containerd, "db", "clinic", &[("app", "db")]).await?;
    let other = Pod::run(&containerd, "other", "clinic", &[("app", "other")]).await?;
    prepare(&db).await?;
    prepare(&other).await?;
    let mut agent = Agent::start(&containerd, &[("db.yaml", &read_only_policy("enforce"))])?;
    agent.wait_ready()?;
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;

    assert_read_only(&db).await?;
    // A pod that no policy selects can do all of it.
    for (what, command) in MUTATIONS {
        prepare(&other).await?;
        let output = shell(&other, command).await?;
        assert_eq!(output.exit_code, 0, "{what} in an unpoliced pod: {output:?}");
    }
    // Each refused mutation is reported with the path as given.
    for path in ["/created", "/data.txt", "/made", "/hard.txt", "/soft.txt"] {
        let event = agent.wait_for_event(|e| {
            e.kind == Kind::File && e.verdict == VerdictName::Deny && e.path.as_deref() == Some(path)
        })?;
        assert_eq!(event.pod.as_deref(), Some("db"), "{event:?}");
        assert_eq!(event.policy.as_deref(), Some("db-read-only"));
        assert_eq!(event.resolved_path.as_deref(), Some(path));
        assert!(event.detail.as_deref().is_some_and(|d| d.contains("Read-only file system")), "{event:?}");
    }
    // Calls on a descriptor give no path; the event names the descriptor
    // and the file it was open on.
    for call in ["fchmod", "fsetxattr"] {
        let output = shell(&db, &format!("/usr/local/bin/netprobe {call} /data.txt")).await?;
        assert!(output.stdout.contains("errno=30"), "{call}: {output:?}");
        let event = agent.wait_for_event(|e| e.kind == Kind::File && e.operation == call)?;
        assert_eq!(event.verdict, VerdictName::Deny, "{event:?}");
        assert_eq!(event.path, None, "{event:?}");
        assert_eq!(event.resolved_path.as_deref(), Some("/data.txt"), "{event:?}");
        assert!(event.detail.as_deref().is_some_and(|d| d.contains("on descriptor")), "{event:?}");
    }
    let mode = shell(&db, "stat -c %a /data.txt").await?;
    assert_eq!(mode.stdout_trimmed(), "644");
    // A path of 255 bytes fills the kernel's buffer whole and is not cut.
    // A longer one is cut, and its resolved path is left out.
    let full = format!("/{}", "L".repeat(254));
    let long = format!("/etc{}/long", "/.".repeat(150));
    for (path, cut) in [(&full, false), (&long, true)] {
        let output = shell(&db, &format!("touch {path}")).await?;
        assert!(output.stderr.contains("Read-only file system"), "{output:?}");
        let event = agent.wait_for_event(|e| {
            e.kind == Kind::File && e.path.as_deref().is_some_and(|p| path.starts_with(p) && p.len() >= 255)
        })?;
        assert_eq!(event.path_truncated, Some(cut), "{event:?}");
        let resolved = if cut { None } else { Some(path.as_str()) };
        assert_eq!(event.resolved_path.as_deref(), resolved, "{event:?}");
    }
    // openat2 keeps its flags in user memory.
    let output = shell(&db, "/usr/local/bin/netprobe openat2 /created2").await?;
    assert!(output.stdout.contains("errno=30"), "openat2: {output:?}");
    let event = agent.wait_for_event(|e| e.kind == Kind::File && e.operation == "openat2")?;
    assert_eq!(event.path.as_deref(), Some("/created2"), "{event:?}");
    assert_eq!(event.verdict, VerdictName::Deny);
    // A `tail` started afterwards replays them, filtered, as one line each.
    let mut replay = Tail::start(
        &agent,
        &["--since", "5m", "--kind", "file", "--verdict", "deny", "--container", "main", "--policy", "db-read-only"],
    )?;
    let line = replay.wait_for_line(&["deny", "file", "fchmod", "clinic/db/main", "-> /data.txt", "policy=db-read-only"])?;
    assert!(line.contains("rule=spec.filesystem.readOnly"), "{line}");
    let other_kind = Tail::start(&agent, &["--since", "5m", "--kind", "network", "--output", "json"])?;
    let mut all_kinds = Tail::start(&agent, &["--since", "5m", "--output", "json"])?;
    all_kinds.wait_for_line(&["\"fsetxattr\""])?;
    assert_eq!(other_kind.output(), "", "no network events happened");
    let status = agent.status().await?;
    let entry = status.read_only.iter().find(|c| c.container_id == db.container_id);
    assert!(entry.is_some_and(|c| c.enforced), "{status:#?}");
    let metrics = agent.metrics()?;
    let file_denials = [("pod", "db"), ("kind", "file"), ("verdict", "deny")];
    assert!(
        metric_value(&metrics, "parapet_violations_total", &file_denials).is_some_and(|v| v >= 9.0),
        "{metrics}"
    );
    let filesystem = [("promise", "filesystem")];
    assert_eq!(metric_value(&metrics, "parapet_workloads_selected", &filesystem), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "parapet_workloads_not_enforced", &filesystem), Some(0.0));

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn policy_reaches_a_running_pod() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let db = Pod::run(&containerd, "db", "clinic", &[("app", "db")]).await?;
    prepare(&db).await?;
    let mut agent = Agent::start(&containerd, &[])?;
    agent.wait_ready()?;
    assert_eq!(shell(&db, "touch /before").await?.exit_code, 0);

    let written = Instant::now();
    agent.write_policy("db.yaml", &read_only_policy("enforce"))?;
    loop {
        if shell(&db, "touch /after").await?.exit_code != 0 {
            break;
        }
        assert!(written.elapsed() < Duration::from_secs(20), "the policy never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("lag from the policy file changing to a refused write: {:?}", written.elapsed());
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;
    assert_read_only(&db).await?;

    // Removing the policy cannot undo the remount, and the status shows it.
    std::fs::remove_file(agent.policy_dir.join("db.yaml"))?;
    let removed = Instant::now();
    loop {
        let status = agent.status().await?;
        let entry = status.read_only.iter().find(|c| c.container_id == db.container_id);
        if entry.is_some_and(|c| c.released) {
            break;
        }
        assert!(removed.elapsed() < Duration::from_secs(20), "never released: {:?}", status.read_only);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(shell(&db, "touch /after-removal").await?.exit_code, 0);
    let metrics = agent.metrics()?;
    assert!(metrics.contains("parapet_workloads_selected{promise=\"filesystem\"} 0"), "{metrics}");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn open_writer_delays_enforcement_loudly() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let db = Pod::run(&containerd, "db", "clinic", &[("app", "db")]).await?;
    prepare(&db).await?;
    let holder = "sleep 3600 3>/held.txt >/dev/null 2>&1 & echo $! > /tmp/holder.pid";
    assert_eq!(shell(&db, holder).await?.exit_code, 0);
    let mut agent = Agent::start(&containerd, &[("db.yaml", &read_only_policy("enforce"))])?;
    agent.wait_ready()?;

    agent.wait_for_log(&["failed to make the filesystem read-only", &db.container_id])?;
    let event = agent.wait_for_event(|e| e.verdict == VerdictName::NotEnforced)?;
    assert_eq!(event.kind, Kind::File);
    assert_eq!(event.container_id.as_deref(), Some(db.container_id.as_str()));
    assert_eq!(event.policy.as_deref(), Some("db-read-only"));
    let detail = event.detail.clone().unwrap_or_default();
    assert!(detail.contains("open for writing"), "{detail}");
    let status = agent.status().await?;
    let entry = status.read_only.iter().find(|c| c.container_id == db.container_id);
    assert!(entry.is_some_and(|c| !c.enforced && c.reason.is_some()), "{status:#?}");
    let metrics = agent.metrics()?;
    let filesystem = [("promise", "filesystem")];
    assert_eq!(metric_value(&metrics, "parapet_workloads_not_enforced", &filesystem), Some(1.0), "{metrics}");

    assert_eq!(shell(&db, "kill $(cat /tmp/holder.pid)").await?.exit_code, 0);
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;
    assert_read_only(&db).await?;
    let metrics = agent.metrics()?;
    assert_eq!(metric_value(&metrics, "parapet_workloads_not_enforced", &filesystem), Some(0.0), "{metrics}");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

/// New pods under a read-only policy: the agent makes each one read-only
/// right after its container starts. The test prints how many first writes
/// got through in that moment, and checks that a write a second later fails.
#[tokio::test]
async fn new_pods_become_read_only_quickly() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    const PODS: usize = 5;
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let mut agent = Agent::start(&containerd, &[("db.yaml", &read_only_policy("enforce"))])?;
    agent.wait_ready()?;
    let first_action = "if echo written > /first 2>/dev/null; then echo wrote > /tmp/first; else echo refused > /tmp/first; fi; sleep 3600";
    let mut through = 0;
    for index in 0..PODS {
        let pod = Pod::run_command(&containerd, &format!("db-{index}"), "clinic", &[("app", "db")], &["sh", "-c", first_action]).await?;
        let started = Instant::now();
        agent.wait_for_log(&["filesystem made read-only", &pod.container_id])?;
        println!("db-{index}: read-only {:?} after the pod started", started.elapsed());
        if shell(&pod, "cat /tmp/first").await?.stdout_trimmed() == "wrote" {
            through += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = shell(&pod, "touch /later").await?;
        assert!(later.stderr.contains("Read-only file system"), "db-{index}: {later:?}");
        pod.remove().await?;
    }
    println!("first writes of new read-only pods that got through: {through} of {PODS}");
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn audit_mode_reports_every_mutation() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let db = Pod::run(&containerd, "db", "clinic", &[("app", "db")]).await?;
    let mut agent = Agent::start(&containerd, &[("db.yaml", &read_only_policy("audit"))])?;
    agent.wait_ready()?;
    agent.wait_enforced(&db.container_id)?;

    for (what, command) in MUTATIONS {
        prepare(&db).await?;
        let _ = shell(&db, "rm -rf /created /moved.txt /made /hard.txt /soft.txt").await?;
        let output = shell(&db, command).await?;
        assert_eq!(output.exit_code, 0, "{what} in audit mode: {output:?}");
    }
    assert_eq!(shell(&db, "echo scratch > /tmp/scratch").await?.exit_code, 0);
    // An O_PATH open ignores its write flag, so it is no mutation. The
    // mutation after it shows when its report would have arrived.
    let output = shell(&db, "/usr/local/bin/netprobe open-path /data.txt && touch /after-open-path").await?;
    assert_eq!(output.exit_code, 0, "{output:?}");
    agent.wait_for_event(|e| e.kind == Kind::File && e.path.as_deref() == Some("/after-open-path"))?;
    let events = agent.events()?;
    let reported = events.iter().find(|e| e.process == "netprobe" && e.path.as_deref() == Some("/data.txt"));
    assert!(reported.is_none(), "an O_PATH open was reported: {reported:?}");
    for path in ["/created", "/made", "/hard.txt", "/soft.txt", "/data.txt"] {
        let event = agent.wait_for_event(|e| {
            e.kind == Kind::File && e.verdict == VerdictName::Audit && e.path.as_deref() == Some(path)
        })?;
        assert_eq!(event.policy.as_deref(), Some("db-read-only"));
    }
    let events = agent.events()?;
    assert!(events.iter().all(|e| e.verdict != VerdictName::Deny), "{events:#?}");
    // Events and counters agree: every reported mutation is counted once.
    let audits = events
        .iter()
        .filter(|e| e.kind == Kind::File && e.verdict == VerdictName::Audit)
        .count();
    let metrics = agent.metrics()?;
    let labels = [("pod", "db"), ("kind", "file"), ("verdict", "audit")];
    let counted = metric_value(&metrics, "parapet_violations_total", &labels).unwrap_or(0.0);
    assert_eq!(counted as usize, audits, "{metrics}");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

/// Successful calls are judged only while the pinned `FILE_AUDIT_SLOTS`
/// count of policies that audit read-only mounts is above 0. An audit
/// policy that a reload adds, and one a restarted agent adopts, must be
/// counted before its workloads run, or their mutations go unreported.
/// Replacing the policy lowers the count again.
#[tokio::test]
async fn audit_policies_counted_across_restarts() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let db = Pod::run(&containerd, "db", "clinic", &[("app", "db")]).await?;
    let mut agent = Agent::start(&containerd, &[])?;
    agent.wait_ready()?;
    assert_eq!(agent.pinned_counter("FILE_AUDIT_SLOTS")?, 0);

    agent.write_policy("db.yaml", &read_only_policy("audit"))?;
    agent.wait_enforced(&db.container_id)?;
    assert_eq!(agent.pinned_counter("FILE_AUDIT_SLOTS")?, 1);
    assert_eq!(shell(&db, "touch /after-reload").await?.exit_code, 0);
    agent.wait_for_event(|e| e.verdict == VerdictName::Audit && e.path.as_deref() == Some("/after-reload"))?;

    agent.kill_keeping_pins()?;
    assert_eq!(shell(&db, "touch /while-down").await?.exit_code, 0);
    agent.restart(&containerd, &parapet_tests::agent::parapet_bin()?)?;
    agent.wait_ready()?;
    agent.wait_for_log(&["adopted the kernel state of the previous agent", "audit_policy_slots=1"])?;
    agent.wait_enforced(&db.container_id)?;
    // The pinned ring buffer keeps the report of the call made while no
    // agent ran.
    agent.wait_for_event(|e| e.verdict == VerdictName::Audit && e.path.as_deref() == Some("/while-down"))?;
    assert_eq!(shell(&db, "touch /after-restart").await?.exit_code, 0);
    agent.wait_for_event(|e| e.verdict == VerdictName::Audit && e.path.as_deref() == Some("/after-restart"))?;
    // The restarted agent's own slot replaced the adopted one.
    assert_eq!(agent.pinned_counter("FILE_AUDIT_SLOTS")?, 1);

    agent.write_policy("db.yaml", &read_only_policy("enforce"))?;
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.pinned_counter("FILE_AUDIT_SLOTS")? != 0 {
        assert!(Instant::now() < deadline, "the count of audit policies never went back to 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = shell(&db, "touch /after-enforce").await?;
    assert!(refused.stderr.contains("Read-only file system"), "{refused:?}");
    agent.wait_for_event(|e| e.verdict == VerdictName::Deny && e.path.as_deref() == Some("/after-enforce"))?;

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn mount_namespace_made_before_the_policy_becomes_read_only() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let db = Pod::run(&containerd, "db", "clinic", &[("app", "db")]).await?;
    prepare(&db).await?;
    // A user and mount namespace of its own needs no capability here.
    let escape = "unshare -Urm sh -c 'echo $$ > /tmp/escape.pid; exec sleep 3600' >/dev/null 2>&1 &";
    assert_eq!(shell(&db, escape).await?.exit_code, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while shell(&db, "test -s /tmp/escape.pid").await?.exit_code != 0 {
        assert!(Instant::now() < deadline, "the namespace was never made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut agent = Agent::start(&containerd, &[("db.yaml", &read_only_policy("enforce"))])?;
    agent.wait_ready()?;
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;

    let inside = "nsenter -t $(cat /tmp/escape.pid) -U -m --preserve-credentials sh -c 'touch /escaped'";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = shell(&db, inside).await?;
        if output.exit_code != 0 {
            assert!(output.stderr.contains("Read-only file system"), "{output:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the second namespace stayed writable: {output:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_read_only(&db).await?;

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
