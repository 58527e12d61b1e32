//! The mount namespaces that a container's processes use. Most containers
//! have one, but a process may make its own (`unshare -Urm` needs no
//! capability where unprivileged user namespaces are allowed). A namespace
//! copied before the container was made read-only keeps writable mounts,
//! so the agent makes every one of them read-only.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

/// A mount namespace, by the device and inode of its `ns/mnt` link, and one
/// process that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub dev: u64,
    pub ino: u64,
    pub pid: u32,
}

/// Returns the distinct mount namespaces of the processes in the cgroup at
/// `cgroup` and below, leaving out this process's and the host's, which
/// are never changed.
pub fn of_cgroup(cgroup: &Path) -> Vec<Namespace> {
    let identity = |path: &str| fs::metadata(path).ok().map(|meta| (meta.dev(), meta.ino()));
    let excluded = [identity("/proc/self/ns/mnt"), identity("/proc/1/ns/mnt")];
    let mut namespaces: Vec<Namespace> = Vec::new();
    for pid in crate::cgroups::pids(cgroup) {
        // The process may have exited since the cgroup was read.
        let Some((dev, ino)) = identity(&format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if excluded.contains(&Some((dev, ino))) || namespaces.iter().any(|ns| ns.dev == dev && ns.ino == ino) {
            continue;
        }
        namespaces.push(Namespace { dev, ino, pid });
    }
    namespaces
}
