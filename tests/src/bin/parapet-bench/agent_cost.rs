//! Group `agent cost`: the agent's resident memory and CPU time when idle,
//! with real pods, with a thousand workloads under a hundred policies, and
//! while a policed pod floods it with denied operations.
//!
//! Each round is one window of `window` seconds: CPU is the agent's user
//! plus system time in the window as a percentage of one core, memory is
//! its `VmRSS` at the end of the window.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value},
    fake_workloads::FakeWorkloads,
};

use crate::{
    Options, proc_usage,
    report::{Row, Target},
};

const GROUP: &str = "agent cost";
/// Namespace of every pod the group runs.
const NAMESPACE: &str = "bench";
/// The target: resident memory with a thousand containers, in MiB.
const MEMORY_TARGET_MIB: f64 = 30.0;
/// Containers the memory target is stated for.
const MEMORY_TARGET_CONTAINERS: usize = 1000;
/// How long the agent may take to put every workload under policy.
const ENFORCE_LIMIT: Duration = Duration::from_secs(120);

/// The sizes of one run.
struct Sizes {
    policies: usize,
    real_pods: usize,
    fake_workloads: usize,
    rounds: usize,
    window: Duration,
    /// Time the agent gets after a change before measuring starts.
    settle: Duration,
}

impl Sizes {
    fn of(options: &Options) -> Self {
        if options.quick {
            Self {
                policies: 10,
                real_pods: 4,
                fake_workloads: 100,
                rounds: options.rounds.min(3),
                window: Duration::from_secs(1),
                settle: Duration::from_secs(1),
            }
        } else {
            Self {
                policies: 100,
                real_pods: 100,
                fake_workloads: MEMORY_TARGET_CONTAINERS,
                rounds: options.rounds,
                window: Duration::from_secs(5),
                settle: Duration::from_secs(5),
            }
        }
    }
}

pub async fn run(options: &Options) -> Result<Vec<Row>> {
    let sizes = Sizes::of(options);
    crate::with_containerd(GROUP, async |containerd| measure_all(containerd, &sizes).await).await
}

async fn measure_all(containerd: &Containerd, sizes: &Sizes) -> Result<Vec<Row>> {
    let policies = policies(sizes.policies);
    let mut rows = Vec::new();

    let mut agent = Agent::start(containerd, &borrowed(&policies))?;
    agent.wait_ready()?;
    tokio::time::sleep(sizes.settle).await;
    rows.extend(measure(&agent, sizes, &format!("idle, {} policies, no workloads", sizes.policies), Target::None).await?);
    agent.stop()?;

    rows.extend(with_fake_workloads(containerd, sizes, &policies).await?);
    rows.extend(with_real_pods(containerd, sizes, &policies).await?);
    Ok(rows)
}

