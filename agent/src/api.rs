//! The agent's local API: a Unix socket, readable by root only, that streams
//! live events to `parapet tail`.
//!
//! Protocol: the client sends one JSON line, a `Request`. For `follow` the
//! agent then sends one JSON line per matching event: first the recent
//! ones the client asked for with `since_ms`, then live ones. When a client
//! reads too slowly to keep up, the agent skips events for it rather than
//! slow down, and sends a `{"missed": N}` line saying how many it skipped.
//! When the kernel drops event records because its ring buffer is full,
//! every follower gets a `{"kernel_dropped": N}` line within a second,
//! also one that fell behind.
//! When the replay lacks events that the buffer no longer holds, the agent
//! sends a `{"notice": "..."}` line first. For `status` the agent sends one
//! `Status` line and closes the connection. Anything a follower sends after
//! its request line closes its connection.
//!
//! Hostile or broken clients are bounded: a request line is at most
//! [`MAX_REQUEST_BYTES`] and must arrive within [`REQUEST_TIMEOUT`], a
//! client that takes no data for [`WRITE_TIMEOUT`] is dropped, and
//! [`crate::api_admission`] admits root only, at most
//! [`crate::api_admission::MAX_CLIENTS`] at once.

use std::{
    fs,
    os::fd::AsRawFd as _,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    event::Kind,
    feed::{EventKey, Feed, Published, RECENT_CAPACITY},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::broadcast,
};
use tracing::{debug, info, warn};

use crate::{
    event::VerdictName,
    status::Status,
};

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/parapet/api.sock";

/// Maximum length of the request line the agent reads.
pub const MAX_REQUEST_BYTES: u64 = 4096;
/// Time a client has to send its request line after it connects.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take one line before the agent drops it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one line a client sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Follow(Subscription),
    Status {},
}

/// Builds the current status on request.
pub type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// Filters for the events a client receives. Absent filters match everything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub kind: Option<Kind>,
    #[serde(default)]
    pub verdict: Option<VerdictName>,
    #[serde(default)]
    pub policy: Option<String>,
    /// Also send allowed decisions, not only violations.
    #[serde(default)]
    pub include_allowed: bool,
    /// Replay the events of this many milliseconds before the request.
    #[serde(default)]
    pub since_ms: Option<u64>,
}

impl Subscription {
    pub fn matches(&self, event: &EventKey) -> bool {
        let allowed_requested = self.include_allowed || self.verdict == Some(VerdictName::Allow);
        (allowed_requested || event.verdict != VerdictName::Allow)
            && self.verdict.is_none_or(|verdict| verdict == event.verdict)
            && self.kind.is_none_or(|kind| kind == event.kind)
            && filter_matches(&self.namespace, &event.namespace)
            && filter_matches(&self.pod, &event.pod)
            && filter_matches(&self.container, &event.container)
            && filter_matches(&self.policy, &event.policy)
    }
}

fn filter_matches(filter: &Option<String>, value: &Option<Arc<str>>) -> bool {
    filter.is_none() || filter.as_deref() == value.as_deref()
}

/// A line the agent sends besides events.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Missed {
    pub missed: u64,
}

/// A line the agent sends besides events: event records of any workload
/// that the kernel dropped because its ring buffer was full, since the
/// previous such line. `parapet_events_lost_total` counts them too.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDropped {
    pub kernel_dropped: u64,
}

/// A warning line the agent sends besides events.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    pub notice: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("failed to create the API socket directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another process serves the API socket {}; is another agent running? Give this one its own --api-socket",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("failed to bind the API socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket with root-only permissions: its directory is created
/// with mode 0700 and the socket gets mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ApiError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ApiError::InUse {
            path: path.to_owned(),
        });
    }
    // A socket file left by an agent that died cannot be bound again.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ApiError::Bind {
                path: path.to_owned(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.to_owned(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        ApiError::Bind {
            path: path.to_owned(),
            source,
        }
    })?;
    info!(path = %path.display(), "serving the API socket");
    Ok(listener)
}

