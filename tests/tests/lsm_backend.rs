//! The BPF LSM backend, end to end on real pods: mutations of a read-only
//! root, refused programs and connections to peers a policy does not
//! allow fail with EPERM before they happen, nothing is killed, and each
//! refusal is reported.
//!
//! These tests need a kernel that runs BPF LSM programs with `bpf` in its
//! active LSM list, which is why they run in a virtual machine. Each test
//! first reads the backend the agent chose from its status and prints `SKIPPED:` with
//! the reason where the LSM backend is not in use.

use std::collections::HashMap;

use anyhow::Result;
use parapet::event::{Event, Kind, VerdictName};
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
/// arrives. The files are a data file, a hard link to it from a writable
/// directory of the root file system, a directory tree 64 levels deep with
/// a file and an empty directory at its bottom, a file below a path of
/// over 4096 bytes, and files for the io_uring cases. A shell keeps a write
/// descriptor open and writes through it once `/tmp/go` exists. A netprobe
/// keeps a read-write descriptor of `/data.txt` open and tries every
/// descriptor change once `/tmp/go-held` exists.
const PREPARE: &str = "set -e
echo original > /data.txt && chmod 644 /data.txt && echo other > /other.txt
echo other > /uring-other.txt && echo victim > /uring-victim.txt
mkdir -p /var/scratch && ln /data.txt /var/scratch/hard.txt
deep=/deep; i=0; while [ $i -lt 64 ]; do deep=$deep/d$i; i=$((i+1)); done
mkdir -p $deep/empty && echo deep > $deep/file && echo $deep > /tmp/deep-path
long=/long; i=0; while [ $i -lt 20 ]; do long=$long/$(printf 'n%.0s' $(seq 250)); i=$((i+1)); done
echo $long > /tmp/long-name
cd / && for part in $(tr / ' ' < /tmp/long-name); do mkdir $part && cd -P $part; done && echo long > file && cd /
(exec 3>>/data.txt; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
 if echo late >&3; then echo wrote > /tmp/late-result; else echo refused > /tmp/late-result; fi) \
 </dev/null >/dev/null 2>&1 &
/usr/local/bin/netprobe held /data.txt /tmp/go-held /tmp/held-result </dev/null >/dev/null 2>&1 &
";

/// Each mutation of the root file system: what it is, a shell command, and
/// the LSM hook and path of the event that reports it. A path that starts
/// with `…` is the ending of the reported path, and `a|b` names either
/// hook.
const MUTATIONS: [(&str, &str, &str, &str); 13] = [
    ("create", "touch /created", "path_mknod", "/created"),
    ("write", "echo changed > /data.txt", "file_open", "/data.txt"),
    ("append", "echo changed >> /data.txt", "file_open", "/data.txt"),
    ("truncate through O_TRUNC", ": > /data.txt", "file_open", "/data.txt"),
    ("truncate", "truncate -s 0 /data.txt", "file_open", "/data.txt"),
    ("unlink", "rm /data.txt", "path_unlink", "/data.txt"),
    ("rename over", "mv /other.txt /data.txt", "path_rename", "/other.txt"),
    ("mkdir", "mkdir /made", "path_mkdir", "/made"),
    ("rmdir", "rmdir $(cat /tmp/deep-path)/empty", "path_rmdir", "…/d63/empty"),
    ("link", "ln /data.txt /hard.txt", "path_link", "/hard.txt"),
    ("symlink", "ln -s /data.txt /soft.txt", "path_symlink", "/soft.txt"),
    ("mknod", "mkfifo /fifo", "path_mknod", "/fifo"),
    ("chmod", "chmod 777 /data.txt", "path_chmod", "/data.txt"),
];

