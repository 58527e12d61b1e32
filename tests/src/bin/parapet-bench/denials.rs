//! The denial path: how many refused operations a second one policed
//! process makes, whether the kernel counters and `/metrics` count each of
//! them, and the highest rate of events that `parapet tail` receives
//! without loss.
//!
//! One pod, `client`, is under a policy that refuses all egress and makes
//! its root filesystem read-only; an identical pod, `bystander`, is under
//! none. `netprobe flood` runs inside them.

mod follower;

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value},
};

use crate::{
    Options,
    proc_usage,
    report::{Row, Target, median},
};
use follower::Follower;

const GROUP: &str = "denials";

fn client_policy() -> String {
    "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: bench-client
spec:
  selector:
    namespace: bench
    matchLabels: {app: client}
  mode: enforce
  filesystem:
    readOnly: true
    writablePaths: [/tmp]
  network:
    egress: []
"
    .to_owned()
}

/// Returns the `netprobe` binary built next to this one.
pub async fn run(options: &Options) -> Result<Vec<Row>> {
    crate::with_containerd(GROUP, async |containerd| measure(containerd, options).await).await
}

/// Flood settings for a full run and for `--quick`.
struct Settings {
    rounds: usize,
    seconds: f64,
    /// Paced rates tried in turn, events a second, until one loses events.
    rates: Vec<f64>,
}

impl Settings {
    fn new(options: &Options) -> Self {
        if options.quick {
            Self { rounds: 1, seconds: 1.0, rates: vec![100_000.0, 200_000.0, 400_000.0] }
        } else {
            let rates = [50, 100, 150, 200, 250, 300, 400, 500, 650, 800, 1000];
            Self { rounds: options.rounds, seconds: 3.0, rates: rates.iter().map(|k| f64::from(*k) * 1000.0).collect() }
        }
    }
}

/// One line of `netprobe flood` output.
#[derive(Debug, Clone, Copy)]
struct Flood {
    attempts: f64,
    refused: f64,
    seconds: f64,
    /// CPU time the flooding process had in that time.
    cpu_seconds: f64,
}

impl Flood {
    fn per_second(&self) -> f64 {
        self.attempts / self.seconds
    }

    fn per_cpu_second(&self) -> f64 {
        self.attempts / self.cpu_seconds
    }

    /// Share of the wall time the process ran, in percent.
    fn cpu_share(&self) -> f64 {
        100.0 * self.cpu_seconds / self.seconds
    }
}

async fn flood(pod: &Pod, args: &[&str]) -> Result<Flood> {
    let mut command = vec!["netprobe", "flood"];
    command.extend_from_slice(args);
    let output = pod.exec(&command).await?;
    let line = output.stdout_trimmed();
    if output.exit_code != 0 {
        bail!("{command:?} in pod {} failed: {line} {}", pod.name, output.stderr);
    }
    let field = |name: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}= in {line:?}"))?
            .parse()
            .with_context(|| format!("invalid {name} in {line:?}"))
    };
    Ok(Flood {
        attempts: field("attempts")?,
        refused: field("refused")?,
        seconds: field("seconds")?,
        cpu_seconds: field("cpu_seconds")?,
    })
}

/// CPU time the agent and `parapet tail` have used so far, in seconds.
fn readers_cpu(agent: &Agent, follower: &Follower) -> Result<f64> {
    let agent_pid = agent.pid().context("the agent is not running")?;
    Ok(proc_usage::cpu_seconds(agent_pid)? + proc_usage::cpu_seconds(follower.pid())?)
}

/// The kernel's and `/metrics`' counts of violations, and records lost.
#[derive(Debug, Clone, Copy)]
struct Counters {
    /// Sum of the kernel's decision counters for refusals, as `parapet
    /// status` reads them.
    kernel: f64,
    /// `parapet_violations_total` of the client pod, all kinds.
    metric: f64,
    /// `parapet_events_lost_total{reason="ring_buffer_full"}`.
    ring_lost: f64,
}

async fn counters(agent: &Agent) -> Result<Counters> {
    let status = agent.status().await?;
    let page = agent.metrics()?;
    let metric = ["network", "file"]
        .iter()
        .map(|kind| {
            metric_value(&page, "parapet_violations_total", &[("pod", "client"), ("kind", kind), ("verdict", "deny")])
                .unwrap_or(0.0)
        })
        .sum();
    let ring_lost = metric_value(&page, "parapet_events_lost_total", &[("reason", "ring_buffer_full")])
        .context("/metrics has no parapet_events_lost_total")?;
    Ok(Counters { kernel: status.violations as f64, metric, ring_lost })
}

