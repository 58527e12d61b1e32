//! Network probe run inside test pods.
//!
//! ```text
//! netprobe connect tcp|udp ADDR PORT   connect (UDP: connect, then send one datagram)
//! netprobe send udp ADDR PORT          one sendto() on an unconnected socket
//! netprobe listen tcp|udp PORT         serve "pong" on 0.0.0.0 and [::] until killed
//! netprobe fchmod|fsetxattr PATH       open PATH read-only, change it through the descriptor
//! netprobe openat2 PATH                create PATH with openat2(2)
//! netprobe open-path PATH              open PATH with O_PATH and O_WRONLY, which changes nothing
//! netprobe flood udp|connect|write ...  refused calls in a loop, timed or paced (see `flood`)
//! netprobe uring OPERATION PATH...     one file change through io_uring (see `uring`)
//! netprobe held PATH TRIGGER RESULT    changes through a descriptor opened before TRIGGER (see `held`)
//! netprobe attempts STOP WRITE ADDR:PORT...  connects and a file creation in a loop (see `attempts`)
//! netprobe bench OP COUNT...           COUNT operations of each OP, prints ns per operation (see `bench`)
//! ```
//!
//! `connect` and `send` print `ok` and exit 0, or print
//! `error errno=N <description>` and exit 1. Usage errors exit 2. ADDR is an
//! IPv4 or IPv6 address; an IPv6 address, including an IPv4-mapped one such
//! as `::ffff:10.0.0.1`, is used through an AF_INET6 socket.
//!
//! `uring` prints `ok`, `error errno=N <description>` (exit 1),
//! `unsupported: ...` when the kernel lacks the opcode (exit 3), or
//! `io_uring unavailable: ...` when the ring cannot be set up (exit 4).

mod attempts;
mod bench;
mod flood;
mod held;
mod uring;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

/// Upper bound for a TCP handshake, so that a dropped SYN fails instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PAYLOAD: &[u8] = b"ping";
const REPLY: &[u8] = b"pong";
const USAGE: &str = "usage: netprobe connect tcp|udp ADDR PORT\n       \
                     netprobe send udp ADDR PORT\n       \
                     netprobe listen tcp|udp PORT\n       \
                     netprobe socket udplite|raw|packet|inet-packet\n       \
                     netprobe fchmod|fsetxattr PATH\n       \
                     netprobe openat2 PATH\n       \
                     netprobe flood udp|connect ADDR PORT [--seconds S] [--count N] [--rate R]\n       \
                     netprobe flood write PATH [--seconds S] [--count N] [--rate R]\n       \
                     netprobe file copy-range|splice|fallocate|ftruncate|mmap-shared PATH\n       \
                     netprobe exec-memfd PROGRAM\n       \
                     netprobe uring openat-write|write|fallocate|splice|ftruncate|unlinkat|mkdirat PATH\n       \
                     netprobe uring renameat|linkat FROM TO\n       \
                     netprobe uring symlinkat TARGET LINK\n       \
                     netprobe held PATH TRIGGER RESULT\n       \
                     netprobe attempts STOP WRITE ADDR:PORT...\n       \
                     netprobe bench open|write-1m|write-512|stat|connect|udp|exec COUNT [OP COUNT]...\n       \
                     netprobe bench first-connect ADDR PORT";

