//! Which clients the API socket serves: root only, and at most
//! [`MAX_CLIENTS`] at once, so that no client, however it behaves, can
//! make the agent hold unbounded memory or tasks.
//!
//! The socket's mode (0600 in a 0700 directory) already keeps other users
//! out. The peer's credentials are checked as well, because the socket may
//! end up in a directory with a looser mode, such as a shared volume.

use std::time::{Duration, Instant};

use std::sync::Arc;
use tokio::{
    net::UnixStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::warn;

/// Maximum number of clients served at once. Each `parapet tail` uses one
/// for as long as it follows.
pub const MAX_CLIENTS: usize = 64;
/// Shortest gap between two log lines about refused clients.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

pub struct Admission {
    slots: Arc<Semaphore>,
    not_root: RateLimit,
    too_many: RateLimit,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_CLIENTS)),
            not_root: RateLimit::default(),
            too_many: RateLimit::default(),
        }
    }
}

impl Admission {
    /// Returns a slot that the client keeps while it is served, or the
    /// message that explains why it is rejected.
    pub fn admit(&mut self, stream: &UnixStream) -> Result<OwnedSemaphorePermit, String> {
        let credentials = stream.peer_cred().map_err(|error| {
            format!("failed to read the client's credentials (SO_PEERCRED): {error}")
        })?;
        if credentials.uid() != 0 {
            if let Some(suppressed) = self.not_root.allow() {
                warn!(
                    uid = credentials.uid(),
                    pid = credentials.pid(),
                    suppressed,
                    "refused an API client that is not root"
                );
            }
            return Err(format!(
                "permission denied: the parapet API serves root (uid 0) only, and this client runs as uid {}",
                credentials.uid()
            ));
        }
        Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            if let Some(suppressed) = self.too_many.allow() {
                warn!(
                    max = MAX_CLIENTS,
                    pid = credentials.pid(),
                    suppressed,
                    "refused an API client: too many clients are connected"
                );
            }
            format!(
                "too many clients: the agent serves at most {MAX_CLIENTS} at once; try again later"
            )
        })
    }
}

/// Lets one log line through per [`LOG_INTERVAL`], and counts the others.
#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// Returns how many lines were held back since the last one, when this
    /// one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
