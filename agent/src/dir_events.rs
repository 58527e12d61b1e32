//! inotify on the policy directory, so that a change is loaded within
//! milliseconds instead of at the next poll.
//!
//! The directory itself is watched, not the files. An edit in place, an
//! editor that renames a temporary file over the old one, and a Kubernetes
//! ConfigMap update all change entries of the directory. A ConfigMap update
//! writes a new `..<timestamp>` directory, then renames `..data_tmp` over
//! the `..data` symlink that the visible files point through. Events come in
//! bursts, so [`DirEvents::settled`] waits until the directory has been
//! quiet for [`SETTLE`].

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::Notify;
use tracing::{info, warn};

/// Quiet time after the last event before the directory is read. A
/// ConfigMap update makes its events within a millisecond or so.
pub const SETTLE: Duration = Duration::from_millis(20);
/// Maximum wait after the first event of a burst that does not stop, so
/// that a directory written to without pause is still read.
const MAX_SETTLE: Duration = Duration::from_millis(500);
/// How often the watch is set up again after the directory went away.
const REWATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Every change to the entries of a directory, or to the files in it.
const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// A burst of events not yet acted upon.
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    /// When the first event of the burst arrived.
    pub first: Instant,
    last: Instant,
}

/// Events seen on one directory, shared by the watcher thread and the
/// agent's loop.
pub struct DirEvents {
    pending: Mutex<Option<Burst>>,
    wake: Notify,
}

impl DirEvents {
    /// Starts a thread that watches `dir`. Returns `None`, after a warning,
    /// when inotify is unavailable, in which case the periodic poll still
    /// finds changes.
    pub fn spawn(dir: &Path) -> Option<Arc<Self>> {
        let inotify = match Inotify::init() {
            Ok(inotify) => inotify,
            Err(error) => {
                warn!(error = %error, "inotify is unavailable; policy changes are found by the poll every second only");
                return None;
            }
        };
        if let Err(error) = inotify.watches().add(dir, MASK) {
            warn!(
                dir = %dir.display(),
                error = %error,
                "failed to watch the policy directory with inotify; policy changes are found by the poll every second only"
            );
            return None;
        }
        let events = Arc::new(Self {
            pending: Mutex::new(None),
            wake: Notify::new(),
        });
        let shared = Arc::clone(&events);
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("policy-watch".to_owned())
            .spawn(move || run(inotify, dir, shared))
            .map_err(|error| warn!(error = %error, "failed to start the policy watcher thread"))
            .ok()?;
        Some(events)
    }

    fn record(&self, now: Instant) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let first = pending.map_or(now, |burst| burst.first);
        *pending = Some(Burst { first, last: now });
        drop(pending);
        self.wake.notify_one();
    }

    /// Waits until a burst of events has been quiet for [`SETTLE`], or has
    /// gone on for [`MAX_SETTLE`]. The burst stays pending until
    /// [`DirEvents::take`], so a caller that drops this future loses none.
    pub async fn settled(&self) {
        loop {
            let burst = *self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let Some(burst) = burst else {
                self.wake.notified().await;
                continue;
            };
            let due = (burst.last + SETTLE).min(burst.first + MAX_SETTLE);
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }

    /// Returns whether events arrived that no look at the directory has
    /// taken yet.
    pub fn is_pending(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Takes the pending burst, if any.
    pub fn take(&self) -> Option<Burst> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn run(mut inotify: Inotify, dir: PathBuf, events: Arc<DirEvents>) {
    let mut buffer = [0u8; 4096];
    let mut watching = true;
    loop {
        if !watching {
            std::thread::sleep(REWATCH_INTERVAL);
            if inotify.watches().add(&dir, MASK).is_err() {
                continue;
            }
            info!(dir = %dir.display(), "watching the policy directory again");
            watching = true;
            events.record(Instant::now());
        }
        let read = match inotify.read_events_blocking(&mut buffer) {
            Ok(read) => read,
            Err(error) => {
                warn!(error = %error, "the policy watcher stopped; policy changes are found by the poll every second only");
                return;
            }
        };
        let mut any = false;
        for event in read {
            any = true;
            // The directory was removed or moved away: its watch is gone.
            if event.mask.contains(EventMask::IGNORED) {
                warn!(dir = %dir.display(), "the policy directory went away; watching for it to come back");
                watching = false;
            }
        }
        if any {
            events.record(Instant::now());
        }
    }
}
