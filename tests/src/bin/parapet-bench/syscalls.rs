//! Group `syscalls`: what the agent adds to common system calls, for a
//! process in a pod no policy selects and for one in a pod whose policy
//! allows everything it does.
//!
//! Two pods run in a private containerd. Each round measures both pods
//! with the agent stopped (and every program of it freed) and with the
//! agent running, in alternating order from round to round. Within a
//! phase, the samples of the two pods alternate. Each sample is one
//! `netprobe bench OP COUNT` run in the pod, which times its own loop. A
//! round's figure for a configuration is its fastest sample, because on a
//! shared machine other work only ever adds time; the row's figure for the
//! round is the ratio of that to the same pod's fastest sample without the
//! agent. Each pod is its own baseline, so differences between pods
//! cancel out.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};
use parapet_tests::{Containerd, Pod, agent::Agent};

use crate::{
    Options, programs,
    report::{Row, Target, median},
};

const GROUP: &str = "syscalls";
const NAMESPACE: &str = "bench";
const NETPROBE: &str = "/usr/local/bin/netprobe";

/// The operations, as `netprobe bench` names them, with the name in the
/// table and the count per sample, chosen so that a sample takes roughly
/// 0.1 s on a 2-core VM.
const OPERATIONS: [(&str, &str, u64); 7] = [
    ("open", "open+close", 100_000),
    ("write-1m", "write 1 MiB", 400),
    ("write-512", "write 512 B", 100_000),
    ("stat", "stat", 100_000),
    ("connect", "TCP connect+close", 4_000),
    ("udp", "UDP send", 50_000),
    ("exec", "fork+exec", 200),
];
/// `--quick` divides every count by this.
const QUICK_DIVISOR: u64 = 20;
const SAMPLES: usize = 3;

/// The policy of the policed pod: everything the workload does is allowed.
/// The ports are those of `netprobe bench`'s loopback peers.
const POLICY: &str = "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: bench-allowed
spec:
  selector:
    namespace: bench
    matchLabels: {app: policed}
  mode: enforce
  filesystem:
    readOnly: true
    writablePaths: [/tmp]
  exec:
    allow: [/bin/busybox, /usr/local/bin/netprobe]
  network:
    egress:
      - to: [{address: 127.0.0.1}]
        ports: [{port: 9100, protocol: TCP}, {port: 9101, protocol: UDP}]
";

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Which {
    Unpoliced,
    Policed,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    NoAgent,
    Agent,
}

/// Fastest sample in ns per operation, by operation, pod and phase, for
/// one round.
type RoundFigures = HashMap<(&'static str, Which, Phase), f64>;

pub async fn run(options: &Options) -> Result<Vec<Row>> {
    let containerd = Containerd::start(crate::netprobe_path()?).await?;
    let result = measure(options, &containerd).await;
    let cleanup = containerd.cleanup().await;
    let rows = result?;
    cleanup?;
    Ok(rows)
}

async fn measure(options: &Options, containerd: &Containerd) -> Result<Vec<Row>> {
    let unpoliced = Pod::run(containerd, "unpoliced", NAMESPACE, &[("app", "unpoliced")]).await?;
    let policed = Pod::run(containerd, "policed", NAMESPACE, &[("app", "policed")]).await?;
    let (rounds, samples) = if options.quick { (1, 1) } else { (options.rounds, SAMPLES) };
    let mut all_rounds: Vec<RoundFigures> = Vec::new();
    for round in 0..rounds {
        // The first round starts with the agent, so that every phase
        // without it finds the policed pod's mounts in the same state:
        // the agent leaves them read-only when it stops.
        let phases = if round % 2 == 0 { [Phase::Agent, Phase::NoAgent] } else { [Phase::NoAgent, Phase::Agent] };
        let mut figures = RoundFigures::new();
        for phase in phases {
            let agent = match phase {
                Phase::Agent => Some(start_agent(containerd, &policed)?),
                Phase::NoAgent => None,
            };
            let pods = [(Which::Unpoliced, &unpoliced), (Which::Policed, &policed)];
            for (op, _, count) in OPERATIONS {
                let count = if options.quick { (count / QUICK_DIVISOR).max(1) } else { count };
                let mut fastest: HashMap<Which, f64> = HashMap::new();
                for sample in 0..samples {
                    for index in 0..pods.len() {
                        let (which, pod) = pods[(index + sample) % pods.len()];
                        let ns = sample_ns(pod, op, count).await?;
                        let entry = fastest.entry(which).or_insert(f64::INFINITY);
                        *entry = entry.min(ns);
                    }
                }
                for (which, ns) in fastest {
                    figures.insert((op, which, phase), ns);
                }
            }
            if let Some(agent) = agent {
                stop_agent(containerd, agent)?;
            }
        }
        println!("bench: syscalls: round {} of {rounds} done", round + 1);
        all_rounds.push(figures);
    }
    Ok(rows(&all_rounds))
}

/// Starts the agent with the policy and waits until the policed pod's
/// container is enforced and its exec lists are looked up.
fn start_agent(containerd: &Containerd, policed: &Pod) -> Result<Agent> {
    let mut agent = Agent::start(containerd, &[("bench.yaml", POLICY)])?;
    agent.wait_ready()?;
    agent.wait_enforced(&policed.container_id)?;
    agent.wait_for_log(&["exec lists looked up", &policed.container_id])?;
    Ok(agent)
}

/// Stops the agent and waits until the kernel has freed every program it
/// held, so that the next phase really runs without any of them.
pub fn stop_agent(containerd: &Containerd, mut agent: Agent) -> Result<()> {
    let pid = agent.pid().context("the agent is not running")?;
    let ids = programs::held_by(pid)?;
    if ids.is_empty() {
        bail!("the running agent (pid {pid}) holds no BPF program descriptor");
    }
    agent.stop()?;
    programs::wait_gone(&ids)?;
    parapet_tests::agent::wait_socket_programs_detached(&containerd.cgroup().v2_path())
}

async fn sample_ns(pod: &Pod, op: &str, count: u64) -> Result<f64> {
    let output = pod.exec(&[NETPROBE, "bench", op, &count.to_string()]).await?;
    let text = output.stdout_trimmed();
    let value = text.strip_prefix("ns_per_op=").and_then(|ns| ns.parse::<f64>().ok());
    match value {
        Some(ns) if output.exit_code == 0 && ns.is_finite() && ns > 0.0 => Ok(ns),
        _ => bail!("netprobe bench {op} {count} in pod {} failed: {output:?}", pod.name),
    }
}

fn rows(all_rounds: &[RoundFigures]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (op, title, _) in OPERATIONS {
        for (which, label, limit) in [
            (Which::Unpoliced, "unpoliced", 1.02),
            (Which::Policed, "policed", 1.05),
        ] {
            let mut row = Row::new(GROUP, format!("{title}, {label} / no agent"), "ratio", Target::AtMost(limit));
            let mut without = Vec::new();
            let mut with = Vec::new();
            for figures in all_rounds {
                let base = figures[&(op, which, Phase::NoAgent)];
                let measured = figures[&(op, which, Phase::Agent)];
                row.values.push(measured / base);
                without.push(base);
                with.push(measured);
            }
            row.context = format!(
                "{} ns/op without the agent, {} ns/op with it (medians over rounds)",
                ns_text(median(&without)),
                ns_text(median(&with)),
            );
            rows.push(row);
        }
    }
    rows
}

fn ns_text(ns: f64) -> String {
    if ns >= 100.0 { format!("{ns:.0}") } else { format!("{ns:.1}") }
}
