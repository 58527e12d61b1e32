//! Many workloads without a container runtime: pod and container cgroups
//! made by hand below a run's cgroup, each container cgroup with one
//! sleeping process, and a CRI runtime service that lists them as running
//! pods and containers. The agent treats them as real pods, and a
//! machine that cannot hold a thousand real pods can hold a thousand of
//! these.
//!
//! The service implements only `ListPodSandbox` and `ListContainers`. Every
//! other call, `ContainerStatus` included, returns `Unimplemented`, so
//! these workloads suit network policies only. The sleeping processes run
//! in the host's mount namespace, so a read-only or exec policy must never
//! select them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use tokio::{net::UnixListener, task::JoinHandle};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::{
    cgroup::RunCgroup,
    fake_cri::proto::{
        self,
        runtime_service_server::{RuntimeService, RuntimeServiceServer},
    },
};

/// QoS folder below the run's cgroup that contains the fake pods, apart from
/// the `besteffort` folder of real pods.
const QOS_FOLDER: &str = "burstable";

/// One fake pod with one container.
#[derive(Debug, Clone)]
pub struct FakeWorkload {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub sandbox_id: String,
    /// 64-hex id, also the name of the container's cgroup directory.
    pub container_id: String,
    /// Labels of the pod and of its container.
    pub labels: Vec<(String, String)>,
    pub cgroup_path: PathBuf,
}

/// Fake workloads and their sleeping processes, removed when dropped.
pub struct FakeWorkloads {
    workloads: Arc<Vec<FakeWorkload>>,
    sleepers: Vec<Child>,
    /// Every cgroup directory made so far, parents before children.
    dirs: Vec<PathBuf>,
}

impl FakeWorkloads {
    /// Creates `count` pods named `<prefix>-<n>` in `namespace`, labelled
    /// by `labels(n)`, below `run`'s cgroup (`burstable/pod<uid>/<id>`),
    /// and starts one `sleep` in each container cgroup.
    pub fn create(
        run: &RunCgroup,
        count: usize,
        namespace: &str,
        prefix: &str,
        labels: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Result<Self> {
        // Dropping `fake` on an error below removes what was made so far.
        let mut fake = Self { workloads: Arc::new(Vec::new()), sleepers: Vec::with_capacity(count), dirs: Vec::new() };
        let root = run.v2_path().join(QOS_FOLDER);
        fake.make_dir(&root)?;
        let mut workloads = Vec::with_capacity(count);
        for number in 0..count {
            let uid = crate::pods::random_uid();
            let pod_path = root.join(format!("pod{uid}"));
            fake.make_dir(&pod_path)?;
            let container_id = hex(&crate::random_bytes::<32>());
            let cgroup_path = pod_path.join(&container_id);
            fake.make_dir(&cgroup_path)?;
            fake.sleepers.push(sleep_in(&cgroup_path)?);
            workloads.push(FakeWorkload {
                name: format!("{prefix}-{number}"),
                namespace: namespace.to_owned(),
                uid,
                sandbox_id: hex(&crate::random_bytes::<32>()),
                container_id,
                labels: labels(number),
                cgroup_path,
            });
        }
        fake.workloads = Arc::new(workloads);
        Ok(fake)
    }

    fn make_dir(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir(dir).with_context(|| format!("failed to create cgroup {}", dir.display()))?;
        self.dirs.push(dir.to_owned());
        Ok(())
    }

    pub fn workloads(&self) -> &[FakeWorkload] {
        &self.workloads
    }

    /// Serves the CRI runtime service on `socket`, listing these workloads,
    /// until the returned handle is aborted.
    pub fn serve(&self, socket: &Path) -> Result<JoinHandle<()>> {
        let listener =
            UnixListener::bind(socket).with_context(|| format!("failed to bind {}", socket.display()))?;
        let service = ListedRuntime { workloads: Arc::clone(&self.workloads) };
        Ok(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(service))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        }))
    }

    /// Kills the sleeping processes and removes the cgroups.
    pub fn remove(mut self) -> Result<()> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<()> {
        for mut sleeper in self.sleepers.drain(..) {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
        }
        let mut remaining = Vec::new();
        for dir in self.dirs.drain(..).rev() {
            if let Err(error) = std::fs::remove_dir(&dir)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                remaining.push(dir.display().to_string());
            }
        }
        self.workloads = Arc::new(Vec::new());
        if !remaining.is_empty() {
            bail!("fake workload cgroups left behind: {}", remaining.join(", "));
        }
        Ok(())
    }
}

impl Drop for FakeWorkloads {
    fn drop(&mut self) {
        if let Err(error) = self.remove_all() {
            eprintln!("parapet-tests: {error:#}");
        }
    }
}

/// Starts `sleep` and moves it into the cgroup `dir`. Until the move it
/// sits in this process's cgroup; it makes no connection, so no policy
/// could tell the difference.
fn sleep_in(dir: &Path) -> Result<Child> {
    let mut child = Command::new("sleep")
        .arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start sleep")?;
    let procs = dir.join("cgroup.procs");
    if let Err(error) = std::fs::write(&procs, child.id().to_string()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(error).with_context(|| format!("failed to move sleep into {}", procs.display()));
    }
    Ok(child)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

struct ListedRuntime {
    workloads: Arc<Vec<FakeWorkload>>,
}

fn labels(workload: &FakeWorkload) -> std::collections::HashMap<String, String> {
    workload.labels.iter().cloned().collect()
}

#[tonic::async_trait]
impl RuntimeService for ListedRuntime {
    async fn list_pod_sandbox(
        &self,
        _request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let items = self
            .workloads
            .iter()
            .map(|workload| proto::PodSandbox {
                id: workload.sandbox_id.clone(),
                metadata: Some(proto::PodSandboxMetadata {
                    name: workload.name.clone(),
                    uid: workload.uid.clone(),
                    namespace: workload.namespace.clone(),
                    attempt: 0,
                }),
                state: proto::PodSandboxState::SandboxReady as i32,
                labels: labels(workload),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn list_containers(
        &self,
        _request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let containers = self
            .workloads
            .iter()
            .map(|workload| proto::Container {
                id: workload.container_id.clone(),
                pod_sandbox_id: workload.sandbox_id.clone(),
                metadata: Some(proto::ContainerMetadata { name: "main".to_owned(), attempt: 0 }),
                state: proto::ContainerState::ContainerRunning as i32,
                labels: labels(workload),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }
}
