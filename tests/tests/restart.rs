//! Enforcement across agent restarts: a policed pod keeps trying a refused
//! connect and a write to its read-only root while the agent is killed
//! with SIGKILL, started again, and replaced by a second binary. The
//! kernel programs stay attached through their pins, so not one attempt
//! may succeed, and the counters the restarted agent exports include the
//! attempts made while no agent ran.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use parapet::event::{Kind, VerdictName};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value, parapet_bin, wait_socket_programs_detached},
};

const SERVER_COMMAND: [&str; 3] = ["sh", "-c", "netprobe listen tcp 8080 & netprobe listen tcp 8081 & wait"];

fn policy(server: std::net::IpAddr) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: records-locked
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: records}}
  mode: enforce
  network:
    egress:
      - to: [{{address: {server}}}]
        ports: [{{port: 8080, protocol: TCP}}]
  filesystem:
    readOnly: true
    writablePaths: [/tmp]
"
    )
}

/// Builds the attacker's loop: a refused connect, then a write to the root,
/// each result on its own line of the container's log.
fn attacker_command(server: &str) -> Vec<String> {
    let script = format!(
        "while true; do \
           echo \"connect $(netprobe connect tcp {server} 8081)\"; \
           if echo x > /attempt 2>/dev/null; then echo 'write ok'; else echo 'write refused'; fi; \
           sleep 0.02; \
         done"
    );
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// Counts of the attacker's outcomes, from its container log.
#[derive(Debug, Default, Clone, Copy)]
struct Outcomes {
    connects_refused: u64,
    connects_through: u64,
    writes_refused: u64,
    writes_through: u64,
}

fn outcomes(log: &Path, skip_lines: usize) -> Result<(Outcomes, usize)> {
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut counts = Outcomes::default();
    for line in lines.iter().skip(skip_lines) {
        if line.contains("connect error errno=1 ") {
            counts.connects_refused += 1;
        } else if line.contains("connect ok") {
            counts.connects_through += 1;
        } else if line.ends_with("write refused") {
            counts.writes_refused += 1;
        } else if line.ends_with("write ok") {
            counts.writes_through += 1;
        }
    }
    Ok((counts, lines.len()))
}

/// Finds the CRI log file of the pod's only container.
fn container_log(containerd: &Containerd, pod: &Pod) -> Result<PathBuf> {
    let dir = containerd
        .dir()
        .join("logs")
        .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid));
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            return Ok(path);
        }
        for inner in fs::read_dir(&path).into_iter().flatten().flatten() {
            if inner.path().is_file() {
                return Ok(inner.path());
            }
        }
    }
    bail!("no container log under {}", dir.display())
}

fn violations(agent: &Agent, kind: &str) -> Result<f64> {
    let page = agent.metrics()?;
    Ok(metric_value(
        &page,
        "parapet_violations_total",
        &[("pod", "attacker"), ("kind", kind), ("verdict", "deny"), ("policy", "records-locked")],
    )
    .unwrap_or(0.0))
}

