//! The helper process that enters a container's mount namespace.
//!
//! `setns(2)` into a mount namespace fails with EINVAL in a multi-threaded
//! process, because the threads share one root and working directory, and
//! the agent runs tokio's threads. The work therefore happens in a forked
//! child, which has a single thread. After `fork` in a multi-threaded
//! program the child may only make async-signal-safe calls: another thread
//! may have held the allocator's lock at the moment of the fork. So the
//! parent prepares every path, descriptor and buffer, and the child only
//! makes system calls on that data and writes one fixed-size [`Record`] per
//! step into a pipe. The child code below allocates nothing, formats
//! nothing, and has no operation that can panic on the data it gets.

use std::ffi::{CStr, CString};
use std::io::{self, Read as _};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::MountNsError;

/// Time the helper gets to send all of its records. It normally needs
/// about a millisecond.
pub(crate) const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Step number of the record that reports entering the namespace.
const ENTRY_STEP: u32 = u32::MAX;
const RECORD_SIZE: usize = 32;

/// Outcome of one step of the helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Status {
    Done = 0,
    /// A system call failed. The record names the call and its errno.
    Failed = 1,
    /// A writable path is a mount point already, so it needs no bind.
    AlreadyMountPoint = 2,
    /// The path no longer resolves to the mount planned from mountinfo: the
    /// mount was moved or stacked over, or a parent directory was replaced.
    Moved = 3,
    /// After `setns` the helper is not in the target's mount namespace.
    WrongNamespace = 4,
}

/// System call named in a [`Record`] of a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Syscall {
    None = 0,
    Setns = 1,
    Fstatat = 2,
    Openat2 = 3,
    Statx = 4,
    OpenTree = 5,
    MoveMount = 6,
    MountSetattr = 7,
    Stat = 8,
}

impl Syscall {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Syscall::None => "none",
            Syscall::Setns => "setns",
            Syscall::Fstatat => "fstatat",
            Syscall::Openat2 => "openat2",
            Syscall::Statx => "statx",
            Syscall::OpenTree => "open_tree",
            Syscall::MoveMount => "move_mount",
            Syscall::MountSetattr => "mount_setattr",
            Syscall::Stat => "stat",
        }
    }
}

/// Result of one step, as the helper writes it into the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub step: u32,
    pub status: Status,
    pub syscall: Syscall,
    pub errno: i32,
    /// `st_dev` of a successful `stat` step, in the user-space encoding.
    pub dev: u64,
    /// `st_ino` of a successful `stat` step.
    pub ino: u64,
}

impl Record {
    fn new(step: u32, status: Status) -> Self {
        Self {
            step,
            status,
            syscall: Syscall::None,
            errno: 0,
            dev: 0,
            ino: 0,
        }
    }

    fn failed(step: u32, syscall: Syscall, errno: i32) -> Self {
        Self {
            syscall,
            errno,
            ..Self::new(step, Status::Failed)
        }
    }

    fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut bytes = [0u8; RECORD_SIZE];
        let (head, tail) = bytes.split_at_mut(16);
        let (step, rest) = head.split_at_mut(4);
        let (status, rest) = rest.split_at_mut(4);
        let (syscall, errno) = rest.split_at_mut(4);
        step.copy_from_slice(&self.step.to_ne_bytes());
        status.copy_from_slice(&(self.status as u32).to_ne_bytes());
        syscall.copy_from_slice(&(self.syscall as u32).to_ne_bytes());
        errno.copy_from_slice(&self.errno.to_ne_bytes());
        let (dev, ino) = tail.split_at_mut(8);
        dev.copy_from_slice(&self.dev.to_ne_bytes());
        ino.copy_from_slice(&self.ino.to_ne_bytes());
        bytes
    }

    fn decode(bytes: &[u8; RECORD_SIZE]) -> Option<Self> {
        let word =
            |offset: usize| u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap());
        let long =
            |offset: usize| u64::from_ne_bytes(bytes[offset..offset + 8].try_into().unwrap());
        let status = match word(4) {
            0 => Status::Done,
            1 => Status::Failed,
            2 => Status::AlreadyMountPoint,
            3 => Status::Moved,
            4 => Status::WrongNamespace,
            _ => return None,
        };
        let syscall = match word(8) {
            0 => Syscall::None,
            1 => Syscall::Setns,
            2 => Syscall::Fstatat,
            3 => Syscall::Openat2,
            4 => Syscall::Statx,
            5 => Syscall::OpenTree,
            6 => Syscall::MoveMount,
            7 => Syscall::MountSetattr,
            8 => Syscall::Stat,
            _ => return None,
        };
        Some(Self {
            step: word(0),
            status,
            syscall,
            errno: word(12) as i32,
            dev: long(16),
            ino: long(24),
        })
    }
}

