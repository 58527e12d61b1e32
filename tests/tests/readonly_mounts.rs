use anyhow::Result;
use parapet_tests::{Containerd, Pod};

#[tokio::test]
async fn explore() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let pod = Pod::run(&containerd, "a", "ro", &[("app", "a")]).await?;
    println!("{}", std::fs::read_to_string(format!("/proc/{}/mountinfo", pod.pid))?);
    let out = pod.exec(&["sh", "-c", "ls -la / /tmp /etc; id; cat /proc/self/status | grep Cap"]).await?;
    println!("{}\n{}", out.stdout, out.stderr);
    containerd.cleanup().await?;
    Ok(())
}
