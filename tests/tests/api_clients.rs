//! The agent's API socket against clients that misbehave: idle, silent,
//! sending garbage or an endless line, following and never reading, too
//! many at once, and not root. None may stop the agent, block `parapet
//! status`, or make the agent's memory grow without bound.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::fd::AsRawFd as _,
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use parapet::api::{MAX_REQUEST_BYTES, REQUEST_TIMEOUT, WRITE_TIMEOUT};
use parapet::api_admission::MAX_CLIENTS;
use parapet_tests::{
    Containerd, Pod,
    agent::{Agent, Tail, parapet_bin, wait_limit},
};

/// Most time `parapet status` may take while hostile clients are connected.
const STATUS_BOUND: Duration = Duration::from_secs(2);
/// Most the agent's resident memory may grow over the whole test.
const RSS_GROWTH_BOUND: u64 = 32 << 20;
const NOBODY: u32 = 65534;

fn resident_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

/// Runs `parapet status`, as `uid` when given, and returns whether it
/// succeeded, its output and how long it took.
fn status_cli(binary: &Path, socket: &Path, uid: Option<u32>) -> Result<(bool, String, Duration)> {
    let mut command = Command::new(binary);
    command.args(["status", "--api-socket"]).arg(socket);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let started = Instant::now();
    let output = command.output().context("failed to run parapet status")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text, started.elapsed()))
}

/// Returns the start of what waits unread on `stream`, without reading it.
fn peek_unread(stream: &UnixStream) -> Result<String> {
    let mut buffer = [0u8; 4096];
    // SAFETY: recv writes at most `buffer.len()` bytes into the live local
    // buffer, and the descriptor stays open for the call.
    let count = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if count < 0 {
        let error = std::io::Error::last_os_error();
        ensure!(
            error.kind() == std::io::ErrorKind::WouldBlock,
            "peeking at the API socket failed: {error}"
        );
        return Ok(String::new());
    }
    Ok(String::from_utf8_lossy(&buffer[..count as usize]).into_owned())
}

fn read_reply(stream: &mut UnixStream) -> Result<String> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT + Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[tokio::test]
async fn hostile_api_clients_are_bounded() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let mut agent = Agent::start(&containerd, &[])?;
    agent.wait_ready()?;
    let pid = agent.pid().context("the agent has no pid")?;
    let socket = agent.api_socket.clone();
    let binary = parapet_bin()?;
    let rss_before = resident_bytes(pid)?;

    // Below the cap: clients that hold their connection and send nothing,
    // followers that never read, garbage, and a line without an end.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(UnixStream::connect(&socket)?);
    }
    for _ in 0..10 {
        let mut follower = UnixStream::connect(&socket)?;
        follower.write_all(b"{\"follow\": {\"include_allowed\": true}}\n")?;
        held.push(follower);
    }
    let mut garbage_replies = Vec::new();
    for index in 0..10u8 {
        let mut client = UnixStream::connect(&socket)?;
        let bytes: Vec<u8> = (0..200u8)
            .map(|byte| byte.wrapping_mul(31).wrapping_add(index))
            .collect();
        // A newline among the bytes ends the request early, and the agent
        // closes the connection after its reply, so later writes may fail.
        let _ = client.write_all(&bytes);
        let _ = client.write_all(b"\n");
        garbage_replies.push(read_reply(&mut client)?);
    }
    for reply in &garbage_replies {
        ensure!(
            reply.contains("\"error\""),
            "garbage got no error reply: {reply:?}"
        );
    }
    let endless = std::thread::spawn({
        let socket = socket.clone();
        move || -> Result<(String, usize)> {
            let mut client = UnixStream::connect(&socket)?;
            client.set_write_timeout(Some(Duration::from_secs(10)))?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            // The agent stops reading after its limit and closes the
            // connection, which makes a write fail.
            while sent < 64 << 20 {
                match client.write(&chunk) {
                    Ok(written) => sent += written,
                    Err(_) => break,
                }
            }
            Ok((read_reply(&mut client).unwrap_or_default(), sent))
        }
    });
    let (endless_reply, endless_sent) = endless.join().expect("endless-line thread panicked")?;
    println!("endless line: the agent took {endless_sent} bytes before it closed the connection");
    ensure!(
        endless_reply.contains(&format!("request longer than {MAX_REQUEST_BYTES} bytes")),
        "reply to an endless line: {endless_reply:?}"
    );
    let (ok, text, took) = status_cli(&binary, &socket, None)?;
    println!("parapet status with 20 clients holding connections: {took:?}");
    ensure!(ok, "parapet status failed beside hostile clients: {text}");
    ensure!(took < STATUS_BOUND, "parapet status took {took:?}");

    // Past the cap: the extra clients receive an error line at once.
    let mut extra = Vec::new();
    for _ in 0..MAX_CLIENTS + 40 {
        extra.push(UnixStream::connect(&socket)?);
    }
    let (ok, text, took) = status_cli(&binary, &socket, None)?;
    ensure!(!ok, "parapet status got through a full agent: {text}");
    ensure!(
        text.contains("too many clients"),
        "parapet status output: {text}"
    );
    ensure!(
        took < STATUS_BOUND,
        "a refused parapet status took {took:?}"
    );
    let mut refused = 0;
    for client in &mut extra {
        client.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut reply = String::new();
        if BufReader::new(&*client).read_line(&mut reply).is_ok()
            && reply.contains("too many clients")
        {
            refused += 1;
        }
    }
    println!(
        "clients refused past the cap of {MAX_CLIENTS}: {refused} of {}",
        extra.len()
    );
    ensure!(
        refused >= 40,
        "only {refused} clients past the cap were refused"
    );
    agent.wait_for_log(&["refused an API client: too many clients are connected"])?;

    // Clients that send nothing are dropped after the request timeout, and
    // the slots come back.
    std::thread::sleep(REQUEST_TIMEOUT + Duration::from_secs(1));
    for client in extra.iter_mut().take(5) {
        let mut rest = String::new();
        client.set_read_timeout(Some(Duration::from_secs(2)))?;
        let _ = client.read_to_string(&mut rest);
        ensure!(
            rest.is_empty()
                || rest.contains("no request line within")
                || rest.contains("too many clients"),
            "{rest:?}"
        );
    }
    drop(extra);
    let (ok, text, took) = status_cli(&binary, &socket, None)?;
    ensure!(
        ok,
        "parapet status failed after idle clients timed out: {text}"
    );
    ensure!(took < STATUS_BOUND, "parapet status took {took:?}");

    // Not root: the socket's mode stops the client first.
    let (ok, text, _) = status_cli(&binary, &socket, Some(NOBODY))?;
    ensure!(!ok, "uid {NOBODY} read the status: {text}");
    ensure!(
        text.contains("Permission denied"),
        "uid {NOBODY} through mode 0600: {text}"
    );
    // With the mode opened, SO_PEERCRED stops it.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    let (ok, text, _) = status_cli(&binary, &socket, Some(NOBODY))?;
    ensure!(!ok, "uid {NOBODY} read the status: {text}");
    ensure!(
        text.contains("serves root (uid 0) only"),
        "uid {NOBODY} through mode 0666: {text}"
    );
    agent.wait_for_log(&[
        "refused an API client that is not root",
        &format!("uid={NOBODY}"),
    ])?;

    drop(held);
    let (ok, text, _) = status_cli(&binary, &socket, None)?;
    ensure!(ok, "parapet status failed at the end: {text}");
    let rss_after = resident_bytes(pid)?;
    println!("agent resident memory: {rss_before} bytes before, {rss_after} after");
    ensure!(
        rss_after < rss_before + RSS_GROWTH_BOUND,
        "resident memory grew from {rss_before} to {rss_after} bytes"
    );
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}

