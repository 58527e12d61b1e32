//! `netprobe bench OP COUNT [OP COUNT]...`: runs COUNT system call
//! operations of each kind OP in turn and prints, for each, the mean CPU
//! time per operation in nanoseconds. It is measured inside this process,
//! so starting the process (and, in a pod, the runtime's exec) does not
//! count. CPU time (this process's, plus that of the children it waited
//! for) leaves out the time other processes ran in between, which on a
//! shared machine swamps the overhead being measured. The kernel programs
//! that hook these calls run in the calling process, so their cost is in
//! its CPU time. The wall-clock time is printed too.
//!
//! ```text
//! open        open(2) read-only and close(2) of the netprobe binary
//! write-1m    write(2) of 1 MiB blocks to a file under /tmp
//! write-512   write(2) of 512-byte blocks to a file under /tmp
//! stat        stat(2) of the netprobe binary
//! connect     TCP connect to a listener on 127.0.0.1:9100, accept, close both
//! udp         sendto(2) of 64 bytes to 127.0.0.1:9101 on an unconnected socket
//! exec        fork(2), execve(2) of /bin/true (static busybox), waitpid(2)
//! ```
//!
//! Before each timed loop, a tenth of COUNT operations warm the caches up.
//! The output is one line per OP, `OP ns_per_op=N wall_ns_per_op=M`; a failed operation
//! prints `error OP: ...` and exits 1.
//!
//! `netprobe bench first-connect ADDR PORT` makes one TCP connect and
//! prints `first NS OUTCOME`, NS being the CLOCK_REALTIME nanoseconds just
//! before the call and OUTCOME `ok`, `eperm` or `errno=N`, to time how
//! soon after a container start its first operation runs and whether a
//! policy refused it.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::Path,
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Loopback ports of the `connect` and `udp` operations. Each pod has its
/// own network namespace, so fixed ports cannot collide between pods.
pub const TCP_PORT: u16 = 9100;
pub const UDP_PORT: u16 = 9101;
/// The file that `open` and `stat` use: always present in the test image.
const EXISTING_FILE: &str = "/usr/local/bin/netprobe";
/// A static program that exits at once. Busybox's `true` applet is the
/// smallest static program in the test image.
const TINY_PROGRAM: &str = "/bin/true";
const WRITE_FILE: &str = "/tmp/netprobe-bench-write";
/// The write loops start over at offset 0 past this size, so that the file
/// stays in the page cache and the disk never fills.
const WRITE_WRAP: u64 = 16 << 20;

pub fn run(args: &[&str]) -> ExitCode {
    let outcome = match args {
        ["first-connect", addr, port] => first_connect(addr, port),
        pairs if !pairs.is_empty() && pairs.len() % 2 == 0 => measure_all(pairs),
        _ => Err(format!("invalid arguments {args:?}, expected OP COUNT [OP COUNT]...")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("error {message}");
            ExitCode::FAILURE
        }
    }
}

/// Measures each `OP COUNT` pair in turn and prints its line.
fn measure_all(pairs: &[&str]) -> Result<(), String> {
    for pair in pairs.chunks(2) {
        let (op, count) = (pair[0], pair[1]);
        let count = match count.parse::<u64>() {
            Ok(count) if count > 0 => count,
            _ => return Err(format!("invalid COUNT {count:?} for {op}, expected a whole number above 0")),
        };
        let (cpu_ns, wall_ns) = measure(op, count)?;
        println!("{op} ns_per_op={cpu_ns:.1} wall_ns_per_op={wall_ns:.1}");
    }
    Ok(())
}

/// Runs the warm-up and the timed loop of `op`; returns CPU and wall-clock
/// ns per operation.
fn measure(op: &str, count: u64) -> Result<(f64, f64), String> {
    let mut operation = Operation::prepare(op).map_err(|error| format!("{op}: setup failed: {error}"))?;
    let warm_up = (count / 10).max(1);
    for _ in 0..warm_up {
        operation.once().map_err(|error| format!("{op}: {error}"))?;
    }
    let cpu_started = cpu_time_ns();
    let started = Instant::now();
    for _ in 0..count {
        operation.once().map_err(|error| format!("{op}: {error}"))?;
    }
    let wall_ns = started.elapsed().as_nanos() as f64;
    let cpu_ns = (cpu_time_ns() - cpu_started) as f64;
    Ok((cpu_ns / count as f64, wall_ns / count as f64))
}