#[derive(Clone, Copy)]
enum Protocol {
    Tcp,
    Udp,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Some(("bench", rest)) = args.split_first().map(|(first, rest)| (*first, rest)) {
        return bench::run(rest);
    }
    match parse(&args) {
        Ok(Command::Connect(protocol, target)) => report(connect(protocol, target)),
        Ok(Command::Send(target)) => report(send_unconnected(target)),
        Ok(Command::SendUnspec(target)) => report(send_unspec(target)),
        Ok(Command::HeldUdp(target, trigger, result)) => report(held_udp(target, &trigger, &result)),
        Ok(Command::Listen(protocol, port)) => listen(protocol, port),
        Ok(Command::Socket(family, kind, protocol)) => report(open_socket(family, kind, protocol)),
        Ok(Command::Descriptor(call, path)) => report(change_through_descriptor(call, path)),
        Ok(Command::Flood(plan)) => report_flood(flood::run(&plan)),
        Ok(Command::Openat2(path)) => report(create_with_openat2(&path)),
        Ok(Command::OpenPath(path)) => report(open_path_only(&path)),
        Ok(Command::File(operation, path)) => report(file_operation(operation, path)),
        Ok(Command::ExecMemfd(program)) => report(exec_memfd(program)),
        Ok(Command::Uring(operation, paths)) => report_uring(&operation, &paths),
        Ok(Command::Held(path, trigger, result)) => report(held::run(&path, &trigger, &result)),
        Ok(Command::Attempts(stop, write, peers)) => {
            let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
            match attempts::run(&stop, &write, &peers) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("netprobe: {message}\n{USAGE}");
                    ExitCode::from(2)
                }
            }
        }
        Err(message) => {
            eprintln!("netprobe: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

enum Command {
    Connect(Protocol, SocketAddr),
    Send(SocketAddr),
    /// A UDP socket connected now that sends one datagram once the file
    /// `trigger` exists, and writes the outcome to the file `result`.
    HeldUdp(SocketAddr, String, String),
    /// One datagram to an IPv4 peer whose address is marked `AF_UNSPEC`,
    /// which IPv4 UDP takes as an IPv4 address.
    SendUnspec(std::net::SocketAddrV4),
    Listen(Protocol, u16),
    /// `socket(family, type, protocol)` and nothing else.
    Socket(i32, i32, i32),
    /// A change made through a read-only descriptor of the path.
    Descriptor(DescriptorCall, String),
    /// Refused calls in a loop.
    Flood(flood::Plan),
    /// A file created with `openat2`.
    Openat2(String),
    /// An `O_PATH` open whose write flag the kernel ignores.
    OpenPath(String),
    /// One way of changing the file at a path, through a descriptor.
    File(String, String),
    /// Copies a program into a memfd and runs it with `execveat`.
    ExecMemfd(String),
    /// One change of a file or directory through io_uring.
    Uring(String, Vec<String>),
    /// Changes through a descriptor opened before a trigger file appears.
    Held(String, String, String),
    /// Connects and a file creation in a loop, until a stop file appears.
    Attempts(String, String, Vec<String>),
}

#[derive(Clone, Copy)]
enum DescriptorCall {
    Fchmod,
    Fsetxattr,
}

fn parse(args: &[&str]) -> Result<Command, String> {
    match args {
        ["connect", protocol, addr, port] => Ok(Command::Connect(
            parse_protocol(protocol)?,
            parse_target(addr, port)?,
        )),
        ["send", "udp", addr, port] => Ok(Command::Send(parse_target(addr, port)?)),
        ["held-udp", addr, port, trigger, result] => Ok(Command::HeldUdp(
            parse_target(addr, port)?,
            (*trigger).to_owned(),
            (*result).to_owned(),
        )),
        ["send-unspec", "udp", addr, port] => match parse_target(addr, port)? {
            SocketAddr::V4(target) => Ok(Command::SendUnspec(target)),
            SocketAddr::V6(_) => Err(format!("send-unspec takes an IPv4 address, not {addr:?}")),
        },
        ["listen", protocol, port] => Ok(Command::Listen(
            parse_protocol(protocol)?,
            parse_port(port)?,
        )),
        ["socket", "udplite"] => Ok(Command::Socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE)),
        ["socket", "raw"] => Ok(Command::Socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP)),
        ["socket", "packet"] => Ok(Command::Socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0)),
        // The old way to ask for a packet socket: SOCK_PACKET (10) on
        // AF_INET, which libc marks deprecated.
        ["socket", "inet-packet"] => Ok(Command::Socket(
            libc::AF_INET,
            10,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )),
        ["fchmod", path] => Ok(Command::Descriptor(DescriptorCall::Fchmod, (*path).to_owned())),
        ["fsetxattr", path] => Ok(Command::Descriptor(DescriptorCall::Fsetxattr, (*path).to_owned())),
        ["openat2", path] => Ok(Command::Openat2((*path).to_owned())),
        ["open-path", path] => Ok(Command::OpenPath((*path).to_owned())),
        ["flood", rest @ ..] => Ok(Command::Flood(flood::parse(rest, parse_target)?)),
        ["file", operation, path] => Ok(Command::File((*operation).to_owned(), (*path).to_owned())),
        ["exec-memfd", program] => Ok(Command::ExecMemfd((*program).to_owned())),
        ["uring", "openat-write" | "write" | "fallocate" | "splice" | "ftruncate" | "unlinkat" | "mkdirat", _]
        | ["uring", "renameat" | "linkat" | "symlinkat", _, _] => Ok(Command::Uring(
            args[1].to_owned(),
            args[2..].iter().map(|path| (*path).to_owned()).collect(),
        )),
        ["held", path, trigger, result] => {
            Ok(Command::Held((*path).to_owned(), (*trigger).to_owned(), (*result).to_owned()))
        }
        ["attempts", stop, write, peers @ ..] => Ok(Command::Attempts(
            (*stop).to_owned(),
            (*write).to_owned(),
            peers.iter().map(|peer| (*peer).to_owned()).collect(),
        )),
        _ => Err(format!("invalid arguments {args:?}")),
    }
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("invalid protocol {text:?}, expected tcp or udp")),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse().map_err(|_| format!("invalid port {text:?}"))
}