/// Lets the `client` pod reach nothing, so that each of its sends is a
/// violation event.
const DENY_ALL: &str = "apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: client-egress
spec:
  selector:
    namespace: clinic
    matchLabels: {app: client}
  mode: enforce
  network:
    egress: []
";

#[tokio::test]
async fn follower_that_never_reads_is_dropped() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
    let target = Pod::run(&containerd, "target", "clinic", &[("app", "target")]).await?;
    let client = Pod::run(&containerd, "client", "clinic", &[("app", "client")]).await?;
    let mut agent = Agent::start(&containerd, &[("client.yaml", DENY_ALL)])?;
    agent.wait_ready()?;
    agent.wait_enforced(&client.container_id)?;
    let pid = agent.pid().context("the agent has no pid")?;
    let binary = parapet_bin()?;
    let rss_before = resident_bytes(pid)?;

    let mut stuck = UnixStream::connect(&agent.api_socket)?;
    stuck.write_all(b"{\"follow\": {}}\n")?;
    let mut reader = Tail::start(&agent, &["--output", "json"])?;
    // Both clients subscribe right after they connect. A connect that the
    // policy denies, repeated until both followers have its event, shows
    // that they did.
    let target_ip = target.ip.to_string();
    let marker = "\"port\":4711";
    let started = Instant::now();
    loop {
        client.exec(&["netprobe", "connect", "tcp", &target_ip, "4711"]).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if reader.output().contains(marker) && peek_unread(&stuck)?.contains(marker) {
            break;
        }
        ensure!(
            started.elapsed() < wait_limit(),
            "the followers got no event in {:?}; the stuck one has {:?} unread, tail printed:\n{}",
            wait_limit(),
            peek_unread(&stuck)?,
            reader.output()
        );
    }
    let flood = client
        .exec(&["netprobe", "flood", "udp", &target_ip, "9000", "--count", "20000"])
        .await?;
    println!("flood: {}", flood.stdout_trimmed());
    reader.wait_for_line(&["\"verdict\":\"deny\""])?;
    let (ok, text, took) = status_cli(&binary, &agent.api_socket, None)?;
    ensure!(ok, "parapet status failed beside a stuck follower: {text}");
    ensure!(took < STATUS_BOUND, "parapet status took {took:?}");

    // The agent gives up on the stuck client after the write timeout: what
    // it had sent can be read, and then the stream ends.
    std::thread::sleep(WRITE_TIMEOUT + Duration::from_secs(2));
    stuck.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut received = Vec::new();
    let read = stuck.read_to_end(&mut received);
    println!(
        "the stuck follower had {} bytes waiting when the agent closed it",
        received.len()
    );
    ensure!(
        read.is_ok(),
        "the agent did not close the stuck follower: {read:?}"
    );
    ensure!(
        !received.is_empty(),
        "the stuck follower received nothing before it was dropped"
    );

    let rss_after = resident_bytes(pid)?;
    println!("agent resident memory: {rss_before} bytes before, {rss_after} after");
    ensure!(
        rss_after < rss_before + RSS_GROWTH_BOUND,
        "resident memory grew from {rss_before} to {rss_after} bytes"
    );
    drop(reader);
    agent.stop()?;
    containerd.cleanup().await?;
    Ok(())
}