/// Rows of the group, filled round by round.
struct Rows {
    connect: Row,
    write: Row,
    connect_unpoliced: Row,
    write_unpoliced: Row,
    connect_no_agent: Row,
    write_no_agent: Row,
    write_refused_no_agent: Row,
    write_per_cpu: Row,
    /// Percent of the wall time each policed flood ran, and the CPU time
    /// the agent and tail used meanwhile, in percent of one core.
    connect_shares: Vec<(f64, f64)>,
    write_shares: Vec<(f64, f64)>,
    kernel_exact: Row,
    metric_exact: Row,
    lossless: Row,
    loss_begins: Row,
    unaccounted: Row,
    dropped_exact: Row,
    memory: Row,
}

impl Rows {
    fn new() -> Self {
        let rate = |name: &str, target| Row::new(GROUP, name, "ops/s", target);
        Self {
            connect: rate("refused connects, one policed process", Target::AtLeast(1e6)),
            write: rate("refused file opens for writing, one policed process", Target::AtLeast(1e6)),
            connect_unpoliced: rate("the same connects, one unpoliced process", Target::None),
            write_unpoliced: rate("the same file opens, one unpoliced process", Target::None),
            connect_no_agent: rate("the same connects, no agent", Target::None),
            write_no_agent: rate("the same file opens, no agent", Target::None),
            write_refused_no_agent: rate("refused file opens, no agent", Target::None),
            write_per_cpu: rate("refused file opens per second of the policed process's CPU time", Target::None),
            connect_shares: Vec::new(),
            write_shares: Vec::new(),
            kernel_exact: Row::new(GROUP, "kernel counter off from the refusals the flooding process saw", "ops", Target::EveryRoundAtMost(0.0)),
            metric_exact: Row::new(GROUP, "parapet_violations_total off from the refusals the flooding process saw", "ops", Target::EveryRoundAtMost(0.0)),
            lossless: Row::new(GROUP, "highest paced rate tail receives without loss", "events/s", Target::AtLeast(2e5)),
            loss_begins: Row::new(GROUP, "lowest paced rate with loss", "events/s", Target::None),
            unaccounted: Row::new(
                GROUP,
                "refusals that tail neither printed nor was told of as missed or dropped",
                "events",
                Target::EveryRoundAtMost(0.0),
            ),
            dropped_exact: Row::new(
                GROUP,
                "drops reported to tail off from the parapet_events_lost_total increase by",
                "events",
                Target::EveryRoundAtMost(0.0),
            ),
            memory: Row::new(GROUP, "agent resident memory after the floods", "MiB", Target::None),
        }
    }

    /// Says how the refusal rates compare with the same calls made with no
    /// agent.
    fn explain_rates(&mut self) {
        let connect = format!(
            "{:.2} times the rate of the same connects with no agent, which each send a SYN on a new socket; without an agent no connect is refused before it leaves",
            self.connect.median() / self.connect_no_agent.median()
        );
        let mut write = format!(
            "{:.2} times the rate of the same refused opens with no agent",
            self.write.median() / self.write_refused_no_agent.median()
        );
        if self.write_refused_no_agent.values.is_empty() {
            write = "no refused opens without the agent to compare with".to_owned();
        } else if self.write_refused_no_agent.median() < 1e6 {
            write.push_str(", and with no agent one process makes fewer than 1,000,000 of them a second: the syscall itself is the limit");
        }
        let share = |shares: &[(f64, f64)]| {
            let flood: Vec<f64> = shares.iter().map(|(flood, _)| *flood).collect();
            let readers: Vec<f64> = shares.iter().map(|(_, readers)| *readers).collect();
            format!(
                "the flooding process ran {:.0}% of the time while the agent and tail, reading its records, used {:.0}% of one core (medians)",
                median(&flood),
                median(&readers)
            )
        };
        let connect = format!("{connect}; {}", share(&self.connect_shares));
        let write = format!("{write}; {}", share(&self.write_shares));
        for (row, text) in [(&mut self.connect, connect), (&mut self.write, write)] {
            row.context = if row.context.is_empty() { text } else { format!("{text}; {}", row.context) };
        }
    }

