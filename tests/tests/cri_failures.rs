//! The agent while its container runtime fails. The agent's CRI socket is
//! in the test's own directory. A proxy serves it: it forwards to the
//! test's containerd, sends garbage, never responds, or is gone. It can
//! also forward to a fake runtime that leaves the policed pod out of its
//! lists, or lists it without its identity. Last, the real containerd
//! stops and starts again.
//!
//! Pods already policed must stay policed throughout, the failure must
//! show in the log, `parapet status` and `/metrics`, and the agent must
//! recover when the runtime comes back.

use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, metric_value},
    fake_cri::{Distortion, FakeRuntime},
};
use tokio::{
    io::AsyncWriteExt as _,
    net::{UnixListener, UnixStream},
    task::JoinHandle,
};

const SERVER_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "netprobe listen tcp 8080 & netprobe listen tcp 8081 & wait",
];

/// What the proxy does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Forwards to the fake runtime.
    Fake,
    /// Writes bytes that are no HTTP/2, then keeps the connection open.
    Garbage,
    /// Accepts and never sends a byte.
    Silent,
}

/// A CRI socket whose behaviour the test switches. Switching closes every
/// open connection, so that the agent connects again and meets the new
/// behaviour.
struct Proxy {
    path: PathBuf,
    upstream: PathBuf,
    fake: PathBuf,
    mode: Arc<Mutex<Mode>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(path: &Path, upstream: &Path, fake: &Path) -> Result<Self> {
        let mut proxy = Self {
            path: path.to_owned(),
            upstream: upstream.to_owned(),
            fake: fake.to_owned(),
            mode: Arc::new(Mutex::new(Mode::Forward)),
            connections: Arc::default(),
            acceptor: None,
        };
        proxy.listen()?;
        Ok(proxy)
    }

    fn listen(&mut self) -> Result<()> {
        let listener = UnixListener::bind(&self.path)
            .with_context(|| format!("failed to bind {}", self.path.display()))?;
        let (mode, connections) = (Arc::clone(&self.mode), Arc::clone(&self.connections));
        let (real, fake) = (self.upstream.clone(), self.fake.clone());
        self.acceptor = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mode = *mode.lock().unwrap();
                let upstream = if mode == Mode::Fake {
                    fake.clone()
                } else {
                    real.clone()
                };
                let task = tokio::spawn(async move { serve(stream, mode, &upstream).await });
                connections.lock().unwrap().push(task);
            }
        }));
        Ok(())
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Takes the socket away: the runtime is down.
    fn stop(&mut self) -> Result<()> {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        self.set(Mode::Forward);
        std::fs::remove_file(&self.path)?;
        Ok(())
    }

    /// Brings the socket back, forwarding: the runtime restarted.
    fn restart(&mut self) -> Result<()> {
        self.set(Mode::Forward);
        self.listen()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        self.set(Mode::Forward);
    }
}

async fn serve(mut stream: UnixStream, mode: Mode, upstream: &Path) {
    match mode {
        Mode::Forward | Mode::Fake => {
            if let Ok(mut runtime) = UnixStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut runtime).await;
            }
        }
        Mode::Garbage => {
            let noise: Vec<u8> = (0..4096u32)
                .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let _ = stream.write_all(&noise).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Mode::Silent => tokio::time::sleep(Duration::from_secs(3600)).await,
    }
}

fn is_eperm(output: &str) -> bool {
    output.starts_with("error errno=1 ")
}

async fn denied_connect(pod: &Pod, server: &Pod) -> Result<bool> {
    let address = server.ip.to_string();
    let output = pod
        .exec(&["netprobe", "connect", "tcp", &address, "8081"])
        .await?;
    Ok(is_eperm(output.stdout_trimmed()))
}