/// Write end of the pipe, used only in the helper.
pub(crate) struct RecordWriter {
    fd: RawFd,
}

impl RecordWriter {
    /// Writes one record. A record is smaller than `PIPE_BUF`, so the write
    /// is atomic. A failed write is dropped: the parent then sees fewer
    /// records than steps and reports the helper as incomplete.
    pub(crate) fn send(&self, record: Record) {
        let bytes = record.encode();
        loop {
            // SAFETY: `bytes` is a live buffer of RECORD_SIZE bytes.
            let written = unsafe { libc::write(self.fd, bytes.as_ptr().cast(), RECORD_SIZE) };
            if written < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
    }
}

/// Device and inode number of an nsfs file, which identify a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NamespaceId {
    dev: u64,
    ino: u64,
}

impl NamespaceId {
    fn of(stat: &libc::stat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }
}

/// A process whose mount namespace the helper enters, with every
/// descriptor the helper needs opened beforehand.
pub(crate) struct Target {
    pid: u32,
    /// `/proc/PID`. Lookups below it fail once that process has exited,
    /// even when its pid is reused, so everything read through it belongs
    /// to one process.
    proc_dir: OwnedFd,
    /// `/proc/PID/ns/mnt`, the namespace that `setns` enters.
    namespace: OwnedFd,
    /// This process's `/proc`, from which the helper reads its own
    /// namespace after `setns`. Its path inside the container would reach
    /// the container's procfs, which does not list the helper.
    proc_root: OwnedFd,
    target_namespace: NamespaceId,
    own_namespace: NamespaceId,
    /// Mount namespaces of the host, with the pid each was read from.
    host_namespaces: [Option<(u32, NamespaceId)>; 2],
}

