//! Removal of everything one harness run created, in an order that works
//! even after a failed start or a panicking test.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use parapet::cri::CriClient;

use crate::cgroup::RunCgroup;
use crate::mountinfo;
use crate::network::{self, BridgeNetwork};

/// Deadline of each CRI call made while tearing down.
const CRI_TIMEOUT: Duration = Duration::from_secs(10);
/// Time containerd gets to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Time dying processes get to leave their cgroups.
const CGROUP_PATIENCE: Duration = Duration::from_secs(5);

/// Resources of one run, registered as they are created.
#[derive(Debug)]
pub(crate) struct Teardown {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub containerd: Option<Child>,
    /// Bridge link name, registered once it is known not to exist yet.
    pub bridge: Option<String>,
    pub network: Option<BridgeNetwork>,
    pub cgroup: Option<RunCgroup>,
    done: bool,
}

impl Teardown {
    pub fn new(dir: PathBuf, socket: PathBuf) -> Self {
        Self {
            dir,
            socket,
            containerd: None,
            bridge: None,
            network: None,
            cgroup: None,
            done: false,
        }
    }

    /// Removes everything, then checks that nothing is left. Every step runs
    /// even when an earlier one failed. Returns an error listing the
    /// failures and leftovers.
    pub fn run(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let mut problems = Vec::new();

        if self.containerd_running() {
            problems.extend(remove_pod_sandboxes(&self.socket));
        }
        if let Some(child) = self.containerd.as_mut() {
            problems.extend(stop_process(child));
        }
        kill_orphaned_shims(&self.socket);
        if let Some(cgroup) = &self.cgroup
            && let Err(error) = cgroup.kill_remaining_processes()
        {
            problems.push(format!(
                "failed to list processes in the run's cgroups: {error:#}"
            ));
        }
        problems.extend(unmount_all_under(&self.dir));
        if let Some(bridge) = &self.bridge
            && let Err(error) = network::delete_link(bridge)
        {
            problems.push(format!("{error:#}"));
        }
        if let Some(network) = &self.network {
            for file in network.cache_files() {
                std::fs::remove_file(&file).ok();
            }
        }
        if let Some(cgroup) = &self.cgroup {
            match cgroup.remove(crate::agent::raised_limit(CGROUP_PATIENCE)) {
                Ok(remaining) => problems.extend(
                    remaining
                        .iter()
                        .map(|dir| format!("cgroup {} could not be removed", dir.display())),
                ),
                Err(error) => {
                    problems.push(format!("failed to remove the run's cgroups: {error:#}"))
                }
            }
        }
        problems.extend(self.remove_dir());

        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "cleanup of {} left problems:\n  {}",
                self.dir.display(),
                problems.join("\n  ")
            ))
        }
    }

    fn containerd_running(&mut self) -> bool {
        self.containerd
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Removes the run's folder, unless a mount is still inside it: deleting
    /// files through a leftover mount could reach outside the folder.
    fn remove_dir(&self) -> Option<String> {
        if !self.dir.exists() {
            return None;
        }
        match mountinfo::mount_points_under(&self.dir) {
            Ok(points) if points.is_empty() => {}
            Ok(points) => {
                return Some(format!(
                    "not removing {}: mounts remain at {points:?}",
                    self.dir.display()
                ));
            }
            Err(error) => return Some(format!("{error:#}")),
        }
        std::fs::remove_dir_all(&self.dir)
            .err()
            .map(|error| format!("failed to remove {}: {error}", self.dir.display()))
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Err(error) = self.run() {
            eprintln!("parapet-tests: {error:#}");
        }
    }
}

/// Stops and removes every pod sandbox of the run's containerd; the runtime
/// is private to the run, so all of its sandboxes are the run's. The CRI
/// calls run on a thread of their own with a fresh runtime, because this is
/// also called from `Drop`, possibly on a thread that is inside a tokio
/// runtime already.
fn remove_pod_sandboxes(socket: &Path) -> Vec<String> {
    let socket = socket.to_path_buf();
    let worker = std::thread::spawn(move || -> Vec<String> {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => return vec![format!("failed to build a tokio runtime: {error}")],
        };
        runtime.block_on(async {
            let cri = match CriClient::connect(&socket, crate::agent::raised_limit(CRI_TIMEOUT)).await {
                Ok(cri) => cri,
                Err(error) => return vec![error.to_string()],
            };
            let sandboxes = match cri.list_pod_sandboxes().await {
                Ok(sandboxes) => sandboxes,
                Err(error) => return vec![error.to_string()],
            };
            let mut problems = Vec::new();
            for sandbox in sandboxes {
                if let Err(error) = cri.stop_pod_sandbox(&sandbox.id).await {
                    problems.push(error.to_string());
                }
                if let Err(error) = cri.remove_pod_sandbox(&sandbox.id).await {
                    problems.push(error.to_string());
                }
            }
            problems
        })
    });
    worker
        .join()
        .unwrap_or_else(|_| vec!["the pod sandbox removal thread panicked".to_string()])
}

/// Sends SIGTERM, then SIGKILL after [`TERM_GRACE`], and reaps the process.
pub(crate) fn stop_process(child: &mut Child) -> Option<String> {
    if let Ok(Some(_)) = child.try_wait() {
        return None;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child that has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + crate::agent::raised_limit(TERM_GRACE);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    match child.wait() {
        Ok(_) => None,
        Err(error) => Some(format!("failed to reap containerd (pid {pid}): {error}")),
    }
}

/// Kills shims that outlived their containerd. Each shim of the run names the
/// run's socket in its arguments (`-address <socket>`), which no other
/// process does.
fn kill_orphaned_shims(socket: &Path) {
    let socket = socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&byte| byte == 0);
        let is_shim = args
            .next()
            .is_some_and(|program| program.ends_with(b"containerd-shim-runc-v2"));
        if is_shim && args.any(|arg| arg == socket) {
            // SAFETY: kill(2) on a shim started by the run's containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first. Repeats
/// for mounts stacked on one mount point.
fn unmount_all_under(dir: &Path) -> Vec<String> {
    const PASSES: usize = 4;
    let mut problems = Vec::new();
    for _ in 0..PASSES {
        let points = match mountinfo::mount_points_under(dir) {
            Ok(points) => points,
            Err(error) => return vec![format!("{error:#}")],
        };
        if points.is_empty() {
            return Vec::new();
        }
        problems.clear();
        for point in points {
            let Ok(c_path) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
                problems.push(format!(
                    "mount point {} contains a NUL byte",
                    point.display()
                ));
                continue;
            };
            // SAFETY: umount2(2) with a NUL-terminated path; MNT_DETACH only
            // detaches the mount from this namespace.
            if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
                let error = std::io::Error::last_os_error();
                problems.push(format!("failed to unmount {}: {error}", point.display()));
            }
        }
    }
    problems
}
