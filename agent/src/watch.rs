//! Noticing policy changes in the policy directory.
//!
//! Three things make the agent look: inotify events on the directory (see
//! [`crate::dir_events`]), a poll every second for file systems without
//! inotify and for symlinks that lead out of the directory, and SIGHUP.
//! Each look reads every policy file twice, [`RECHECK`] apart, and loads
//! the second reading only when both match, path, symlink target and bytes.
//! A set read while a person or the kubelet was still writing it is
//! therefore never loaded: the next event or poll looks again.

use std::{
    hash::{DefaultHasher, Hasher as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::debug;

use crate::{
    dir_events::DirEvents,
    policy::{self, FileContents, Policy, PolicyError},
};

/// Gap between the two readings of the directory.
pub const RECHECK: Duration = Duration::from_millis(10);

/// The cause of a look at the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// inotify events that have settled.
    Events,
    /// The poll every second.
    Poll,
    /// SIGHUP: load even when nothing changed.
    Signal,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "inotify",
            Self::Poll => "poll",
            Self::Signal => "SIGHUP",
        }
    }
}

/// A policy set read from the directory.
pub struct Reload {
    pub result: Result<Vec<Policy>, Vec<PolicyError>>,
    /// When the change was first noticed: the first inotify event of the
    /// burst, else the start of this look.
    pub noticed: Instant,
}

pub struct PolicyWatcher {
    dir: PathBuf,
    /// Fingerprint of the directory as last loaded or rejected.
    fingerprint: Option<u64>,
    events: Option<Arc<DirEvents>>,
}

impl PolicyWatcher {
    /// Starts watching `dir` with inotify, where the kernel offers it.
    pub fn new(dir: PathBuf) -> Self {
        let events = DirEvents::spawn(&dir);
        Self {
            dir,
            fingerprint: None,
            events,
        }
    }

    /// The inotify events of the directory, or `None` when only the poll
    /// finds changes.
    pub fn events(&self) -> Option<Arc<DirEvents>> {
        self.events.clone()
    }

    /// Loads the directory for the first time.
    pub fn load_initial(&mut self) -> Result<Vec<Policy>, Vec<PolicyError>> {
        let files = policy::read_dir_files(&self.dir).map_err(|error| vec![error])?;
        self.fingerprint = Some(fingerprint(&files));
        policy::load_files(&files)
    }

    /// Loads the directory again when its contents changed since the last
    /// load, or for [`Trigger::Signal`]. Returns `None` when nothing
    /// changed, or when the directory was still changing. A rejected set is
    /// not reported again until the files change.
    pub async fn poll(&mut self, trigger: Trigger) -> Option<Reload> {
        let started = Instant::now();
        // The poll is the fallback: a change inotify saw is loaded once its
        // events settle.
        if trigger == Trigger::Poll && self.inotify_pending() {
            return None;
        }
        // A poll never takes a burst: the look for settled events does.
        let burst = match trigger {
            Trigger::Poll => None,
            Trigger::Events | Trigger::Signal => {
                self.events.as_ref().and_then(|events| events.take())
            }
        };
        let noticed = burst.map_or(started, |burst| burst.first);
        let first = self.read();
        if trigger != Trigger::Signal && self.fingerprint == Some(first.0) {
            return None;
        }
        tokio::time::sleep(RECHECK).await;
        // A poll that comes right after a change can find it before the
        // watcher thread has recorded its events. Events recorded by the end
        // of the recheck load it instead. Later ones find it loaded.
        if trigger == Trigger::Poll && self.inotify_pending() {
            return None;
        }
        let (second, files) = self.read();
        if second != first.0 {
            // The next event, or the next poll, looks again.
            debug!(dir = %self.dir.display(), "the policy directory is still changing; looking again later");
            return None;
        }
        self.fingerprint = Some(second);
        let result = match files {
            Ok(files) => policy::load_files(&files),
            Err(error) => Err(vec![error]),
        };
        Some(Reload { result, noticed })
    }

    /// Returns whether inotify saw events that no look has taken yet.
    fn inotify_pending(&self) -> bool {
        self.events
            .as_ref()
            .is_some_and(|events| events.is_pending())
    }

    fn read(&self) -> (u64, Result<Vec<FileContents>, PolicyError>) {
        let files = policy::read_dir_files(&self.dir);
        let fingerprint = match &files {
            Ok(files) => fingerprint(files),
            Err(error) => hash_of(error),
        };
        (fingerprint, files)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Hashes what was read: names, symlink targets and bytes, or the read
/// errors, which change when a file becomes readable again.
fn fingerprint(files: &[FileContents]) -> u64 {
    hash_of(files)
}

fn hash_of(value: &(impl std::hash::Hash + ?Sized)) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}
