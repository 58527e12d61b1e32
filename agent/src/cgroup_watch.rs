//! Noticing pod and container cgroups as they are made and removed, so
//! that the agent writes a new pod's policy entry within milliseconds
//! instead of at its next periodic scan, and can scan seldom while nothing
//! changes.
//!
//! inotify reports `mkdir` and `rmdir` in cgroupfs as in any directory. The
//! watcher watches the attach cgroup and every directory below it down to
//! the pod level (QoS classes, pods), but not the containers themselves,
//! so cgroups nested inside a container are found by the periodic scan.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::Notify;
use tracing::warn;

use crate::cgroups::container_id_from_name;

/// Directory levels below the attach cgroup that are watched: QoS class,
/// pod, and one spare for runtimes that nest one level deeper.
const WATCH_DEPTH: usize = 3;

/// Starts a thread that wakes the returned `Notify` whenever a directory
/// appears or goes below `root`, down to the watched depth. Returns `None`, after a warning, when inotify is
/// unavailable; the periodic scan then still finds new pods.
pub fn spawn(root: PathBuf) -> Option<Arc<Notify>> {
    let mut inotify = match Inotify::init() {
        Ok(inotify) => inotify,
        Err(error) => {
            warn!(error = %error, "inotify is unavailable; new pods are found by the periodic scan only");
            return None;
        }
    };
    let notify = Arc::new(Notify::new());
    let woken = Arc::clone(&notify);
    let mut watched = Vec::new();
    watch_tree(&mut inotify, &root, 0, &mut watched);
    std::thread::Builder::new()
        .name("cgroup-watch".to_owned())
        .spawn(move || run(inotify, watched, woken))
        .map_err(|error| warn!(error = %error, "failed to start the cgroup watcher thread"))
        .ok()?;
    Some(notify)
}

fn run(mut inotify: Inotify, mut watched: Vec<(inotify::WatchDescriptor, PathBuf, usize)>, notify: Arc<Notify>) {
    let mut buffer = [0u8; 4096];
    loop {
        let events = match inotify.read_events_blocking(&mut buffer) {
            Ok(events) => events,
            Err(error) => {
                warn!(error = %error, "the cgroup watcher stopped; new pods are found by the periodic scan only");
                return;
            }
        };
        let mut created = Vec::new();
        let mut removed = Vec::new();
        for event in events {
            if event.mask.contains(EventMask::IGNORED) {
                removed.push(event.wd.clone());
                continue;
            }
            let Some(name) = event.name else {
                continue;
            };
            let Some((_, parent, depth)) = watched.iter().find(|(wd, _, _)| *wd == event.wd) else {
                continue;
            };
            if event.mask.contains(EventMask::CREATE) {
                created.push((parent.join(name), *depth + 1));
            }
        }
        watched.retain(|(wd, _, _)| !removed.contains(wd));
        for (path, depth) in created {
            watch_tree(&mut inotify, &path, depth, &mut watched);
        }
        notify.notify_one();
    }
}

/// Watches `dir` and the directories below it, down to `WATCH_DEPTH`,
/// skipping container cgroups.
fn watch_tree(
    inotify: &mut Inotify,
    dir: &Path,
    depth: usize,
    watched: &mut Vec<(inotify::WatchDescriptor, PathBuf, usize)>,
) {
    if depth > WATCH_DEPTH {
        return;
    }
    let is_container = dir
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| container_id_from_name(name).is_some());
    if is_container {
        return;
    }
    match inotify.watches().add(dir, WatchMask::CREATE | WatchMask::DELETE | WatchMask::ONLYDIR) {
        Ok(descriptor) => {
            if !watched.iter().any(|(wd, _, _)| *wd == descriptor) {
                watched.push((descriptor, dir.to_owned(), depth));
            }
        }
        // The directory went away between the event and now.
        Err(_) => return,
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            watch_tree(inotify, &entry.path(), depth + 1, watched);
        }
    }
}
