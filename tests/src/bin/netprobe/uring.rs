//! File changes issued through io_uring, which runs them in the kernel on
//! behalf of the process (inline or on an io-wq worker thread of the same
//! process), without the syscalls that tracepoints see.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::RawFd;

use io_uring::{IoUring, Probe, opcode, squeue, types};

/// Why an io_uring operation did not complete.
#[derive(Debug)]
pub enum UringError {
    /// `io_uring_setup` or the opcode probe failed: io_uring is not built
    /// in, or `kernel.io_uring_disabled` forbids it for this process.
    Unavailable(io::Error),
    /// The kernel does not know the opcode: its probe does not list it, or
    /// the completion returned EOPNOTSUPP.
    Unsupported { opcode: &'static str },
    /// The kernel ran the operation and it failed.
    Failed(io::Error),
}

impl fmt::Display for UringError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(error) => write!(formatter, "io_uring unavailable: {}", describe(error)),
            Self::Unsupported { opcode } => {
                write!(formatter, "unsupported: io_uring opcode {opcode} is not supported by this kernel")
            }
            Self::Failed(error) => write!(formatter, "{}", describe(error)),
        }
    }
}

/// Formats an error as netprobe's `report` does: `error errno=N text`.
fn describe(error: &io::Error) -> String {
    let errno = error.raw_os_error().unwrap_or(libc::EIO);
    format!("error errno={errno} {}", super::describe_errno(errno))
}

/// One ring with room for a single operation at a time.
pub struct Ring {
    ring: IoUring,
    probe: Probe,
}

impl Ring {
    pub fn new() -> Result<Self, UringError> {
        let ring = IoUring::new(4).map_err(UringError::Unavailable)?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(UringError::Unavailable)?;
        Ok(Self { ring, probe })
    }

    /// Submits `entry`, waits for its completion and returns its result.
    fn run(&mut self, opcode: &'static str, code: u8, entry: squeue::Entry) -> Result<i32, UringError> {
        if !self.probe.is_supported(code) {
            return Err(UringError::Unsupported { opcode });
        }
        // SAFETY: every buffer and path the entry points at outlives this
        // call, which waits for the completion.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| UringError::Failed(io::Error::other("the submission queue is full")))?;
        self.ring.submit_and_wait(1).map_err(UringError::Failed)?;
        let completion = self
            .ring
            .completion()
            .next()
            .ok_or_else(|| UringError::Failed(io::Error::other("no completion after the wait")))?;
        let result = completion.result();
        if result == -libc::EOPNOTSUPP {
            return Err(UringError::Unsupported { opcode });
        }
        if result < 0 {
            return Err(UringError::Failed(io::Error::from_raw_os_error(-result)));
        }
        Ok(result)
    }

    /// Opens `path` with IORING_OP_OPENAT and returns the descriptor.
    pub fn open(&mut self, path: &str, flags: i32) -> Result<RawFd, UringError> {
        let path = c_path(path)?;
        let entry = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .flags(flags | libc::O_CLOEXEC)
            .build();
        self.run("IORING_OP_OPENAT", opcode::OpenAt::CODE, entry)
    }

    pub fn write(&mut self, fd: RawFd, offset: u64) -> Result<(), UringError> {
        let data = b"ring";
        let entry = opcode::Write::new(types::Fd(fd), data.as_ptr(), data.len() as u32)
            .offset(offset)
            .build();
        self.run("IORING_OP_WRITE", opcode::Write::CODE, entry).map(drop)
    }

    pub fn fallocate(&mut self, fd: RawFd) -> Result<(), UringError> {
        let entry = opcode::Fallocate::new(types::Fd(fd), 1 << 20).build();
        self.run("IORING_OP_FALLOCATE", opcode::Fallocate::CODE, entry).map(drop)
    }

    /// Splices four bytes from a fresh pipe into `fd` at `offset`.
    pub fn splice_into(&mut self, fd: RawFd, offset: i64) -> Result<(), UringError> {
        let (read_end, write_end) = super::pipe_with_payload().map_err(UringError::Failed)?;
        let entry = opcode::Splice::new(types::Fd(read_end), -1, types::Fd(fd), offset, 4).build();
        let result = self.run("IORING_OP_SPLICE", opcode::Splice::CODE, entry);
        // SAFETY: both descriptors are ours and closed once.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        result.map(drop)
    }

