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
        let mounts = mount_ids_hash(pid);
        namespaces.push(Namespace { dev, ino, pid, mounts });
    }
    namespaces
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