    fn into_vec(self) -> Vec<Row> {
        vec![
            self.connect,
            self.connect_unpoliced,
            self.connect_no_agent,
            self.write,
            self.write_unpoliced,
            self.write_no_agent,
            self.write_refused_no_agent,
            self.write_per_cpu,
            self.kernel_exact,
            self.metric_exact,
            self.unaccounted,
            self.dropped_exact,
            self.lossless,
            self.loss_begins,
            self.memory,
        ]
    }
}

async fn measure(containerd: &Containerd, options: &Options) -> Result<Vec<Row>> {
    let settings = Settings::new(options);
    let target = Pod::run(containerd, "target", "bench", &[("app", "target")]).await?;
    let client = Pod::run(containerd, "client", "bench", &[("app", "client")]).await?;
    let bystander = Pod::run(containerd, "bystander", "bench", &[("app", "bystander")]).await?;
    let mut rows = Rows::new();
    measure_without_agent(&settings, &target, &bystander, &mut rows).await?;
    let mut agent = Agent::start(containerd, &[("client.yaml", &client_policy())])?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;
    let follower = Follower::start(&agent, &["--pod", "client"])?;
    let result = measure_rounds(&settings, &agent, &follower, &target, &client, &bystander, &mut rows).await;
    follower.stop();
    agent.stop()?;
    result?;
    measure_refusals_without_agent(&settings, &client, &mut rows).await?;
    rows.explain_rates();
    Ok(rows.into_vec())
}

/// Measures the floods before any agent runs, once per round. The agent
/// is started once, after them, because the read-only mounts it makes
/// last as long as the pod.
async fn measure_without_agent(settings: &Settings, target: &Pod, bystander: &Pod, rows: &mut Rows) -> Result<()> {
    let seconds = settings.seconds.to_string();
    let peer = target.ip.to_string();
    for _ in 0..settings.rounds {
        let connects = flood(bystander, &["connect", &peer, "9000", "--seconds", &seconds]).await?;
        rows.connect_no_agent.values.push(connects.per_second());
        let writes = flood(bystander, &["write", "/flood-probe", "--seconds", &seconds]).await?;
        rows.write_no_agent.values.push(writes.per_second());
    }
    rows.connect_no_agent.context =
        "without a policy the calls do more: each connect sends a SYN on a new socket".to_owned();
    rows.write_no_agent.context =
        "without a policy each open creates or opens the file and is closed".to_owned();
    Ok(())
}

/// Measures refused file opens after the agent stopped: the read-only
/// mounts it made stay for the pod's life, so the kernel alone refuses.
async fn measure_refusals_without_agent(settings: &Settings, client: &Pod, rows: &mut Rows) -> Result<()> {
    // Stopping the agent unpins its programs; the kernel detaches them
    // from a work queue a moment later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seconds = settings.seconds.to_string();
    for _ in 0..settings.rounds {
        let writes = flood(client, &["write", "/flood-probe", "--seconds", &seconds]).await?;
        if writes.refused != writes.attempts {
            // With the BPF LSM backend the agent changes no mount, so
            // nothing refuses once it stopped.
            rows.write_refused_no_agent.values.clear();
            rows.write_refused_no_agent.context =
                "not measured: the agent left the client pod's root writable (BPF LSM backend)".to_owned();
            return Ok(());
        }
        rows.write_refused_no_agent.values.push(writes.per_second());
    }
    rows.write_refused_no_agent.context =
        "the client pod after the agent stopped: the mounts it made read-only stay so".to_owned();
    Ok(())
}