    /// Sets the size of `fd` with IORING_OP_FTRUNCATE (Linux 6.9 and later).
    pub fn ftruncate(&mut self, fd: RawFd, length: u64) -> Result<(), UringError> {
        let entry = opcode::Ftruncate::new(types::Fd(fd), length).build();
        self.run("IORING_OP_FTRUNCATE", opcode::Ftruncate::CODE, entry).map(drop)
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), UringError> {
        let (from, to) = (c_path(from)?, c_path(to)?);
        let entry = opcode::RenameAt::new(
            types::Fd(libc::AT_FDCWD),
            from.as_ptr(),
            types::Fd(libc::AT_FDCWD),
            to.as_ptr(),
        )
        .build();
        self.run("IORING_OP_RENAMEAT", opcode::RenameAt::CODE, entry).map(drop)
    }

    pub fn unlink(&mut self, path: &str) -> Result<(), UringError> {
        let path = c_path(path)?;
        let entry = opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build();
        self.run("IORING_OP_UNLINKAT", opcode::UnlinkAt::CODE, entry).map(drop)
    }

    pub fn mkdir(&mut self, path: &str) -> Result<(), UringError> {
        let path = c_path(path)?;
        let entry = opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .mode(0o755)
            .build();
        self.run("IORING_OP_MKDIRAT", opcode::MkDirAt::CODE, entry).map(drop)
    }

    pub fn symlink(&mut self, target: &str, link: &str) -> Result<(), UringError> {
        let (target, link) = (c_path(target)?, c_path(link)?);
        let entry = opcode::SymlinkAt::new(types::Fd(libc::AT_FDCWD), target.as_ptr(), link.as_ptr()).build();
        self.run("IORING_OP_SYMLINKAT", opcode::SymlinkAt::CODE, entry).map(drop)
    }

    pub fn link(&mut self, existing: &str, new: &str) -> Result<(), UringError> {
        let (existing, new) = (c_path(existing)?, c_path(new)?);
        let entry = opcode::LinkAt::new(
            types::Fd(libc::AT_FDCWD),
            existing.as_ptr(),
            types::Fd(libc::AT_FDCWD),
            new.as_ptr(),
        )
        .build();
        self.run("IORING_OP_LINKAT", opcode::LinkAt::CODE, entry).map(drop)
    }
}

fn c_path(path: &str) -> Result<CString, UringError> {
    CString::new(path).map_err(|_| UringError::Failed(io::Error::from_raw_os_error(libc::EINVAL)))
}

/// Runs `netprobe uring OPERATION PATH...`: one change of a file or
/// directory, every step through the ring. Operations on a descriptor
/// (`write`, `fallocate`, `splice`, `ftruncate`) first open `PATH` for
/// writing through the ring.
pub fn run_operation(operation: &str, paths: &[&str]) -> Result<(), UringError> {
    let mut ring = Ring::new()?;
    let open_for_write = |ring: &mut Ring, path: &str| ring.open(path, libc::O_WRONLY);
    match (operation, paths) {
        ("openat-write", [path]) => open_for_write(&mut ring, path).map(drop),
        ("write", [path]) => {
            let fd = open_for_write(&mut ring, path)?;
            ring.write(fd, 0)
        }
        ("fallocate", [path]) => {
            let fd = open_for_write(&mut ring, path)?;
            ring.fallocate(fd)
        }
        ("splice", [path]) => {
            let fd = open_for_write(&mut ring, path)?;
            ring.splice_into(fd, 0)
        }
        ("ftruncate", [path]) => {
            let fd = open_for_write(&mut ring, path)?;
            ring.ftruncate(fd, 0)
        }
        ("renameat", [from, to]) => ring.rename(from, to),
        ("unlinkat", [path]) => ring.unlink(path),
        ("mkdirat", [path]) => ring.mkdir(path),
        ("symlinkat", [target, link]) => ring.symlink(target, link),
        ("linkat", [existing, new]) => ring.link(existing, new),
        _ => Err(UringError::Failed(io::Error::other(format!(
            "unknown io_uring operation {operation} with {} paths",
            paths.len()
        )))),
    }
}
