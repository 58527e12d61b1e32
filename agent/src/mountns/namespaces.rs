//! The mount namespaces that a container's processes use. Most containers
//! have one, but a process may make its own (`unshare -Urm` needs no
//! capability where unprivileged user namespaces are allowed). A namespace
//! copied before the container was made read-only keeps writable mounts,
//! so the agent makes every one of them read-only. A process with its own
//! user namespace can also add mounts to its mount namespace later, and
//! `Namespace::mounts` changes when it does.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

/// A mount namespace, by the device and inode of its `ns/mnt` link, and one
/// process that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub dev: u64,
    pub ino: u64,
    pub pid: u32,
    /// A hash of the ids of its mounts, which changes when a mount is
    /// added or removed; 0 when the mount table could not be read.
    pub mounts: u64,
}

/// Returns the distinct mount namespaces of the processes in the cgroup at
/// `cgroup` and below, leaving out this process's and the host's, which
/// are never changed.
pub fn of_cgroup(cgroup: &Path) -> Vec<Namespace> {
    let excluded = excluded();
    let mut namespaces: Vec<Namespace> = Vec::new();
    for pid in crate::cgroups::pids(cgroup) {
        // The process may have exited since the cgroup was read.
        let Some((dev, ino)) = identity(&format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if excluded.contains(&Some((dev, ino))) || namespaces.iter().any(|ns| ns.dev == dev && ns.ino == ino) {
            continue;
        }
        let mounts = mount_ids_hash(pid);
        namespaces.push(Namespace { dev, ino, pid, mounts });
    }
    namespaces
}

/// Returns the mount namespace of process `pid`, or `None` when the
/// process is gone or uses this process's or the host's namespace.
pub fn of_pid(pid: u32) -> Option<Namespace> {
    let (dev, ino) = identity(&format!("/proc/{pid}/ns/mnt"))?;
    if excluded().contains(&Some((dev, ino))) {
        return None;
    }
    Some(Namespace {
        dev,
        ino,
        pid,
        mounts: mount_ids_hash(pid),
    })
}

/// Returns the device and inode of the namespace link at `path`.
fn identity(path: &str) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|meta| (meta.dev(), meta.ino()))
}

/// Returns the namespaces that are never changed: this process's and the
/// host's.
fn excluded() -> [Option<(u64, u64)>; 2] {
    [identity("/proc/self/ns/mnt"), identity("/proc/1/ns/mnt")]
}

/// Hashes the mount ids (the first field of each line) of the mountinfo
/// of process `pid`.
///
/// NOTE: it runs for every namespace at each check, also with the
/// fallback backend, which never uses the hash.
fn mount_ids_hash(pid: u32) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let Ok(mountinfo) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return 0;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for line in mountinfo.lines() {
        line.split(' ').next().unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}
