//! A private containerd (Debian's 1.6) per test: its own root, state,
//! socket, configuration, CNI bridge and top-level cgroup, all named for the
//! run (`parapet-test-<pid>-<n>`), and all removed again by
//! [`Containerd::cleanup`] or, after a panic, by `Drop`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use parapet::cri::{CriClient, CriError};

use crate::cgroup::RunCgroup;
use crate::image;
use crate::network::{self, BridgeNetwork, CNI_BIN_DIR};
use crate::teardown::Teardown;

/// Deadline of the harness's CRI calls, pod start included, unless
/// [`cri_timeout`] raises it.
pub const CRI_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the deadline of the harness's CRI calls: [`CRI_TIMEOUT`], raised
/// in the guests. In the 6.1 guest under emulation, one `RunPodSandbox`
/// took longer than 30 s, and one `StartContainer` longer than 60 s.
pub fn cri_timeout() -> Duration {
    crate::agent::raised_limit(CRI_TIMEOUT)
}
/// Time containerd gets to respond to `Version` after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of each `Version` probe while containerd starts.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of containerd's log quoted in errors and after a panic.
const LOG_TAIL_LINES: usize = 40;

/// Numbers the runs within this test process.
static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running private containerd with its CRI plugin, pod network and cgroup.
#[derive(Debug)]
pub struct Containerd {
    run_name: String,
    dir: PathBuf,
    socket: PathBuf,
    pid: u32,
    network: BridgeNetwork,
    cgroup: RunCgroup,
    cri: CriClient,
    /// Taken by [`Containerd::cleanup`]; dropping it cleans up otherwise.
    teardown: Option<Teardown>,
}

impl Containerd {
    /// Starts containerd and imports the pause and test images, which carry
    /// `netprobe` (pass `env!("CARGO_BIN_EXE_netprobe")` from an integration
    /// test). Everything created before a failure is removed again.
    pub async fn start(netprobe: impl AsRef<Path>) -> Result<Self> {
        let netprobe = netprobe.as_ref().to_path_buf();
        let number = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let run_name = format!("parapet-test-{}-{number}", std::process::id());
        let dir = std::env::temp_dir().join(&run_name);
        std::fs::create_dir(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let mut teardown = Teardown::new(dir.clone(), dir.join("containerd.sock"));

        let cgroup = RunCgroup::create(&run_name)?;
        teardown.cgroup = Some(cgroup.clone());

        let bridge = format!("pt{}-{number}", std::process::id());
        if network::link_exists(&bridge) {
            bail!("a link named {bridge} already exists");
        }
        teardown.bridge = Some(bridge.clone());
        let network = BridgeNetwork::create(
            &run_name,
            &bridge,
            &dir.join("cni/conf"),
            &dir.join("cni/ipam"),
        )?;
        teardown.network = Some(network.clone());

        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(&dir, &teardown.socket))?;
        let log = File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to spawn containerd")?;
        let pid = child.id();
        teardown.containerd = Some(child);

        let cri = wait_until_ready(&mut teardown).await?;
        let images = dir.join("images");
        std::fs::create_dir(&images)?;
        let socket = teardown.socket.clone();
        tokio::task::spawn_blocking(move || image::build_and_import(&images, &netprobe, &socket))
            .await
            .context("image build task failed")??;

        Ok(Self {
            run_name,
            socket: teardown.socket.clone(),
            dir,
            pid,
            network,
            cgroup,
            cri,
            teardown: Some(teardown),
        })
    }

    /// CRI client connected to this containerd.
    pub fn cri(&self) -> &CriClient {
        &self.cri
    }

    /// Name of the run, shared by its folder, cgroup and CNI network.
    pub fn run_name(&self) -> &str {
        &self.run_name
    }

