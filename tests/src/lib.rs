//! End-to-end test harness: a private containerd with its own CNI bridge
//! and cgroup subtree, locally built images, and pods run over CRI the way
//! the kubelet runs them.
//!
//! ```no_run
//! # async fn example(netprobe: &std::path::Path) -> anyhow::Result<()> {
//! use parapet_tests::{Containerd, Pod};
//!
//! parapet_tests::skip_unless_testbed!(Ok(()));
//! // In an integration test of this crate: env!("CARGO_BIN_EXE_netprobe").
//! let containerd = Containerd::start(netprobe).await?;
//! let pod = Pod::run(&containerd, "client", "default", &[("app", "client")]).await?;
//! let output = pod.exec(&["netprobe", "connect", "tcp", "10.240.0.2", "80"]).await?;
//! containerd.cleanup().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Skipped tests: some machines cannot run the harness (not root, or
//! containerd, runc, ctr, the CNI plugins or a cgroup v2 mount missing).
//! There [`skip_unless_testbed!`] prints `SKIPPED: <test name>: <reason>` to
//! stderr and returns from the test, which the test runner then reports as
//! passed. To tell the two apart, run the tests with `--nocapture` and search
//! the output for `SKIPPED:`.

pub mod agent;
pub mod bpffs;
pub mod attempts;
pub mod cgroup;
pub mod configmap;
pub mod containerd;
pub mod fake_cri;
pub mod fake_workloads;
pub mod image;
pub mod mountinfo;
pub mod network;
pub mod pods;
mod teardown;

pub use containerd::Containerd;
pub use pods::{ExecOutput, Pod};

use std::path::Path;

/// Programs that the harness runs, looked up in `PATH`.
const REQUIRED_PROGRAMS: [&str; 5] = ["containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip"];

/// Returns why this machine cannot run the harness, or `None` when it can.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the end-to-end tests need root".to_string());
    }
    for program in REQUIRED_PROGRAMS {
        if find_in_path(program).is_none() {
            return Some(format!("{program} not found in PATH"));
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let path = Path::new(network::CNI_BIN_DIR).join(plugin);
        if !path.exists() {
            return Some(format!("CNI plugin {} not found", path.display()));
        }
    }
    if !Path::new(image::BUSYBOX).exists() {
        return Some(format!(
            "{} not found (install busybox-static)",
            image::BUSYBOX
        ));
    }
    if let Err(error) = cgroup::v2_mount() {
        return Some(format!("{error:#}"));
    }
    None
}

/// Returns early from the calling test, after printing
/// `SKIPPED: <test name>: <reason>`, when [`skip_reason`] returns a reason.
/// The test name is the name of the current thread, which the Rust test
/// runner sets to the test's path. The optional argument is the value to
/// return, for tests that return a `Result`.
#[macro_export]
macro_rules! skip_unless_testbed {
    () => {
        $crate::skip_unless_testbed!(())
    };
    ($skipped:expr) => {
        if let Some(reason) = $crate::skip_reason() {
            let test = std::thread::current()
                .name()
                .unwrap_or("unnamed test")
                .to_string();
            println!("SKIPPED: {test}: {reason}");
            return $skipped;
        }
    };
}

fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Returns `N` bytes from the kernel's random number generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // SAFETY: getrandom(2) writes at most N bytes into the N-byte buffer.
    let written = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    assert_eq!(
        written,
        N as isize,
        "getrandom failed: {}",
        std::io::Error::last_os_error()
    );
    bytes
}
