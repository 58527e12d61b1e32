//! Client for the Kubernetes Container Runtime Interface (CRI, API v1) over
//! the runtime's Unix socket, such as containerd's
//! `/run/containerd/containerd.sock`.
//!
//! The agent uses it to name the pods and containers behind cgroups. The
//! end-to-end tests also use it to run pods, the way the kubelet does.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};

use proto::runtime_service_client::RuntimeServiceClient;

/// Message types and the client stub generated from `proto/cri.proto`.
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

/// CRI API version that this client sends in `Version` requests.
const CRI_API_VERSION: &str = "v1";

/// Errors of [`CriClient`], each naming the socket and the RPC involved.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("failed to connect to the CRI socket {}: {}", path.display(), root_cause(source))]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    /// The runtime rejected the call; `status` carries its gRPC code and message.
    #[error("CRI {rpc} on {} failed: {} ({:?})", path.display(), status.message(), status.code())]
    Rpc {
        path: PathBuf,
        rpc: &'static str,
        status: Status,
    },
    #[error("CRI {rpc} on {} timed out after {timeout:?}", path.display())]
    Timeout {
        path: PathBuf,
        rpc: &'static str,
        timeout: Duration,
    },
    #[error("CRI {rpc} on {} returned a response without {field}", path.display())]
    MissingField {
        path: PathBuf,
        rpc: &'static str,
        field: &'static str,
    },
}

pub type Result<T, E = CriError> = std::result::Result<T, E>;

/// Summary of a pod sandbox: the identity and state that the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod sandbox id assigned by the runtime.
    pub id: String,
    pub name: String,
    pub namespace: String,
    /// Kubernetes pod uid, which also names the pod's cgroup (`pod<uid>`).
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// True when the sandbox state is `SANDBOX_READY`.
    pub ready: bool,
}

/// A workload container (pod sandboxes are not containers in CRI terms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Container id, the 64-hex name of the container's cgroup directory.
    pub id: String,
    pub pod_sandbox_id: String,
    /// Container name from the pod spec.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// True when the container state is `CONTAINER_RUNNING`.
    pub running: bool,
}

