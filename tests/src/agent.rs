//! The real `parapet` binary run as an agent against a test containerd, with
//! its own policy directory, API socket and metrics port, and helpers to
//! read what it reports: JSON event lines, logs, `/metrics`, status and
//! `parapet tail`.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use parapet::{event::Event, status::Status};

use crate::{bpffs::PrivateBpffs, containerd::Containerd};

/// How long `wait_for` helpers wait before they fail, unless
/// `PARAPET_TEST_WAIT_SECONDS` is set (see [`wait_limit`]).
pub const WAIT: Duration = Duration::from_secs(60);

/// Returns how long `wait_for` helpers wait: `PARAPET_TEST_WAIT_SECONDS`
/// when set to a whole number, else [`WAIT`]. `cargo xtask vm-test` raises
/// it, because under QEMU's software emulation the kernel takes about 20 s
/// to verify the agent's programs.
pub fn wait_limit() -> Duration {
    std::env::var("PARAPET_TEST_WAIT_SECONDS")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .map_or(WAIT, Duration::from_secs)
}

/// Returns `limit`, or [`wait_limit`] where that is raised above [`WAIT`]
/// and longer. In the guests, which run side by side on two cores, a
/// virtual CPU at times makes no progress for 26 to 52 s, and the kernel
/// reports a soft lockup. So there every deadline of the harness is as
/// long as the waits for the agent.
pub fn raised_limit(limit: Duration) -> Duration {
    let raised = wait_limit();
    if raised > WAIT { limit.max(raised) } else { limit }
}

/// `--removed-workload-retention` of test agents, short so that tests see
/// a removed pod's counters go.
pub const REMOVED_RETENTION: Duration = Duration::from_secs(2);

/// Returns the path of the `parapet` binary: `$PARAPET_BIN`, else the one
/// next to the test binary's `deps` folder, else the one next to the
/// running program (as for `parapet-bench` in `target/release`).
pub fn parapet_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PARAPET_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("test binary has no parent folder")?;
    let candidates = [dir.parent().map(|up| up.join("parapet")), Some(dir.join("parapet"))];
    let candidates: Vec<PathBuf> = candidates.into_iter().flatten().collect();
    if let Some(found) = candidates.iter().find(|candidate| candidate.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "parapet binary not found at {}; build it or set PARAPET_BIN",
        candidates.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(" or ")
    )
}

