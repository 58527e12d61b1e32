//! `netprobe flood`: one process making operations that a policy refuses,
//! as fast as it can or at a given rate, for a given time or count.
//!
//! ```text
//! netprobe flood udp ADDR PORT [LIMITS]      sendto() on one unconnected UDP socket
//! netprobe flood connect ADDR PORT [LIMITS]  connect() of one non-blocking TCP socket
//! netprobe flood write PATH [LIMITS]         open(PATH, O_WRONLY|O_CREAT), closed at once
//!
//! LIMITS: --seconds S, --count N (without either: one second),
//!         --rate OPS_PER_SECOND
//! ```
//!
//! It prints one line, `attempts=N refused=N ok=N other=N seconds=S
//! cpu_seconds=S`, the last being the CPU time the process spent in the
//! loop, in user space and in the kernel. Refused calls failed with EPERM
//! (a cgroup socket hook or an LSM hook) or EROFS (a read-only mount),
//! `ok` calls succeeded, `other` calls failed otherwise. A connect socket
//! that was not refused is connecting or connected, so it is replaced by
//! a new one. A file that was opened is closed. The same calls can
//! therefore run without any policy.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// What each attempt does.
pub enum Operation {
    Udp(SocketAddr),
    Connect(SocketAddr),
    Write(String),
}

/// One flood: the operation and when to stop.
pub struct Plan {
    pub operation: Operation,
    /// Time limit; `None` means only `count` limits the flood.
    pub seconds: Option<f64>,
    pub count: Option<u64>,
    /// Attempts a second; `None` means as fast as possible.
    pub rate: Option<f64>,
}

/// Attempts between two looks at the clock.
const CHUNK: u64 = 64;

/// Parses the arguments after `flood`.
pub fn parse(args: &[&str], parse_target: impl Fn(&str, &str) -> Result<SocketAddr, String>) -> Result<Plan, String> {
    let (operation, limits) = match args {
        ["udp", addr, port, limits @ ..] => (Operation::Udp(parse_target(addr, port)?), limits),
        ["connect", addr, port, limits @ ..] => (Operation::Connect(parse_target(addr, port)?), limits),
        ["write", path, limits @ ..] => (Operation::Write((*path).to_owned()), limits),
        _ => return Err(format!("invalid flood arguments {args:?}")),
    };
    let mut plan = Plan { operation, seconds: None, count: None, rate: None };
    let mut limits = limits.iter();
    while let Some(flag) = limits.next() {
        let value = limits.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: f64 = value
            .parse()
            .ok()
            .filter(|number: &f64| number.is_finite() && *number > 0.0)
            .ok_or_else(|| format!("{flag} needs a number above 0, got {value:?}"))?;
        match *flag {
            "--seconds" => plan.seconds = Some(number),
            "--count" => plan.count = Some(number as u64),
            "--rate" => plan.rate = Some(number),
            other => return Err(format!("unknown flood option {other:?}")),
        }
    }
    if plan.seconds.is_none() && plan.count.is_none() {
        plan.seconds = Some(1.0);
    }
    Ok(plan)
}

/// CPU time of this process so far (CLOCK_PROCESS_CPUTIME_ID), in seconds.
fn cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a writable timespec; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Outcomes of a flood.
#[derive(Default)]
struct Tally {
    refused: u64,
    ok: u64,
    other: u64,
}

impl Tally {
    fn attempts(&self) -> u64 {
        self.refused + self.ok + self.other
    }

    fn add(&mut self, result: i64) {
        if result >= 0 {
            self.ok += 1;
            return;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EPERM | libc::EROFS) => self.refused += 1,
            _ => self.other += 1,
        }
    }
}

/// Runs the flood and prints its outcome line.
pub fn run(plan: &Plan) -> io::Result<()> {
    let mut attempt = Attempt::new(&plan.operation)?;
    let mut tally = Tally::default();
    let limit = plan.seconds.map_or(Duration::MAX, Duration::from_secs_f64);
    let count = plan.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    loop {
        let chunk = CHUNK.min(count - tally.attempts());
        for _ in 0..chunk {
            attempt.once(&mut tally)?;
        }
        let elapsed = started.elapsed();
        if tally.attempts() >= count || elapsed >= limit {
            break;
        }
        if let Some(rate) = plan.rate {
            // Sleep until the next attempt is due, so the pace holds on
            // average while each chunk runs at full speed.
            let due = Duration::from_secs_f64(tally.attempts() as f64 / rate);
            if let Some(ahead) = due.checked_sub(elapsed) {
                std::thread::sleep(ahead.min(limit.saturating_sub(elapsed)));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_started;
    attempt.finish();
    println!(
        "attempts={} refused={} ok={} other={} seconds={seconds:.6} cpu_seconds={cpu:.6}",
        tally.attempts(),
        tally.refused,
        tally.ok,
        tally.other
    );
    Ok(())
}

/// The state one kind of attempt keeps between calls.
enum Attempt {
    Udp { socket: OwnedFd, address: SocketAddress },
    Connect { socket: OwnedFd, address: SocketAddress },
    Write { path: CString, created: bool },
}

impl Attempt {
    fn new(operation: &Operation) -> io::Result<Self> {
        Ok(match operation {
            Operation::Udp(target) => {
                let address = SocketAddress::new(*target);
                Self::Udp { socket: socket(address.family(), libc::SOCK_DGRAM)?, address }
            }
            Operation::Connect(target) => {
                let address = SocketAddress::new(*target);
                Self::Connect { socket: socket(address.family(), libc::SOCK_STREAM)?, address }
            }
            Operation::Write(path) => Self::Write {
                path: CString::new(path.as_str()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
                created: false,
            },
        })
    }

    fn once(&mut self, tally: &mut Tally) -> io::Result<()> {
        match self {
            Self::Udp { socket, address } => {
                // SAFETY: the payload and the address are valid for the
                // lengths passed.
                let result = unsafe {
                    libc::sendto(socket.as_raw_fd(), b"ping".as_ptr().cast(), 4, 0, address.as_ptr(), address.len)
                };
                tally.add(result as i64);
            }
            Self::Connect { socket: fd, address } => {
                // SAFETY: the address is valid for the length passed.
                let result = unsafe { libc::connect(fd.as_raw_fd(), address.as_ptr(), address.len) };
                tally.add(i64::from(result));
                if result == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
                    *fd = socket(address.family(), libc::SOCK_STREAM)?;
                }
            }
            Self::Write { path, created } => {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC;
                // SAFETY: `path` is a NUL-terminated string.
                let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644) };
                tally.add(i64::from(fd));
                if fd >= 0 {
                    *created = true;
                    // SAFETY: `fd` was just opened and is closed once.
                    unsafe { libc::close(fd) };
                }
            }
        }
        Ok(())
    }

    /// Removes the file a flood without policy created.
    fn finish(self) {
        if let Self::Write { path, created: true } = self {
            // SAFETY: `path` is a NUL-terminated string.
            unsafe { libc::unlink(path.as_ptr()) };
        }
    }
}

fn socket(family: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket address in the kernel's layout, built once for every call.
struct SocketAddress {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SocketAddress {
    fn new(target: SocketAddr) -> Self {
        // SAFETY: an all-zero sockaddr_storage is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match target {
            SocketAddr::V4(v4) => {
                let address = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), address) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let address = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), address) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        Self { storage, len: len as libc::socklen_t }
    }

    fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }
}