impl Target {
    /// Opens the mount namespace of `pid`. Fails when it is this process's
    /// own mount namespace or one of the host's (see [`host_namespaces`]),
    /// since a change there would change this process's or the host's
    /// mounts.
    pub(crate) fn open(pid: u32) -> Result<Self, MountNsError> {
        let own_namespace = stat_namespace(pid, None, c"/proc/self/ns/mnt")?;
        let host_namespaces = host_namespaces(pid);

        let proc_path = CString::new(format!("/proc/{pid}")).expect("a pid has no NUL byte");
        let proc_dir = open_at(
            None,
            &proc_path,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .map_err(|source| proc_error(pid, &proc_path, source))?;
        let namespace = open_at(
            Some(proc_dir.as_fd()),
            c"ns/mnt",
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
        .map_err(|source| proc_error(pid, c"ns/mnt", source))?;

        let target_namespace = stat_namespace(pid, Some(namespace.as_fd()), c"")?;
        if target_namespace == own_namespace {
            return Err(MountNsError::SameMountNamespace { pid });
        }
        if let Some((host_pid, _)) = host_namespaces
            .iter()
            .flatten()
            .find(|(_, namespace)| *namespace == target_namespace)
        {
            return Err(MountNsError::HostMountNamespace {
                pid,
                host_pid: *host_pid,
            });
        }

        let proc_root = open_at(
            None,
            c"/proc",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .map_err(|source| proc_error(pid, c"/proc", source))?;
        Ok(Self {
            pid,
            proc_dir,
            namespace,
            proc_root,
            target_namespace,
            own_namespace,
            host_namespaces,
        })
    }

    /// Reads the target's mountinfo, then checks that the process is still
    /// in the namespace opened by [`Target::open`], so that the mount table
    /// and the namespace match.
    pub(crate) fn read_mountinfo(&self) -> Result<Vec<u8>, MountNsError> {
        let fd = open_at(
            Some(self.proc_dir.as_fd()),
            c"mountinfo",
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
        .map_err(|source| proc_error(self.pid, c"mountinfo", source))?;
        let mut text = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut text)
            .map_err(|source| proc_error(self.pid, c"mountinfo", source))?;
        let now = stat_namespace(self.pid, Some(self.proc_dir.as_fd()), c"ns/mnt")?;
        if now != self.target_namespace {
            return Err(MountNsError::NamespaceChanged { pid: self.pid });
        }
        Ok(text)
    }

    /// Forks the helper, which enters the namespace and, once it has
    /// checked where it is, calls `work` and exits. Returns the `steps`
    /// records that `work` sent, in order. `work` runs in the forked child,
    /// so it must follow the rules in the module documentation.
    pub(crate) fn run<F>(&self, steps: usize, work: F) -> Result<Vec<Record>, MountNsError>
    where
        F: FnOnce(&RecordWriter),
    {
        let pid = self.pid;
        let (read_end, write_end) = pipe().map_err(|source| helper_error(pid, "pipe2", source))?;
        let expected = steps + 1;
        let mut buffer = Vec::with_capacity(expected * RECORD_SIZE);

        // SAFETY: the child branch below only makes raw system calls on data
        // prepared before this point, then leaves through _exit without
        // running destructors or atexit handlers.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return Err(helper_error(pid, "fork", io::Error::last_os_error()));
        }
        if child == 0 {
            let writer = RecordWriter {
                fd: write_end.as_raw_fd(),
            };
            if self.enter(&writer) {
                work(&writer);
            }
            // SAFETY: _exit ends the child at once, which is what a forked
            // child of a multi-threaded program must do.
            unsafe { libc::_exit(0) }
        }

        // The parent's copy of the write end must close, or reading would
        // never see the end of the stream.
        drop(write_end);
        let read = read_records(&read_end, &mut buffer, expected * RECORD_SIZE);
        if matches!(read, Err(ReadFailure::TimedOut)) {
            // SAFETY: `child` is the helper forked above and not yet waited
            // for, so the pid still names it.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        let status = wait_for(child).map_err(|source| helper_error(pid, "waitpid", source))?;
        match read {
            Ok(()) => {}
            Err(ReadFailure::TimedOut) => {
                return Err(MountNsError::HelperTimedOut {
                    pid,
                    timeout: HELPER_TIMEOUT,
                });
            }
            Err(ReadFailure::Io(syscall, source)) => {
                return Err(helper_error(pid, syscall, source));
            }
        }

        let records: Vec<Record> = buffer
            .chunks_exact(RECORD_SIZE)
            .map_while(|chunk| Record::decode(chunk.try_into().expect("chunk of RECORD_SIZE")))
            .collect();
        self.check_entry(records.first(), steps, status)?;
        let received = records.len().saturating_sub(1);
        let in_order = records
            .iter()
            .skip(1)
            .enumerate()
            .all(|(index, record)| record.step as usize == index);
        if received != steps || !in_order || status != 0 {
            return Err(MountNsError::HelperIncomplete {
                pid,
                received,
                expected: steps,
                status: describe_wait_status(status),
            });
        }
        Ok(records.into_iter().skip(1).collect())
    }

    /// Enters the namespace and checks, through this process's `/proc`,
    /// that the helper is now in the target's namespace and neither in the
    /// parent's nor in one of the host's. Runs in the forked child.
    fn enter(&self, writer: &RecordWriter) -> bool {
        // SAFETY: setns takes a descriptor that stays open for the call.
        if unsafe { libc::setns(self.namespace.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            writer.send(Record::failed(ENTRY_STEP, Syscall::Setns, errno()));
            return false;
        }
        // SAFETY: all-zero bytes are a valid `stat`.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the path is a NUL-terminated literal and `stat` is a live
        // buffer of the right type.
        let result = unsafe {
            libc::fstatat(
                self.proc_root.as_raw_fd(),
                c"thread-self/ns/mnt".as_ptr(),
                &mut stat,
                0,
            )
        };
        if result != 0 {
            writer.send(Record::failed(ENTRY_STEP, Syscall::Fstatat, errno()));
            return false;
        }
        let current = NamespaceId::of(&stat);
        if current != self.target_namespace
            || current == self.own_namespace
            || self
                .host_namespaces
                .iter()
                .flatten()
                .any(|(_, namespace)| *namespace == current)
        {
            writer.send(Record::new(ENTRY_STEP, Status::WrongNamespace));
            return false;
        }
        writer.send(Record::new(ENTRY_STEP, Status::Done));
        true
    }

    /// Turns the helper's report on entering the namespace into an error
    /// when it failed.
    fn check_entry(
        &self,
        entry: Option<&Record>,
        steps: usize,
        status: i32,
    ) -> Result<(), MountNsError> {
        let pid = self.pid;
        let Some(entry) = entry.filter(|record| record.step == ENTRY_STEP) else {
            return Err(MountNsError::HelperIncomplete {
                pid,
                received: 0,
                expected: steps,
                status: describe_wait_status(status),
            });
        };
        match (entry.status, entry.syscall) {
            (Status::Done, _) => Ok(()),
            (Status::WrongNamespace, _) => Err(MountNsError::WrongNamespace { pid }),
            (_, Syscall::Setns) => Err(MountNsError::Setns {
                pid,
                source: io::Error::from_raw_os_error(entry.errno),
            }),
            (_, syscall) => Err(helper_error(
                pid,
                syscall.name(),
                io::Error::from_raw_os_error(entry.errno),
            )),
        }
    }
}

/// Reads the mount namespaces that belong to the host: that of pid 1 (the
/// host's init) and that of pid 2 when it is `kthreadd`, whose kernel
/// threads always use the kernel's initial mount namespace. The second
/// matters when this process runs in a mount namespace of its own, where
/// the comparison with its own namespace no longer covers the host.
/// Reading another process's namespace needs ptrace access, which fails
/// when pid 1 has capabilities that this process lacks, so each entry is
/// `None` when it cannot be read.
fn host_namespaces(pid: u32) -> [Option<(u32, NamespaceId)>; 2] {
    let read = |host_pid: u32, path: &CStr| match stat_namespace(pid, None, path) {
        Ok(namespace) => Some((host_pid, namespace)),
        Err(error) => {
            tracing::debug!(pid, host_pid, %error, "host mount namespace unknown");
            None
        }
    };
    let init = read(1, c"/proc/1/ns/mnt");
    let kthreadd = std::fs::read_to_string("/proc/2/comm")
        .is_ok_and(|comm| comm.trim_end() == "kthreadd")
        .then(|| read(2, c"/proc/2/ns/mnt"))
        .flatten();
    [init, kthreadd]
}

/// Binds the writable path `path` onto itself, so that it stays writable
/// once the mount containing it is read-only. Runs in the helper.
///
/// The path is opened without following any symlink and bound through
/// that descriptor (`open_tree` plus `move_mount`, the fd-based form of
/// `mount(path, path, NULL, MS_BIND, NULL)`). A symlink that the
/// container placed on the way could otherwise redirect the bind, for
/// example `/tmp -> /` would stack a writable copy of the root over `/`.
/// Such paths fail with ELOOP instead. The new mount copies the flags of
/// the mount it comes from, so it is writable only when that mount still
/// is.
pub(crate) fn bind_onto_itself(step: u32, path: &CStr, containing_mount_id: u64) -> Record {
    let fd = match open_path_no_symlinks(path) {
        Ok(fd) => fd,
        Err(errno) => return Record::failed(step, Syscall::Openat2, errno),
    };
    let record = bind_descriptor(step, fd, containing_mount_id);
    close(fd);
    record
}

fn bind_descriptor(step: u32, fd: RawFd, containing_mount_id: u64) -> Record {
    let mount = match statx_mount(fd) {
        Ok(mount) => mount,
        Err(errno) => return Record::failed(step, Syscall::Statx, errno),
    };
    if mount.is_root {
        return Record::new(step, Status::AlreadyMountPoint);
    }
    if mount.id != containing_mount_id {
        return Record::new(step, Status::Moved);
    }

    // SAFETY: open_tree reads a NUL-terminated empty path and returns a new
    // descriptor or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd,
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Record::failed(step, Syscall::OpenTree, errno());
    }
    let tree = tree as RawFd;

    // SAFETY: move_mount reads two NUL-terminated empty paths; both
    // descriptors are open.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            fd,
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    let move_errno = errno();
    close(tree);
    if result != 0 {
        return Record::failed(step, Syscall::MoveMount, move_errno);
    }
    Record::new(step, Status::Done)
}

/// Sets `MOUNT_ATTR_RDONLY` on the one mount at `mount_point` (no
/// `AT_RECURSIVE`, so mounts below keep their own flags). Runs in the
/// helper.
///
/// The mount point is opened without following symlinks, and the
/// descriptor must be the root of the mount with id `mount_id`, so the
/// flag lands on the mount that mountinfo listed and nowhere else. The
/// flag is per mount: the superblock, and so the host's and other
/// containers' view of the same files, stays writable.
pub(crate) fn set_read_only(step: u32, mount_point: &CStr, mount_id: u64) -> Record {
    let fd = match open_path_no_symlinks(mount_point) {
        Ok(fd) => fd,
        Err(errno) => return Record::failed(step, Syscall::Openat2, errno),
    };
    let record = set_read_only_descriptor(step, fd, mount_id);
    close(fd);
    record
}

fn set_read_only_descriptor(step: u32, fd: RawFd, mount_id: u64) -> Record {
    match statx_mount(fd) {
        Ok(mount) if mount.is_root && mount.id == mount_id => {}
        Ok(_) => return Record::new(step, Status::Moved),
        Err(errno) => return Record::failed(step, Syscall::Statx, errno),
    }
    // SAFETY: all-zero bytes are a valid `mount_attr` (nothing set or cleared).
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_RDONLY;
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
    // SAFETY: mount_setattr reads a NUL-terminated empty path and
    // `size_of::<mount_attr>()` bytes of `attr`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            flags as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if result != 0 {
        return Record::failed(step, Syscall::MountSetattr, errno());
    }
    Record::new(step, Status::Done)
}

/// Calls `stat` on `path`, following symlinks. Runs in the helper, whose
/// root is the namespace's root after `setns`, so absolute symlinks
/// resolve inside the container.
pub(crate) fn stat_path(step: u32, path: &CStr) -> Record {
    // SAFETY: all-zero bytes are a valid `stat`.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a live buffer.
    if unsafe { libc::stat(path.as_ptr(), &mut stat) } != 0 {
        return Record::failed(step, Syscall::Stat, errno());
    }
    Record {
        dev: stat.st_dev,
        ino: stat.st_ino,
        ..Record::new(step, Status::Done)
    }
}

/// The mount that a descriptor is on, from statx(2).
struct MountOfDescriptor {
    id: u64,
    /// Whether the descriptor is the root of that mount, i.e. its mount
    /// point.
    is_root: bool,
}

fn statx_mount(fd: RawFd) -> Result<MountOfDescriptor, i32> {
    // SAFETY: all-zero bytes are a valid `statx`.
    let mut statx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx reads a NUL-terminated empty path and writes one
    // `statx` into the live buffer.
    let result = unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut statx as *mut libc::statx,
        )
    };
    if result != 0 {
        return Err(errno());
    }
    let root_attribute = libc::STATX_ATTR_MOUNT_ROOT as u64;
    // Kernels before 5.8 fill in neither field.
    if statx.stx_mask & libc::STATX_MNT_ID == 0 || statx.stx_attributes_mask & root_attribute == 0 {
        return Err(libc::ENOSYS);
    }
    Ok(MountOfDescriptor {
        id: statx.stx_mnt_id,
        is_root: statx.stx_attributes & root_attribute != 0,
    })
}