/// Waits until the attacker's log shows both refusals after `skip_lines`,
/// and returns the line count then.
async fn wait_for_refusals(log: &Path, skip_lines: usize) -> Result<usize> {
    let started = std::time::Instant::now();
    loop {
        let (counts, lines) = outcomes(log, skip_lines)?;
        if counts.connects_refused > 0 && counts.writes_refused > 0 {
            return Ok(lines);
        }
        if started.elapsed() > parapet_tests::agent::wait_limit() {
            bail!("the attacker's attempts were not refused: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the attacker's log shows both refusals after `skip_lines`,
/// or an attempt that got through, and returns the counts then.
async fn wait_for_attempts(log: &Path, skip_lines: usize) -> Result<Outcomes> {
    let started = std::time::Instant::now();
    loop {
        let (counts, _) = outcomes(log, skip_lines)?;
        let refused = counts.connects_refused > 0 && counts.writes_refused > 0;
        if refused || counts.connects_through + counts.writes_through > 0 {
            return Ok(counts);
        }
        if started.elapsed() > parapet_tests::agent::wait_limit() {
            bail!("the attacker made no attempt of each kind: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that the counters the agent exports now cover every refusal the
/// attacker logged before the scrape.
fn assert_counters_cover(agent: &Agent, log: &Path, from_line: usize, moment: &str) -> Result<()> {
    // A started agent exports the decision series once its first pass over
    // the workloads named their cgroups.
    let started = std::time::Instant::now();
    while violations(agent, "file")? == 0.0 && started.elapsed() < parapet_tests::agent::wait_limit() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (before_scrape, _) = outcomes(log, from_line)?;
    let network = violations(agent, "network")?;
    let file = violations(agent, "file")?;
    println!(
        "{moment}: counters network={network} file={file}; refusals logged since enforcement: {before_scrape:?}"
    );
    let covered = network >= before_scrape.connects_refused as f64 && file >= before_scrape.writes_refused as f64;
    if !covered {
        let page = agent.metrics()?;
        let series: Vec<&str> = page.lines().filter(|line| line.contains("attacker")).collect();
        bail!("{moment}: the counters miss refusals ({before_scrape:?}); the attacker's series:\n{}", series.join("\n"));
    }
    Ok(())
}

/// Checks that no connect and no write of the attacker got through after
/// line `enforced_from` of its log.
fn assert_nothing_got_through(log: &Path, enforced_from: usize) -> Result<()> {
    let (total, _) = outcomes(log, enforced_from)?;
    println!("attempts since enforcement began: {total:?}");
    assert_eq!(total.connects_through, 0, "a refused connect got through: {total:?}");
    assert_eq!(total.writes_through, 0, "a write to the read-only root got through: {total:?}");
    Ok(())
}

/// The server, the agent under the records policy, the attacker pod once
/// enforced, and the attacker's log.
struct Policed {
    server: Pod,
    agent: Agent,
    attacker: Pod,
    log: PathBuf,
}

/// Starts the server and the agent, then the attacker, and waits until the
/// agent enforces the attacker's policy.
async fn policed_attacker(containerd: &Containerd) -> Result<Policed> {
    let server = Pod::run_command(containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let mut agent = Agent::start(containerd, &[("records.yaml", &policy(server.ip))])?;
    agent.wait_ready()?;
    let command = attacker_command(&server.ip.to_string());
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let attacker = Pod::run_command(containerd, "attacker", "clinic", &[("app", "records")], &command).await?;
    agent.wait_enforced(&attacker.container_id)?;
    let log = container_log(containerd, &attacker)?;
    Ok(Policed { server, agent, attacker, log })
}

#[tokio::test]
async fn enforcement_survives_kill_restart_and_upgrade() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let Policed { server, mut agent, attacker, log } = policed_attacker(&containerd).await?;
    // Attempts from before the container was made read-only may succeed;
    // everything after the first refusal of each kind must not.
    let enforced_from = wait_for_refusals(&log, 0).await?;
    let generation = agent.status().await?.generation;
    assert_counters_cover(&agent, &log, enforced_from, "before the kill")?;

    // A crash: SIGKILL leaves no chance to clean up, and the pins hold.
    agent.kill_keeping_pins()?;
    let (_, kill_line) = outcomes(&log, enforced_from)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_down = wait_for_attempts(&log, kill_line).await?;
    println!("attempts while no agent ran: {while_down:?}");
    assert!(while_down.connects_refused > 0, "{while_down:?}");
    assert!(while_down.writes_refused > 0, "{while_down:?}");
    assert_eq!(while_down.connects_through + while_down.writes_through, 0, "{while_down:?}");
    let links = fs::read_dir(agent.pin_dir().join(format!("links-{generation}")))?.count();
    println!("links pinned while no agent runs: {links}");
    assert!(links > 0, "the links of the killed agent must stay pinned");

    let restarted_at = parapet::reader::now_rfc3339();
    agent.restart(&containerd, &parapet_bin()?)?;
    agent.wait_ready()?;
    agent.wait_for_log(&["adopted the kernel state of the previous agent"])?;
    let status = agent.status().await?;
    assert_eq!(status.generation, generation + 1, "{status:?}");
    assert_counters_cover(&agent, &log, enforced_from, "after the restart")?;
    // The refusals made while no agent ran reach the restarted agent's
    // event stream from the pinned ring buffer.
    let replayed = agent.wait_for_event(|event| {
        event.kind == Kind::Network && event.verdict == VerdictName::Deny && event.pod.as_deref() == Some("attacker")
    })?;
    println!("first event of the restarted agent: {replayed:?}");
    // The records wait in the ring buffer until the first pass has named
    // the workloads, so the rest may follow the first one by a moment.
    // Only refusals decided before the restart count: event times are
    // RFC 3339 with nanoseconds in UTC, so they compare as strings.
    let started = std::time::Instant::now();
    loop {
        let reported = agent
            .events()?
            .iter()
            .filter(|event| event.kind == Kind::Network && event.pod.as_deref() == Some("attacker"))
            .filter(|event| event.time < restarted_at)
            .count() as u64;
        if reported >= while_down.connects_refused {
            break;
        }
        assert!(
            started.elapsed() < parapet_tests::agent::wait_limit(),
            "the restarted agent reported {reported} refused connects, fewer than the {} made while no agent ran",
            while_down.connects_refused
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An upgrade: the running agent stops with SIGTERM and another binary
    // starts on the same pins.
    agent.stop_keeping_pins()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upgraded = agent.dir.join("parapet-upgraded");
    fs::copy(parapet_bin()?, &upgraded)?;
    agent.restart(&containerd, &upgraded)?;
    agent.wait_ready()?;
    let status = agent.status().await?;
    assert_eq!(status.generation, generation + 2, "{status:?}");
    assert_counters_cover(&agent, &log, enforced_from, "after the upgrade")?;

    // `parapet uninstall` fails while an agent has the pin directory locked.
    let refused = std::process::Command::new(parapet_bin()?)
        .arg("uninstall")
        .arg("--pin-dir")
        .arg(agent.pin_dir())
        .output()?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("another agent uses this pin directory"), "{stderr}");

    assert_nothing_got_through(&log, enforced_from)?;

    // Once the agent is stopped, uninstall removes every pin, and the
    // socket programs leave the cgroup.
    agent.stop_keeping_pins()?;
    let uninstall = std::process::Command::new(parapet_bin()?)
        .arg("uninstall")
        .arg("--pin-dir")
        .arg(agent.pin_dir())
        .output()?;
    let stdout = String::from_utf8_lossy(&uninstall.stdout);
    assert!(uninstall.status.success(), "{stdout} {}", String::from_utf8_lossy(&uninstall.stderr));
    assert!(stdout.contains("removed"), "{stdout}");
    assert!(!agent.pin_dir().exists());
    wait_socket_programs_detached(&containerd.cgroup().v2_path())?;
    let (after_uninstall, _) = outcomes(&log, 0)?;
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (later, _) = outcomes(&log, 0)?;
        if later.connects_through > after_uninstall.connects_through {
            break;
        }
        assert!(
            started.elapsed() < parapet_tests::agent::wait_limit(),
            "after uninstall the connects are still refused: {later:?}"
        );
    }

    attacker.remove().await?;
    server.remove().await?;
    containerd.cleanup().await?;
    Ok(())
}

/// Returns the `maps-<layout>` folders pinned for `agent`.
fn map_layouts(agent: &Agent) -> Result<Vec<String>> {
    let mut layouts: Vec<String> = fs::read_dir(agent.pin_dir())?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("maps-"))
        .collect();
    layouts.sort();
    Ok(layouts)
}

/// An upgrade to a build with other maps that crashes before its first
/// pass over the workloads leaves maps without cgroup entries. The next
/// start of that build must not adopt them and act at once: the older
/// generation goes on enforcing until a first pass has filled new maps.
#[tokio::test]
async fn crashed_upgrade_leaves_no_gap() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let Policed { server, mut agent, attacker, log } = policed_attacker(&containerd).await?;
    let enforced_from = wait_for_refusals(&log, 0).await?;
    agent.stop_keeping_pins()?;

    // The running generation's maps get the name of another layout, as an
    // older build would have pinned them.
    let layouts = map_layouts(&agent)?;
    assert_eq!(layouts.len(), 1, "{layouts:?}");
    let layout = layouts[0].clone();
    let older = "maps-0000000000000000";
    fs::rename(agent.pin_dir().join(&layout), agent.pin_dir().join(older))?;

    // The upgrade cannot reach the runtime, so its first pass never ends,
    // and the test kills it as a crash would.
    let no_runtime = agent.dir.join("no-runtime.sock");
    agent.use_cri_socket(&no_runtime);
    agent.restart(&containerd, &parapet_bin()?)?;
    agent.wait_ready()?;
    agent.kill_keeping_pins()?;
    assert_eq!(map_layouts(&agent)?, vec![older.to_owned(), layout.clone()]);

    // The next start, still without the runtime, must leave the older
    // generation enforcing.
    agent.restart(&containerd, &parapet_bin()?)?;
    agent.wait_ready()?;
    let (_, from_line) = outcomes(&log, 0)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let meanwhile = wait_for_attempts(&log, from_line).await?;
    println!("attempts while the new start waits for its first pass: {meanwhile:?}");
    assert_eq!(meanwhile.connects_through, 0, "a refused connect got through: {meanwhile:?}");
    assert!(meanwhile.connects_refused > 0, "{meanwhile:?}");
    agent.wait_for_log(&["do not use the maps pinned for this layout"])?;

    // With the runtime back, a start acts after its first pass, and the
    // older layout's maps go.
    agent.stop_keeping_pins()?;
    agent.use_cri_socket(containerd.socket());
    agent.restart(&containerd, &parapet_bin()?)?;
    agent.wait_for_log(&["unpinned the maps of another layout"])?;
    wait_for_refusals(&log, outcomes(&log, 0)?.1).await?;
    assert_eq!(map_layouts(&agent)?, vec![layout]);
    assert_nothing_got_through(&log, enforced_from)?;

    agent.stop()?;
    attacker.remove().await?;
    server.remove().await?;
    containerd.cleanup().await?;
    Ok(())
}

/// Returns a policy that selects no pod, numbered so that each file differs.
fn idle_policy(index: usize, version: usize) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: idle-{index}
spec:
  selector:
    namespace: nobody-{index}-{version}
  mode: enforce
  network:
    egress: []
"
    )
}

/// Every reload takes fresh slots and names them for a later agent, so
/// after 1,024 slots' worth of reloads every slot has a name. A restarted
/// agent must still find free slots: those that only a name refers to.
/// The slot of a policed pod's entry must stay in force meanwhile.
#[tokio::test]
async fn restart_after_many_reloads_finds_free_slots() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    const POLICIES: usize = 100;
    const RELOADS: usize = 11;
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &SERVER_COMMAND).await?;
    let command = attacker_command(&server.ip.to_string());
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let client = Pod::run_command(&containerd, "attacker", "clinic", &[("app", "records")], &command).await?;
    let mut files: Vec<(String, String)> =
        (1..POLICIES).map(|index| (format!("idle-{index}.yaml"), idle_policy(index, 0))).collect();
    files.push(("records.yaml".to_owned(), policy(server.ip)));
    files.push(("idle-0.yaml".to_owned(), idle_policy(0, 0)));
    let files: Vec<(&str, &str)> = files.iter().map(|(name, yaml)| (name.as_str(), yaml.as_str())).collect();
    let mut agent = Agent::start(&containerd, &files)?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;
    let log = container_log(&containerd, &client)?;
    let enforced_from = wait_for_refusals(&log, 0).await?;
    for version in 1..=RELOADS {
        agent.write_policy("idle-0.yaml", &idle_policy(0, version))?;
        let started = std::time::Instant::now();
        while agent.log().matches("policy set reloaded").count() < version {
            assert!(started.elapsed() < parapet_tests::agent::wait_limit(), "reload {version} never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("slots named so far: {}", POLICIES * (RELOADS + 1));

    agent.kill_keeping_pins()?;
    agent.restart(&containerd, &parapet_bin()?)?;
    agent.wait_ready()?;
    agent.wait_for_log(&["adopted the kernel state of the previous agent"])?;
    let adopted = agent.log().lines().find(|line| line.contains("adopted the kernel state")).unwrap_or_default().to_owned();
    println!("{adopted}");
    assert!(!adopted.contains("unreferenced_slots=0"), "{adopted}");
    wait_for_refusals(&log, outcomes(&log, 0)?.1).await?;
    assert_nothing_got_through(&log, enforced_from)?;
    agent.write_policy("idle-0.yaml", &idle_policy(0, RELOADS + 1))?;
    agent.wait_for_log(&["policy set reloaded"])?;

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
