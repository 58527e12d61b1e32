//! Pods run over CRI the way the kubelet runs them: a sandbox, then one
//! container named `main` from the test image.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use parapet::cri::{CriClient, proto};

use crate::cgroup::{self, RunCgroup};
use crate::containerd::Containerd;
use crate::image;

/// Name of the single container of every test pod.
pub const CONTAINER_NAME: &str = "main";
/// Time an `exec` command may run before containerd kills it.
const EXEC_TIMEOUT: Duration = Duration::from_secs(20);

/// A running pod with one running container.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// Kubernetes-style pod uid, also in the pod cgroup's name (`pod<uid>`).
    pub uid: String,
    pub sandbox_id: String,
    /// 64-hex id of the `main` container, also its cgroup directory's name.
    pub container_id: String,
    /// The pod's address on the run's bridge.
    pub ip: IpAddr,
    /// Host pid of the container's first process.
    pub pid: u32,
    /// Absolute path of the container's cgroup in the v2 hierarchy.
    pub cgroup_path: PathBuf,
    /// Inode number of `cgroup_path`, which `bpf_get_current_cgroup_id()`
    /// returns for the container's processes.
    pub cgroup_id: u64,
    cri: CriClient,
    run_cgroup: RunCgroup,
    sandbox_config: proto::PodSandboxConfig,
}

/// Result of a command run in a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// Returns stdout without surrounding whitespace, such as `ok` from netprobe.
    pub fn stdout_trimmed(&self) -> &str {
        self.stdout.trim()
    }
}

impl Pod {
    /// Runs a pod whose container runs the test image's default command,
    /// `sleep 3600`.
    pub async fn run(
        containerd: &Containerd,
        name: &str,
        namespace: &str,
        labels: &[(&str, &str)],
    ) -> Result<Pod> {
        Self::run_command(containerd, name, namespace, labels, &image::DEFAULT_COMMAND).await
    }

    /// Runs a pod whose container runs `command`, such as
    /// `["netprobe", "listen", "tcp", "8080"]`. The pod and container both get
    /// `labels`.
    pub async fn run_command(
        containerd: &Containerd,
        name: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        command: &[&str],
    ) -> Result<Pod> {
        let cri = containerd.cri().clone();
        let uid = random_uid();
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let log_directory = containerd
            .dir()
            .join("logs")
            .join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&log_directory)?;
        let sandbox_config = sandbox_config(
            name,
            namespace,
            &uid,
            &labels,
            containerd.cgroup(),
            log_directory,
        );

        let sandbox_id = cri
            .run_pod_sandbox(sandbox_config.clone())
            .await
            .with_context(|| format!("failed to run pod sandbox {namespace}/{name}"))?;
        let started = start_container(&cri, &sandbox_id, sandbox_config.clone(), labels, command).await;
        let (container_id, ip) = match started {
            Ok(started) => started,
            Err(error) => {
                cri.stop_pod_sandbox(&sandbox_id).await.ok();
                cri.remove_pod_sandbox(&sandbox_id).await.ok();
                return Err(error.context(format!("failed to start pod {namespace}/{name}")));
            }
        };

