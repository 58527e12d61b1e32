//! The agent's metrics in a real Prometheus server (Debian's package) on
//! loopback, which scrapes the real agent every second and evaluates the
//! alert rules of `deploy/alerts/parapet.rules.yaml` while a policed pod
//! makes refused connections, writes and program starts.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use parapet::event::{Kind, VerdictName};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, free_loopback_port, http_get, metric_value},
};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const NETPROBE: &str = "/usr/local/bin/netprobe";
/// A copy of netprobe that the exec policy denies. A copy is another file,
/// so netprobe itself keeps running.
const DENIED_PROGRAM: &str = "/denied-probe";
/// How long to wait for Prometheus to show a value or an alert.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);

const DENIED_CONNECTS: u64 = 3;
const ALLOWED_CONNECTS: u64 = 2;
const DENIED_WRITES: u64 = 4;
const DENIED_EXECS: u64 = 2;
/// How long the agent's idle CPU time is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Refused connects of the burst, each from a new netprobe process.
const BURST_CONNECTS: u64 = 2000;

/// Returns one policy per promise, all selecting the `api` pod, as the
/// ConfigMap in deploy/ does for the clinic.
fn policies(server: &str) -> [(&'static str, String); 3] {
    let header = |name: &str| {
        format!(
            "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: {name}
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: api}}
  mode: enforce
"
        )
    };
    [
        (
            "network.yaml",
            format!(
                "{}  network:
    egress:
      - to: [{{address: {server}}}]
        ports: [{{port: 8080, protocol: TCP}}]
",
                header("api-egress")
            ),
        ),
        (
            "filesystem.yaml",
            format!(
                "{}  filesystem:
    readOnly: true
    writablePaths: [/tmp]
",
                header("api-read-only")
            ),
        ),
        (
            "exec.yaml",
            format!(
                "{}  exec:
    deny: [{DENIED_PROGRAM}]
",
                header("api-programs")
            ),
        ),
    ]
}

/// A Prometheus server started for one test, killed by its pid when
/// dropped, and its folder removed.
struct PrometheusServer {
    child: Option<Child>,
    dir: PathBuf,
    address: SocketAddr,
}