/// A connection to one CRI runtime socket.
///
/// Cloning is cheap and clones share the connection. Every RPC carries a
/// deadline: the timeout given to [`CriClient::connect`], extended by the
/// grace period or command timeout that the RPC itself passes to the runtime.
#[derive(Debug, Clone)]
pub struct CriClient {
    path: PathBuf,
    timeout: Duration,
    client: RuntimeServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the CRI socket at `path`. `timeout` bounds the connect and
    /// is the deadline of every later RPC.
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let socket = path.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        });
        // tonic requires a URI, but the connector above ignores it and dials
        // the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeout)
            .connect_with_connector(connector)
            .await
            .map_err(|source| CriError::Connect {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            timeout,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn version(&self) -> Result<proto::VersionResponse> {
        let request = proto::VersionRequest {
            version: CRI_API_VERSION.to_string(),
        };
        self.call("Version", self.timeout, request, |mut c, r| async move {
            c.version(r).await
        })
        .await
    }

    /// Lists every pod sandbox, ready or not.
    pub async fn list_pod_sandboxes(&self) -> Result<Vec<proto::PodSandbox>> {
        let request = proto::ListPodSandboxRequest { filter: None };
        let response = self
            .call(
                "ListPodSandbox",
                self.timeout,
                request,
                |mut c, r| async move { c.list_pod_sandbox(r).await },
            )
            .await?;
        Ok(response.items)
    }

    /// Lists every container in every state, without the pod sandboxes.
    pub async fn list_containers(&self) -> Result<Vec<proto::Container>> {
        let request = proto::ListContainersRequest { filter: None };
        let response = self
            .call(
                "ListContainers",
                self.timeout,
                request,
                |mut c, r| async move { c.list_containers(r).await },
            )
            .await?;
        Ok(response.containers)
    }

    /// Returns a container's status. With `verbose`, containerd also fills
    /// `info`, whose `"info"` entry is a JSON object with the host `pid`.
    pub async fn container_status(
        &self,
        container_id: &str,
        verbose: bool,
    ) -> Result<proto::ContainerStatusResponse> {
        let request = proto::ContainerStatusRequest {
            container_id: container_id.to_string(),
            verbose,
        };
        self.call(
            "ContainerStatus",
            self.timeout,
            request,
            |mut c, r| async move { c.container_status(r).await },
        )
        .await
    }

    /// Returns the host pid of a container's first process, from the
    /// verbose status that containerd and CRI-O fill: an `"info"` entry
    /// holding a JSON object with a `pid` field.
    pub async fn container_pid(&self, container_id: &str) -> Result<u32> {
        const RPC: &str = "ContainerStatus";
        let status = self.container_status(container_id, true).await?;
        status
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|info| info.get("pid").and_then(serde_json::Value::as_u64))
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid > 1)
            .ok_or_else(|| CriError::MissingField {
                path: self.path.clone(),
                rpc: RPC,
                field: "info.pid",
            })
    }

    pub async fn pod_sandbox_status(
        &self,
        pod_sandbox_id: &str,
    ) -> Result<proto::PodSandboxStatus> {
        const RPC: &str = "PodSandboxStatus";
        let request = proto::PodSandboxStatusRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            verbose: false,
        };
        let response = self
            .call(RPC, self.timeout, request, |mut c, r| async move {
                c.pod_sandbox_status(r).await
            })
            .await?;
        response
            .status
            .ok_or_else(|| self.missing_field(RPC, "status"))
    }

    /// Creates and starts a pod sandbox, returning its id.
    pub async fn run_pod_sandbox(&self, config: proto::PodSandboxConfig) -> Result<String> {
        let request = proto::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let response = self
            .call(
                "RunPodSandbox",
                self.timeout,
                request,
                |mut c, r| async move { c.run_pod_sandbox(r).await },
            )
            .await?;
        Ok(response.pod_sandbox_id)
    }

    /// Stops a pod sandbox and kills its containers. Stopping a stopped
    /// sandbox succeeds.
    pub async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let request = proto::StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        };
        self.call(
            "StopPodSandbox",
            self.timeout,
            request,
            |mut c, r| async move { c.stop_pod_sandbox(r).await },
        )
        .await?;
        Ok(())
    }

    /// Removes a pod sandbox and its containers. Removing a removed sandbox
    /// succeeds.
    pub async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let request = proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        };
        self.call(
            "RemovePodSandbox",
            self.timeout,
            request,
            |mut c, r| async move { c.remove_pod_sandbox(r).await },
        )
        .await?;
        Ok(())
    }

    /// Creates a container in a pod sandbox, returning its id.
    /// `sandbox_config` must be the configuration that created the sandbox.
    pub async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: proto::ContainerConfig,
        sandbox_config: proto::PodSandboxConfig,
    ) -> Result<String> {
        let request = proto::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let response = self
            .call(
                "CreateContainer",
                self.timeout,
                request,
                |mut c, r| async move { c.create_container(r).await },
            )
            .await?;
        Ok(response.container_id)
    }

    pub async fn start_container(&self, container_id: &str) -> Result<()> {
        let request = proto::StartContainerRequest {
            container_id: container_id.to_string(),
        };
        self.call(
            "StartContainer",
            self.timeout,
            request,
            |mut c, r| async move { c.start_container(r).await },
        )
        .await?;
        Ok(())
    }

    /// Stops a container: the runtime sends SIGTERM, then SIGKILL once
    /// `grace_period` (whole seconds, rounded down) has passed.
    pub async fn stop_container(&self, container_id: &str, grace_period: Duration) -> Result<()> {
        let request = proto::StopContainerRequest {
            container_id: container_id.to_string(),
            timeout: whole_seconds(grace_period),
        };
        let deadline = self.timeout + grace_period;
        self.call("StopContainer", deadline, request, |mut c, r| async move {
            c.stop_container(r).await
        })
        .await?;
        Ok(())
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<()> {
        let request = proto::RemoveContainerRequest {
            container_id: container_id.to_string(),
        };
        self.call(
            "RemoveContainer",
            self.timeout,
            request,
            |mut c, r| async move { c.remove_container(r).await },
        )
        .await?;
        Ok(())
    }

    /// Runs `cmd` in a running container and waits for it to exit. The
    /// runtime kills the command after `timeout` (whole seconds, at least 1).
    /// Returns `(exit_code, stdout, stderr)`; a non-zero exit code is not an
    /// error.
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let command_timeout = whole_seconds(timeout).max(1);
        let request = proto::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: cmd.iter().map(|arg| arg.to_string()).collect(),
            timeout: command_timeout,
        };
        let deadline = self.timeout + Duration::from_secs(command_timeout.unsigned_abs());
        let response = self
            .call("ExecSync", deadline, request, |mut c, r| async move {
                c.exec_sync(r).await
            })
            .await?;
        Ok((response.exit_code, response.stdout, response.stderr))
    }

    /// Lists every pod sandbox as a [`PodInfo`].
    pub async fn list_pods(&self) -> Result<Vec<PodInfo>> {
        let sandboxes = self.list_pod_sandboxes().await?;
        Ok(sandboxes.into_iter().map(PodInfo::from).collect())
    }

    /// Lists every workload container, in every state, as a [`ContainerInfo`].
    pub async fn list_workload_containers(&self) -> Result<Vec<ContainerInfo>> {
        let containers = self.list_containers().await?;
        Ok(containers.into_iter().map(ContainerInfo::from).collect())
    }

    /// Sends one request with `deadline` and maps failures to [`CriError`].
    ///
    /// The deadline travels to the runtime as the `grpc-timeout` header and
    /// is also enforced here, so a runtime that hangs cannot block a caller.
    async fn call<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        deadline: Duration,
        message: Req,
        send: F,
    ) -> Result<Resp>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut request = Request::new(message);
        request.set_timeout(deadline);
        let started = Instant::now();
        let timed_out = || CriError::Timeout {
            path: self.path.clone(),
            rpc,
            timeout: deadline,
        };
        match tokio::time::timeout(deadline, send(self.client.clone(), request)).await {
            Err(_elapsed) => Err(timed_out()),
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if is_deadline_status(&status, started.elapsed() >= deadline) => {
                Err(timed_out())
            }
            Ok(Err(status)) => Err(CriError::Rpc {
                path: self.path.clone(),
                rpc,
                status,
            }),
        }
    }

    fn missing_field(&self, rpc: &'static str, field: &'static str) -> CriError {
        CriError::MissingField {
            path: self.path.clone(),
            rpc,
            field,
        }
    }
}

