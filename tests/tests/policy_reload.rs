//! Policy reloads while a policed pod keeps trying what its policies
//! forbid: ConfigMap-style swaps of the policy directory, edits in place,
//! editors that rename a temporary file, and SIGHUP.

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value, parapet_bin},
    attempts::{Record, unix_ns},
    configmap::ConfigMapDir,
};

/// Valid and invalid versions, alternating, that the swap test writes.
const SWAPS: usize = 50;
/// How long a change may take to be in force, or to be rejected.
const RELOAD_BOUND: Duration = Duration::from_secs(2);
const SERVER_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "netprobe listen tcp 8080 & netprobe listen tcp 8081 & wait",
];
/// Port Q: allowed by every other valid version.
const PORT_Q: u16 = 8080;
/// Port P: forbidden by every valid version.
const PORT_P: u16 = 8081;
const WRITE_PATH: &str = "/etc/parapet-probe";
const STOP_PATH: &str = "/tmp/stop";
const RELOADED: &str = "policy set reloaded";

/// Version `version` of the client's policy: a read-only root, and egress
/// to the server on port Q when `allow_q` and on a port no one uses, which
/// differs per version.
fn client_policy(server: IpAddr, version: usize, allow_q: bool) -> String {
    let q = if allow_q {
        format!("{{port: {PORT_Q}}}, ")
    } else {
        String::new()
    };
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: client-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: client}}
  mode: enforce
  filesystem:
    readOnly: true
    writablePaths: [/tmp]
  network:
    egress:
      - to: [{{address: {server}}}]
        ports: [{q}{{port: {}}}]
",
        20000 + version
    )
}

/// A second policy that selects nothing here, so that a set has two files.
const OTHER_POLICY: &str = "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: nobody-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {app: nobody}
  mode: enforce
  network:
    egress:
      - to: [{cidr: 10.96.0.0/12}]
";

/// Breaks one of the two files of a valid set in one of five ways, and
/// returns the set and the name of the file the error must name.
fn invalid_set(client: &str, kind: usize) -> (Vec<(&'static str, String)>, &'static str) {
    let other = OTHER_POLICY.to_owned();
    match kind % 5 {
        0 => (
            vec![
                ("client.yaml", client.replace("egress:", "egres:")),
                ("other.yaml", other),
            ],
            "client.yaml",
        ),
        1 => (
            vec![
                ("client.yaml", client.to_owned()),
                ("other.yaml", other.replace("10.96.0.0/12", "10.0.0.300/8")),
            ],
            "other.yaml",
        ),
        2 => (
            vec![
                (
                    "client.yaml",
                    client.replace("  selector:", "  selector: [unclosed"),
                ),
                ("other.yaml", other),
            ],
            "client.yaml",
        ),
        3 => (
            vec![
                ("client.yaml", client.to_owned()),
                (
                    "other.yaml",
                    other.replace("nobody-egress", "client-egress"),
                ),
            ],
            "other.yaml",
        ),
        _ => (
            vec![
                (
                    "client.yaml",
                    client.replace("mode: enforce", "mode: enforcing"),
                ),
                ("other.yaml", other),
            ],
            "client.yaml",
        ),
    }
}

fn borrowed<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    files
        .iter()
        .map(|(key, contents)| (*key, contents.as_str()))
        .collect()
}

/// Returns whether `text` contains `FILE:LINE:COLUMN:` for `file`.
fn names_position(text: &str, file: &str) -> bool {
    text.match_indices(&format!("{file}:"))
        .any(|(at, matched)| {
            let mut parts = text[at + matched.len()..].splitn(3, ':');
            let line = parts.next().unwrap_or_default();
            let column = parts.next().unwrap_or_default();
            let numeric = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
            numeric(line) && numeric(column)
        })
}

