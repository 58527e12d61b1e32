//! `netprobe held PATH TRIGGER RESULT`: changes through a descriptor opened
//! before a read-only policy arrived.
//!
//! Opens `PATH` for reading and writing at once, waits until `TRIGGER`
//! exists, then tries each change below on that same descriptor and writes
//! one line per attempt to `RESULT`: `name: ok`, `name: error errno=N
//! text`, or `name: unsupported: ...` for an io_uring opcode the kernel
//! lacks. `RESULT` appears whole, through a rename.
//!
//! The shared writable mapping is made after the trigger. A mapping made
//! before the policy arrived cannot be refused: stores into it reach the
//! page cache without any system call or LSM hook, and writeback runs in
//! the kernel's flusher threads, outside the container's cgroup.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::uring::{Ring, UringError};

/// Time the process waits for the trigger before it gives up, so that a
/// failed test leaves no process waiting forever in its pod.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(600);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Size that `ftruncate` sets: larger than the test file, so that the
/// mapping of its first page stays inside the file whichever attempts
/// succeeded.
const TRUNCATED_SIZE: i64 = 4096;

pub fn run(path: &str, trigger: &str, result: &str) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = super::check(i64::from(unsafe { libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }))? as RawFd;
    let started = Instant::now();
    while !Path::new(trigger).exists() {
        if started.elapsed() > TRIGGER_TIMEOUT {
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let mut lines = Vec::new();
    for (name, outcome) in attempts(fd) {
        let text = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(error) => error.to_string(),
        };
        lines.push(format!("{name}: {text}\n"));
    }
    let partial = format!("{result}.partial");
    std::fs::write(&partial, lines.concat())?;
    std::fs::rename(&partial, result)
}

/// One change through the ring on a descriptor.
type RingAttempt = fn(&mut Ring, RawFd) -> Result<(), UringError>;

/// Tries every change on `fd` and returns each outcome by name.
fn attempts(fd: RawFd) -> Vec<(&'static str, Result<(), UringError>)> {
    let plain = |result: io::Result<()>| result.map_err(UringError::Failed);
    let mut outcomes = vec![
        ("write", plain(write(fd))),
        ("pwrite", plain(pwrite(fd))),
        ("ftruncate", plain(ftruncate(fd))),
        ("fallocate", plain(fallocate(fd))),
        ("copy_file_range", plain(copy_range(fd))),
        ("splice", plain(splice(fd))),
        ("mmap-shared", plain(mmap_store(fd))),
    ];
    let uring: [(&'static str, RingAttempt); 4] = [
        ("io_uring write", |ring, fd| ring.write(fd, 16)),
        ("io_uring fallocate", Ring::fallocate),
        ("io_uring splice", |ring, fd| ring.splice_into(fd, 20)),
        ("io_uring ftruncate", |ring, fd| ring.ftruncate(fd, TRUNCATED_SIZE as u64)),
    ];
    match Ring::new() {
        Ok(mut ring) => {
            for (name, attempt) in uring {
                outcomes.push((name, attempt(&mut ring, fd)));
            }
        }
        Err(error) => {
            let errno = match &error {
                UringError::Unavailable(source) | UringError::Failed(source) => source.raw_os_error(),
                UringError::Unsupported { .. } => None,
            };
            for (name, _) in uring {
                let source = io::Error::from_raw_os_error(errno.unwrap_or(libc::EIO));
                outcomes.push((name, Err(UringError::Unavailable(source))));
            }
        }
    }
    outcomes
}

fn write(fd: RawFd) -> io::Result<()> {
    // SAFETY: writes four bytes from a static buffer.
    super::check(unsafe { libc::write(fd, b"held".as_ptr().cast(), 4) } as i64).map(drop)
}

fn pwrite(fd: RawFd) -> io::Result<()> {
    // SAFETY: writes four bytes from a static buffer.
    super::check(unsafe { libc::pwrite(fd, b"held".as_ptr().cast(), 4, 4) } as i64).map(drop)
}

fn ftruncate(fd: RawFd) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    super::check(i64::from(unsafe { libc::ftruncate(fd, TRUNCATED_SIZE) })).map(drop)
}

fn fallocate(fd: RawFd) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    super::check(i64::from(unsafe { libc::fallocate(fd, 0, 0, 8192) })).map(drop)
}

/// Copies the file's first four bytes to offset 8192 of the same file:
/// the ranges do not overlap, which `copy_file_range(2)` requires of one
/// file.
fn copy_range(fd: RawFd) -> io::Result<()> {
    let mut from: i64 = 0;
    let mut to: i64 = 8192;
    // SAFETY: valid descriptor and offset pointers.
    super::check(unsafe { libc::copy_file_range(fd, &mut from, fd, &mut to, 4, 0) } as i64).map(drop)
}

fn splice(fd: RawFd) -> io::Result<()> {
    let (read_end, write_end) = super::pipe_with_payload()?;
    let mut to: i64 = 12288;
    // SAFETY: valid descriptors and an offset pointer for the file.
    let result = unsafe { libc::splice(read_end, std::ptr::null_mut(), fd, &mut to, 4, 0) } as i64;
    let error = io::Error::last_os_error();
    // SAFETY: both descriptors are ours and closed once.
    unsafe {
        libc::close(read_end);
        libc::close(write_end);
    }
    if result < 0 { Err(error) } else { Ok(()) }
}

/// Maps the first page shared and writable, stores a byte and syncs it to
/// the file.
fn mmap_store(fd: RawFd) -> io::Result<()> {
    // SAFETY: maps one page of a valid descriptor; the result is checked
    // before use.
    let address =
        unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is one writable page, and the file is at least
    // one byte long.
    unsafe { *address.cast::<u8>() = b'!' };
    // SAFETY: the mapping made above, synced and unmapped once.
    let synced = super::check(i64::from(unsafe { libc::msync(address, 4096, libc::MS_SYNC) }));
    // SAFETY: as above.
    unsafe { libc::munmap(address, 4096) };
    synced.map(drop)
}