fn parse_target(addr: &str, port: &str) -> Result<SocketAddr, String> {
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("invalid IP address {addr:?}"))?;
    Ok(SocketAddr::new(ip, parse_port(port)?))
}

/// Opens `path` read-only and changes its mode or an extended attribute
/// through the descriptor. Keeps the descriptor open a moment afterwards,
/// so that the agent can still read its path from `/proc`.
fn change_through_descriptor(call: DescriptorCall, path: String) -> io::Result<()> {
    let file = std::fs::File::open(&path)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: `fd` is open for the whole call; the name and value are
    // NUL-terminated or sized.
    let status = unsafe {
        match call {
            DescriptorCall::Fchmod => libc::fchmod(fd, 0o600),
            DescriptorCall::Fsetxattr => libc::fsetxattr(fd, c"user.parapet".as_ptr(), b"x".as_ptr().cast(), 1, 0),
        }
    };
    let result = if status == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    std::thread::sleep(Duration::from_millis(500));
    drop(file);
    result
}

/// Creates `path` for writing with `openat2(2)`, which keeps its flags in
/// a `struct open_how` instead of an argument.
fn create_with_openat2(path: &str) -> io::Result<()> {
    let path = std::ffi::CString::new(path).map_err(io::Error::other)?;
    // `struct open_how`: flags, mode, resolve.
    let how: [u64; 3] = [(libc::O_CREAT | libc::O_WRONLY) as u64, 0o644, 0];
    // SAFETY: the path is NUL-terminated and `how` is a valid open_how of
    // the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            how.as_ptr(),
            std::mem::size_of_val(&how),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor this call just opened.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

fn open_path_only(path: &str) -> io::Result<()> {
    let path = std::ffi::CString::new(path).map_err(io::Error::other)?;
    // SAFETY: the path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_WRONLY) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor this call just opened.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

fn report_flood(result: io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(Err(error)),
    }
}

fn report(result: io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            // std reports its own connect timeout without an errno.
            let errno = error.raw_os_error().unwrap_or(match error.kind() {
                io::ErrorKind::TimedOut => libc::ETIMEDOUT,
                _ => libc::EIO,
            });
            println!("error errno={errno} {}", describe_errno(errno));
            ExitCode::FAILURE
        }
    }
}

fn report_uring(operation: &str, paths: &[String]) -> ExitCode {
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    match uring::run_operation(operation, &paths) {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("{error}");
            match error {
                uring::UringError::Failed(_) => ExitCode::FAILURE,
                uring::UringError::Unsupported { .. } => ExitCode::from(3),
                uring::UringError::Unavailable(_) => ExitCode::from(4),
            }
        }
    }
}