/// Tells whether a failed call ran out of time. tonic reports its own
/// client-side deadline as `Cancelled`, and the runtime reports its deadline
/// as `DeadlineExceeded`.
fn is_deadline_status(status: &Status, deadline_passed: bool) -> bool {
    match status.code() {
        Code::DeadlineExceeded => true,
        Code::Cancelled => deadline_passed,
        _ => false,
    }
}

/// Returns the innermost error of a chain, which for a failed connect is the
/// operating system's reason, such as "No such file or directory".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn whole_seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

impl From<proto::PodSandbox> for PodInfo {
    fn from(sandbox: proto::PodSandbox) -> Self {
        let metadata = sandbox.metadata.unwrap_or_default();
        Self {
            ready: sandbox.state == proto::PodSandboxState::SandboxReady as i32,
            id: sandbox.id,
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            labels: sandbox.labels.into_iter().collect(),
        }
    }
}

impl From<proto::Container> for ContainerInfo {
    fn from(container: proto::Container) -> Self {
        Self {
            running: container.state == proto::ContainerState::ContainerRunning as i32,
            id: container.id,
            pod_sandbox_id: container.pod_sandbox_id,
            name: container.metadata.unwrap_or_default().name,
            labels: container.labels.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_info_from_ready_sandbox() {
        let sandbox = proto::PodSandbox {
            id: "sandbox-1".into(),
            metadata: Some(proto::PodSandboxMetadata {
                name: "web".into(),
                uid: "uid-1".into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            state: proto::PodSandboxState::SandboxReady as i32,
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        let pod = PodInfo::from(sandbox);
        assert_eq!(pod.id, "sandbox-1");
        assert_eq!(pod.name, "web");
        assert_eq!(pod.namespace, "shop");
        assert_eq!(pod.uid, "uid-1");
        assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
        assert!(pod.ready);
    }

    #[test]
    fn pod_info_from_stopped_sandbox_without_metadata() {
        let sandbox = proto::PodSandbox {
            id: "sandbox-2".into(),
            state: proto::PodSandboxState::SandboxNotready as i32,
            ..Default::default()
        };
        let pod = PodInfo::from(sandbox);
        assert_eq!(pod.name, "");
        assert!(!pod.ready);
    }

    #[test]
    fn container_info_running_state() {
        let states = [
            (proto::ContainerState::ContainerCreated, false),
            (proto::ContainerState::ContainerRunning, true),
            (proto::ContainerState::ContainerExited, false),
            (proto::ContainerState::ContainerUnknown, false),
        ];
        for (state, running) in states {
            let container = proto::Container {
                id: "c1".into(),
                pod_sandbox_id: "sandbox-1".into(),
                metadata: Some(proto::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                state: state as i32,
                ..Default::default()
            };
            let info = ContainerInfo::from(container);
            assert_eq!(info.name, "main");
            assert_eq!(info.pod_sandbox_id, "sandbox-1");
            assert_eq!(info.running, running, "state {state:?}");
        }
    }

    #[test]
    fn deadline_status_classification() {
        assert!(is_deadline_status(
            &Status::deadline_exceeded("late"),
            false
        ));
        assert!(is_deadline_status(
            &Status::cancelled("Timeout expired"),
            true
        ));
        assert!(!is_deadline_status(
            &Status::cancelled("client went away"),
            false
        ));
        assert!(!is_deadline_status(&Status::not_found("no such pod"), true));
    }

    /// A server that accepts connections and never sends a byte.
    #[tokio::test]
    async fn silent_runtime_times_out() {
        let dir = std::env::temp_dir().join(format!("parapet-cri-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("cri.sock");
        std::fs::remove_file(&path).ok();
        let listener = tokio::net::UnixListener::bind(&path).expect("bind socket");
        let server = tokio::spawn(async move {
            let mut open_streams = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open_streams.push(stream);
            }
        });

        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let result = match CriClient::connect(&path, timeout).await {
            Ok(cri) => cri.version().await.map(|_| ()),
            Err(error) => Err(error),
        };
        let elapsed = started.elapsed();
        server.abort();
        std::fs::remove_dir_all(&dir).ok();

        let error = result.expect_err("a runtime that never responds must fail");
        assert!(
            matches!(error, CriError::Timeout { rpc: "Version", .. }),
            "{error:?}"
        );
        assert!(elapsed < 3 * timeout, "gave up after {elapsed:?}");
    }

    #[tokio::test]
    async fn connect_to_missing_socket_names_path() {
        let path = "/nonexistent/parapet-test/cri.sock";
        let error = CriClient::connect(path, Duration::from_secs(1))
            .await
            .expect_err("connecting to a missing socket must fail");
        assert!(matches!(error, CriError::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains(path), "{error}");
        assert!(
            error.to_string().contains("No such file or directory"),
            "{error}"
        );
    }
}