/// Returns the CPU time of this process (CLOCK_PROCESS_CPUTIME_ID) plus
/// that of its waited-for children (getrusage(2) RUSAGE_CHILDREN), in ns.
fn cpu_time_ns() -> u128 {
    let mut own = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `own` is a writable timespec; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut own) };
    // SAFETY: `children` is a writable rusage.
    let mut children: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut children) };
    let timeval_ns = |time: libc::timeval| time.tv_sec as u128 * 1_000_000_000 + time.tv_usec as u128 * 1_000;
    own.tv_sec as u128 * 1_000_000_000
        + own.tv_nsec as u128
        + timeval_ns(children.ru_utime)
        + timeval_ns(children.ru_stime)
}

enum Operation {
    Open(CString),
    Write { file: File, block: Vec<u8>, written: u64 },
    Stat(CString),
    /// Each connect is accepted at once in the same thread: on loopback the
    /// handshake is complete when `connect` returns. A separate accepting
    /// thread could fall behind, and a full accept queue makes the kernel
    /// drop the handshake and retry it a second later.
    Connect { listener: TcpListener, address: SocketAddr },
    Udp { socket: UdpSocket, target: SocketAddr, _receiver: UdpSocket },
    Exec(CString),
}

impl Operation {
    fn prepare(op: &str) -> io::Result<Self> {
        let loopback = Ipv4Addr::LOCALHOST;
        Ok(match op {
            "open" => Self::Open(c_path(EXISTING_FILE)),
            "stat" => Self::Stat(c_path(EXISTING_FILE)),
            "write-1m" => Self::write_blocks(1 << 20)?,
            "write-512" => Self::write_blocks(512)?,
            "connect" => {
                let listener = TcpListener::bind(SocketAddrV4::new(loopback, TCP_PORT))?;
                let address = listener.local_addr()?;
                Self::Connect { listener, address }
            }
            "udp" => {
                // The receiver is never read. Once its buffer is full, the
                // kernel drops each datagram, the same way in every run.
                let receiver = UdpSocket::bind(SocketAddrV4::new(loopback, UDP_PORT))?;
                let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
                Self::Udp { socket, target: receiver.local_addr()?, _receiver: receiver }
            }
            "exec" => Self::Exec(c_path(TINY_PROGRAM)),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unknown operation {op:?}"))),
        })
    }

    fn write_blocks(size: usize) -> io::Result<Self> {
        let file = File::create(WRITE_FILE)?;
        Ok(Self::Write { file, block: vec![0x5a; size], written: 0 })
    }

    fn once(&mut self) -> io::Result<()> {
        match self {
            Self::Open(path) => {
                // SAFETY: `path` is a valid C string; the descriptor is ours to close.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` was opened above and is closed once.
                unsafe { libc::close(fd) };
            }
            Self::Write { file, block, written } => {
                if *written >= WRITE_WRAP {
                    // SAFETY: lseek(2) on a descriptor this process owns.
                    unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET) };
                    *written = 0;
                }
                file.write_all(block)?;
                *written += block.len() as u64;
            }
            Self::Stat(path) => {
                // SAFETY: `path` is a valid C string and `status` a writable stat buffer.
                let mut status: libc::stat = unsafe { std::mem::zeroed() };
                if unsafe { libc::stat(path.as_ptr(), &mut status) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Self::Connect { listener, address } => {
                let stream = TcpStream::connect(*address)?;
                let (accepted, _) = listener.accept()?;
                crate::attempts::reset_on_close(&stream);
                drop(stream);
                drop(accepted);
            }
            Self::Udp { socket, target, .. } => {
                socket.send_to(&[0u8; 64], *target)?;
            }
            Self::Exec(program) => fork_exec_wait(program)?,
        }
        Ok(())
    }
}

fn c_path(path: &str) -> CString {
    CString::new(Path::new(path).as_os_str().as_bytes()).expect("constant paths hold no NUL byte")
}

fn fork_exec_wait(program: &CString) -> io::Result<()> {
    let argv = [program.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: this process has no other threads, so the
    // child may call execve and _exit, which are async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: `argv` and `envp` are NULL-terminated arrays of C strings
        // that live until execve replaces the process image.
        unsafe {
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(io::Error::other(format!("{} ended with wait status {status}", program.to_string_lossy())));
    }
    Ok(())
}

fn first_connect(addr: &str, port: &str) -> Result<(), String> {
    let address: SocketAddr = format!("{addr}:{port}")
        .parse()
        .map_err(|_| format!("invalid address {addr:?} or port {port:?}"))?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    let outcome = match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
        Ok(_) => "ok".to_owned(),
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => "eperm".to_owned(),
        Err(error) => format!("errno={}", error.raw_os_error().unwrap_or(libc::EIO)),
    };
    println!("first {started} {outcome}");
    Ok(())
}
