//! The per-run cgroup subtree that test pods live in, on the v2 hierarchy and
//! on every v1 controller hierarchy (hybrid hosts have both).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::mountinfo;

/// Returns the mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on
/// pure v2 hosts, often `/sys/fs/cgroup/unified` on hybrid ones).
pub fn v2_mount() -> Result<PathBuf> {
    mountinfo::mounts()?
        .into_iter()
        .find(|mount| mount.fs_type == "cgroup2")
        .map(|mount| mount.mount_point)
        .context("no cgroup2 mount found in /proc/self/mountinfo")
}

/// Returns the mount points of the cgroup v1 hierarchies (none on pure v2 hosts).
pub fn v1_mounts() -> Result<Vec<PathBuf>> {
    Ok(mountinfo::mounts()?
        .into_iter()
        .filter(|mount| mount.fs_type == "cgroup")
        .map(|mount| mount.mount_point)
        .collect())
}

/// Returns the cgroup id of a v2 cgroup directory: its inode number, the
/// value `bpf_get_current_cgroup_id()` returns for processes in it.
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    let metadata =
        std::fs::metadata(dir).with_context(|| format!("failed to stat {}", dir.display()))?;
    Ok(metadata.ino())
}

/// Returns the v2 cgroup of a process, relative to the v2 root (`/a/b`).
pub fn v2_cgroup_of(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
        .with_context(|| format!("{path} has no cgroup v2 entry"))
}

/// A top-level cgroup named for one harness run, such as
/// `parapet-test-4242-0`, under which pods get `besteffort/pod<uid>`.
#[derive(Debug, Clone)]
pub struct RunCgroup {
    name: String,
    v2_mount: PathBuf,
}

impl RunCgroup {
    /// Creates `<v2 mount>/<name>`. runc creates the levels below it, and the
    /// same path in every v1 hierarchy, when pods start.
    pub fn create(name: &str) -> Result<Self> {
        check_name(name)?;
        let cgroup = Self {
            name: name.to_string(),
            v2_mount: v2_mount()?,
        };
        let path = cgroup.v2_path();
        std::fs::create_dir(&path)
            .with_context(|| format!("failed to create cgroup {}", path.display()))?;
        Ok(cgroup)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn v2_mount(&self) -> &Path {
        &self.v2_mount
    }

    /// Absolute path of this cgroup in the v2 hierarchy, where the agent
    /// under test attaches its cgroup programs.
    pub fn v2_path(&self) -> PathBuf {
        self.v2_mount.join(&self.name)
    }

    /// Returns the `cgroup_parent` for a pod, in the cgroupfs syntax that CRI
    /// expects: `/<name>/besteffort/pod<uid>`, like the kubelet's
    /// `/kubepods/besteffort/pod<uid>`.
    pub fn pod_parent(&self, pod_uid: &str) -> String {
        format!("/{}/besteffort/pod{pod_uid}", self.name)
    }

    /// Lists this run's directory in every hierarchy, v2 first, whether or
    /// not it exists.
    pub fn paths_in_all_hierarchies(&self) -> Result<Vec<PathBuf>> {
        let mut paths = vec![self.v2_path()];
        paths.extend(v1_mounts()?.into_iter().map(|mount| mount.join(&self.name)));
        Ok(paths)
    }

    /// Removes a pod's now empty `besteffort/pod<uid>` directory from every
    /// hierarchy, which runc leaves behind. Returns the directories that could
    /// not be removed.
    pub fn remove_pod(&self, pod_uid: &str) -> Result<Vec<PathBuf>> {
        let mut remaining = Vec::new();
        for root in self.paths_in_all_hierarchies()? {
            let dir = root.join("besteffort").join(format!("pod{pod_uid}"));
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => remaining.push(dir),
            }
        }
        Ok(remaining)
    }

    /// Sends SIGKILL to every process left in this run's cgroups. All of
    /// them were started by the run's containerd.
    pub fn kill_remaining_processes(&self) -> Result<usize> {
        let mut killed = 0;
        for root in self.paths_in_all_hierarchies()? {
            for dir in subtree(&root) {
                for pid in processes_in(&dir) {
                    // SAFETY: kill(2) with a pid read from this run's cgroup.
                    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                        killed += 1;
                    }
                }
            }
        }
        Ok(killed)
    }

    /// Removes this run's directory, with everything below it, from every
    /// hierarchy. Retries for up to `patience` while dying processes keep a
    /// cgroup busy. Returns the directories that could not be removed.
    pub fn remove(&self, patience: Duration) -> Result<Vec<PathBuf>> {
        let deadline = Instant::now() + patience;
        loop {
            let mut remaining = Vec::new();
            for root in self.paths_in_all_hierarchies()? {
                // Deepest first: rmdir only removes empty cgroups.
                for dir in subtree(&root).into_iter().rev() {
                    match std::fs::remove_dir(&dir) {
                        Ok(()) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(_) => remaining.push(dir),
                    }
                }
            }
            if remaining.is_empty() || Instant::now() >= deadline {
                return Ok(remaining);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Lists `root` and every cgroup directory below it, parents before children.
/// Returns nothing when `root` does not exist.
fn subtree(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        dirs.push(dir);
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    dirs.sort_by_key(|dir| dir.components().count());
    dirs
}

fn processes_in(dir: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Fails unless `name` is a single plain path component, so that a run
/// cgroup can never be the root or a path outside the run's directory.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("invalid cgroup name {name:?}");
    }
    Ok(())
}
