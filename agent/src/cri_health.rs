//! Whether the container runtime responds, for the log, `parapet status`
//! and `/metrics`.
//!
//! While the runtime fails (down, slower than the CRI deadline, or sending
//! garbage), the agent changes no kernel entry, so pods already policed
//! keep the policies they had. It retries with a growing pause,
//! so that a hung runtime does not keep the agent's loop waiting on CRI
//! deadlines, and logs each distinct failure once.
//!
//! NOTE: each attempt still holds the agent's loop for up to the CRI
//! deadline (2 s), which delays policy reloads while the runtime hangs.
//! A runtime that answers with incomplete lists is handled by
//! [`crate::unlisted`].

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// First pause after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The runtime's state as `parapet status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriStatus {
    pub socket: String,
    /// Whether the last request to the runtime succeeded.
    pub up: bool,
    /// The last failure, while the runtime is down.
    pub error: Option<String>,
    /// RFC 3339 time of the first failure of the current outage.
    pub down_since: Option<String>,
    /// Failed attempts to list the workloads since the agent started.
    pub failures: u64,
}

pub struct CriHealth {
    status: CriStatus,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl CriHealth {
    pub fn new(socket: PathBuf) -> Self {
        Self {
            status: CriStatus {
                socket: socket.display().to_string(),
                ..CriStatus::default()
            },
            backoff: FIRST_BACKOFF,
            retry_at: None,
        }
    }

    pub fn status(&self) -> &CriStatus {
        &self.status
    }

    /// Returns whether an unforced look at the workloads should ask the
    /// runtime now, or wait out the pause after a failure.
    pub fn may_try(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Records a failure, and logs it unless it repeats the last one.
    pub fn failed(&mut self, message: String) {
        self.status.failures += 1;
        if self.status.up || self.status.down_since.is_none() {
            self.status.down_since = Some(crate::reader::now_rfc3339());
        }
        self.status.up = false;
        if self.status.error.as_deref() != Some(message.as_str()) {
            error!(
                socket = %self.status.socket,
                error = %message,
                "failed to list workloads from the container runtime; every kernel entry stays as it was; retrying"
            );
            self.status.error = Some(message);
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Records a success, and logs the end of an outage.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.status.down_since.take() {
            info!(socket = %self.status.socket, down_since = %since, "the container runtime responds again");
        }
        self.status.up = true;
        self.status.error = None;
        self.backoff = FIRST_BACKOFF;
        self.retry_at = None;
    }
}