async fn measure_rounds(
    settings: &Settings,
    agent: &Agent,
    follower: &Follower,
    target: &Pod,
    client: &Pod,
    bystander: &Pod,
    rows: &mut Rows,
) -> Result<()> {
    let seconds = settings.seconds.to_string();
    let peer = target.ip.to_string();
    let connect = ["connect", &peer, "9000", "--seconds", &seconds];
    let write = ["write", "/flood-probe", "--seconds", &seconds];
    for round in 0..settings.rounds {
        println!("  round {} of {}", round + 1, settings.rounds);
        let unpoliced = flood(bystander, &connect).await?;
        rows.connect_unpoliced.values.push(unpoliced.per_second());

        let before = counters(agent).await?;
        let seen = follower.seen();
        let readers_before = readers_cpu(agent, follower)?;
        let connects = flood(client, &connect).await?;
        let readers_between = readers_cpu(agent, follower)?;
        let after_connects = counters(agent).await?;
        let writes = flood(client, &write).await?;
        let readers_after = readers_cpu(agent, follower)?;
        let after = counters(agent).await?;
        rows.connect.values.push(connects.per_second());
        rows.write.values.push(writes.per_second());
        rows.write_per_cpu.values.push(writes.per_cpu_second());
        let readers_share = |cpu: f64, flood: &Flood| 100.0 * cpu / flood.seconds;
        rows.connect_shares.push((connects.cpu_share(), readers_share(readers_between - readers_before, &connects)));
        rows.write_shares.push((writes.cpu_share(), readers_share(readers_after - readers_between, &writes)));
        if connects.refused != connects.attempts || writes.refused != writes.attempts {
            bail!("some flood calls were not refused: {connects:?} {writes:?}");
        }
        let unpoliced = flood(bystander, &write).await?;
        rows.write_unpoliced.values.push(unpoliced.per_second());

        // Both floods run far above the rate tail keeps up with, so the
        // counters are checked beyond the point where records are lost.
        let refused = connects.refused + writes.refused;
        let connect_gap = (after_connects.kernel - before.kernel - connects.refused).abs();
        rows.kernel_exact.values.push(connect_gap.max((after.kernel - before.kernel - refused).abs()));
        rows.metric_exact.values.push((after.metric - before.metric - refused).abs());
        let lost = after.ring_lost - before.ring_lost;
        let delta = follower.settle(seen, refused as u64, Duration::from_secs(3));
        rows.unaccounted.values.push((refused - delta.accounted() as f64).abs());
        rows.dropped_exact.values.push((lost - delta.dropped as f64).abs());
        rows.connect.context = format!(
            "last round: {:.0} refused in {:.2} s; of the refusals of both floods tail printed {}, was told it missed {} and that the kernel dropped {}, and the kernel counted {lost:.0} lost",
            connects.refused, connects.seconds, delta.events, delta.missed, delta.dropped
        );

        paced(settings, agent, follower, client, &peer, rows).await?;
        let resident = metric_value(&agent.metrics()?, "process_resident_memory_bytes", &[])
            .context("/metrics has no process_resident_memory_bytes")?;
        rows.memory.values.push(resident / 1048576.0);
    }
    Ok(())
}

/// Runs paced UDP floods at rising rates until tail misses events or
/// records are lost, and records the highest rate without loss and the
/// lowest with it.
async fn paced(
    settings: &Settings,
    agent: &Agent,
    follower: &Follower,
    client: &Pod,
    peer: &str,
    rows: &mut Rows,
) -> Result<()> {
    let seconds = settings.seconds.to_string();
    let mut highest_lossless = 0.0;
    let mut first_loss = f64::NAN;
    let mut steps = Vec::new();
    for rate in &settings.rates {
        let rate_text = rate.to_string();
        let before = counters(agent).await?;
        let seen = follower.seen();
        let sent = flood(client, &["udp", peer, "9000", "--seconds", &seconds, "--rate", &rate_text]).await?;
        let after = counters(agent).await?;
        let lost = after.ring_lost - before.ring_lost;
        let delta = follower.settle(seen, sent.refused as u64, Duration::from_secs(3));
        let achieved = sent.refused / sent.seconds;
        let lossless = lost == 0.0 && delta.missed == 0 && delta.dropped == 0 && delta.events as f64 == sent.refused;
        steps.push(format!(
            "{:.0}k: {} of {:.0} printed, {} missed, {} dropped",
            achieved / 1000.0,
            delta.events,
            sent.refused,
            delta.missed,
            delta.dropped
        ));
        if !lossless {
            first_loss = achieved;
            break;
        }
        highest_lossless = achieved;
    }
    rows.lossless.values.push(highest_lossless);
    if first_loss.is_finite() {
        rows.loss_begins.values.push(first_loss);
    } else {
        rows.loss_begins.context = format!("no loss up to {highest_lossless:.0} events/s in some rounds");
    }
    rows.lossless.context = format!("last round: {}", steps.join("; "));
    Ok(())
}