    /// Returns the run's folder under the system temp dir, which contains
    /// everything containerd stores.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("containerd.log")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn network(&self) -> &BridgeNetwork {
        &self.network
    }

    /// Returns the host's address on the pod bridge, reachable from every pod.
    pub fn host_address(&self) -> Ipv4Addr {
        self.network.host_address
    }

    /// Returns the run's top-level cgroup, parent of every pod cgroup of the run.
    pub fn cgroup(&self) -> &RunCgroup {
        &self.cgroup
    }

    /// Stops containerd with SIGTERM, as a node's containerd stops before a
    /// restart. Pods keep running, because their shims outlive containerd.
    /// [`Containerd::start_again`] brings it back.
    pub fn stop_runtime(&mut self) -> Result<()> {
        let teardown = self.teardown.as_mut().context("containerd was already cleaned up")?;
        if let Some(mut child) = teardown.containerd.take()
            && let Some(problem) = crate::teardown::stop_process(&mut child)
        {
            bail!("failed to stop containerd: {problem}");
        }
        Ok(())
    }

    /// Starts containerd again on the same configuration after
    /// [`Containerd::stop_runtime`]. Clients made before, such as a
    /// [`crate::Pod`]'s, connect again on their next call.
    pub async fn start_again(&mut self) -> Result<()> {
        let teardown = self.teardown.as_mut().context("containerd was already cleaned up")?;
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to spawn containerd again")?;
        self.pid = child.id();
        teardown.containerd = Some(child);
        self.cri = wait_until_ready(teardown).await?;
        Ok(())
    }

    /// Removes all pods, stops containerd and removes the bridge, the
    /// cgroups, the mounts and the folder. Fails, listing them, when
    /// anything could not be removed.
    pub async fn cleanup(mut self) -> Result<()> {
        let Some(mut teardown) = self.teardown.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || teardown.run())
            .await
            .context("cleanup task failed")?
    }
}

impl Drop for Containerd {
    /// Removes what the run made when `cleanup` was never reached: after a
    /// panic, an early error return, or an interrupted bench.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "parapet-tests: last lines of {}:\n{}",
                self.log_path().display(),
                log_tail(&self.log_path())
            );
        }
        let Some(mut teardown) = self.teardown.take() else {
            return;
        };
        // The teardown runs a runtime of its own, which cannot start on a
        // thread that already drives one.
        let result = std::thread::scope(|scope| scope.spawn(|| teardown.run()).join());
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("parapet-tests: cleanup after an unfinished run failed: {error:#}"),
            Err(_) => eprintln!("parapet-tests: cleanup after an unfinished run panicked"),
        }
    }
}

/// Polls the socket until containerd responds to `Version`. Fails early,
/// quoting containerd's log, when containerd exits.
async fn wait_until_ready(teardown: &mut Teardown) -> Result<CriClient> {
    let started = Instant::now();
    let log = teardown.dir.join("containerd.log");
    loop {
        if let Some(child) = teardown.containerd.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "containerd exited with {status} before it was ready:\n{}",
                log_tail(&log)
            );
        }
        if teardown.socket.exists()
            && let Ok(probe) = CriClient::connect(&teardown.socket, PROBE_TIMEOUT).await
        {
            match probe.version().await {
                Ok(_) => return Ok(CriClient::connect(&teardown.socket, cri_timeout()).await?),
                // containerd serves its socket even when the CRI plugin failed to load.
                Err(CriError::Rpc { status, .. })
                    if status.code() == tonic::Code::Unimplemented =>
                {
                    bail!(
                        "containerd runs without its CRI plugin:\n{}",
                        log_tail(&log)
                    );
                }
                Err(_) => {}
            }
        }
        let ready_timeout = crate::agent::raised_limit(READY_TIMEOUT);
        if started.elapsed() > ready_timeout {
            bail!(
                "containerd did not respond on {} within {ready_timeout:?}:\n{}",
                teardown.socket.display(),
                log_tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Renders containerd's configuration (format version 2). Every path that
/// containerd and runc write to lies inside `dir`, except two that
/// containerd 1.6 hard-codes: shim sockets under `/run/containerd/s` and
/// libcni's cache under `/var/lib/cni`.
fn config_toml(dir: &Path, socket: &Path) -> String {
    let dir = dir.display();
    let socket = socket.display();
    let pause_image = image::PAUSE_IMAGE;
    format!(
        r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
# Plugins that need hardware, kernel features or host paths the tests do not use.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # Without CAP_SYS_RESOURCE, lowering oom_score_adj fails and runc aborts
  # the sandbox with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{dir}/cni/conf"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{dir}/runc"
        SystemdCgroup = false
"#
    )
}