/// Runs netprobe from the host in the pod's network namespace and
/// container cgroup, which needs no runtime, and returns whether its
/// connect to the server's port 8081 failed with EPERM.
fn denied_connect_without_runtime(pod: &Pod, server: &Pod) -> Result<bool> {
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", pod.pid))?;
    let procs = CString::new(
        pod.cgroup_path
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )?;
    let netns_fd = netns.as_raw_fd();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netprobe"));
    command.args(["connect", "tcp", &server.ip.to_string(), "8081"]);
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe system calls on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let output = command
        .output()
        .context("failed to run netprobe in the pod's cgroup")?;
    Ok(is_eperm(String::from_utf8_lossy(&output.stdout).trim()))
}

/// Waits until `parapet status` reports the runtime down with an error
/// that contains one of `needles`, and returns that error.
async fn wait_down(agent: &Agent, needles: &[&str]) -> Result<String> {
    let started = Instant::now();
    loop {
        let status = agent.status().await?;
        if let Some(error) = &status.cri.error
            && !status.cri.up
            && needles.iter().any(|needle| error.contains(needle))
        {
            return Ok(error.clone());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "runtime failure {needles:?} not reported: {:?}",
            status.cri
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that the client is still policed while the runtime fails, and
/// that `parapet_cri_up` is `cri_up`.
async fn still_policed(
    agent: &Agent,
    client: &Pod,
    server: &Pod,
    phase: &str,
    cri_up: f64,
) -> Result<()> {
    let status = agent.status().await?;
    ensure!(
        status.kernel_policed_cgroups.contains(&client.cgroup_id),
        "{phase}: the client's kernel entry is gone: {:?}",
        status.kernel_policed_cgroups
    );
    ensure!(
        status
            .workloads
            .iter()
            .any(|w| w.container_id.as_deref() == Some(&client.container_id)),
        "{phase}: the client is no longer listed as enforced"
    );
    ensure!(
        denied_connect(client, server).await?,
        "{phase}: the client reached a forbidden peer"
    );
    let metrics = agent.metrics()?;
    ensure!(
        metric_value(&metrics, "parapet_cri_up", &[]) == Some(cri_up),
        "{phase}: {metrics}"
    );
    Ok(())
}

// The proxy runs on the test's runtime while the test waits in blocking
// helpers, so it needs threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_failures_keep_enforcement() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let mut containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let server = Pod::run_command(
        &containerd,
        "server",
        "clinic",
        &[("app", "server")],
        &SERVER_COMMAND,
    )
    .await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let proxy_path = containerd.dir().join("cri-proxy.sock");
    let fake_path = containerd.dir().join("fake-cri.sock");
    let mut proxy = Proxy::start(&proxy_path, containerd.socket(), &fake_path)?;
    let policy = format!(
        "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: client-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: client}}
  mode: enforce
  network:
    egress:
      - to: [{{address: {}}}]
        ports: [{{port: 8080}}]
",
        server.ip
    );
    let mut agent = Agent::start_with_cri(&containerd, &proxy_path, |dir| {
        std::fs::write(dir.join("client.yaml"), &policy)?;
        Ok(())
    })?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;
    ensure!(
        denied_connect(&client, &server).await?,
        "the policy is not enforced"
    );
    let metrics = agent.metrics()?;
    ensure!(
        metric_value(&metrics, "parapet_cri_up", &[]) == Some(1.0),
        "{metrics}"
    );

    proxy.set(Mode::Garbage);
    let error = wait_down(&agent, &["CRI"]).await?;
    println!("garbage: {error}");
    still_policed(&agent, &client, &server, "garbage", 0.0).await?;

    proxy.set(Mode::Silent);
    let error = wait_down(&agent, &["timed out"]).await?;
    println!("silent: {error}");
    still_policed(&agent, &client, &server, "silent", 0.0).await?;
    // The API does not wait on the silent runtime.
    let started = Instant::now();
    agent.status().await?;
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        started.elapsed()
    );

    proxy.stop()?;
    let error = wait_down(&agent, &["No such file or directory"]).await?;
    println!("down: {error}");
    still_policed(&agent, &client, &server, "down", 0.0).await?;
    let text = std::process::Command::new(parapet_tests::agent::parapet_bin()?)
        .args(["status", "--api-socket"])
        .arg(&agent.api_socket)
        .output()?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    ensure!(text.contains("runtime:        DOWN since"), "{text}");
    agent.wait_for_log(&[
        "failed to list workloads from the container runtime",
        "No such file or directory",
    ])?;

    proxy.restart()?;
    agent.wait_for_log(&["the container runtime responds again"])?;
    let status = agent.status().await?;
    ensure!(
        status.cri.up && status.cri.error.is_none(),
        "{:?}",
        status.cri
    );
    ensure!(status.cri.failures >= 3, "{:?}", status.cri);
    let metrics = agent.metrics()?;
    ensure!(
        metric_value(&metrics, "parapet_cri_up", &[]) == Some(1.0),
        "{metrics}"
    );
    let errors = metric_value(&metrics, "parapet_cri_errors_total", &[]).unwrap_or_default();
    ensure!(errors >= 3.0, "{metrics}");
    // A runtime that responds but leaves the policed pod out, or lists it
    // without metadata, labels or pod: the pod keeps its entries.
    let fake = FakeRuntime::start(&fake_path, containerd.cri().clone(), &client.sandbox_id)?;
    fake.set(Distortion::Omit);
    proxy.set(Mode::Fake);
    agent.wait_for_log(&["no longer lists a policed workload", &client.container_id])?;
    still_policed(&agent, &client, &server, "omitted", 1.0).await?;
    fake.set(Distortion::Malform);
    // Longer than the agent's runtime refresh of 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    still_policed(&agent, &client, &server, "malformed", 1.0).await?;
    let released = format!("cgroup_id={}", client.cgroup_id);
    ensure!(
        !agent
            .log()
            .lines()
            .any(|line| line.contains("workload released") && line.contains(&released)),
        "the client's entry was released:\n{}",
        agent.log()
    );
    fake.set(Distortion::None);
    agent.wait_for_log(&["a kept workload entry follows the runtime's lists again"])?;
    proxy.set(Mode::Forward);
    drop(fake);

    // The real containerd stops and starts again; its pods keep running
    // and stay policed.
    let recoveries = agent
        .log()
        .matches("the container runtime responds again")
        .count();
    containerd.stop_runtime()?;
    let error = wait_down(&agent, &["CRI"]).await?;
    println!("containerd stopped: {error}");
    let status = agent.status().await?;
    ensure!(
        status.kernel_policed_cgroups.contains(&client.cgroup_id),
        "the client's entry went with containerd"
    );
    ensure!(
        denied_connect_without_runtime(&client, &server)?,
        "a process in the client's cgroup reached a forbidden peer while containerd was stopped"
    );
    // The same connect from outside the client's cgroup, as a control.
    let outside =
        std::net::TcpStream::connect_timeout(&(server.ip, 8081).into(), Duration::from_secs(2));
    ensure!(
        outside.is_ok(),
        "the host could not reach the server: {outside:?}"
    );
    containerd.start_again().await?;
    let started = Instant::now();
    while agent
        .log()
        .matches("the container runtime responds again")
        .count()
        == recoveries
    {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the agent did not see containerd come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = agent.status().await?;
    ensure!(status.cri.up, "{:?}", status.cri);
    ensure!(
        status.kernel_policed_cgroups.contains(&client.cgroup_id),
        "the client's entry went with the restart"
    );
    ensure!(
        denied_connect(&client, &server).await?,
        "the client reached a forbidden peer after the restart"
    );

    // A pod that starts after the recovery is found and policed.
    let late = Pod::run(&containerd, "late-client", "clinic", &[("app", "client")]).await?;
    agent.wait_enforced(&late.container_id)?;
    ensure!(
        denied_connect(&late, &server).await?,
        "the late pod is not policed"
    );
    ensure!(
        denied_connect(&client, &server).await?,
        "the client lost its policy"
    );

    drop(proxy);
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
