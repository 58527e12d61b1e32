//! `cargo xtask demo`: a private containerd with two real pods, the agent
//! with an example policy, one allowed and two blocked connections shown
//! live through `parapet tail`, then a full clean-up.

use std::time::Duration;

use anyhow::{Context as _, Result};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, Tail, metric_value},
};

const DATABASE_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "netprobe listen tcp 5432 & netprobe listen tcp 22 & wait",
];

fn policy(database: std::net::IpAddr) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: records-api-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: records-api}}
  mode: enforce
  network:
    egress:
      - to: [{{address: {database}}}]
        ports: [{{port: 5432, protocol: TCP}}]
"
    )
}

fn say(text: &str) {
    println!("\n==> {text}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if let Some(reason) = parapet_tests::skip_reason() {
        anyhow::bail!("the demo cannot run here: {reason}");
    }
    let netprobe = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("netprobe"))
        .context("demo binary has no parent folder")?;
    say("starting a private containerd and two pods in namespace clinic");
    let containerd = Containerd::start(&netprobe).await?;
    let result = run(&containerd).await;
    say("cleaning up: pods, containerd, bridge, cgroups");
    containerd.cleanup().await?;
    result
}

async fn run(containerd: &Containerd) -> Result<()> {
    let database = Pod::run_command(containerd, "records-db", "clinic", &[("app", "records-db")], &DATABASE_COMMAND).await?;
    let api = Pod::run(containerd, "records-api", "clinic", &[("app", "records-api")]).await?;
    println!("    records-db  {}  listening on TCP 5432 and 22", database.ip);
    println!("    records-api {}", api.ip);

    let policy = policy(database.ip);
    say("starting the agent with this policy:");
    println!("{policy}");
    let mut agent = Agent::start(containerd, &[("records-api.yaml", &policy)])?;
    agent.wait_ready()?;
    agent.wait_enforced(&api.container_id)?;
    let tail = Tail::start(&agent, &[])?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let database_ip = database.ip.to_string();
    for (port, what) in [("5432", "allowed by the policy"), ("22", "not in the policy")] {
        say(&format!("records-api connects to records-db port {port} ({what})"));
        let output = api.exec(&["netprobe", "connect", "tcp", &database_ip, port]).await?;
        println!("    netprobe: {}", output.stdout_trimmed());
    }
    let host = containerd.host_address().to_string();
    say(&format!("records-api sends UDP to the node's bridge address {host}:53 (not in the policy)"));
    let output = api.exec(&["netprobe", "send", "udp", &host, "53"]).await?;
    println!("    netprobe: {}", output.stdout_trimmed());

    tokio::time::sleep(Duration::from_millis(500)).await;
    say("what `parapet tail` showed live:");
    print!("{}", tail.output());
    say("the violation counters on /metrics:");
    let metrics = agent.metrics()?;
    for line in metrics.lines().filter(|l| l.starts_with("parapet_violations_total")) {
        println!("    {line}");
    }
    let denied = metric_value(&metrics, "parapet_violations_total", &[("verdict", "deny")]);
    println!("    ({} operations blocked)", denied.unwrap_or(0.0));
    drop(tail);
    agent.stop()?;
    Ok(())
}
