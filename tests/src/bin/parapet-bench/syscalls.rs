//! Group `syscalls`: what the agent adds to common system calls, for a
//! process in a pod no policy selects and for one in a pod whose policy
//! allows everything it does.
//!
//! Two pods run in a private containerd. Each round measures both pods
//! with the agent stopped (and every program of it freed) and with the
//! agent running, in alternating order from round to round. Within a
//! phase, the samples of the two pods alternate. Each sample is one
//! `netprobe bench` run in the pod, which takes the CPU time of its own
//! loop of each operation. A round's figure for a configuration is its
//! fastest sample, because on a shared machine other work only ever adds
//! time. The row's figure for the round is the ratio of that to the same
//! pod's fastest sample without the agent. Each pod is its own baseline,
//! so differences between pods cancel out.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

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
/// table and the count per sample. The counts make each operation's loop
/// take roughly 0.1 s on the 2-core VM the bench was written on.
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
/// Samples per pod and configuration in each round; one sample runs every
/// operation once, in one process.
const SAMPLES: usize = 5;

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
enum Workload {
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
type RoundFigures = HashMap<(&'static str, Workload, Phase), f64>;

pub async fn run(options: &Options) -> Result<Vec<Row>> {
    crate::with_containerd(GROUP, async |containerd| measure(options, containerd).await).await
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
            let pods = [(Workload::Unpoliced, &unpoliced), (Workload::Policed, &policed)];
            for sample in 0..samples {
                for index in 0..pods.len() {
                    let (workload, pod) = pods[(index + sample) % pods.len()];
                    for (op, ns) in sample_ns(pod, options.quick).await? {
                        let entry = figures.entry((op, workload, phase)).or_insert(f64::INFINITY);
                        *entry = entry.min(ns);
                    }
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
    wait_idle(agent.pid().context("the agent is not running")?)?;
    Ok(agent)
}

/// Waits until the agent uses under 2% of a core over a quarter second, so
/// that its start-up work (reading the cgroup tree, asking the runtime,
/// hashing the allowed programs) does not count as syscall overhead. What
/// the agent costs in CPU is measured on its own. Gives up waiting, and
/// measures anyway, after 20 s.
fn wait_idle(pid: u32) -> Result<()> {
    const WINDOW: Duration = Duration::from_millis(250);
    // SAFETY: sysconf(3) has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let started = Instant::now();
    let mut before = cpu_ticks(pid)?;
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(WINDOW);
        let now = cpu_ticks(pid)?;
        let share = (now - before) as f64 / ticks_per_second / WINDOW.as_secs_f64();
        if share < 0.02 {
            return Ok(());
        }
        before = now;
    }
    println!("bench: syscalls: the agent (pid {pid}) was still busy after 20 s; measuring anyway");
    Ok(())
}

/// Returns user plus system CPU time of process `pid`, in clock ticks
/// (fields 14 and 15 of `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("invalid /proc/PID/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11).and_then(|field| field.parse().ok()).context("no utime in /proc/PID/stat")?;
    let system: u64 = fields.get(12).and_then(|field| field.parse().ok()).context("no stime in /proc/PID/stat")?;
    Ok(user + system)
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

/// Runs every operation once in `pod`, in one `netprobe bench` process;
/// returns the ns per operation of each.
async fn sample_ns(pod: &Pod, quick: bool) -> Result<Vec<(&'static str, f64)>> {
    let mut command = vec![NETPROBE.to_owned(), "bench".to_owned()];
    for (op, _, count) in OPERATIONS {
        let count = if quick { (count / QUICK_DIVISOR).max(1) } else { count };
        command.push(op.to_owned());
        command.push(count.to_string());
    }
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let output = pod.exec(&command).await?;
    if output.exit_code != 0 {
        bail!("netprobe bench in pod {} failed: {output:?}", pod.name);
    }
    let mut figures = Vec::new();
    for (op, _, _) in OPERATIONS {
        let value = output.stdout.lines().find_map(|line| {
            let (name, rest) = line.split_once(' ')?;
            let cpu = rest.split_whitespace().next()?.strip_prefix("ns_per_op=")?;
            (name == op).then(|| cpu.parse::<f64>().ok())?
        });
        match value {
            Some(ns) if ns.is_finite() && ns > 0.0 => figures.push((op, ns)),
            _ => bail!("netprobe bench in pod {} printed no figure for {op}: {output:?}", pod.name),
        }
    }
    Ok(figures)
}

fn rows(all_rounds: &[RoundFigures]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (op, title, _) in OPERATIONS {
        for (workload, label, limit) in [
            (Workload::Unpoliced, "unpoliced", 1.02),
            (Workload::Policed, "policed", 1.05),
        ] {
            let mut row = Row::new(GROUP, format!("{title}, {label} / no agent"), "ratio", Target::AtMost(limit));
            let mut without = Vec::new();
            let mut with = Vec::new();
            for figures in all_rounds {
                let base = figures[&(op, workload, Phase::NoAgent)];
                let measured = figures[&(op, workload, Phase::Agent)];
                row.values.push(measured / base);
                without.push(base);
                with.push(measured);
            }
            row.context = format!(
                "{} ns/op without the agent, {} ns/op with it (CPU time, medians over rounds)",
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
