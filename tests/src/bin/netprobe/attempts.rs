//! `netprobe attempts STOP WRITE ADDR:PORT...`: a workload that keeps
//! trying, in a tight loop, a TCP connect to each target and the creation
//! of the file WRITE, until the file STOP exists.
//!
//! It prints a line only when the outcome for one target changes, so that
//! thousands of attempts a second leave a short record:
//!
//! ```text
//! change NAME OUTCOME FIRST_NS PREVIOUS_LAST_NS
//! tally NOW_NS NAME OUTCOME=COUNT...      once a second, counts since the start
//! end NAME OUTCOME LAST_NS                once, when STOP appears
//! ```
//!
//! NAME is `tcp:ADDR:PORT` or `write:PATH`. OUTCOME is `ok`, `eperm`,
//! `erofs`, `timeout` or `errno=N`. Times are CLOCK_REALTIME nanoseconds taken just
//! before the system call: FIRST_NS is the first attempt with the new
//! outcome, PREVIOUS_LAST_NS the last one with the old (0 at the start).

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Bound of each connect, so that a dropped SYN cannot stall the loop.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between rounds, which keeps the loop from taking a whole core.
const PAUSE: Duration = Duration::from_micros(500);
const TALLY_INTERVAL: Duration = Duration::from_secs(1);

enum Target {
    Connect(SocketAddr),
    Write(String),
}

struct Track {
    name: String,
    target: Target,
    outcome: Option<String>,
    last_ns: u128,
    counts: BTreeMap<String, u64>,
}

pub fn run(stop: &str, write: &str, peers: &[&str]) -> Result<(), String> {
    let mut tracks = Vec::new();
    for peer in peers {
        let address: SocketAddr = peer
            .parse()
            .map_err(|_| format!("invalid ADDR:PORT {peer:?}"))?;
        tracks.push(Track::new(
            format!("tcp:{address}"),
            Target::Connect(address),
        ));
    }
    tracks.push(Track::new(
        format!("write:{write}"),
        Target::Write(write.to_owned()),
    ));
    let mut last_tally = Instant::now();
    while !Path::new(stop).exists() {
        for track in &mut tracks {
            let started = now_ns();
            let outcome = match &track.target {
                Target::Connect(address) => connect(*address),
                Target::Write(path) => create(path),
            };
            track.record(outcome, started);
        }
        if last_tally.elapsed() >= TALLY_INTERVAL {
            last_tally = Instant::now();
            let now = now_ns();
            for track in &tracks {
                let counts: Vec<String> = track
                    .counts
                    .iter()
                    .map(|(outcome, count)| format!("{outcome}={count}"))
                    .collect();
                println!("tally {now} {} {}", track.name, counts.join(" "));
            }
        }
        std::thread::sleep(PAUSE);
    }
    for track in &tracks {
        println!(
            "end {} {} {}",
            track.name,
            track.outcome.as_deref().unwrap_or("none"),
            track.last_ns
        );
    }
    io::stdout().flush().map_err(|error| error.to_string())
}

impl Track {
    fn new(name: String, target: Target) -> Self {
        Self {
            name,
            target,
            outcome: None,
            last_ns: 0,
            counts: BTreeMap::new(),
        }
    }

    fn record(&mut self, outcome: String, started_ns: u128) {
        if self.outcome.as_deref() != Some(outcome.as_str()) {
            println!(
                "change {} {outcome} {started_ns} {}",
                self.name, self.last_ns
            );
            self.outcome = Some(outcome.clone());
        }
        self.last_ns = started_ns;
        *self.counts.entry(outcome).or_default() += 1;
    }
}

fn connect(address: SocketAddr) -> String {
    match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
        Ok(stream) => {
            reset_on_close(&stream);
            "ok".to_owned()
        }
        Err(error) => name_error(&error),
    }
}

/// Makes closing send a reset, so that thousands of connections a second
/// leave no TIME_WAIT entries to run out of local ports with.
pub fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value points at a live `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn create(path: &str) -> String {
    match std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
    {
        Ok(_) => "ok".to_owned(),
        Err(error) => name_error(&error),
    }
}

fn name_error(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => "eperm".to_owned(),
        Some(libc::EROFS) => "erofs".to_owned(),
        Some(errno) => format!("errno={errno}"),
        None if error.kind() == io::ErrorKind::TimedOut => "timeout".to_owned(),
        None => format!("errno={}", libc::EIO),
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}