/// Accepts clients until the listener fails.
pub async fn serve(listener: UnixListener, feed: Arc<Feed>, status: StatusFn) {
    let mut admission = crate::api_admission::Admission::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let permit = match admission.admit(&stream) {
                    Ok(permit) => permit,
                    Err(message) => {
                        // A fresh connection's buffer takes this short line
                        // at once; a refused client gets no task to wait on.
                        let reply = serde_json::json!({ "error": message });
                        let _ = stream.try_write(format!("{reply}\n").as_bytes());
                        continue;
                    }
                };
                let feed = Arc::clone(&feed);
                let status = Arc::clone(&status);
                tokio::spawn(async move {
                    if let Err(error) = serve_client(stream, &feed, status).await {
                        debug!(error = %error, "API client left");
                    }
                    drop(permit);
                });
            }
            Err(error) => {
                warn!(error = %error, "failed to accept an API client");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client(stream: UnixStream, feed: &Feed, status: StatusFn) -> std::io::Result<()> {
    let (read_half, mut write_half) = stream.into_split();
    let mut request = String::new();
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(read_half, MAX_REQUEST_BYTES));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut request)).await;
    let hit_limit = limited.get_ref().limit() == 0;
    if hit_limit && !request.ends_with('\n') {
        let reply = serde_json::json!({
            "error": format!("request longer than {MAX_REQUEST_BYTES} bytes")
        });
        return send(&mut write_half, &reply.to_string()).await;
    }
    let subscription = match read {
        Ok(Ok(_)) => match serde_json::from_str(request.trim()) {
            Ok(Request::Follow(subscription)) => subscription,
            Ok(Request::Status {}) => {
                let status = tokio::task::spawn_blocking(move || status())
                    .await
                    .map_err(std::io::Error::other)?;
                let line = serde_json::to_string(&status).map_err(std::io::Error::other)?;
                return send(&mut write_half, &line).await;
            }
            Err(error) => {
                let reply = serde_json::json!({ "error": format!("invalid request: {error}") });
                return send(&mut write_half, &reply.to_string()).await;
            }
        },
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
            let reply = serde_json::json!({ "error": "the request is not UTF-8 text" });
            return send(&mut write_half, &reply.to_string()).await;
        }
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            let reply = serde_json::json!({
                "error": format!("no request line within {} seconds", REQUEST_TIMEOUT.as_secs())
            });
            return send(&mut write_half, &reply.to_string()).await;
        }
    };
    // Bytes the client sent after its request line are not read: any
    // further byte, or the end of the stream, ends the connection.
    let mut read_half = limited.into_inner().into_inner();
    enlarge_send_buffer(&write_half);
    let since = subscription.since_ms.map(Duration::from_millis);
    let crate::feed::Subscription {
        replay,
        replay_incomplete,
        live: mut receiver,
        mut kernel_dropped,
    } = feed.subscribe(since);
    let mut dropped_reported = *kernel_dropped.borrow_and_update();
    if replay_incomplete {
        let notice = Notice {
            notice: format!(
                "the replay lacks its oldest events: the agent keeps only the last {RECENT_CAPACITY}"
            ),
        };
        let line = serde_json::to_string(&notice).map_err(std::io::Error::other)?;
        send(&mut write_half, &line).await?;
    }
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    for event in replay.iter().filter(|event| subscription.matches(&event.key)) {
        batch.extend_from_slice(&event.line);
        if batch.len() >= WRITE_BATCH {
            send_bytes(&mut write_half, &batch).await?;
            batch.clear();
        }
    }
    send_bytes(&mut write_half, &batch).await?;
    let mut byte = [0u8; 1];
    loop {
        batch.clear();
        let received = tokio::select! {
            received = receiver.recv() => received,
            changed = kernel_dropped.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let total = *kernel_dropped.borrow_and_update();
                let line = serde_json::to_string(&KernelDropped { kernel_dropped: total - dropped_reported })
                    .map_err(std::io::Error::other)?;
                dropped_reported = total;
                send(&mut write_half, &line).await?;
                continue;
            }
            _ = read_half.read(&mut byte) => return Ok(()),
        };
        let mut closed = add_to_batch(&mut batch, &subscription, received);
        // Take what else is queued already, so that a flood costs one
        // write per batch rather than one per event.
        while !closed && batch.len() < WRITE_BATCH {
            let received = match receiver.try_recv() {
                Ok(event) => Ok(event),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => Err(broadcast::error::RecvError::Lagged(missed)),
                Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
                Err(broadcast::error::TryRecvError::Empty) => break,
            };
            closed = add_to_batch(&mut batch, &subscription, received);
        }
        send_bytes(&mut write_half, &batch).await?;
        if closed {
            return Ok(());
        }
    }
}

/// Bytes requested for a follower's socket send buffer, which the kernel
/// doubles for its bookkeeping: room for a few thousand events beyond the
/// feed's backlog while `tail` waits to be scheduled.
const FOLLOWER_SEND_BUFFER: libc::c_int = 1 << 20;