/// Ways around a path check, each of which must still be refused, in the
/// shape of `MUTATIONS`.
const BYPASSES: [(&str, &str, &str, &str); 8] = [
    ("write through a symlink in a writable path", "ln -sf /data.txt /tmp/link && echo x > /tmp/link", "file_open", "/data.txt"),
    ("write through a hard link made before the policy", "echo x >> /var/scratch/hard.txt", "file_open", "/var/scratch/hard.txt"),
    ("chmod through a hard link made before the policy", "chmod 600 /var/scratch/hard.txt", "path_chmod", "/var/scratch/hard.txt"),
    ("reopen of a read-only descriptor for writing", "exec 3</data.txt && echo x > /proc/self/fd/3", "file_open", "/data.txt"),
    ("write through ..", "cd /tmp && echo x > ../data.txt", "file_open", "/data.txt"),
    ("write 64 directories deep", "echo x > $(cat /tmp/deep-path)/file", "file_open", "…/d63/file"),
    ("write below a path over 4096 bytes", "cd / && for part in $(tr / ' ' < /tmp/long-name); do cd -P $part || exit 1; done && echo x > file", "file_open", "/file"),
    ("chown", "chown 1:1 /data.txt", "path_chown", "/data.txt"),
];

/// Changes through descriptors that netprobe opens itself (`netprobe file
/// OPERATION /data.txt`), with the hook that reports each once the open
/// is let through. `mmap-shared` runs before `ftruncate`, because a store
/// into a mapping of an empty file faults.
const DESCRIPTOR_CHANGES: [(&str, &str); 5] = [
    ("copy-range", "file_permission"),
    ("splice", "file_permission"),
    ("fallocate", "file_permission"),
    ("mmap-shared", "mmap_file"),
    ("ftruncate", "file_truncate|path_truncate"),
];

/// Changes issued through io_uring (`netprobe uring OPERATION ARGUMENTS`),
/// with the hook and path that report each. Operations on a descriptor
/// open it for writing through the ring first, and that open is refused.
const URING_CHANGES: [(&str, &str, &str, &str); 10] = [
    ("openat-write", "/data.txt", "file_open", "/data.txt"),
    ("write", "/data.txt", "file_permission", "/data.txt"),
    ("fallocate", "/data.txt", "file_permission", "/data.txt"),
    ("splice", "/data.txt", "file_permission", "/data.txt"),
    ("ftruncate", "/data.txt", "file_truncate", "/data.txt"),
    ("renameat", "/uring-other.txt /uring-renamed.txt", "path_rename", "/uring-other.txt"),
    ("unlinkat", "/uring-victim.txt", "path_unlink", "/uring-victim.txt"),
    ("mkdirat", "/uring-dir", "path_mkdir", "/uring-dir"),
    ("symlinkat", "/data.txt /uring-link", "path_symlink", "/uring-link"),
    ("linkat", "/data.txt /uring-hard", "path_link", "/uring-hard"),
];

/// Attempts of `netprobe held` on the descriptor it opened before the
/// policy arrived, with the hook that reports each once it is let through.
/// The shared mapping is made after the policy: stores into a mapping made
/// before it reach the page cache without any hook, so no LSM can refuse
/// or report them, and no case here tries.
const HELD_ATTEMPTS: [(&str, &str); 11] = [
    ("write", "file_permission"),
    ("pwrite", "file_permission"),
    ("ftruncate", "file_truncate|path_truncate"),
    ("fallocate", "file_permission"),
    ("copy_file_range", "file_permission"),
    ("splice", "file_permission"),
    ("mmap-shared", "mmap_file"),
    ("io_uring write", "file_permission"),
    ("io_uring fallocate", "file_permission"),
    ("io_uring splice", "file_permission"),
    ("io_uring ftruncate", "file_truncate"),
];

/// How one attempted change ended, read from netprobe's or the shell's
/// output.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    RefusedWithEperm,
    /// The kernel lacks the io_uring opcode.
    Unsupported,
    Other,
}

fn outcome(text: &str) -> Outcome {
    let text = text.trim();
    if text.contains("io_uring unavailable") {
        Outcome::Other
    } else if text.starts_with("unsupported:") {
        Outcome::Unsupported
    } else if text.contains(EPERM_TEXT) {
        Outcome::RefusedWithEperm
    } else if text == "ok" {
        Outcome::Done
    } else {
        Outcome::Other
    }
}