/// Measures the agent with a thousand workloads (in the full run) made of
/// cgroups and a fake runtime, under the policies.
async fn with_fake_workloads(containerd: &Containerd, sizes: &Sizes, policies: &[(String, String)]) -> Result<Vec<Row>> {
    let count = sizes.fake_workloads;
    let fake = FakeWorkloads::create(containerd.cgroup(), count, NAMESPACE, "fake", |number| {
        vec![("app".to_owned(), format!("w{}", number % sizes.policies))]
    })?;
    let socket = containerd.dir().join("fake-runtime.sock");
    let server = fake.serve(&socket)?;
    let measured = async {
        let mut agent = Agent::start_with_cri(containerd, &socket, |dir| write_policies(dir, policies))?;
        agent.wait_ready()?;
        wait_containers_enforced(&agent, count).await?;
        tokio::time::sleep(sizes.settle).await;
        let target = if count == MEMORY_TARGET_CONTAINERS { Target::AtMost(MEMORY_TARGET_MIB) } else { Target::None };
        let label = format!("{count} containers (cgroups listed by a fake runtime), {} policies", sizes.policies);
        let rows = measure(&agent, sizes, &label, target).await?;
        agent.stop()?;
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    server.abort();
    let _ = std::fs::remove_file(&socket);
    fake.remove()?;
    measured
}

/// Measures the agent with real pods under the policies, then during a
/// flood of denied sends from one of them.
async fn with_real_pods(containerd: &Containerd, sizes: &Sizes, policies: &[(String, String)]) -> Result<Vec<Row>> {
    let mut agent = Agent::start(containerd, &borrowed(policies))?;
    agent.wait_ready()?;
    let mut pods = Vec::with_capacity(sizes.real_pods);
    let measured = async {
        for number in 0..sizes.real_pods {
            let app = format!("w{}", number % sizes.policies);
            pods.push(Pod::run(containerd, &format!("pod-{number}"), NAMESPACE, &[("app", &app)]).await?);
        }
        wait_containers_enforced(&agent, pods.len()).await?;
        tokio::time::sleep(sizes.settle).await;
        let label = format!("{} real pods, {} policies", pods.len(), sizes.policies);
        let mut rows = measure(&agent, sizes, &label, Target::None).await?;
        rows.extend(during_flood(&agent, sizes, &pods).await?);
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    agent.stop()?;
    for pod in pods {
        pod.remove().await?;
    }
    measured
}

/// Starts a second container in the first pod, whose policy denies every
/// connection, sending UDP datagrams to the second pod as fast as it can,
/// and measures while it runs. The container runs until its pod goes.
async fn during_flood(agent: &Agent, sizes: &Sizes, pods: &[Pod]) -> Result<Vec<Row>> {
    let [client, target, ..] = pods else {
        bail!("the flood needs two pods, there are {}", pods.len());
    };
    let target_ip = target.ip.to_string();
    client
        .start_container("flood", &["netprobe", "flood", "udp", &target_ip, "9000", "--seconds", "100000"])
        .await?;
    let started = Instant::now();
    while denials(agent)? == 0.0 {
        if started.elapsed() > ENFORCE_LIMIT {
            bail!("no denial counted {ENFORCE_LIMIT:?} after the flood started");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (counted_before, lost_before, at) = (denials(agent)?, lost(agent)?, Instant::now());
    let mut rows = measure(agent, sizes, "flood of denied UDP sends from one pod", Target::None).await?;
    let seconds = at.elapsed().as_secs_f64();
    let rate = (denials(agent)? - counted_before) / seconds;
    let lost_rate = (lost(agent)? - lost_before) / seconds;
    for row in &mut rows {
        row.context = format!("{rate:.0} denials/s counted, {lost_rate:.0} records/s lost; {}", row.context);
    }
    Ok(rows)
}

fn denials(agent: &Agent) -> Result<f64> {
    let labels = [("pod", "pod-0"), ("kind", "network"), ("verdict", "deny")];
    Ok(metric_value(&agent.metrics()?, "parapet_violations_total", &labels).unwrap_or(0.0))
}

fn lost(agent: &Agent) -> Result<f64> {
    let labels = [("reason", "ring_buffer_full")];
    Ok(metric_value(&agent.metrics()?, "parapet_events_lost_total", &labels).unwrap_or(0.0))
}

/// Measures `sizes.rounds` windows and returns a memory row and a CPU row.
async fn measure(agent: &Agent, sizes: &Sizes, label: &str, memory_target: Target) -> Result<Vec<Row>> {
    let pid = agent.pid().context("the agent is not running")?;
    let mut memory = Row::new(GROUP, format!("memory, {label}"), "MiB", memory_target);
    let mut cpu = Row::new(GROUP, format!("CPU, {label}"), "% of a core", Target::None);
    let mut last = proc_usage::memory(pid)?;
    for _ in 0..sizes.rounds {
        let before = proc_usage::cpu_seconds(pid)?;
        let started = Instant::now();
        tokio::time::sleep(sizes.window).await;
        let used = proc_usage::cpu_seconds(pid)? - before;
        cpu.values.push(100.0 * used / started.elapsed().as_secs_f64());
        last = proc_usage::memory(pid)?;
        memory.values.push(last.rss_mib());
    }
    memory.context = format!("{}; resident by kind: {}", last.summary(), proc_usage::breakdown(pid)?);
    cpu.context = format!("{} s windows", sizes.window.as_secs());
    Ok(vec![memory, cpu])
}

/// Waits until the agent's status lists at least `count` containers
/// under policy.
async fn wait_containers_enforced(agent: &Agent, count: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let status = agent.status().await?;
        let enforced = status.workloads.iter().filter(|workload| workload.container_id.is_some()).count();
        if enforced >= count {
            return Ok(());
        }
        if started.elapsed() > ENFORCE_LIMIT {
            bail!("{enforced} of {count} containers under policy after {ENFORCE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Returns `count` policies as (file name, YAML): policy `w<k>` selects
/// the pods labelled `app=w<k>` and lets them reach one /24 on TCP 443,
/// except `w0`, which denies every connection.
fn policies(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|number| {
            let egress = if number == 0 {
                "[]".to_owned()
            } else {
                format!(
                    "\n      - to: [{{cidr: 10.{}.{}.0/24}}]\n        ports: [{{port: 443, protocol: TCP}}]",
                    number / 256,
                    number % 256
                )
            };
            let yaml = format!(
                "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: w{number}
spec:
  selector:
    namespace: {NAMESPACE}
    matchLabels: {{app: w{number}}}
  mode: enforce
  network:
    egress: {egress}
"
            );
            (format!("w{number}.yaml"), yaml)
        })
        .collect()
}

fn borrowed(policies: &[(String, String)]) -> Vec<(&str, &str)> {
    policies.iter().map(|(name, yaml)| (name.as_str(), yaml.as_str())).collect()
}

fn write_policies(dir: &std::path::Path, policies: &[(String, String)]) -> Result<()> {
    for (name, yaml) in policies {
        std::fs::write(dir.join(name), yaml)?;
    }
    Ok(())
}
