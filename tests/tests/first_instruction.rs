//! New containers in policed pods are policed from their first
//! instruction: containers whose very first action is a refused write to
//! the read-only root, or a refused connect, started in pods a policy
//! selects. The test prints how many got through and how long the agent
//! held each new container before it let it run.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use anyhow::{Result, bail};
use parapet_tests::{Containerd, ExecOutput, Pod, agent::Agent};

/// Pods that receive the new containers; each gets `PER_POD` containers
/// of each kind. `PARAPET_FIRST_PODS` and `PARAPET_FIRST_PER_POD` lower
/// them where containers start slowly, as under the emulation of
/// `cargo xtask vm-test`.
const PODS: usize = 10;
const PER_POD: usize = 10;

/// How long a new container may take to run its one action and exit.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// Returns a policy on pods labelled `app=first`: read-only root, and
/// egress only to the server's TCP port 8080, so its port 8081 is refused.
fn first_policy(server: IpAddr) -> String {
    format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: first-instruction
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: first}}
  mode: enforce
  filesystem:
    readOnly: true
  network:
    egress:
      - to: [{{address: {server}}}]
        ports: [{{port: 8080, protocol: TCP}}]
"
    )
}

/// What a new container's one action did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    GotThrough,
    Refused,
}

/// Reads netprobe's output: `ok`, or `error errno=N ...` where N is one of
/// `refusals` (EPERM from a kernel program, EROFS from a read-only mount).
fn outcome(name: &str, output: &ExecOutput, refusals: &[&str]) -> Result<Outcome> {
    let text = output.stdout_trimmed();
    if text == "ok" && output.exit_code == 0 {
        return Ok(Outcome::GotThrough);
    }
    if refusals.iter().any(|errno| text.starts_with(&format!("error errno={errno} "))) {
        return Ok(Outcome::Refused);
    }
    bail!("container {name} wrote unexpected output: {output:?}")
}

/// Returns the whole number in the environment variable `name`, or
/// `default` when it is not set.
fn count_from_env(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(text) => match text.parse() {
            Ok(count) if count > 0 => Ok(count),
            _ => bail!("{name}={text:?} is invalid: expected a whole number above 0"),
        },
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(error) => bail!("{name} is invalid: {error}"),
    }
}

/// Reads the time each held program waited, from the agent log lines
/// `held program released ... held_us=N`.
fn held_times_us(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("held program released"))
        .filter_map(|line| {
            let field = line.split_whitespace().find(|field| field.starts_with("held_us="))?;
            field.trim_start_matches("held_us=").parse().ok()
        })
        .collect()
}

/// Returns the ids of the containers whose program the agent held and
/// then let run, from the agent log lines `held program released`.
fn held_container_ids(log: &str) -> HashSet<String> {
    log.lines()
        .filter(|line| line.contains("held program released"))
        .filter_map(|line| {
            let field = line.split_whitespace().find(|field| field.starts_with("container_id="))?;
            Some(field.trim_start_matches("container_id=").to_owned())
        })
        .collect()
}

#[tokio::test]
async fn first_action_of_new_containers_is_policed() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let pod_count = count_from_env("PARAPET_FIRST_PODS", PODS)?;
    let per_pod = count_from_env("PARAPET_FIRST_PER_POD", PER_POD)?;
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server_command = ["sh", "-c", "netprobe listen tcp 8080 & netprobe listen tcp 8081 & wait"];
    let server = Pod::run_command(&containerd, "server", "clinic", &[("app", "server")], &server_command).await?;
    let mut agent = Agent::start(&containerd, &[("first.yaml", &first_policy(server.ip))])?;
    agent.wait_ready()?;

    let mut pods = Vec::new();
    for index in 0..pod_count {
        let pod = Pod::run(&containerd, &format!("first-{index}"), "clinic", &[("app", "first")]).await?;
        agent.wait_enforced(&pod.container_id)?;
        pods.push(pod);
    }

    let server_address = server.ip.to_string();
    let write = ["netprobe", "openat2", "/first-write"];
    let connect = ["netprobe", "connect", "tcp", server_address.as_str(), "8081"];
    let mut started = Vec::new();
    for pod in &pods {
        for index in 0..per_pod {
            let name = format!("write-{index}");
            started.push((pod, "write", pod.start_container(&name, &write).await?, name));
            let name = format!("connect-{index}");
            started.push((pod, "connect", pod.start_container(&name, &connect).await?, name));
        }
    }

    let mut writes_through = 0;
    let mut connects_through = 0;
    for (pod, kind, container_id, name) in &started {
        let output = pod.wait_container_exit(container_id, name, parapet_tests::agent::raised_limit(EXIT_LIMIT)).await?;
        let label = format!("{}/{name}", pod.name);
        let (refusals, through): (&[&str], &mut usize) = match *kind {
            "write" => (&["1", "30"], &mut writes_through),
            _ => (&["1"], &mut connects_through),
        };
        if outcome(&label, &output, refusals)? == Outcome::GotThrough {
            println!("{label}: first {kind} got through; the agent log on container {container_id}:");
            for line in agent.log().lines().filter(|line| line.contains(container_id.as_str())) {
                println!("  {line}");
            }
            *through += 1;
        }
    }

    let total = pod_count * per_pod;
    println!("first writes to the read-only root that got through: {writes_through} of {total}");
    println!("first refused connects that got through: {connects_through} of {total}");
    let mut held = held_times_us(&agent.log());
    held.sort_unstable();
    match (held.first(), held.last()) {
        (Some(min), Some(max)) => println!(
            "held before the first instruction: {} programs, min {min} us, median {} us, max {max} us",
            held.len(),
            held[held.len() / 2]
        ),
        _ => println!("held before the first instruction: no program was held"),
    }

    // A held program can only end once let run or killed, so one that
    // the agent found gone ran without being held.
    let ended_early = agent.log().lines().filter(|line| line.contains("held process gone")).count();
    println!("held programs that ended before the agent decided on them: {ended_early}");
    let status = agent.status().await?;
    println!("held programs still waiting: {}", status.held.len());

    // The agent sets a container up once the runtime lists it as running.
    // That happens when runc's init process has passed its exec FIFO, not
    // when it has run its exec, so on a slow machine (as in the emulated
    // guests) the exec can come after the set-up, and the agent does not
    // hold that program.
    let held_ids = held_container_ids(&agent.log());
    let not_held: Vec<String> = started
        .iter()
        .filter(|(_, _, container_id, _)| !held_ids.contains(container_id.as_str()))
        .map(|(pod, _, _, name)| format!("{}/{name}", pod.name))
        .collect();
    println!("new containers not held (their exec probably came after the set-up): {not_held:?}");
    assert_eq!(writes_through, 0, "first writes that got through");
    assert_eq!(connects_through, 0, "first connects that got through");
    assert!(not_held.len() < started.len(), "no new container's program was held");
    assert!(status.held.is_empty(), "programs still held: {:?}", status.held);

    agent.stop()?;
    for pod in pods {
        pod.remove().await?;
    }
    server.remove().await?;
    containerd.cleanup().await?;
    Ok(())
}
