//! A policed pod floods the agent with denied operations: the kernel
//! counters stay exact, lost records are counted, and the agent keeps
//! serving `/metrics` and `tail` with bounded memory.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, Tail, metric_value},
};

/// Datagrams the flood sends, each refused by the sendmsg hook.
const ATTEMPTS: u64 = 3_000_000;

fn client_policy() -> String {
    "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: client-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {app: client}
  mode: enforce
  network:
    egress: []
"
    .to_owned()
}

/// Parses `name=value` from the flood's output line.
fn field(output: &str, name: &str) -> Result<f64> {
    output
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .with_context(|| format!("no {name}= in {output:?}"))?
        .parse()
        .with_context(|| format!("invalid {name} in {output:?}"))
}

#[tokio::test]
async fn flood_of_denials_is_counted_exactly() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let target = Pod::run(&containerd, "target", "clinic", &[("app", "target")]).await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let mut agent = Agent::start(&containerd, &[("client.yaml", &client_policy())])?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;
    let mut tail = Tail::start(&agent, &["--output", "json", "--pod", "client"])?;
    let before = metric_value(&agent.metrics()?, "process_resident_memory_bytes", &[]).unwrap_or(0.0);

    // Scrape all through the flood and keep the slowest response time.
    let flooding = Arc::new(AtomicBool::new(true));
    let scraper = {
        let flooding = Arc::clone(&flooding);
        let address = agent.metrics_address;
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut scrapes = 0u32;
            while flooding.load(Ordering::Relaxed) {
                let started = Instant::now();
                let page = parapet_tests::agent::http_get(address, "/metrics");
                slowest = slowest.max(started.elapsed());
                scrapes += 1;
                page?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok::<_, anyhow::Error>((slowest, scrapes))
        })
    };
    let count = ATTEMPTS.to_string();
    let target_ip = target.ip.to_string();
    let output = client
        .exec(&["netprobe", "flood", "udp", &target_ip, "9000", "--count", &count, "--seconds", "15"])
        .await?;
    flooding.store(false, Ordering::Relaxed);
    let (slowest, scrapes) = scraper.join().expect("the scraper thread panicked")?;
    let output = output.stdout_trimmed().to_owned();
    let denied = field(&output, "refused")?;
    let seconds = field(&output, "seconds")?;
    assert_eq!(denied, ATTEMPTS as f64, "every datagram is refused: {output}");
    println!(
        "flood: {denied} denied sends in {seconds:.3} s ({:.0} a second); slowest of {scrapes} scrapes {slowest:?}",
        denied / seconds
    );

    let metrics = agent.metrics()?;
    let labels = [("pod", "client"), ("kind", "network"), ("verdict", "deny")];
    assert_eq!(metric_value(&metrics, "parapet_violations_total", &labels), Some(denied), "{metrics}");
    let lost = metric_value(&metrics, "parapet_events_lost_total", &[("reason", "ring_buffer_full")])
        .context("no lost-records counter")?;
    let uncounted = metric_value(&metrics, "parapet_events_lost_total", &[("reason", "counter_map_full")]);
    assert_eq!(uncounted, Some(0.0), "{metrics}");
    let after = metric_value(&metrics, "process_resident_memory_bytes", &[]).unwrap_or(f64::MAX);
    println!(
        "lost records: {lost}; agent memory {:.1} MiB before, {:.1} MiB after",
        before / 1048576.0,
        after / 1048576.0
    );
    assert!(slowest < Duration::from_secs(2), "a scrape took {slowest:?} during the flood");
    assert!(after < 64.0 * 1048576.0, "agent memory grew to {after} bytes");

    // Every record is either delivered or counted as lost.
    let status = agent.status().await?;
    assert_eq!(status.lost.ring_buffer_full as f64, lost);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = agent
            .events()?
            .iter()
            .filter(|event| event.operation == "sendmsg" && event.peer.as_ref().is_some_and(|peer| peer.port == 9000))
            .count() as f64;
        if delivered + lost == denied {
            println!("delivered records: {delivered}");
            break;
        }
        assert!(Instant::now() < deadline, "{delivered} delivered and {lost} lost of {denied}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The tail client is still served: a new denial after the flood reaches it.
    let marker = client.exec(&["netprobe", "connect", "tcp", &target.ip.to_string(), "4711"]).await?;
    assert!(marker.stdout.starts_with("error errno=1 "), "{marker:?}");
    tail.wait_for_line(&["\"port\":4711"])?;

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