        let pid = container_pid(&cri, &container_id).await?;
        let relative = cgroup::v2_cgroup_of(pid)?;
        let cgroup_path = containerd
            .cgroup()
            .v2_mount()
            .join(relative.trim_start_matches('/'));
        let cgroup_id = cgroup::cgroup_id(&cgroup_path)?;
        Ok(Pod {
            name: name.to_string(),
            namespace: namespace.to_string(),
            uid,
            sandbox_id,
            container_id,
            ip,
            pid,
            cgroup_path,
            cgroup_id,
            cri,
            run_cgroup: containerd.cgroup().clone(),
            sandbox_config,
        })
    }

    /// Creates and starts one more container named `name` in this pod,
    /// running `command`, and returns its id at once, without waiting for
    /// it to run.
    pub async fn start_container(&self, name: &str, command: &[&str]) -> Result<String> {
        let labels = self.sandbox_config.labels.clone();
        let config = container_config(name, labels, command);
        let container_id = self
            .cri
            .create_container(&self.sandbox_id, config, self.sandbox_config.clone())
            .await
            .with_context(|| format!("failed to create container {name} in pod {}/{}", self.namespace, self.name))?;
        self.cri
            .start_container(&container_id)
            .await
            .with_context(|| format!("failed to start container {name} in pod {}/{}", self.namespace, self.name))?;
        Ok(container_id)
    }

    /// Removes container `container_id` of this pod, which must have exited.
    pub async fn remove_container(&self, container_id: &str) -> Result<()> {
        self.cri
            .remove_container(container_id)
            .await
            .with_context(|| format!("failed to remove container {container_id} from pod {}/{}", self.namespace, self.name))
    }

    /// Waits up to `limit` for container `container_id` of this pod, named
    /// `name`, to exit, and returns its exit code and what it wrote to
    /// stdout and stderr, from the log file the runtime keeps.
    pub async fn wait_container_exit(&self, container_id: &str, name: &str, limit: Duration) -> Result<ExecOutput> {
        let started = std::time::Instant::now();
        loop {
            let status = self.cri.container_status(container_id, false).await?.status;
            let status = status.with_context(|| format!("container {name} ({container_id}) has no status"))?;
            if status.state == proto::ContainerState::ContainerExited as i32 {
                let log_path = PathBuf::from(&self.sandbox_config.log_directory).join(format!("{name}.log"));
                let log = std::fs::read_to_string(&log_path)
                    .with_context(|| format!("failed to read the log of container {name} at {}", log_path.display()))?;
                let (stdout, stderr) = split_cri_log(&log);
                return Ok(ExecOutput {
                    exit_code: status.exit_code,
                    stdout,
                    stderr,
                });
            }
            if started.elapsed() > limit {
                bail!(
                    "container {name} ({container_id}) in pod {}/{} has not exited after {limit:?} (state {})",
                    self.namespace,
                    self.name,
                    status.state
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `cmd` in the container through CRI `ExecSync` and waits for it.
    pub async fn exec(&self, cmd: &[&str]) -> Result<ExecOutput> {
        let (exit_code, stdout, stderr) = self
            .cri
            .exec_sync(&self.container_id, cmd, crate::agent::raised_limit(EXEC_TIMEOUT))
            .await
            .with_context(|| {
                format!(
                    "failed to exec {cmd:?} in pod {}/{}",
                    self.namespace, self.name
                )
            })?;
        Ok(ExecOutput {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Stops and removes the pod, then removes the pod cgroup folders that
    /// runc leaves behind.
    pub async fn remove(self) -> Result<()> {
        self.cri.stop_pod_sandbox(&self.sandbox_id).await?;
        self.cri.remove_pod_sandbox(&self.sandbox_id).await?;
        let remaining = self.run_cgroup.remove_pod(&self.uid)?;
        if !remaining.is_empty() {
            bail!("pod cgroups left behind: {remaining:?}");
        }
        Ok(())
    }
}

fn sandbox_config(
    name: &str,
    namespace: &str,
    uid: &str,
    labels: &HashMap<String, String>,
    run_cgroup: &RunCgroup,
    log_directory: PathBuf,
) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        metadata: Some(proto::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_directory.display().to_string(),
        labels: labels.clone(),
        linux: Some(proto::LinuxPodSandboxConfig {
            cgroup_parent: run_cgroup.pod_parent(uid),
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Namespace modes the kubelet requests by default: shared network and IPC,
/// a PID namespace per container.
fn kubelet_namespaces() -> proto::NamespaceOption {
    proto::NamespaceOption {
        network: proto::NamespaceMode::Pod as i32,
        pid: proto::NamespaceMode::Container as i32,
        ipc: proto::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// Creates and starts the `main` container, returning its id and the pod IP.
async fn start_container(
    cri: &CriClient,
    sandbox_id: &str,
    sandbox_config: proto::PodSandboxConfig,
    labels: HashMap<String, String>,
    command: &[&str],
) -> Result<(String, IpAddr)> {
    let status = cri.pod_sandbox_status(sandbox_id).await?;
    let ip_text = status.network.map(|network| network.ip).unwrap_or_default();
    let ip: IpAddr = ip_text.parse().with_context(|| {
        format!("pod sandbox {sandbox_id} has no valid IP address: {ip_text:?}")
    })?;

    let config = container_config(CONTAINER_NAME, labels, command);
    let container_id = cri
        .create_container(sandbox_id, config, sandbox_config)
        .await?;
    cri.start_container(&container_id).await?;
    Ok((container_id, ip))
}

/// Returns the configuration of a container named `name` from the test
/// image, with the kubelet's default namespace modes.
fn container_config(name: &str, labels: HashMap<String, String>, command: &[&str]) -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(proto::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(proto::ImageSpec {
            image: image::TEST_IMAGE.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|arg| arg.to_string()).collect(),
        labels,
        log_path: format!("{name}.log"),
        linux: Some(proto::LinuxContainerConfig {
            resources: None,
            security_context: Some(proto::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Splits a log in the CRI format (`TIME STREAM TAG TEXT` per line) into
/// the text written to stdout and to stderr.
fn split_cri_log(log: &str) -> (String, String) {
    let mut stdout = String::new();
    let mut stderr = String::new();
    for line in log.lines() {
        let mut fields = line.splitn(4, ' ');
        let (_time, stream, _tag) = (fields.next(), fields.next(), fields.next());
        let text = fields.next().unwrap_or("");
        let target = if stream == Some("stderr") { &mut stderr } else { &mut stdout };
        target.push_str(text);
        target.push('\n');
    }
    (stdout, stderr)
}

/// Reads the container's host pid from containerd's verbose status, whose
/// `info` entry is a JSON object with a `pid` field.
async fn container_pid(cri: &CriClient, container_id: &str) -> Result<u32> {
    let status = cri.container_status(container_id, true).await?;
    let info = status.info.get("info").with_context(|| {
        format!("verbose status of container {container_id} has no \"info\" entry")
    })?;
    let info: serde_json::Value = serde_json::from_str(info)
        .with_context(|| format!("verbose status of container {container_id} is not JSON"))?;
    info.get("pid")
        .and_then(serde_json::Value::as_u64)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|&pid| pid > 0)
        .with_context(|| format!("verbose status of container {container_id} has no pid"))
}

/// Returns a random UUID (version 4) like the uids Kubernetes assigns.
pub(crate) fn random_uid() -> String {
    let mut bytes = crate::random_bytes::<16>();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
