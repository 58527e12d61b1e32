//! A CRI runtime service that a test controls. It forwards the two list
//! calls to a real containerd and distorts what it returns about one pod,
//! as a runtime with incomplete or malformed responses would. Every other
//! call returns `Unimplemented`.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use parapet::cri::CriClient;
use tokio::{net::UnixListener, task::JoinHandle};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// Message types and the server stub generated from the agent's
/// `proto/cri.proto`.
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

use proto::runtime_service_server::{RuntimeService, RuntimeServiceServer};

/// What the fake runtime does to the pod it distorts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distortion {
    /// Lists everything as the real runtime does.
    None,
    /// Leaves the pod and its containers out of the lists.
    Omit,
    /// Lists them without metadata, labels or pod sandbox id.
    Malform,
}

/// A fake runtime serving on a Unix socket until dropped.
pub struct FakeRuntime {
    distortion: Arc<Mutex<Distortion>>,
    server: JoinHandle<()>,
}

impl FakeRuntime {
    /// Serves on `socket`, forwarding to `upstream` and distorting the pod
    /// sandbox `sandbox_id`.
    pub fn start(socket: &Path, upstream: CriClient, sandbox_id: &str) -> Result<Self> {
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("failed to bind {}", socket.display()))?;
        let distortion = Arc::new(Mutex::new(Distortion::None));
        let service = Service {
            upstream,
            sandbox_id: sandbox_id.to_owned(),
            distortion: Arc::clone(&distortion),
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(service))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        });
        Ok(Self { distortion, server })
    }

    pub fn set(&self, distortion: Distortion) {
        *self.distortion.lock().unwrap_or_else(|e| e.into_inner()) = distortion;
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Service {
    upstream: CriClient,
    sandbox_id: String,
    distortion: Arc<Mutex<Distortion>>,
}

impl Service {
    fn distortion(&self) -> Distortion {
        *self.distortion.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Converts a message of the agent's generated types into the same message
/// of this crate's, through its encoding.
fn convert<From: prost::Message, To: prost::Message + Default>(
    message: &From,
) -> Result<To, Status> {
    To::decode(message.encode_to_vec().as_slice())
        .map_err(|error| Status::internal(error.to_string()))
}

fn upstream_error(error: parapet::cri::CriError) -> Status {
    Status::unavailable(error.to_string())
}

#[tonic::async_trait]
impl RuntimeService for Service {
    async fn list_pod_sandbox(
        &self,
        _request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let sandboxes = self
            .upstream
            .list_pod_sandboxes()
            .await
            .map_err(upstream_error)?;
        let mut items = Vec::new();
        for sandbox in &sandboxes {
            let mut item: proto::PodSandbox = convert(sandbox)?;
            if item.id == self.sandbox_id {
                match self.distortion() {
                    Distortion::None => {}
                    Distortion::Omit => continue,
                    Distortion::Malform => {
                        item.metadata = None;
                        item.labels.clear();
                    }
                }
            }
            items.push(item);
        }
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn list_containers(
        &self,
        _request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let listed = self
            .upstream
            .list_containers()
            .await
            .map_err(upstream_error)?;
        let mut containers = Vec::new();
        for container in &listed {
            let mut item: proto::Container = convert(container)?;
            if item.pod_sandbox_id == self.sandbox_id {
                match self.distortion() {
                    Distortion::None => {}
                    Distortion::Omit => continue,
                    Distortion::Malform => {
                        item.metadata = None;
                        item.labels.clear();
                        item.pod_sandbox_id.clear();
                    }
                }
            }
            containers.push(item);
        }
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }
}