/// Runs each command in one shell in the pod, each in a subshell of its
/// own, and returns its combined output and exit status by index. One exec
/// for many commands keeps a test inside the guest's time limit under
/// emulation.
async fn run_batch(pod: &Pod, commands: &[String]) -> Result<Vec<(String, i32)>> {
    let mut script = String::new();
    for (index, command) in commands.iter().enumerate() {
        script.push_str(&format!("echo '=={index}=='; ( {command} ) 2>&1 </dev/null; echo \"==status $?\"\n"));
    }
    let output = shell(pod, &script).await?;
    let mut results = Vec::new();
    let mut current: Option<String> = None;
    for line in output.stdout.lines() {
        if let Some(status) = line.strip_prefix("==status ") {
            let text = current.take().unwrap_or_default();
            results.push((text, status.trim().parse().unwrap_or(-1)));
        } else if line.starts_with("==") && line.ends_with("==") {
            current = Some(String::new());
        } else if let Some(text) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert_eq!(results.len(), commands.len(), "batch output: {output:?}");
    Ok(results)
}

/// Fails loudly when `kernel.io_uring_disabled` keeps io_uring from the
/// pods, because every io_uring case would then fail for that reason.
/// Linux 6.1 lacks the setting, which means io_uring is allowed.
fn check_io_uring_allowed() -> Result<()> {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(value) => assert_eq!(
            value.trim(),
            "0",
            "io_uring is disabled on this kernel (kernel.io_uring_disabled = {}), so the io_uring cases cannot run",
            value.trim()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error.into()),
    }
    Ok(())
}

/// Prints why a case did not run. IORING_OP_FTRUNCATE came with Linux
/// 6.9, so `io_uring_ftruncate_refused` reports it as skipped on older
/// kernels, and the batteries that also try it stay countable as passed.
/// Any other opcode a kernel lacks skips the whole test.
fn report_unsupported(case: &str, kernel: &str, text: &str) {
    let text = text.trim();
    if case.contains("ftruncate") {
        println!("NOTE: {case} not run on Linux {kernel} (io_uring_ftruncate_refused reports the skip): {text}");
    } else {
        println!("SKIPPED: {case} on Linux {kernel}: {text}");
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "an unknown kernel".to_owned(), |text| text.trim().to_owned())
}

/// Returns a shell command that waits for the file at `path` to have
/// content, 15 s or the guests' longer limit at most, then prints it.
fn cat_when_written(path: &str) -> String {
    let tenths = parapet_tests::agent::raised_limit(std::time::Duration::from_secs(15)).as_secs() * 10;
    format!("i=0; while [ ! -s {path} ] && [ $i -lt {tenths} ]; do sleep 0.1; i=$((i+1)); done; cat {path}")
}

/// Triggers `netprobe held` in `pod` and returns its outcome per attempt.
async fn held_outcomes(pod: &Pod) -> Result<HashMap<String, String>> {
    shell(pod, "touch /tmp/go-held").await?;
    let output = shell(pod, &cat_when_written("/tmp/held-result")).await?;
    assert_eq!(output.exit_code, 0, "netprobe held wrote no result: {output:?}");
    let outcomes: HashMap<String, String> = output
        .stdout
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, text)| (name.to_owned(), text.to_owned()))
        .collect();
    for (name, _) in HELD_ATTEMPTS {
        assert!(outcomes.contains_key(name), "no outcome for {name}: {output:?}");
    }
    Ok(outcomes)
}

/// Returns whether `event` is an audit of the db pod by the LSM hook
/// `operation` (`a|b` for either) at `path` (`…end` for an ending).
fn is_audit(event: &Event, operation: &str, path: &str) -> bool {
    let path_matches = |reported: &str| match path.strip_prefix('…') {
        Some(ending) => reported.ends_with(ending),
        None => reported == path,
    };
    event.kind == Kind::File
        && event.verdict == VerdictName::Audit
        && event.pod.as_deref() == Some("db")
        && operation.split('|').any(|name| event.operation == name)
        && event.path.as_deref().is_some_and(path_matches)
}

