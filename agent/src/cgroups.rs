//! Finding the cgroup v2 hierarchy and reading container ids and pod uids
//! out of its directory names.
//!
//! A cgroup's id, as `bpf_get_current_cgroup_id()` returns it, is the inode
//! number of its directory in the cgroup v2 hierarchy.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoV2Mount,
}

/// Deepest directory level below the scan root that `scan` descends to.
const MAX_SCAN_DEPTH: usize = 8;

/// Returns the mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on
/// pure v2 nodes, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn find_v2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let mountinfo = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })?;
    v2_mount_from_mountinfo(&mountinfo).ok_or(CgroupError::NoV2Mount)
}

fn v2_mount_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = mount.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        if let Some(digits) = octal {
            let value = digits.iter().fold(0u32, |acc, digit| acc * 8 + u32::from(digit - b'0'));
            out.push(value as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Returns the cgroup id of a cgroup v2 directory.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// A container's cgroup, found by its directory name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    pub container_id: String,
    pub path: PathBuf,
    pub id: u64,
    /// The enclosing pod cgroup, when the parent directory is one.
    pub pod: Option<PodCgroup>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// Pod uid in its usual form, with dashes.
    pub uid: String,
    pub path: PathBuf,
    pub id: u64,
}

/// Result of a walk of the hierarchy.
#[derive(Debug, Default)]
pub struct Scan {
    /// Container cgroups by container id.
    pub containers: HashMap<String, ContainerCgroup>,
    /// Ids of every cgroup below the root, nested ones included.
    pub live_ids: HashSet<u64>,
}

/// Walks the hierarchy below `root` and returns every container cgroup and
/// the ids of all cgroups. Directories that vanish during the walk are
/// skipped: containers come and go while it runs.
pub fn scan(root: &Path) -> Result<Scan, CgroupError> {
    let mut found = Scan::default();
    fs::read_dir(root).map_err(|source| CgroupError::Read {
        path: root.to_owned(),
        source,
    })?;
    walk(root, None, 0, &mut found);
    Ok(found)
}

fn walk(dir: &Path, pod: Option<&PodCgroup>, depth: usize, found: &mut Scan) {
    if depth > MAX_SCAN_DEPTH {
        return;
    }
    for (path, name, id) in subdirectories(dir) {
        found.live_ids.insert(id);
        if let Some(container_id) = container_id_from_name(&name) {
            // The first directory found for an id wins; a directory further
            // down cannot take its place, because `walk_nested` does not
            // look for containers. A process with write access to its
            // container's cgroup could otherwise make one with the same
            // name and move the policy entry away from the real container.
            found
                .containers
                .entry(container_id.to_owned())
                .or_insert_with(|| ContainerCgroup {
                    container_id: container_id.to_owned(),
                    path: path.clone(),
                    id,
                    pod: pod.cloned(),
                });
            walk_nested(&path, depth + 1, found);
            continue;
        }
        if let Some(uid) = pod_uid_from_name(&name) {
            let pod = PodCgroup { uid, path: path.clone(), id };
            walk(&path, Some(&pod), depth + 1, found);
        } else {
            walk(&path, None, depth + 1, found);
        }
    }
}

/// Records the ids of the cgroups nested inside a container's.
fn walk_nested(dir: &Path, depth: usize, found: &mut Scan) {
    if depth > MAX_SCAN_DEPTH {
        return;
    }
    for (path, _, id) in subdirectories(dir) {
        found.live_ids.insert(id);
        walk_nested(&path, depth + 1, found);
    }
}

/// Returns the subdirectories of `dir` with their names and cgroup ids.
///
/// The id is the inode number that `readdir` returns with each entry: for
/// cgroupfs (kernfs) it is the one `stat` returns, and reading it this way
/// spares one path lookup per cgroup on every scan.
fn subdirectories(dir: &Path) -> Vec<(PathBuf, String, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (entry.path(), name, entry.ino())
        })
        .collect()
}

/// Reads a container id out of a cgroup directory name, for the shapes that
/// containerd, CRI-O, Docker and Podman use with the cgroupfs and the
/// systemd drivers: `<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`, `libpod-<id>` and `libpod-<id>.scope`.
pub fn container_id_from_name(name: &str) -> Option<&str> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    let id = ["cri-containerd-", "crio-", "docker-", "libpod-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then_some(id)
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads a pod uid out of a pod cgroup directory name: `pod<uid>` with the
/// cgroupfs driver, `kubepods-<qos>-pod<uid>.slice` with the systemd driver,
/// which writes the uid's dashes as underscores.
pub fn pod_uid_from_name(name: &str) -> Option<String> {
    let name = name.strip_suffix(".slice").unwrap_or(name);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

fn is_pod_uid(uid: &str) -> bool {
    let groups: Vec<&str> = uid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Returns the pids in a cgroup and its descendants.
pub fn pids(cgroup: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    let children = fs::read_dir(cgroup).into_iter().flatten().flatten();
    for child in children.filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir())) {
        found.extend(pids(&child.path()));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_id_shapes() {
        for name in [
            ID.to_owned(),
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
            format!("libpod-{ID}"),
            format!("libpod-{ID}.scope"),
        ] {
            assert_eq!(container_id_from_name(&name), Some(ID), "{name}");
        }
    }

    #[test]
    fn container_id_rejects_other_names() {
        for name in [
            "kubepods",
            "besteffort",
            &format!("crio-conmon-{ID}.scope"),
            &ID[1..],
            &ID.to_uppercase(),
            "init.scope",
        ] {
            assert_eq!(container_id_from_name(name), None, "{name}");
        }
    }

    #[test]
    fn pod_uid_shapes() {
        let uid = "3f9c1b2a-1234-4cde-8f00-0123456789ab";
        assert_eq!(pod_uid_from_name(&format!("pod{uid}")).as_deref(), Some(uid));
        let systemd = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
        assert_eq!(pod_uid_from_name(&systemd).as_deref(), Some(uid));
        assert_eq!(pod_uid_from_name("kubepods-besteffort.slice"), None);
        assert_eq!(pod_uid_from_name("podman"), None);
    }

    #[test]
    fn nested_directory_named_like_its_container_is_ignored() {
        let root = std::env::temp_dir().join(format!("parapet-scan-test-{}", std::process::id()));
        let pod = root.join("pod3f9c1b2a-1234-4cde-8f00-0123456789ab");
        let container = pod.join(ID);
        let decoy = container.join(ID);
        fs::create_dir_all(&decoy).unwrap();
        let scan = scan(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        let found = &scan.containers[ID];
        assert_eq!(found.path, container);
        assert!(found.pod.is_some());
        assert_eq!(scan.live_ids.len(), 3);
    }

    #[test]
    fn v2_mount_hybrid_and_pure() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            v2_mount_from_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_mount_from_mountinfo(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(v2_mount_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }
}