impl PrometheusServer {
    /// Starts Prometheus on a free loopback port, scraping only `target`
    /// every second as job `parapet` with `node="test-node"`, and
    /// evaluating `rules` every second.
    fn start(dir: PathBuf, target: SocketAddr, rules: &Path) -> Result<Self> {
        fs::create_dir_all(&dir)?;
        let address = free_loopback_port()?;
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: parapet
    static_configs:
      - targets: ['{target}']
        labels: {{node: test-node}}
",
                rules = rules.display()
            ),
        )?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start prometheus")?;
        let mut server = Self {
            child: Some(child),
            dir,
            address,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if prometheus_get(self.address, "/-/ready").is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("prometheus exited with {status}:\n{}", self.log());
            }
            if started.elapsed() > PROMETHEUS_WAIT {
                bail!(
                    "prometheus not ready after {PROMETHEUS_WAIT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs an instant query and returns the `data.result` list.
    fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let body = prometheus_get(
            self.address,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )?;
        let response: Value =
            serde_json::from_str(&body).with_context(|| format!("invalid JSON: {body}"))?;
        if response["status"] != "success" {
            bail!("query {promql} failed: {body}");
        }
        Ok(response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Returns the active alerts (pending and firing).
    fn alerts(&self) -> Result<Vec<Value>> {
        let body = prometheus_get(self.address, "/api/v1/alerts")?;
        let response: Value =
            serde_json::from_str(&body).with_context(|| format!("invalid JSON: {body}"))?;
        Ok(response["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Polls `check` until it returns `Some`, failing after
    /// [`PROMETHEUS_WAIT`] with the last state it saw.
    fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&Self) -> Result<Option<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        loop {
            if let Some(found) = check(self)? {
                return Ok(found);
            }
            if started.elapsed() > PROMETHEUS_WAIT {
                bail!(
                    "{what} not seen in Prometheus after {PROMETHEUS_WAIT:?}; targets: {}",
                    prometheus_get(self.address, "/api/v1/targets").unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("parapet-tests: prometheus log:\n{}", self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends an HTTP/1.0 GET and returns the body. HTTP/1.0 makes the server
/// close the connection after the body instead of sending it in chunks,
/// which Prometheus does for larger HTTP/1.1 responses.
fn prometheus_get(address: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("failed to connect to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without a header end")?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET {path} from {address} failed: {head}\n{body}");
    }
    Ok(body.to_owned())
}

/// Percent-encodes everything but unreserved characters, for a query string.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Returns the sample value of a query result entry.
fn sample_value(entry: &Value) -> Option<f64> {
    entry["value"][1].as_str()?.parse().ok()
}

fn label<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry["metric"][name].as_str()
}

async fn shell(pod: &Pod, command: &str) -> Result<parapet_tests::ExecOutput> {
    pod.exec(&["sh", "-c", command]).await
}

/// Returns the path of deploy/alerts/parapet.rules.yaml.
fn rules_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/alerts/parapet.rules.yaml")
}

/// Waits until the agent has printed `count` events matching `predicate`.
fn wait_for_event_count(
    agent: &mut Agent,
    count: usize,
    predicate: impl Fn(&parapet::event::Event) -> bool,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let events = agent.events()?;
        let found = events.iter().filter(|event| predicate(event)).count();
        if found >= count {
            return Ok(());
        }
        if started.elapsed() > PROMETHEUS_WAIT {
            bail!("{found} matching events, expected {count}: {events:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn prometheus_sees_counters_and_fires_alerts() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    if !Path::new(PROMETHEUS).is_file() {
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_owned();
        println!("SKIPPED: {test}: {PROMETHEUS} not found (install Debian's prometheus package)");
        return Ok(());
    }
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(
        &containerd,
        "server",
        "clinic",
        &[("app", "server")],
        &[
            "sh",
            "-c",
            "netprobe listen tcp 8080 & netprobe listen tcp 8081 & wait",
        ],
    )
    .await?;
    let api = Pod::run(&containerd, "api", "clinic", &[("app", "api")]).await?;
    let copied = shell(&api, &format!("cp {NETPROBE} {DENIED_PROGRAM}")).await?;
    assert_eq!(copied.exit_code, 0, "{copied:?}");
    let server_ip = server.ip.to_string();
    let policies = policies(&server_ip);
    let policy_files: Vec<(&str, &str)> = policies
        .iter()
        .map(|(name, yaml)| (*name, yaml.as_str()))
        .collect();
    let mut agent = Agent::start(&containerd, &policy_files)?;
    agent.wait_ready()?;
    agent.wait_for_log(&["filesystem made read-only", &api.container_id])?;
    agent.wait_for_log(&["exec lists looked up", &api.container_id])?;
    agent.wait_enforced(&api.container_id)?;
    assert_eq!(http_get(agent.metrics_address, "/healthz")?, "ok\n");

    // Declared after containerd, so it is dropped, and killed, first.
    let prometheus = PrometheusServer::start(
        containerd.dir().join("prometheus"),
        agent.metrics_address,
        &rules_file(),
    )?;
    prometheus.wait_for("a successful scrape of the agent", |prometheus| {
        let up = prometheus.query("up{job=\"parapet\"}")?;
        Ok(up
            .first()
            .and_then(sample_value)
            .filter(|value| *value == 1.0))
    })?;
    for _ in 0..ALLOWED_CONNECTS {
        let output = api
            .exec(&["netprobe", "connect", "tcp", &server_ip, "8080"])
            .await?;
        assert_eq!(output.stdout_trimmed(), "ok");
    }
    for _ in 0..DENIED_CONNECTS {
        let output = api
            .exec(&["netprobe", "connect", "tcp", &server_ip, "8081"])
            .await?;
        assert!(
            output.stdout_trimmed().starts_with("error errno=1 "),
            "{output:?}"
        );
    }
    for number in 0..DENIED_WRITES {
        let output = shell(&api, &format!("mkdir /made-{number}")).await?;
        assert!(
            output.stderr.contains("Read-only file system"),
            "{output:?}"
        );
    }
    for _ in 0..DENIED_EXECS {
        let output = shell(
            &api,
            &format!("{DENIED_PROGRAM} socket udplite; echo status=$?"),
        )
        .await?;
        assert_eq!(
            output.stdout_trimmed(),
            "status=137",
            "killed before it printed"
        );
    }
    wait_for_event_count(&mut agent, DENIED_WRITES as usize, |event| {
        event.kind == Kind::File && event.verdict == VerdictName::Deny
    })?;
    wait_for_event_count(&mut agent, DENIED_EXECS as usize, |event| {
        event.kind == Kind::Exec && event.verdict == VerdictName::Deny
    })?;

    // Each kind of refusal under its own policy, at its exact count.
    let expected = [
        ("network", "api-egress", DENIED_CONNECTS),
        ("file", "api-read-only", DENIED_WRITES),
        ("exec", "api-programs", DENIED_EXECS),
    ];
    for (kind, policy, count) in expected {
        let query = format!("parapet_violations_total{{kind=\"{kind}\",verdict=\"deny\"}}");
        let series = prometheus.wait_for(&format!("{query} at {count}"), |prometheus| {
            let result = prometheus.query(&query)?;
            Ok(result
                .into_iter()
                .find(|entry| sample_value(entry) == Some(count as f64)))
        })?;
        for (name, value) in [
            ("job", "parapet"),
            ("node", "test-node"),
            ("namespace", "clinic"),
            ("pod", "api"),
            ("container", "main"),
            ("policy", policy),
        ] {
            assert_eq!(
                label(&series, name),
                Some(value),
                "label {name} of {series}"
            );
        }
    }
    let allowed = prometheus.wait_for("parapet_allowed_total of the network", |prometheus| {
        let result = prometheus.query("parapet_allowed_total{kind=\"network\",pod=\"api\"}")?;
        Ok(result
            .into_iter()
            .find(|entry| sample_value(entry) == Some(ALLOWED_CONNECTS as f64)))
    })?;
    assert_eq!(label(&allowed, "policy"), Some("api-egress"), "{allowed}");

    // The agent's own state, as the alert rules read it.
    let lost = prometheus.query("sum(parapet_events_lost_total)")?;
    assert_eq!(lost.first().and_then(sample_value), Some(0.0), "{lost:?}");
    let not_enforced = prometheus.query("sum(parapet_workloads_not_enforced)")?;
    assert_eq!(
        not_enforced.first().and_then(sample_value),
        Some(0.0),
        "{not_enforced:?}"
    );
    let policies_loaded = prometheus.query("count(parapet_policy_info)")?;
    assert_eq!(
        policies_loaded.first().and_then(sample_value),
        Some(3.0),
        "{policies_loaded:?}"
    );
    let reload_failed = prometheus.query("parapet_policy_reload_failed")?;
    assert_eq!(
        reload_failed.first().and_then(sample_value),
        Some(0.0),
        "{reload_failed:?}"
    );
    let network_backend =
        prometheus.query("parapet_backend_info{promise=\"network\",backend=\"cgroup-socket\"}")?;
    assert_eq!(
        network_backend.first().and_then(sample_value),
        Some(1.0),
        "{network_backend:?}"
    );

    // A workload's first refusals fire ParapetViolationBlocked, one alert
    // per kind and policy, and nothing else fires.
    let firing = prometheus.wait_for(
        "three firing ParapetViolationBlocked alerts",
        |prometheus| {
            let alerts = prometheus.alerts()?;
            let firing: Vec<Value> = alerts
                .into_iter()
                .filter(|alert| alert["state"] == "firing")
                .collect();
            let blocked = firing
                .iter()
                .filter(|alert| alert["labels"]["alertname"] == "ParapetViolationBlocked")
                .count();
            Ok((blocked == expected.len()).then_some(firing))
        },
    )?;
    assert_eq!(
        firing.len(),
        expected.len(),
        "only the violation alerts fire: {firing:#?}"
    );
    for (kind, policy, _) in expected {
        let alert = firing
            .iter()
            .find(|alert| alert["labels"]["kind"] == kind)
            .with_context(|| format!("no alert for kind {kind}: {firing:#?}"))?;
        assert_eq!(alert["labels"]["policy"], policy, "{alert}");
        assert_eq!(alert["labels"]["pod"], "api", "{alert}");
        assert_eq!(alert["labels"]["node"], "test-node", "{alert}");
        assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    }
    let series =
        prometheus.query("ALERTS{alertname=\"ParapetViolationBlocked\",alertstate=\"firing\"}")?;
    assert_eq!(series.len(), expected.len(), "{series:?}");

    // A burst of refused connects, each from a new process, for the
    // DaemonSet's resource requests: the counter stays exact, and the
    // agent's CPU time and memory come from its own /metrics.
    let cpu_seconds = |agent: &Agent| -> Result<f64> {
        metric_value(&agent.metrics()?, "process_cpu_seconds_total", &[])
            .context("no process_cpu_seconds_total")
    };
    let idle_started = cpu_seconds(&agent)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let cpu_before = cpu_seconds(&agent)?;
    let cpu_idle = cpu_before - idle_started;
    let burst_started = Instant::now();
    let burst = shell(
        &api,
        &format!(
            "i=0; while [ $i -lt {BURST_CONNECTS} ]; do netprobe connect tcp {server_ip} 8081 >/dev/null; i=$((i+1)); done"
        ),
    )
    .await?;
    assert_eq!(burst.exit_code, 0, "{burst:?}");
    let burst_seconds = burst_started.elapsed().as_secs_f64();
    let total = DENIED_CONNECTS + BURST_CONNECTS;
    prometheus.wait_for(&format!("{total} refused connects"), |prometheus| {
        let result =
            prometheus.query("parapet_violations_total{kind=\"network\",verdict=\"deny\"}")?;
        Ok(result
            .first()
            .and_then(sample_value)
            .filter(|value| *value == total as f64))
    })?;
    let cpu_burst = cpu_seconds(&agent)? - cpu_before;
    let memory = prometheus.query("max_over_time(process_resident_memory_bytes[5m])")?;
    let memory_mib = memory
        .first()
        .and_then(sample_value)
        .context("no resident memory")?
        / (1024.0 * 1024.0);
    println!(
        "measured: agent CPU {:.1} ms/s while idle with Prometheus scraping every second; \
         {BURST_CONNECTS} refused connects in {burst_seconds:.1} s ({:.0}/s) took {cpu_burst:.2} s CPU ({:.0}% of a core); \
         resident memory max {memory_mib:.1} MiB",
        cpu_idle / IDLE_WINDOW.as_secs_f64() * 1000.0,
        BURST_CONNECTS as f64 / burst_seconds,
        cpu_burst / burst_seconds * 100.0,
    );

    drop(prometheus);
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