/// Waits until the agent has reported an audit for every expected
/// `(operation, path)`, as many as the list repeats it, and fails with
/// the ones missing.
fn wait_for_audits(agent: &mut Agent, expected: &[(String, String)]) -> Result<()> {
    let mut wanted: HashMap<&(String, String), usize> = HashMap::new();
    for pair in expected {
        *wanted.entry(pair).or_default() += 1;
    }
    let started = std::time::Instant::now();
    loop {
        let events = agent.events()?;
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|((operation, path), &count)| {
                let seen = events.iter().filter(|event| is_audit(event, operation, path)).count();
                (seen < count).then(|| format!("{operation} {path}: {seen} of {count}"))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if started.elapsed() > parapet_tests::agent::wait_limit() {
            let audits: Vec<(String, Option<String>)> = events
                .iter()
                .filter(|event| event.verdict == VerdictName::Audit)
                .map(|event| (event.operation.clone(), event.path.clone()))
                .collect();
            panic!("audit events missing: {missing:#?}\naudits seen: {audits:#?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

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

    for (what, command, _, _) in MUTATIONS {
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

    for (what, command, _, _) in BYPASSES {
        let output = shell(&db, command).await?;
        assert_ne!(output.exit_code, 0, "{what} succeeded: {output:?}");
        assert!(output.stderr.contains(EPERM_TEXT), "{what}: {output:?}");
    }
    // Changes through descriptors, which no path check sees.
    for (operation, _) in DESCRIPTOR_CHANGES {
        let output = shell(&db, &format!("{NETPROBE} file {operation} /data.txt")).await?;
        assert_ne!(output.exit_code, 0, "{operation} succeeded: {output:?}");
        assert!(output.stdout.contains(EPERM_TEXT), "{operation}: {output:?}");
    }
    // A POSIX ACL, which Linux 6.2 and later set through `inode_set_acl`.
    let acl = shell(&db, &format!("{NETPROBE} file acl /data.txt")).await?;
    assert!(acl.stdout.contains(EPERM_TEXT), "acl: {acl:?}");
    // Inode flags, through a descriptor open for reading.
    let flags = shell(&db, &format!("{NETPROBE} file setflags /data.txt")).await?;
    assert!(flags.stdout.contains(EPERM_TEXT), "setflags: {flags:?}");

    // The same changes issued through io_uring.
    check_io_uring_allowed()?;
    let kernel = kernel_release();
    let commands: Vec<String> = URING_CHANGES
        .iter()
        .map(|(operation, arguments, _, _)| format!("{NETPROBE} uring {operation} {arguments}"))
        .collect();
    let results = run_batch(&db, &commands).await?;
    for ((operation, ..), (text, status)) in URING_CHANGES.iter().zip(&results) {
        match outcome(text) {
            Outcome::RefusedWithEperm => assert_eq!(*status, 1, "io_uring {operation}: {text}"),
            Outcome::Unsupported => report_unsupported(&format!("io_uring {operation}"), &kernel, text),
            other => panic!("io_uring {operation} was not refused with EPERM ({other:?}): {text}"),
        }
    }

    // The descriptors opened for writing before the policy arrived.
    shell(&db, "touch /tmp/go").await?;
    let late = shell(&db, &cat_when_written("/tmp/late-result")).await?;
    assert_eq!(late.stdout_trimmed(), "refused", "{late:?}");
    let held = held_outcomes(&db).await?;
    for (name, _) in HELD_ATTEMPTS {
        let text = &held[name];
        match outcome(text) {
            Outcome::RefusedWithEperm => {}
            Outcome::Unsupported => report_unsupported(&format!("held descriptor, {name}"), &kernel, text),
            other => panic!("{name} through the held descriptor was not refused with EPERM ({other:?}): {text}"),
        }
    }

    // A bind of the root made inside a user and mount namespace that the
    // agent has already handled. The agent finds the new mounts within a
    // second.
    let rebind = "mkdir -p /tmp/rebind && unshare -Urm sh -c \
        'sleep 2; mount -o rbind / /tmp/rebind && sleep 3 && echo x >> /tmp/rebind/data.txt'";
    let output = shell(&db, rebind).await?;
    assert_ne!(output.exit_code, 0, "write through a later bind of the root: {output:?}");
    assert!(output.stderr.contains(EPERM_TEXT), "write through a later bind of the root: {output:?}");

    let content = shell(&db, "cat /data.txt; stat -c %s /data.txt; cat $(cat /tmp/deep-path)/file").await?;
    assert_eq!(content.stdout.split_whitespace().collect::<Vec<_>>(), ["original", "9", "deep"]);
    let listing = shell(&db, "ls /").await?;
    for name in ["uring-renamed.txt", "uring-dir", "uring-link", "uring-hard"] {
        assert!(!listing.stdout.lines().any(|line| line == name), "{name} exists: {}", listing.stdout);
    }
    for name in ["uring-other.txt", "uring-victim.txt"] {
        assert!(listing.stdout.lines().any(|line| line == name), "{name} is gone: {}", listing.stdout);
    }

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
async fn io_uring_ftruncate_refused() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (containerd, db, other, mut agent) = start_pods().await?;
    skip_unless_lsm!(agent, containerd);
    check_io_uring_allowed()?;
    let probe = shell(&db, &format!("echo x > /tmp/probe && {NETPROBE} uring ftruncate /tmp/probe")).await?;
    if outcome(&probe.stdout) == Outcome::Unsupported {
        println!(
            "SKIPPED: io_uring_ftruncate_refused: Linux {} lacks IORING_OP_FTRUNCATE (added in 6.9)",
            kernel_release()
        );
        agent.stop()?;
        containerd.cleanup().await?;
        return Ok(());
    }
    assert_eq!(outcome(&probe.stdout), Outcome::Done, "{probe:?}");
    apply_read_only(&mut agent, &db, &other, "enforce").await?;
    agent.wait_for_log(&["filesystem made read-only", &db.container_id])?;

    let held = held_outcomes(&db).await?;
    let text = &held["io_uring ftruncate"];
    assert_eq!(outcome(text), Outcome::RefusedWithEperm, "io_uring ftruncate on the held descriptor: {text}");
    let size = shell(&db, "stat -c %s /data.txt").await?;
    assert_eq!(size.stdout_trimmed(), "9", "{size:?}");
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
    // A UDP socket connected to a refused peer before the policy arrives.
    let held = format!(
        "netprobe held-udp {} 8083 /tmp/go-udp /tmp/held-udp </dev/null >/dev/null 2>&1 &",
        server.ip
    );
    let output = shell(&client, &held).await?;
    assert_eq!(output.exit_code, 0, "{output:?}");
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
        ("UDP to an AF_UNSPEC address", vec!["send-unspec", "udp", &server_ip, "8083"]),
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
    shell(&client, "touch /tmp/go-udp").await?;
    let held = shell(&client, &cat_when_written("/tmp/held-udp")).await?;
    assert!(held.stdout.starts_with("error errno=1 "), "send on a socket connected before the policy: {held:?}");
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
    assert_eq!(denied, 11, "one event per refused call");
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
    agent.wait_for_log(&["filesystem mutations audited", &db.container_id])?;
    check_io_uring_allowed()?;
    let kernel = kernel_release();
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut expect = |operation: &str, path: &str| expected.push((operation.to_owned(), path.to_owned()));

    // The descriptors opened before the policy arrived go first, while
    // `/data.txt` is still the file they hold.
    shell(&db, "touch /tmp/go").await?;
    let late = shell(&db, &cat_when_written("/tmp/late-result")).await?;
    assert_eq!(late.stdout_trimmed(), "wrote", "{late:?}");
    expect("file_permission", "/data.txt");
    let held = held_outcomes(&db).await?;
    for (name, operation) in HELD_ATTEMPTS {
        let text = &held[name];
        match outcome(text) {
            Outcome::Done => expect(operation, "/data.txt"),
            Outcome::Unsupported => report_unsupported(&format!("held descriptor, {name}"), &kernel, text),
            other => panic!("{name} through the held descriptor failed under audit mode ({other:?}): {text}"),
        }
    }

    // Bypasses before mutations: the hard link must still have two links.
    let commands: Vec<String> = BYPASSES.iter().map(|(_, command, _, _)| (*command).to_owned()).collect();
    for ((what, _, operation, path), (text, status)) in BYPASSES.iter().zip(run_batch(&db, &commands).await?) {
        assert_eq!(status, 0, "{what} failed under audit mode: {text}");
        expect(operation, path);
    }
    let commands: Vec<String> = DESCRIPTOR_CHANGES
        .iter()
        .map(|(operation, _)| format!("{NETPROBE} file {operation} /data.txt"))
        .collect();
    for ((operation, hook), (text, status)) in DESCRIPTOR_CHANGES.iter().zip(run_batch(&db, &commands).await?) {
        assert_eq!(outcome(&text), Outcome::Done, "{operation} failed under audit mode: {text}");
        assert_eq!(status, 0, "{operation}: {text}");
        expect(hook, "/data.txt");
    }
    let commands: Vec<String> = URING_CHANGES
        .iter()
        .map(|(operation, arguments, _, _)| format!("{NETPROBE} uring {operation} {arguments}"))
        .collect();
    for ((operation, _, hook, path), (text, _)) in URING_CHANGES.iter().zip(run_batch(&db, &commands).await?) {
        match outcome(&text) {
            Outcome::Done => expect(hook, path),
            Outcome::Unsupported => report_unsupported(&format!("io_uring {operation}"), &kernel, &text),
            other => panic!("io_uring {operation} failed under audit mode ({other:?}): {text}"),
        }
    }
    let commands: Vec<String> = MUTATIONS.iter().map(|(_, command, _, _)| (*command).to_owned()).collect();
    for ((what, _, operation, path), (text, status)) in MUTATIONS.iter().zip(run_batch(&db, &commands).await?) {
        assert_eq!(status, 0, "{what} failed under audit mode: {text}");
        expect(operation, path);
    }

    let listing = shell(&db, "ls /").await?;
    for name in ["created", "made", "hard.txt", "soft.txt", "fifo", "uring-dir", "uring-link", "uring-hard"] {
        assert!(listing.stdout.lines().any(|line| line == name), "{name} is missing: {}", listing.stdout);
    }
    wait_for_audits(&mut agent, &expected)?;
    // Overlayfs opens and writes its backing file with the container's
    // path: that second pass must not be reported again.
    let opens = agent.events()?.iter().filter(|event| is_audit(event, "file_open", "/created")).count();
    assert_eq!(opens, 1, "the creating open of /created was reported {opens} times");
    // With the LSM backend the syscall tracepoints report no audits, so
    // each change is reported once, by its LSM hook.
    let hooks = ["file_", "path_", "mmap_file", "inode_"];
    for event in agent.events()? {
        if event.verdict == VerdictName::Audit {
            let by_hook = hooks.iter().any(|hook| event.operation.starts_with(hook));
            assert!(by_hook, "an audit reported by a syscall tracepoint: {event:?}");
        }
    }
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
    let mut bpffs = parapet_tests::bpffs::PrivateBpffs::mount(&dir.join("bpffs"))?;
    let mut child = std::process::Command::new(parapet_tests::agent::parapet_bin()?)
        .arg("agent")
        .arg("--pin-dir")
        .arg(bpffs.pin_dir())
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
    let limit = parapet_tests::agent::raised_limit(std::time::Duration::from_secs(120));
    while !api_socket.exists() && started.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("stderr.log"))?;
            panic!("the agent exited with {status} under --require-lsm:\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let serving = api_socket.exists();
    child.kill()?;
    child.wait()?;
    bpffs.unmount()?;
    assert!(serving, "the agent did not serve its API socket under --require-lsm");
    containerd.cleanup().await?;
    Ok(())
}