/// A running agent. Killed, by its pid, when dropped; its pinned kernel
/// objects go with it, since they live in a bpffs of its own.
pub struct Agent {
    child: Option<Child>,
    pub dir: PathBuf,
    pub policy_dir: PathBuf,
    pub api_socket: PathBuf,
    pub metrics_address: SocketAddr,
    bpffs: PrivateBpffs,
    /// Starts of the agent so far; each writes its own output files.
    runs: u32,
    /// The CRI socket the agent connects to: containerd's, unless the test
    /// set another with [`Agent::start_with_cri`].
    cri_socket: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Agent {
    /// Writes `policies` (file name, YAML) into a fresh policy directory and
    /// starts the agent on `containerd`'s socket and cgroup.
    pub fn start(containerd: &Containerd, policies: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(containerd, |policy_dir| {
            for (name, yaml) in policies {
                fs::write(policy_dir.join(name), yaml)?;
            }
            Ok(())
        })
    }

    /// Creates a fresh policy directory, lets `fill` write into it, and
    /// starts the agent on `containerd`'s socket and cgroup.
    pub fn start_with(containerd: &Containerd, fill: impl FnOnce(&Path) -> Result<()>) -> Result<Self> {
        Self::start_with_cri(containerd, containerd.socket(), fill)
    }

    /// Like [`Agent::start_with`], with the agent asking `cri_socket`, such
    /// as a proxy the test controls, for pods and containers.
    pub fn start_with_cri(
        containerd: &Containerd,
        cri_socket: &Path,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Self> {
        let dir = containerd.dir().join(format!("agent-{}", unique_suffix()));
        let policy_dir = dir.join("policies");
        fs::create_dir_all(&policy_dir)?;
        fill(&policy_dir)?;
        let mut agent = Self {
            child: None,
            api_socket: dir.join("api.sock"),
            metrics_address: free_loopback_port()?,
            bpffs: PrivateBpffs::mount(&dir.join("bpffs"))?,
            runs: 1,
            cri_socket: cri_socket.to_owned(),
            stdout_path: dir.join("stdout.jsonl"),
            stderr_path: dir.join("stderr.log"),
            policy_dir,
            dir,
        };
        agent.spawn(containerd, &parapet_bin()?)?;
        Ok(agent)
    }

    /// Returns the bpffs folder the agent pins its kernel objects in.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.pin_dir()
    }

    /// Starts the agent again on the same pin directory, policies, sockets
    /// and port, running `binary`; the agent must have exited. The new
    /// run writes fresh output files, which `log` and `events` then read.
    pub fn restart(&mut self, containerd: &Containerd, binary: &Path) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait()?.is_none() {
                bail!("restart of an agent that still runs");
            }
            self.child = None;
        }
        self.runs += 1;
        self.stdout_path = self.dir.join(format!("stdout-{}.jsonl", self.runs));
        self.stderr_path = self.dir.join(format!("stderr-{}.log", self.runs));
        self.spawn(containerd, binary)
    }

    /// Makes the next [`Agent::restart`] ask `cri_socket` for pods and
    /// containers.
    pub fn use_cri_socket(&mut self, cri_socket: &Path) {
        self.cri_socket = cri_socket.to_owned();
    }

    /// Ends the agent with SIGKILL, as a crash would, and leaves its pinned
    /// kernel objects in place.
    pub fn kill_keeping_pins(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn spawn(&mut self, containerd: &Containerd, binary: &Path) -> Result<()> {
        let stdout = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stdout_path)?;
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)?;
        let child = Command::new(binary)
            .arg("agent")
            .arg("--pin-dir")
            .arg(self.bpffs.pin_dir())
            .arg("--policy-dir")
            .arg(&self.policy_dir)
            .arg("--cri-socket")
            .arg(&self.cri_socket)
            .arg("--cgroup-root")
            .arg(containerd.cgroup().v2_path())
            .arg("--metrics-address")
            .arg(self.metrics_address.to_string())
            .arg("--api-socket")
            .arg(&self.api_socket)
            .arg("--node-name")
            .arg("test-node")
            .args(["--removed-workload-retention", &REMOVED_RETENTION.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("failed to start the parapet agent")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Reads index 0 of the pinned array map `name`, of the one map layout
    /// pinned.
    pub fn pinned_counter(&self, name: &str) -> Result<u32> {
        let mut layouts = fs::read_dir(self.pin_dir())?
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("maps-"));
        let layout = layouts.next().context("no pinned maps")?;
        if let Some(other) = layouts.next() {
            bail!("more than one map layout is pinned: {:?} and {:?}", layout.path(), other.path());
        }
        let path = layout.path().join(name);
        let data = aya::maps::MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let array = aya::maps::Array::<_, u32>::try_from(aya::maps::Map::Array(data))?;
        Ok(array.get(&0, 0)?)
    }

    /// Replaces a policy file in place.
    pub fn write_policy(&self, name: &str, yaml: &str) -> Result<()> {
        let path = self.policy_dir.join(name);
        let temporary = self.policy_dir.join(format!(".{name}.tmp"));
        fs::write(&temporary, yaml)?;
        fs::rename(&temporary, &path)?;
        Ok(())
    }

    /// Returns the agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Events printed on stdout so far.
    pub fn events(&self) -> Result<Vec<Event>> {
        let text = fs::read_to_string(&self.stdout_path)?;
        // The agent may be writing the last line as it is read; only whole
        // lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).with_context(|| format!("invalid event line: {line}"))
            })
            .collect()
    }

    /// Waits until the log contains a line with all of `needles`.
    pub fn wait_for_log(&mut self, needles: &[&str]) -> Result<()> {
        let started = Instant::now();
        loop {
            if self
                .log()
                .lines()
                .any(|line| needles.iter().all(|n| line.contains(n)))
            {
                return Ok(());
            }
            self.check_alive()?;
            if started.elapsed() > wait_limit() {
                bail!(
                    "agent log has no line with {needles:?} after {:?}:\n{}",
                    wait_limit(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent reports the container `container_id` enforced.
    pub fn wait_enforced(&mut self, container_id: &str) -> Result<()> {
        self.wait_for_log(&["workload enforced", container_id])
    }

    /// Waits until an event matches `predicate`, and returns it.
    pub fn wait_for_event(&mut self, predicate: impl Fn(&Event) -> bool) -> Result<Event> {
        let started = Instant::now();
        loop {
            if let Some(event) = self.events()?.into_iter().find(&predicate) {
                return Ok(event);
            }
            self.check_alive()?;
            if started.elapsed() > wait_limit() {
                bail!(
                    "no matching event after {:?}; events: {:#?}",
                    wait_limit(),
                    self.events()?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the API socket exists, which the agent creates last.
    pub fn wait_ready(&mut self) -> Result<()> {
        self.wait_for_log(&["agent started"])
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("the agent exited with {status}; its log:\n{}", self.log());
        }
        Ok(())
    }

    /// Fetches `/metrics` over a plain HTTP/1.1 request.
    pub fn metrics(&self) -> Result<String> {
        http_get(self.metrics_address, "/metrics")
    }

    /// Asks the agent for its status over the API socket.
    pub async fn status(&self) -> Result<Status> {
        parapet::tail::status(&self.api_socket).await
    }

    /// Stops the agent with SIGTERM, waits for it, and removes its pinned
    /// kernel objects, which detaches its programs.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_keeping_pins()?;
        self.bpffs.unmount()
    }

    /// Stops the agent with SIGTERM and waits for it; its programs stay
    /// attached through their pins.
    pub fn stop_keeping_pins(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this fixture started and
            // has not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let started = Instant::now();
            while child.try_wait()?.is_none() {
                if started.elapsed() > raised_limit(Duration::from_secs(10)) {
                    child.kill()?;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("parapet-tests: agent log:\n{}", self.log());
        }
        if let Err(error) = self.bpffs.unmount() {
            eprintln!("parapet-tests: {error:#}");
        }
    }
}

/// `parapet tail` started as a child process, its stdout in a file.
pub struct Tail {
    child: Child,
    output: PathBuf,
}

impl Tail {
    pub fn start(agent: &Agent, args: &[&str]) -> Result<Self> {
        let output = agent.dir.join(format!("tail-{}.out", unique_suffix()));
        let file = fs::File::create(&output)?;
        let child = Command::new(parapet_bin()?)
            .arg("tail")
            .arg("--api-socket")
            .arg(&agent.api_socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::inherit())
            .spawn()
            .context("failed to start parapet tail")?;
        Ok(Self { child, output })
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits until the output has a line with all of `needles`, returning it.
    pub fn wait_for_line(&mut self, needles: &[&str]) -> Result<String> {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .output()
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "parapet tail exited with {status}; output:\n{}",
                    self.output()
                );
            }
            if started.elapsed() > wait_limit() {
                bail!(
                    "parapet tail printed no line with {needles:?}:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:09}")
}

/// Returns a loopback address with a port that was free a moment ago.
pub fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Sends a minimal HTTP/1.1 GET to a server on loopback and returns the body.
pub fn http_get(address: SocketAddr, path: &str) -> Result<String> {
    let timeout = raised_limit(Duration::from_secs(5));
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("failed to connect to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without a header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} from {address} failed: {head}");
    }
    Ok(body.to_owned())
}

/// Returns the value of the series `name{labels}` in a Prometheus text page,
/// where `labels` must all appear among the series' labels.
pub fn metric_value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
        .next()
}

/// Returns how many BPF programs are attached directly to the cgroup `dir`
/// on the connect and UDP sendmsg hooks, IPv4 and IPv6.
/// Waits until no socket program is attached to the cgroup `dir`. The
/// kernel detaches a link whose last pin and descriptor went away from a
/// work queue, a moment later.
pub fn wait_socket_programs_detached(dir: &Path) -> Result<()> {
    let started = Instant::now();
    loop {
        let attached = socket_programs_attached(dir)?;
        if attached == 0 {
            return Ok(());
        }
        let limit = raised_limit(Duration::from_secs(10));
        if started.elapsed() > limit {
            bail!("{attached} socket programs are still attached to {} after {limit:?}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn socket_programs_attached(dir: &Path) -> Result<u32> {
    /// `BPF_PROG_QUERY` and the attach types, from `include/uapi/linux/bpf.h`.
    const BPF_PROG_QUERY: libc::c_long = 16;
    const ATTACH_TYPES: [u32; 4] = [10, 11, 14, 15];
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_count: u32,
        padding: [u32; 9],
    }
    let cgroup = fs::File::open(dir).with_context(|| format!("failed to open {}", dir.display()))?;
    let mut total = 0;
    for attach_type in ATTACH_TYPES {
        let mut attr = QueryAttr {
            target_fd: std::os::fd::AsRawFd::as_raw_fd(&cgroup) as u32,
            attach_type,
            ..QueryAttr::default()
        };
        // SAFETY: `attr` is a zeroed bpf_attr prefix for BPF_PROG_QUERY with
        // no id buffer, so the kernel only writes `prog_count`.
        let result = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr as *mut QueryAttr, size_of::<QueryAttr>())
        };
        if result != 0 {
            bail!("BPF_PROG_QUERY on {} failed: {}", dir.display(), std::io::Error::last_os_error());
        }
        total += attr.prog_count;
    }
    Ok(total)
}