fn describe_errno(errno: i32) -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, and the XSI
    // strerror_r always NUL-terminates what it writes on success.
    let status = unsafe { libc::strerror_r(errno, buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return format!("unknown error {errno}");
    }
    let end = buffer
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// Any-address of the same family as `target`, for binding client sockets.
fn unspecified_for(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("valid literal"),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

fn connect(protocol: Protocol, target: SocketAddr) -> io::Result<()> {
    match protocol {
        Protocol::Tcp => {
            TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
            Ok(())
        }
        Protocol::Udp => {
            let socket = UdpSocket::bind(unspecified_for(target))?;
            socket.connect(target)?;
            socket.send(PAYLOAD)?;
            Ok(())
        }
    }
}

fn send_unconnected(target: SocketAddr) -> io::Result<()> {
    let socket = UdpSocket::bind(unspecified_for(target))?;
    socket.send_to(PAYLOAD, target)?;
    Ok(())
}

fn held_udp(target: SocketAddr, trigger: &str, result: &str) -> io::Result<()> {
    let socket = UdpSocket::bind(unspecified_for(target))?;
    socket.connect(target)?;
    while !std::path::Path::new(trigger).exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcome = match socket.send(PAYLOAD) {
        Ok(_) => "ok".to_owned(),
        Err(error) => {
            let errno = error.raw_os_error().unwrap_or(libc::EIO);
            format!("error errno={errno} {}", describe_errno(errno))
        }
    };
    std::fs::write(result, outcome)
}

fn send_unspec(target: std::net::SocketAddrV4) -> io::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let address = libc::sockaddr_in {
        sin_family: libc::AF_UNSPEC as libc::sa_family_t,
        sin_port: target.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(target.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid socket, a payload of the length given, and a
    // `sockaddr_in` of the length given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            PAYLOAD.as_ptr().cast(),
            PAYLOAD.len(),
            0,
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(sent as i64)?;
    Ok(())
}

fn listen(protocol: Protocol, port: u16) -> ExitCode {
    let mut workers = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let label = if family == libc::AF_INET {
            "0.0.0.0"
        } else {
            "[::]"
        };
        match bind_any(protocol, family, port) {
            Ok(socket) => {
                println!("listening {} {label}:{port}", protocol_name(protocol));
                workers.push(std::thread::spawn(move || serve(protocol, socket)));
            }
            Err(error) => eprintln!("netprobe: cannot bind {label}:{port}: {error}"),
        }
    }
    if workers.is_empty() {
        return ExitCode::FAILURE;
    }
    io::stdout().flush().ok();
    for worker in workers {
        worker.join().ok();
    }
    ExitCode::FAILURE
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn serve(protocol: Protocol, socket: OwnedFd) {
    match protocol {
        Protocol::Tcp => {
            let listener = TcpListener::from(socket);
            for stream in listener.incoming().flatten() {
                reply_tcp(stream);
            }
        }
        Protocol::Udp => {
            let socket = UdpSocket::from(socket);
            let mut buffer = [0u8; 2048];
            while let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                socket.send_to(REPLY, peer).ok();
            }
        }
    }
}

fn reply_tcp(mut stream: TcpStream) {
    stream.write_all(REPLY).ok();
    stream.shutdown(std::net::Shutdown::Write).ok();
    // Drain what the client sent so that closing does not send a reset.
    stream.set_read_timeout(Some(CONNECT_TIMEOUT)).ok();
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Opens a socket bound to the any-address of `family` on `port`. The IPv6
/// socket is IPv6-only so that it can share the port with the IPv4 one.
fn bind_any(protocol: Protocol, family: libc::c_int, port: u16) -> io::Result<OwnedFd> {
    let kind = match protocol {
        Protocol::Tcp => libc::SOCK_STREAM,
        Protocol::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created, so no other owner can close it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    if family == libc::AF_INET6 {
        set_option(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    }
    bind_port(fd, family, port)?;
    if let Protocol::Tcp = protocol {
        // SAFETY: `fd` is a valid, bound stream socket.
        if unsafe { libc::listen(fd, 128) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

fn set_option(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let enabled: libc::c_int = 1;
    // SAFETY: the option value points at a live c_int of the size passed.
    let status = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&enabled as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind_port(fd: libc::c_int, family: libc::c_int, port: u16) -> io::Result<()> {
    // SAFETY: the address structs are zeroed (the any-address), filled in
    // for their family, and passed with their own size.
    let status = unsafe {
        if family == libc::AF_INET {
            let mut address: libc::sockaddr_in = std::mem::zeroed();
            address.sin_family = libc::AF_INET as libc::sa_family_t;
            address.sin_port = port.to_be();
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        } else {
            let mut address: libc::sockaddr_in6 = std::mem::zeroed();
            address.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            address.sin6_port = port.to_be();
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a socket and closes it again.
fn open_socket(family: i32, kind: i32, protocol: i32) -> io::Result<()> {
    // SAFETY: socket(2) takes plain integers.
    let fd = unsafe { libc::socket(family, kind, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the descriptor just returned and owned here.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Returns the errno of the last failed call as an error when `result` is
/// negative.
fn check(result: i64) -> io::Result<i64> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Changes the file at `path` through a descriptor: the data comes from a
/// pipe or another file, never from a path-based write.
/// `FS_IOC_GETFLAGS`, `FS_IOC_SETFLAGS` and the `chattr +d` flag.
const FS_IOC_GETFLAGS: libc::Ioctl = 0x8008_6601u64 as libc::Ioctl;
const FS_IOC_SETFLAGS: libc::Ioctl = 0x4008_6602u64 as libc::Ioctl;
const FS_NODUMP_FL: libc::c_long = 0x40;

fn file_operation(operation: String, path: String) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let open = |flags: i32| -> io::Result<i32> {
        // SAFETY: a NUL-terminated path and plain flags.
        Ok(check(i64::from(unsafe { libc::open(c_path.as_ptr(), flags) }))? as i32)
    };
    match operation.as_str() {
        "copy-range" => {
            let source = open(libc::O_RDONLY)?;
            let target = open(libc::O_WRONLY)?;
            // The ranges of one file must not overlap.
            let mut from: i64 = 0;
            let mut to: i64 = 8192;
            // SAFETY: valid descriptors and offset pointers.
            check(unsafe { libc::copy_file_range(source, &mut from, target, &mut to, 4, 0) } as i64)?;
        }
        "splice" => {
            let target = open(libc::O_WRONLY)?;
            let (read_end, _write_end) = pipe_with_payload()?;
            // SAFETY: valid descriptors and null offsets.
            check(unsafe { libc::splice(read_end, std::ptr::null_mut(), target, std::ptr::null_mut(), 4, 0) } as i64)?;
        }
        "fallocate" => {
            let target = open(libc::O_WRONLY)?;
            // SAFETY: a valid descriptor.
            check(i64::from(unsafe { libc::fallocate(target, 0, 0, 1 << 20) }))?;
        }
        "ftruncate" => {
            let target = open(libc::O_WRONLY)?;
            // SAFETY: a valid descriptor.
            check(i64::from(unsafe { libc::ftruncate(target, 0) }))?;
        }
        "mmap-shared" => {
            let target = open(libc::O_RDWR)?;
            // SAFETY: maps one page of a valid descriptor; the result is
            // checked before use.
            let address = unsafe {
                libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, target, 0)
            };
            if address == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the mapping is one writable page.
            unsafe { *address.cast::<u8>() = b'!' };
        }
        "setflags" => {
            let target = open(libc::O_RDONLY)?;
            let mut flags: libc::c_long = 0;
            // SAFETY: FS_IOC_GETFLAGS and FS_IOC_SETFLAGS take a pointer to
            // a flags word.
            check(i64::from(unsafe { libc::ioctl(target, FS_IOC_GETFLAGS, &mut flags) }))?;
            flags |= FS_NODUMP_FL;
            // SAFETY: as above.
            check(i64::from(unsafe { libc::ioctl(target, FS_IOC_SETFLAGS, &flags) }))?;
        }
        "acl" => {
            // The POSIX ACL of mode 644 as the kernel stores it: version 2,
            // then the owner, group and other entries (tag, permissions, id).
            let mut acl = 2u32.to_le_bytes().to_vec();
            for (tag, permissions) in [(0x01u16, 6u16), (0x04, 4), (0x20, 4)] {
                acl.extend_from_slice(&tag.to_le_bytes());
                acl.extend_from_slice(&permissions.to_le_bytes());
                acl.extend_from_slice(&u32::MAX.to_le_bytes());
            }
            // SAFETY: a NUL-terminated path and name, and a buffer of the
            // length given.
            let result = unsafe {
                libc::setxattr(c_path.as_ptr(), c"system.posix_acl_access".as_ptr(), acl.as_ptr().cast(), acl.len(), 0)
            };
            check(i64::from(result))?;
        }
        other => return Err(io::Error::other(format!("unknown file operation {other}"))),
    }
    Ok(())
}

/// Returns the read and write ends of a new pipe that contains `PAYLOAD`.
fn pipe_with_payload() -> io::Result<(i32, i32)> {
    let mut pipe = [0i32; 2];
    // SAFETY: a two-element array for the pipe's ends.
    check(i64::from(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }))?;
    // SAFETY: writes four bytes from a static buffer.
    check(unsafe { libc::write(pipe[1], PAYLOAD.as_ptr().cast(), PAYLOAD.len()) } as i64)?;
    Ok((pipe[0], pipe[1]))
}

/// Copies `program` into a memfd and runs it with `execveat(AT_EMPTY_PATH)`;
/// returns only when the kernel refused.
fn exec_memfd(program: String) -> io::Result<()> {
    let bytes = std::fs::read(&program)?;
    // SAFETY: a NUL-terminated name and no flags.
    let memfd = check(i64::from(unsafe { libc::memfd_create(c"probe".as_ptr(), 0) }))? as i32;
    // SAFETY: `memfd` is ours; the file takes ownership and closes it.
    let mut file = unsafe { std::fs::File::from_raw_fd(memfd) };
    file.write_all(&bytes)?;
    let argv = [c"probe".as_ptr(), c"socket".as_ptr(), c"udplite".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: NUL-terminated argument and environment arrays.
    let result = unsafe {
        libc::syscall(libc::SYS_execveat, memfd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
    };
    check(result)?;
    Ok(())
}