/// Opens `path` as an `O_PATH` descriptor with `RESOLVE_NO_SYMLINKS`:
/// the lookup fails with ELOOP at any symlink, the last component
/// included. Returns the errno on failure.
fn open_path_no_symlinks(path: &CStr) -> Result<RawFd, i32> {
    // SAFETY: all-zero bytes are a valid `open_how`.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: openat2 reads the NUL-terminated path and
    // `size_of::<open_how>()` bytes of `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    Ok(fd as RawFd)
}

fn close(fd: RawFd) {
    // SAFETY: the caller opened `fd` and uses it no more.
    unsafe { libc::close(fd) };
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

enum ReadFailure {
    TimedOut,
    Io(&'static str, io::Error),
}

/// Reads from the pipe until `expected` bytes arrived, the helper closed
/// its end, or [`HELPER_TIMEOUT`] passed.
fn read_records(fd: &OwnedFd, buffer: &mut Vec<u8>, expected: usize) -> Result<(), ReadFailure> {
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let mut chunk = [0u8; 4096];
    while buffer.len() < expected {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadFailure::TimedOut);
        }
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = remaining.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one live pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReadFailure::Io("poll", error));
        }
        if ready == 0 {
            return Err(ReadFailure::TimedOut);
        }
        // SAFETY: `chunk` is a live buffer of its full length.
        let count = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if count < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReadFailure::Io("read", error));
        }
        if count == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..count as usize]);
    }
    Ok(())
}

