//! The start-up probe: the backend chosen per promise shows in the log, in
//! `/metrics` and in `parapet status`, every file tracepoint attaches, and
//! `--require-lsm` refuses to start where BPF LSM cannot enforce.

use anyhow::Result;
use parapet_tests::{
    Containerd,
    agent::{Agent, metric_value, parapet_bin},
};

#[tokio::test]
async fn chosen_backends_are_reported() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let mut agent = Agent::start(&containerd, &[])?;
    agent.wait_ready()?;

    for promise in ["network", "filesystem", "exec"] {
        agent.wait_for_log(&["enforcement backend chosen", &format!("promise=\"{promise}\"")])?;
    }
    let status = agent.status().await?;
    let backends: Vec<(String, String)> = status
        .backends
        .iter()
        .map(|c| (c.promise.as_str().to_owned(), c.backend.as_str().to_owned()))
        .collect();
    assert_eq!(backends.len(), 3, "{backends:?}");
    let metrics = agent.metrics()?;
    for (promise, backend) in &backends {
        let labels = [("promise", promise.as_str()), ("backend", backend.as_str())];
        assert_eq!(metric_value(&metrics, "parapet_backend_info", &labels), Some(1.0), "{metrics}");
    }
    // Every promise has two backends: BPF LSM, and the one used without it.
    let unused = metrics
        .lines()
        .filter(|line| line.starts_with("parapet_backend_info{") && line.ends_with(" 0"))
        .count();
    assert_eq!(unused, 3, "one unused backend per promise:\n{metrics}");
    let network = &backends[0];
    assert_eq!(network.0, "network");
    assert!(["lsm", "cgroup-socket"].contains(&network.1.as_str()), "{backends:?}");
    // The file tracepoints report EROFS on every backend. The agent keeps
    // running without one that failed to load, so only its log shows it.
    let log = agent.log();
    assert!(
        !log.contains("failed to attach a file tracepoint"),
        "every file tracepoint loads and attaches on this kernel:\n{log}"
    );

    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn require_lsm_refuses_without_the_lsm_backend() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    // Where the LSM backend works the flag is satisfied and the agent would
    // keep running; the LSM end-to-end tests cover that case.
    let mut probe = Agent::start(&containerd, &[])?;
    probe.wait_ready()?;
    let status = probe.status().await?;
    probe.stop()?;
    let lsm_in_use = status.backends.iter().all(|choice| choice.backend.as_str() == "lsm");
    if lsm_in_use {
        println!("SKIPPED: require_lsm_refuses_without_the_lsm_backend: the LSM backend is in use here");
        containerd.cleanup().await?;
        return Ok(());
    }
    let policies = containerd.dir().join("empty-policies");
    std::fs::create_dir(&policies)?;
    let bpffs = parapet_tests::bpffs::PrivateBpffs::mount(&containerd.dir().join("bpffs"))?;
    let output = std::process::Command::new(parapet_bin()?)
        .arg("agent")
        .arg("--pin-dir")
        .arg(bpffs.pin_dir())
        .arg("--require-lsm")
        .arg("--policy-dir")
        .arg(&policies)
        .arg("--cri-socket")
        .arg(containerd.socket())
        .arg("--cgroup-root")
        .arg(containerd.cgroup().v2_path())
        .args(["--metrics-address", "127.0.0.1:0", "--api-socket"])
        .arg(containerd.dir().join("api.sock"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--require-lsm is set, but the BPF LSM backend cannot be used"),
        "{stderr}"
    );
    // It refuses before attaching anything.
    assert!(!stderr.contains("kernel programs attached"), "{stderr}");
    containerd.cleanup().await?;
    Ok(())
}