/// Gives a follower's socket a send buffer of [`FOLLOWER_SEND_BUFFER`]
/// bytes. `SO_SNDBUFFORCE` passes over the `net.core.wmem_max` limit and
/// needs `CAP_NET_ADMIN`; without it the buffer is as large as the limit
/// allows.
fn enlarge_send_buffer(write_half: &OwnedWriteHalf) {
    let fd = write_half.as_ref().as_raw_fd();
    let size = FOLLOWER_SEND_BUFFER;
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: `size` is a valid c_int for the length passed, and `fd`
        // is the follower's open socket.
        let set = unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, option, (&raw const size).cast(), size_of::<libc::c_int>() as libc::socklen_t)
        };
        if set == 0 {
            return;
        }
    }
    debug!(error = %std::io::Error::last_os_error(), "failed to enlarge a follower's send buffer");
}

/// Bytes of lines a follower is sent with one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Appends the line of a received event that the subscription matches, or
/// a `Missed` line when the client fell behind. Returns true when the feed
/// is closed.
fn add_to_batch(
    batch: &mut Vec<u8>,
    subscription: &Subscription,
    received: Result<Arc<Published>, broadcast::error::RecvError>,
) -> bool {
    match received {
        Ok(event) => {
            if subscription.matches(&event.key) {
                batch.extend_from_slice(&event.line);
            }
            false
        }
        Err(broadcast::error::RecvError::Lagged(missed)) => {
            batch.extend_from_slice(format!("{{\"missed\":{missed}}}\n").as_bytes());
            false
        }
        Err(broadcast::error::RecvError::Closed) => true,
    }
}

/// Writes `bytes`, and fails when the client has not taken all of them
/// after [`WRITE_TIMEOUT`].
async fn send_bytes(write_half: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, write_half.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client did not take its events within {} seconds", WRITE_TIMEOUT.as_secs()),
        )),
    }
}

/// Writes one line, and fails when the client has not taken all of it
/// after [`WRITE_TIMEOUT`].
async fn send(write_half: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, write_half.write_all(&bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client did not take a line within {} seconds", WRITE_TIMEOUT.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn event(verdict: &str, kind: &str, container: &str, policy: &str) -> EventKey {
        serde_json::from_value::<Event>(serde_json::json!({
            "time": "2026-12-04T00:00:00Z", "node": "n", "kind": kind, "operation": "connect",
            "verdict": verdict, "namespace": "clinic", "pod": "api", "pod_uid": null,
            "container": container, "container_id": null, "cgroup_id": 1, "pid": 7, "tid": 7,
            "process": "sh", "binary": null, "binary_truncated": false, "peer": null,
            "policy": policy, "rule": null
        }))
        .unwrap()
        .into()
    }

    #[test]
    fn filters_each_field() {
        let denied = event("deny", "network", "api", "egress");
        let filter = |request: serde_json::Value| -> Subscription { serde_json::from_value(request).unwrap() };
        assert!(filter(serde_json::json!({})).matches(&denied));
        assert!(filter(serde_json::json!({"container": "api"})).matches(&denied));
        assert!(!filter(serde_json::json!({"container": "sidecar"})).matches(&denied));
        assert!(filter(serde_json::json!({"kind": "network"})).matches(&denied));
        assert!(!filter(serde_json::json!({"kind": "file"})).matches(&denied));
        assert!(filter(serde_json::json!({"verdict": "deny"})).matches(&denied));
        assert!(!filter(serde_json::json!({"verdict": "audit"})).matches(&denied));
        assert!(filter(serde_json::json!({"policy": "egress"})).matches(&denied));
        assert!(!filter(serde_json::json!({"policy": "other"})).matches(&denied));
    }

    #[test]
    fn allowed_events_only_on_request() {
        let allowed = event("allow", "network", "api", "egress");
        let filter = |request: serde_json::Value| -> Subscription { serde_json::from_value(request).unwrap() };
        assert!(!filter(serde_json::json!({})).matches(&allowed));
        assert!(filter(serde_json::json!({"include_allowed": true})).matches(&allowed));
        assert!(filter(serde_json::json!({"verdict": "allow"})).matches(&allowed));
    }

    #[test]
    fn unknown_request_fields_are_rejected() {
        let request = r#"{"follow": {"namespace": "clinic", "colour": "red"}}"#;
        let error = serde_json::from_str::<Request>(request).unwrap_err().to_string();
        assert!(error.contains("unknown field `colour`"), "{error}");
    }
}