/// Waits for the helper and returns its raw wait status.
fn wait_for(child: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int; `child` is our own child.
        if unsafe { libc::waitpid(child, &mut status, 0) } == child {
            return Ok(status);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn describe_wait_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are new descriptors with no other owner.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_at(dir: Option<BorrowedFd<'_>>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let dir = dir.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `path` is NUL-terminated; openat returns a new descriptor or -1.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat succeeded, so `fd` is a new descriptor with no other owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Stats a namespace file: `path` below `dir`, or `dir` itself when
/// `path` is empty.
fn stat_namespace(
    pid: u32,
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
) -> Result<NamespaceId, MountNsError> {
    let dir_fd = dir.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    let flags = if path.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: all-zero bytes are a valid `stat`.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a live buffer.
    if unsafe { libc::fstatat(dir_fd, path.as_ptr(), &mut stat, flags) } != 0 {
        return Err(proc_error(pid, path, io::Error::last_os_error()));
    }
    Ok(NamespaceId::of(&stat))
}

/// Builds the error for a failed open or read below `/proc`. Paths
/// relative to `/proc/PID` are named in full.
fn proc_error(pid: u32, path: &CStr, source: io::Error) -> MountNsError {
    let path = path.to_string_lossy();
    let path = if path.starts_with('/') {
        PathBuf::from(path.as_ref())
    } else {
        PathBuf::from(format!("/proc/{pid}/{path}"))
    };
    MountNsError::Proc { pid, path, source }
}

fn helper_error(pid: u32, syscall: &'static str, source: io::Error) -> MountNsError {
    MountNsError::Helper {
        pid,
        syscall,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let record = Record {
            step: 7,
            status: Status::Failed,
            syscall: Syscall::MountSetattr,
            errno: libc::EBUSY,
            dev: 0x0123_4567_89ab_cdef,
            ino: u64::MAX,
        };
        assert_eq!(Record::decode(&record.encode()), Some(record));
    }

    #[test]
    fn record_with_unknown_status_is_rejected() {
        let mut bytes = Record::new(0, Status::Done).encode();
        bytes[4..8].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(Record::decode(&bytes), None);
    }
}