fn log_count(agent: &Agent, needle: &str) -> usize {
    agent
        .log()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

/// Waits until the log has `count` lines with `needle`, and returns when
/// it saw the last one.
fn wait_log_count(
    agent: &Agent,
    needle: &str,
    count: usize,
    bound: Duration,
) -> Result<SystemTime> {
    let started = Instant::now();
    loop {
        let seen = log_count(agent, needle);
        if seen >= count {
            ensure!(
                seen == count,
                "{seen} log lines with {needle:?}, expected {count}:\n{}",
                agent.log()
            );
            return Ok(SystemTime::now());
        }
        if started.elapsed() > bound {
            bail!(
                "{seen} log lines with {needle:?} after {bound:?}, expected {count}:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Returns the `took_us` of the last reload the agent logged.
fn last_reload_us(agent: &Agent) -> Option<u64> {
    let log = agent.log();
    let line = log
        .lines()
        .filter(|line| line.contains(RELOADED))
        .next_back()?;
    let value = line.split("took_us=").nth(1)?;
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn status_text(agent: &Agent) -> Result<String> {
    let output = Command::new(parapet_bin()?)
        .args(["status", "--api-socket"])
        .arg(&agent.api_socket)
        .output()
        .context("failed to run parapet status")?;
    ensure!(output.status.success(), "parapet status failed: {output:?}");
    Ok(String::from_utf8(output.stdout)?)
}

async fn policy_hash(agent: &Agent) -> Result<String> {
    let status = agent.status().await?;
    let policy = status
        .policies
        .iter()
        .find(|policy| policy.name == "client-egress");
    Ok(policy.map(|policy| policy.hash.clone()).unwrap_or_default())
}

/// Waits until the record shows a run of `name` with `outcome` that began
/// at or after `since`, and returns when it began.
fn wait_outcome(log: &std::path::Path, name: &str, outcome: &str, since: u128) -> Result<u128> {
    let started = Instant::now();
    loop {
        let record = Record::read(log)?;
        let run = record
            .runs
            .get(name)
            .into_iter()
            .flatten()
            .find(|run| run.outcome == outcome && run.last_ns.is_none_or(|last| last >= since));
        if let Some(run) = run {
            return Ok(run.first_ns.max(since));
        }
        if started.elapsed() > RELOAD_BOUND {
            bail!(
                "{name} never had outcome {outcome} after the swap: {:?}",
                record.runs.get(name)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A version in force from `from` until `to`, with whether it allows Q.
struct InForce {
    from: u128,
    to: u128,
    allow_q: bool,
}

#[tokio::test]
async fn configmap_swaps_under_load() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(
        &containerd,
        "server",
        "clinic",
        &[("app", "server")],
        &SERVER_COMMAND,
    )
    .await?;
    let mut current = client_policy(server.ip, 0, false);
    let mut volume = None;
    let mut agent = Agent::start_with(&containerd, |dir| {
        let files = [
            ("client.yaml", current.as_str()),
            ("other.yaml", OTHER_POLICY),
        ];
        volume = Some(ConfigMapDir::create(dir, &files)?);
        Ok(())
    })?;
    let mut volume = volume.context("the policy volume was not created")?;
    agent.wait_ready()?;
    let peer_p = format!("{}:{PORT_P}", server.ip);
    let peer_q = format!("{}:{PORT_Q}", server.ip);
    let (name_p, name_q, name_write) = (
        format!("tcp:{peer_p}"),
        format!("tcp:{peer_q}"),
        format!("write:{WRITE_PATH}"),
    );
    let command = [
        "netprobe", "attempts", STOP_PATH, WRITE_PATH, &peer_p, &peer_q,
    ];
    let client = Pod::run_command(
        &containerd,
        "client",
        "clinic",
        &[("app", "client")],
        &command,
    )
    .await?;
    let log = containerd
        .dir()
        .join("logs")
        .join(format!("clinic_client_{}", client.uid))
        .join("main.log");
    agent.wait_enforced(&client.container_id)?;
    agent.wait_for_log(&["filesystem made read-only", &client.container_id])?;
    let read_only_since = unix_ns(SystemTime::now());
    let mut in_force = vec![InForce {
        from: read_only_since,
        to: u128::MAX,
        allow_q: false,
    }];
    let mut hash = policy_hash(&agent).await?;
    let mut valid = 0;
    let mut invalid = 0;
    let mut agent_us = Vec::new();
    let mut observed_us = Vec::new();

    for swap in 0..SWAPS {
        if swap % 2 == 0 {
            valid += 1;
            let allow_q = valid % 2 == 1;
            current = client_policy(server.ip, valid, allow_q);
            let swapped =
                volume.update(&[("client.yaml", &current), ("other.yaml", OTHER_POLICY)])?;
            in_force.last_mut().expect("a version is in force").to = unix_ns(swapped);
            let seen = wait_log_count(&agent, RELOADED, valid, RELOAD_BOUND)?;
            in_force.push(InForce {
                from: unix_ns(seen),
                to: u128::MAX,
                allow_q,
            });
            let expected = if allow_q { "ok" } else { "eperm" };
            let changed = wait_outcome(&log, &name_q, expected, unix_ns(swapped))?;
            let took = last_reload_us(&agent).context("the reload line has no took_us")?;
            let observed = changed.saturating_sub(unix_ns(swapped)) / 1000;
            println!(
                "swap {swap}: version {valid} (Q allowed: {allow_q}) in the kernel after {took} us (agent), first attempt with the new outcome {observed} us after the rename"
            );
            agent_us.push(took);
            observed_us.push(observed as u64);
            let new_hash = policy_hash(&agent).await?;
            assert_ne!(
                new_hash, hash,
                "swap {swap}: the policy hash did not change"
            );
            hash = new_hash;
            assert_eq!(agent.status().await?.policy_error, None, "swap {swap}");
        } else {
            invalid += 1;
            let (files, broken) = invalid_set(&current, invalid);
            volume.update(&borrowed(&files))?;
            let started = Instant::now();
            loop {
                let status = agent.status().await?;
                if status.policy_reload_failures == invalid as u64 {
                    break;
                }
                assert!(
                    started.elapsed() < RELOAD_BOUND,
                    "swap {swap}: rejection {invalid} not counted: {status:#?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let status = agent.status().await?;
            let error = status.policy_error.clone().unwrap_or_default();
            assert!(
                names_position(&error, broken),
                "swap {swap}: status error does not name {broken}:LINE:COLUMN: {error}"
            );
            let text = status_text(&agent)?;
            assert!(
                text.contains("last reload:    FAILED"),
                "swap {swap}: {text}"
            );
            assert!(names_position(&text, broken), "swap {swap}: {text}");
            assert!(
                agent
                    .log()
                    .lines()
                    .any(|line| line.contains("invalid policy") && names_position(line, broken)),
                "swap {swap}: no log line names {broken}:LINE:COLUMN"
            );
            assert_eq!(
                policy_hash(&agent).await?,
                hash,
                "swap {swap}: the rejected set replaced the policy"
            );
        }
    }

    let metrics = agent.metrics()?;
    let failures = metric_value(&metrics, "parapet_policy_reload_failures_total", &[]);
    assert_eq!(failures, Some(invalid as f64), "{metrics}");
    assert_eq!(invalid, SWAPS / 2);
    // Stop the workload, so that its record ends with every last attempt.
    client.exec(&["touch", STOP_PATH]).await?;
    let started = Instant::now();
    let record = loop {
        let record = Record::read(&log)?;
        if record.ended {
            break record;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the attempts loop did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let end = unix_ns(SystemTime::now());
    in_force.last_mut().expect("a version is in force").to = end;
    for (name, counts) in &record.counts {
        println!("attempts on {name}: {counts:?}");
    }

    let p_allowed = record.runs_within(&name_p, 0, end, |outcome| outcome == "ok");
    assert!(
        p_allowed.is_empty(),
        "connects to P, which every version forbids, got through: {p_allowed:?}"
    );
    let p_denied = record.runs_within(&name_p, 0, end, |outcome| outcome == "eperm");
    assert!(
        !p_denied.is_empty(),
        "no connect to P was refused: {:?}",
        record.runs.get(&name_p)
    );
    let writes = record.runs_within(&name_write, read_only_since, end, |outcome| outcome == "ok");
    assert!(
        writes.is_empty(),
        "writes to the read-only root got through: {writes:?}"
    );
    let refused_writes = record.runs_within(&name_write, read_only_since, end, |outcome| {
        outcome == "erofs" || outcome == "eperm"
    });
    assert!(
        !refused_writes.is_empty(),
        "no write was refused: {:?}",
        record.runs.get(&name_write)
    );
    for (index, version) in in_force.iter().enumerate() {
        let wrong = if version.allow_q {
            record.runs_within(&name_q, version.from, version.to, |outcome| {
                outcome == "eperm"
            })
        } else {
            record.runs_within(&name_q, version.from, version.to, |outcome| outcome == "ok")
        };
        assert!(
            wrong.is_empty(),
            "version {index} (Q allowed: {}) was not what the kernel enforced: {wrong:?}",
            version.allow_q
        );
        let right = if version.allow_q { "ok" } else { "eperm" };
        let matched = record.runs_within(&name_q, version.from, version.to, |outcome| {
            outcome == right
        });
        assert!(
            !matched.is_empty(),
            "version {index}: no attempt on Q with outcome {right}"
        );
    }
    agent_us.sort_unstable();
    observed_us.sort_unstable();
    let median = |values: &[u64]| values[values.len() / 2];
    println!(
        "accepted reloads: {}; in the kernel after (agent's measure, first inotify event to the last entry switched) min {} us, median {} us, max {} us",
        agent_us.len(),
        agent_us[0],
        median(&agent_us),
        agent_us[agent_us.len() - 1]
    );
    println!(
        "first attempt with the new outcome after the rename: min {} us, median {} us, max {} us",
        observed_us[0],
        median(&observed_us),
        observed_us[observed_us.len() - 1]
    );
    let log_text = agent.log();
    let inotify_reloads = log_text
        .lines()
        .filter(|line| line.contains(RELOADED) && line.contains("trigger=\"inotify\""))
        .count();
    println!("reloads started by inotify: {inotify_reloads} of {valid}");
    assert_eq!(inotify_reloads, valid, "every swap is seen through inotify");

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

async fn connect_outcome(pod: &Pod, address: IpAddr, port: u16) -> Result<String> {
    let (address, port) = (address.to_string(), port.to_string());
    let output = pod
        .exec(&["netprobe", "connect", "tcp", &address, &port])
        .await?;
    Ok(output.stdout_trimmed().to_owned())
}

/// Returns the trigger of the last reload line, such as `"inotify"`.
fn last_trigger(agent: &Agent) -> String {
    let log = agent.log();
    let line = log
        .lines()
        .filter(|line| line.contains(RELOADED))
        .next_back()
        .unwrap_or_default();
    line.split("trigger=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default()
        .to_owned()
}

async fn client_slot(agent: &Agent) -> Result<u32> {
    let status = agent.status().await?;
    let policy = status
        .policies
        .iter()
        .find(|policy| policy.name == "client-egress");
    policy
        .map(|policy| policy.slot)
        .context("client-egress is not loaded")
}

#[tokio::test]
async fn edits_renames_and_sighup_reload() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(
        &containerd,
        "server",
        "clinic",
        &[("app", "server")],
        &SERVER_COMMAND,
    )
    .await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let mut agent = Agent::start(
        &containerd,
        &[("client.yaml", &client_policy(server.ip, 0, false))],
    )?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;
    let policy_file = agent.policy_dir.join("client.yaml");
    assert!(
        connect_outcome(&client, server.ip, PORT_Q)
            .await?
            .starts_with("error errno=1 ")
    );

    // An edit in place: truncate and write the same file.
    std::fs::write(&policy_file, client_policy(server.ip, 1, true))?;
    wait_log_count(&agent, RELOADED, 1, RELOAD_BOUND)?;
    assert_eq!(last_trigger(&agent), "\"inotify\"");
    assert_eq!(connect_outcome(&client, server.ip, PORT_Q).await?, "ok");

    // An editor that writes a temporary file and renames it over the old.
    let temporary = agent.policy_dir.join(".client.yaml.swp");
    std::fs::write(&temporary, client_policy(server.ip, 2, false))?;
    std::fs::rename(&temporary, &policy_file)?;
    wait_log_count(&agent, RELOADED, 2, RELOAD_BOUND)?;
    assert_eq!(last_trigger(&agent), "\"inotify\"");
    assert!(
        connect_outcome(&client, server.ip, PORT_Q)
            .await?
            .starts_with("error errno=1 ")
    );

    // SIGHUP reloads an unchanged directory into fresh kernel slots.
    let slot = client_slot(&agent).await?;
    let pid = agent.pid().context("the agent has no pid")?;
    // SAFETY: kill(2) on the pid of the agent this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    wait_log_count(&agent, RELOADED, 3, RELOAD_BOUND)?;
    assert_eq!(last_trigger(&agent), "\"SIGHUP\"");
    assert_ne!(
        client_slot(&agent).await?,
        slot,
        "SIGHUP did not install the set again"
    );
    assert!(
        connect_outcome(&client, server.ip, PORT_Q)
            .await?
            .starts_with("error errno=1 ")
    );
    assert!(
        connect_outcome(&client, server.ip, PORT_P)
            .await?
            .starts_with("error errno=1 ")
    );

    // SIGHUP also loads a change at once, and rejects an invalid one.
    std::fs::write(
        &policy_file,
        client_policy(server.ip, 3, false).replace("egress:", "egres:"),
    )?;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    agent.wait_for_log(&["policy change rejected"])?;
    let status = agent.status().await?;
    assert!(status.policy_reload_failures >= 1, "{status:#?}");
    assert!(names_position(
        &status.policy_error.unwrap_or_default(),
        "client.yaml"
    ));
    assert!(
        connect_outcome(&client, server.ip, PORT_Q)
            .await?
            .starts_with("error errno=1 ")
    );

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
