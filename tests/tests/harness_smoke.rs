//! Smoke test of the harness itself: two pods on the run's bridge, a TCP
//! probe between them, the cgroup facts the agent relies on, and a cleanup
//! that leaves nothing behind.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use parapet_tests::{Containerd, ExecOutput, Pod, mountinfo, network};

const LISTEN_PORT: &str = "8080";
const CLOSED_PORT: &str = "8081";
/// Time the server pod gets to bind its port after its container started.
const LISTEN_PATIENCE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn harness_smoke() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let started = Instant::now();
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    eprintln!("containerd ready with images after {:?}", started.elapsed());

    let server = Pod::run_command(
        &containerd,
        "server",
        "smoke",
        &[("app", "server")],
        &["netprobe", "listen", "tcp", LISTEN_PORT],
    )
    .await?;
    let client = Pod::run(&containerd, "client", "smoke", &[("app", "client")]).await?;
    eprintln!("both pods running after {:?}", started.elapsed());

    let server_ip = server.ip.to_string();
    let connected = connect_when_listening(&client, &server_ip).await?;
    assert_eq!(connected.stdout_trimmed(), "ok", "{connected:?}");
    assert_eq!(connected.exit_code, 0, "{connected:?}");

    let refused = client
        .exec(&["netprobe", "connect", "tcp", &server_ip, CLOSED_PORT])
        .await?;
    assert_eq!(refused.exit_code, 1, "{refused:?}");
    assert!(
        refused
            .stdout
            .starts_with(&format!("error errno={}", libc::ECONNREFUSED)),
        "{refused:?}"
    );

    for pod in [&server, &client] {
        check_container_cgroup(&containerd, pod);
    }
    check_cri_summaries(&containerd, &server, &client).await?;

    let client_pod_cgroup = client
        .cgroup_path
        .parent()
        .expect("pod cgroup")
        .to_path_buf();
    client.remove().await?;
    assert!(
        !client_pod_cgroup.exists(),
        "{} remains after pod removal",
        client_pod_cgroup.display()
    );

    let pid = containerd.pid();
    let bridge = containerd.network().bridge.clone();
    let dir = containerd.dir().to_path_buf();
    let cgroup_dirs = containerd.cgroup().paths_in_all_hierarchies()?;
    containerd.cleanup().await?;
    eprintln!("cleaned up after {:?}", started.elapsed());

    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "containerd (pid {pid}) still runs"
    );
    assert!(!network::link_exists(&bridge), "bridge {bridge} remains");
    for cgroup_dir in &cgroup_dirs {
        assert!(
            !cgroup_dir.exists(),
            "cgroup {} remains",
            cgroup_dir.display()
        );
    }
    let mounts = mountinfo::mount_points_under(&dir)?;
    assert!(
        mounts.is_empty(),
        "mounts remain under {}: {mounts:?}",
        dir.display()
    );
    assert!(!dir.exists(), "{} remains", dir.display());
    Ok(())
}

/// Connects from `client` to the server port, retrying while the server pod
/// may still be binding it.
async fn connect_when_listening(client: &Pod, server_ip: &str) -> Result<ExecOutput> {
    let deadline = Instant::now() + parapet_tests::agent::raised_limit(LISTEN_PATIENCE);
    loop {
        let output = client
            .exec(&["netprobe", "connect", "tcp", server_ip, LISTEN_PORT])
            .await?;
        if output.exit_code == 0 || Instant::now() >= deadline {
            return Ok(output);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_container_cgroup(containerd: &Containerd, pod: &Pod) {
    let inode = std::fs::metadata(&pod.cgroup_path)
        .unwrap_or_else(|error| panic!("stat {}: {error}", pod.cgroup_path.display()))
        .ino();
    assert_eq!(
        pod.cgroup_id,
        inode,
        "cgroup id of {}",
        pod.cgroup_path.display()
    );

    let leaf = pod
        .cgroup_path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    assert_eq!(leaf, pod.container_id, "cgroup leaf of pod {}", pod.name);
    assert_eq!(leaf.len(), 64, "container id {leaf:?}");
    assert!(
        leaf.chars().all(|c| c.is_ascii_hexdigit()),
        "container id {leaf:?}"
    );

    let pod_cgroup = containerd
        .cgroup()
        .v2_path()
        .join("besteffort")
        .join(format!("pod{}", pod.uid));
    assert_eq!(
        pod.cgroup_path.parent(),
        Some(pod_cgroup.as_path()),
        "parent of {}",
        pod.cgroup_path.display()
    );
}

async fn check_cri_summaries(containerd: &Containerd, server: &Pod, client: &Pod) -> Result<()> {
    let pods = containerd.cri().list_pods().await?;
    assert_eq!(pods.len(), 2, "{pods:?}");
    for pod in [server, client] {
        let info = pods
            .iter()
            .find(|info| info.id == pod.sandbox_id)
            .unwrap_or_else(|| panic!("pod {} missing from {pods:?}", pod.name));
        assert_eq!(info.name, pod.name);
        assert_eq!(info.namespace, "smoke");
        assert_eq!(info.uid, pod.uid);
        assert_eq!(info.labels.get("app"), Some(&pod.name));
        assert!(info.ready, "{info:?}");
    }

    let containers = containerd.cri().list_workload_containers().await?;
    assert_eq!(containers.len(), 2, "{containers:?}");
    for pod in [server, client] {
        let info = containers
            .iter()
            .find(|info| info.id == pod.container_id)
            .unwrap_or_else(|| panic!("container of pod {} missing from {containers:?}", pod.name));
        assert_eq!(info.pod_sandbox_id, pod.sandbox_id);
        assert_eq!(info.name, "main");
        assert_eq!(info.labels.get("app"), Some(&pod.name));
        assert!(info.running, "{info:?}");
    }
    Ok(())
}
