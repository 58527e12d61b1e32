//! Read-only enforcement through mount flags, for kernels that refuse BPF
//! LSM programs: the agent makes every mount of a running container
//! read-only from outside, except the paths its policy declares writable
//! and the kernel's pseudo-filesystems. The kernel then fails every
//! mutation there (create, write, truncate, unlink, rename, mkdir, link,
//! symlink, chmod, chown) with EROFS.
//!
//! The changes happen inside the container's mount namespace, entered by
//! a forked helper process (see `helper`), and never through
//! `/proc/PID/root`, which from the host resolves to mounts outside that
//! namespace. The only mount changes made are per-mount flags
//! (`mount_setattr(2)` with `MOUNT_ATTR_RDONLY`) and binds of writable
//! paths onto themselves. Superblock flags are never touched, because the
//! files that runtimes bind into containers (`/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`) share their superblock with the
//! host's root file system.
//!
//! Mount flags last as long as the mount namespace: each container start or
//! restart gets a new one, so the caller applies the change again each
//! time. A container with `CAP_SYS_ADMIN` can undo the flags.
//!
//! [`make_read_only`] and [`stat_in_container`] block for a fork and a
//! wait (0.2 to 5 ms per call measured on a 2-core VM with real pods), so
//! async code calls them through `tokio::task::spawn_blocking`.

mod helper;
mod mountinfo;
pub mod namespaces;
mod plan;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use helper::{Record, Status, Syscall, Target};
use mountinfo::MountEntry;
use plan::Disposition;

/// Errors that stop an operation on a container's mount namespace. Failures
/// on single mounts are not errors: [`ReadOnlyReport`] lists them.
#[derive(Debug, thiserror::Error)]
pub enum MountNsError {
    #[error(
        "refusing to act on the mounts of pid {pid}: pid 0 is no process and pid 1 is the host's init"
    )]
    ReservedPid { pid: u32 },
    #[error(
        "refusing to act on the mounts of pid {pid}: it is in the same mount namespace as this process, so a change would hit this process's own mounts"
    )]
    SameMountNamespace { pid: u32 },
    #[error(
        "refusing to act on the mounts of pid {pid}: it is in the host's mount namespace, that of pid {host_pid} (1 is the host's init, 2 the kernel's kthreadd)"
    )]
    HostMountNamespace { pid: u32, host_pid: u32 },
    #[error("invalid path {} for pid {pid}: {reason}", path.display())]
    InvalidPath {
        pid: u32,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("failed to read {} for pid {pid}; the process may have exited", path.display())]
    Proc {
        pid: u32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid line {line} in /proc/{pid}/mountinfo: {text:?}")]
    InvalidMountInfo { pid: u32, line: usize, text: String },
    #[error("/proc/{pid}/mountinfo lists no mount that contains the writable path {}", path.display())]
    NoContainingMount { pid: u32, path: PathBuf },
    #[error("pid {pid} changed its mount namespace while its mountinfo was read; try again")]
    NamespaceChanged { pid: u32 },
    #[error("setns(CLONE_NEWNS) into the mount namespace of pid {pid} failed")]
    Setns {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "after setns(CLONE_NEWNS) the helper process for pid {pid} was not in that process's mount namespace, so it stopped before changing anything"
    )]
    WrongNamespace { pid: u32 },
    #[error("{syscall} failed in the helper process for pid {pid}")]
    Helper {
        pid: u32,
        syscall: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the helper process for pid {pid} did not finish within {timeout:?} and was killed; mounts it reached may have changed, so call again for a full report"
    )]
    HelperTimedOut { pid: u32, timeout: Duration },
    #[error(
        "the helper process for pid {pid} sent {received} of {expected} results and ended with {status}; mounts it reached may have changed, so call again for a full report"
    )]
    HelperIncomplete {
        pid: u32,
        received: usize,
        expected: usize,
        status: String,
    },
    #[error("stat of {} in the mount namespace of pid {pid} failed", path.display())]
    Stat {
        pid: u32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reason that [`make_read_only`] left a mount as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The mount is at or below a path declared writable.
    Writable,
    /// A kernel pseudo-filesystem (proc, sysfs, cgroup, devpts, the tmpfs
    /// on `/dev` and similar), whose files are kernel interfaces rather
    /// than stored data.
    PseudoFilesystem { fs_type: String },
}

/// Outcome of [`make_read_only`], one entry per mount of the container and
/// per writable path. Mount points are as the container sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOnlyReport {
    /// Mounts that this call made read-only.
    pub made_read_only: Vec<PathBuf>,
    /// Mounts that were read-only already, per field 6 of mountinfo.
    pub already_read_only: Vec<PathBuf>,
    /// Mounts left writable on purpose.
    pub skipped: Vec<(PathBuf, SkipReason)>,
    /// Writable paths that this call bound onto themselves, so that they
    /// stay writable below a read-only mount. A bind copies the flags of
    /// the mount it is made from, so a path first declared writable after
    /// its mount became read-only is bound read-only.
    pub bound_writable: Vec<PathBuf>,
    /// Writable paths that do not exist in the container. Nothing is
    /// created for them.
    pub missing_writable: Vec<PathBuf>,
    /// Mounts and writable paths that could not be handled, each with an
    /// errno. Most are the errno of the failed system call, such as EBUSY
    /// from `mount_setattr` when a file on the mount is open for writing,
    /// or ELOOP when the path passes a symlink. ESTALE means the path no
    /// longer reaches the mount listed in mountinfo (moved, stacked over,
    /// or a parent directory replaced). EXDEV marks a writable path on a
    /// shared mount, where a bind would propagate to peer mounts outside
    /// the container.
    pub failed: Vec<(PathBuf, i32)>,
}

impl ReadOnlyReport {
    /// Returns whether every mount that should be read-only is, and every
    /// existing writable path was handled. A failed bind leaves its path
    /// read-only rather than the other way round.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// Returns the mounts that failed with EBUSY because a file on them is
    /// open for writing. Calling [`make_read_only`] again after the writer
    /// closed it finishes the job.
    pub fn busy(&self) -> Vec<&Path> {
        self.failed
            .iter()
            .filter(|(_, errno)| *errno == libc::EBUSY)
            .map(|(path, _)| path.as_path())
            .collect()
    }
}

/// Identity of a file as the kernel sees it: device and inode number.
/// Equal identities mean the same file, whatever paths, hard links or
/// symlinks lead to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Device number in the kernel's encoding, `major << 20 | minor`, the
    /// value of `super_block.s_dev` that kernel programs read. `stat(2)`
    /// returns another encoding; [`FileIdentity::from_stat`] converts it.
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    /// Builds an identity from `st_dev` and `st_ino` as `stat(2)` returns
    /// them, such as the `%d %i` output of `stat -c`.
    pub fn from_stat(st_dev: u64, st_ino: u64) -> Self {
        Self {
            dev: kernel_dev(st_dev),
            ino: st_ino,
        }
    }
}

/// Number of minor bits in the kernel's `dev_t` (`MINORBITS` in
/// `include/linux/kdev_t.h`).
const KERNEL_MINOR_BITS: u32 = 20;

/// Converts a user-space `st_dev` into the kernel's internal encoding
/// (`MKDEV(major, minor)`).
pub fn kernel_dev(st_dev: u64) -> u64 {
    (u64::from(libc::major(st_dev)) << KERNEL_MINOR_BITS) | u64::from(libc::minor(st_dev))
}

/// Makes every mount in the mount namespace of `pid` read-only, except the
/// `writable` paths (and mounts below them), the kernel's
/// pseudo-filesystems, and mounts already read-only.
///
/// Steps, in this order because a bind copies the flags of the mount it is
/// made from:
/// 1. Each writable path that is not a mount point yet is bound onto
///    itself, so that it gets a mount of its own, still writable. A
///    missing path is reported, and nothing is created for it.
/// 2. Every other mount gets `MOUNT_ATTR_RDONLY`, one mount at a time.
///
/// `/dev/shm` counts as ordinary storage, not as a pseudo-filesystem: it is
/// a tmpfs that the application writes to, so it becomes read-only unless
/// it is declared writable.
///
/// Calling it again changes nothing that is done already, so a caller
/// retries when [`ReadOnlyReport::is_complete`] is false, such as after
/// EBUSY. A process whose working directory already was inside a writable
/// path keeps resolving relative paths on the old, now read-only mount.
///
/// Fails before changing anything when `pid` is 0 or 1, when `pid` shares
/// this process's mount namespace or the host's (that of pid 1 or of
/// `kthreadd`, when readable), or when a writable path is not absolute or
/// contains `..`.
pub fn make_read_only(pid: u32, writable: &[PathBuf]) -> Result<ReadOnlyReport, MountNsError> {
    if pid == 0 || pid == 1 {
        return Err(MountNsError::ReservedPid { pid });
    }
    let writable = normalize_writable(pid, writable)?;
    let target = Target::open(pid)?;
    let mounts = parse_mountinfo(pid, &target.read_mountinfo()?)?;
    let plan = plan::build(&mounts, &writable)
        .map_err(|path| MountNsError::NoContainingMount { pid, path })?;

    // Everything the helper touches is built here, before the fork.
    let binds: Vec<(CString, u64)> = plan
        .binds
        .iter()
        .map(|step| (c_path(&step.path), step.containing_mount_id))
        .collect();
    let read_only_steps: Vec<(CString, u64)> = plan
        .read_only_steps
        .iter()
        .map(|step| (c_path(&step.mount_point), step.mount_id))
        .collect();
    let records = target.run(binds.len() + read_only_steps.len(), |writer| {
        let mut step = 0u32;
        for (path, containing_mount_id) in &binds {
            writer.send(helper::bind_onto_itself(step, path, *containing_mount_id));
            step = step.wrapping_add(1);
        }
        for (mount_point, mount_id) in &read_only_steps {
            writer.send(helper::set_read_only(step, mount_point, *mount_id));
            step = step.wrapping_add(1);
        }
    })?;

    let (bind_records, read_only_records) = records.split_at(binds.len());
    let mut report = ReadOnlyReport {
        already_read_only: plan.already_read_only,
        skipped: plan.skipped,
        ..ReadOnlyReport::default()
    };
    for path in plan.shared_parent {
        log_failure(pid, &path, "bind", Syscall::None, libc::EXDEV);
        report.failed.push((path, libc::EXDEV));
    }
    for (step, record) in plan.binds.into_iter().zip(bind_records) {
        record_bind(pid, &mut report, step.path, record);
    }
    for (step, record) in plan.read_only_steps.into_iter().zip(read_only_records) {
        record_read_only(pid, &mut report, step.mount_point, record);
    }
    Ok(report)
}

/// A mount that must stay unchanged, as the BPF LSM file programs find it:
/// by its mount id and the device of its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityMount {
    /// Mount id, field 1 of mountinfo, unique on the system while the
    /// mount exists.
    pub mount_id: u64,
    /// Device of the superblock in the kernel's encoding.
    pub dev: u64,
    pub mount_point: PathBuf,
}

/// Outcome of [`prepare_read_only_by_identity`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityReport {
    /// Mounts the LSM programs must keep unchanged: every mount that
    /// [`make_read_only`] would make read-only or finds read-only already.
    pub read_only: Vec<IdentityMount>,
    /// Devices of the superblocks behind the writable mounts: declared
    /// writable mount points and the mounts writable paths were bound from.
    pub writable_devs: Vec<u64>,
    /// As in [`ReadOnlyReport`].
    pub bound_writable: Vec<PathBuf>,
    pub missing_writable: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, i32)>,
}

impl IdentityReport {
    /// Returns whether every existing writable path got a mount of its own.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Prepares the container of `pid` for the BPF LSM read-only backend: binds
/// each writable path that is not a mount point yet onto itself, exactly as
/// [`make_read_only`] does, so that it gets a mount id of its own, and
/// returns the mounts whose ids the kernel must treat as read-only. Mount
/// flags are never changed: the LSM programs refuse the mutations.
///
/// A writable path whose bind fails stays on its read-only parent mount,
/// so a failure never makes more writable than declared. Fails before
/// changing anything for the same reasons as [`make_read_only`].
pub fn prepare_read_only_by_identity(pid: u32, writable: &[PathBuf]) -> Result<IdentityReport, MountNsError> {
    if pid == 0 || pid == 1 {
        return Err(MountNsError::ReservedPid { pid });
    }
    let writable = normalize_writable(pid, writable)?;
    let target = Target::open(pid)?;
    let mounts = parse_mountinfo(pid, &target.read_mountinfo()?)?;
    let plan = plan::build(&mounts, &writable)
        .map_err(|path| MountNsError::NoContainingMount { pid, path })?;
    let binds: Vec<(CString, u64)> = plan
        .binds
        .iter()
        .map(|step| (c_path(&step.path), step.containing_mount_id))
        .collect();
    let records = if binds.is_empty() {
        Vec::new()
    } else {
        target.run(binds.len(), |writer| {
            for (step, (path, containing_mount_id)) in (0u32..).zip(&binds) {
                writer.send(helper::bind_onto_itself(step, path, *containing_mount_id));
            }
        })?
    };
    let mut report = IdentityReport::default();
    for mount in &mounts {
        match plan::classify(mount, &writable) {
            Disposition::MakeReadOnly | Disposition::AlreadyReadOnly => report.read_only.push(IdentityMount {
                mount_id: mount.mount_id,
                dev: mount.dev,
                mount_point: mount.mount_point.clone(),
            }),
            Disposition::Skip(SkipReason::Writable) => report.writable_devs.push(mount.dev),
            Disposition::Skip(SkipReason::PseudoFilesystem { .. }) => {}
        }
    }
    for path in plan.shared_parent {
        log_failure(pid, &path, "bind", Syscall::None, libc::EXDEV);
        report.failed.push((path, libc::EXDEV));
    }
    for (step, record) in plan.binds.into_iter().zip(&records) {
        let mut bind_report = ReadOnlyReport::default();
        record_bind(pid, &mut bind_report, step.path, record);
        if !bind_report.bound_writable.is_empty() || record.status == Status::AlreadyMountPoint {
            if let Some(parent) = mounts.iter().find(|mount| mount.mount_id == step.containing_mount_id) {
                report.writable_devs.push(parent.dev);
            }
        }
        report.bound_writable.extend(bind_report.bound_writable);
        report.missing_writable.extend(bind_report.missing_writable);
        report.failed.extend(bind_report.failed);
    }
    report.writable_devs.sort_unstable();
    report.writable_devs.dedup();
    Ok(report)
}

fn record_bind(pid: u32, report: &mut ReadOnlyReport, path: PathBuf, record: &Record) {
    match record.status {
        Status::Done => report.bound_writable.push(path),
        // Bound by a concurrent call; the mount is writable as planned.
        Status::AlreadyMountPoint => {}
        Status::Failed
            if record.syscall == Syscall::Openat2
                && (record.errno == libc::ENOENT || record.errno == libc::ENOTDIR) =>
        {
            report.missing_writable.push(path);
        }
        Status::Moved => {
            log_failure(pid, &path, "bind", Syscall::Statx, libc::ESTALE);
            report.failed.push((path, libc::ESTALE));
        }
        Status::Failed | Status::WrongNamespace => {
            log_failure(pid, &path, "bind", record.syscall, record.errno);
            report.failed.push((path, record.errno));
        }
    }
}

fn record_read_only(pid: u32, report: &mut ReadOnlyReport, mount_point: PathBuf, record: &Record) {
    match record.status {
        Status::Done => report.made_read_only.push(mount_point),
        Status::Moved => {
            log_failure(pid, &mount_point, "read-only", Syscall::Statx, libc::ESTALE);
            report.failed.push((mount_point, libc::ESTALE));
        }
        Status::Failed | Status::AlreadyMountPoint | Status::WrongNamespace => {
            log_failure(pid, &mount_point, "read-only", record.syscall, record.errno);
            report.failed.push((mount_point, record.errno));
        }
    }
}

/// Logs one failed mount. EBUSY is expected while a file is open for
/// writing and the caller retries, so it is logged at debug level.
fn log_failure(pid: u32, path: &Path, action: &str, syscall: Syscall, errno: i32) {
    let error = io::Error::from_raw_os_error(errno);
    let mount_point = path.display();
    let syscall = syscall.name();
    if errno == libc::EBUSY {
        tracing::debug!(pid, %mount_point, action, syscall, %error, "mount busy, not changed");
    } else {
        tracing::warn!(pid, %mount_point, action, syscall, %error, "failed to change mount");
    }
}

/// Lists the mounts of `pid` that are writable although [`make_read_only`]
/// with the same `writable` paths would make them read-only. Reads the
/// per-mount flags (field 6) of `/proc/PID/mountinfo` and changes nothing.
/// An empty list means the container is fully read-only as intended.
pub fn verify_read_only(pid: u32, writable: &[PathBuf]) -> Result<Vec<PathBuf>, MountNsError> {
    if pid == 0 {
        return Err(MountNsError::ReservedPid { pid });
    }
    let writable = normalize_writable(pid, writable)?;
    let path = PathBuf::from(format!("/proc/{pid}/mountinfo"));
    let text = std::fs::read(&path).map_err(|source| MountNsError::Proc { pid, path, source })?;
    let mounts = parse_mountinfo(pid, &text)?;
    Ok(mounts
        .into_iter()
        .filter(|mount| plan::classify(mount, &writable) == Disposition::MakeReadOnly)
        .map(|mount| mount.mount_point)
        .collect())
}

/// Calls `stat(2)` on each of `paths` inside the mount namespace of `pid`,
/// following symlinks. The helper's root is the namespace's root, so an
/// absolute symlink resolves inside the container, as it does for the
/// container's own processes. Returns `None` for a path that does not
/// exist (ENOENT or ENOTDIR).
///
/// Rejects `pid` 0 and processes in this process's or the host's mount
/// namespace, where the result would describe the host's files.
pub fn stat_in_container(
    pid: u32,
    paths: &[PathBuf],
) -> Result<Vec<Option<FileIdentity>>, MountNsError> {
    if pid == 0 {
        return Err(MountNsError::ReservedPid { pid });
    }
    for path in paths {
        let reason = if !path.is_absolute() {
            Some("the path is not absolute")
        } else if path.as_os_str().as_bytes().contains(&0) {
            Some("the path contains a NUL byte")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(MountNsError::InvalidPath {
                pid,
                path: path.clone(),
                reason,
            });
        }
    }
    let target = Target::open(pid)?;
    let c_paths: Vec<CString> = paths.iter().map(|path| c_path(path)).collect();
    let records = target.run(c_paths.len(), |writer| {
        for (step, path) in (0u32..).zip(&c_paths) {
            writer.send(helper::stat_path(step, path));
        }
    })?;
    paths
        .iter()
        .zip(&records)
        .map(|(path, record)| match record.status {
            Status::Done => Ok(Some(FileIdentity::from_stat(record.dev, record.ino))),
            _ if record.errno == libc::ENOENT || record.errno == libc::ENOTDIR => Ok(None),
            _ => Err(MountNsError::Stat {
                pid,
                path: path.clone(),
                source: io::Error::from_raw_os_error(record.errno),
            }),
        })
        .collect()
}

fn normalize_writable(pid: u32, writable: &[PathBuf]) -> Result<Vec<PathBuf>, MountNsError> {
    let mut normalized = Vec::with_capacity(writable.len());
    for path in writable {
        let path = plan::normalize_absolute(path).map_err(|reason| MountNsError::InvalidPath {
            pid,
            path: path.clone(),
            reason,
        })?;
        if !normalized.contains(&path) {
            normalized.push(path);
        }
    }
    Ok(normalized)
}

fn parse_mountinfo(pid: u32, text: &[u8]) -> Result<Vec<MountEntry>, MountNsError> {
    mountinfo::parse(text).map_err(|invalid| MountNsError::InvalidMountInfo {
        pid,
        line: invalid.number,
        text: invalid.text,
    })
}

/// Converts a path that the caller checked, or that mountinfo listed, into
/// a C string. Neither can contain a NUL byte.
fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL byte")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_of_disk_partition() {
        let st_dev = libc::makedev(8, 1);
        assert_eq!(kernel_dev(st_dev), (8 << 20) | 1);
    }

    #[test]
    fn kernel_dev_of_anonymous_device() {
        // Overlay and tmpfs mounts get major 0 and a small minor.
        let st_dev = libc::makedev(0, 91);
        assert_eq!(kernel_dev(st_dev), 91);
    }

    #[test]
    fn kernel_dev_with_large_major_and_minor() {
        // NVMe partitions use major 259; minors above 255 take the high
        // bits of the user-space encoding.
        let st_dev = libc::makedev(259, 0x1_2345);
        assert_eq!(st_dev, ((0x1_2345_u64 >> 8) << 20) | (259 << 8) | 0x45);
        assert_eq!(kernel_dev(st_dev), (259 << 20) | 0x1_2345);
    }

    #[test]
    fn file_identity_from_stat_of_root() {
        let metadata = std::fs::metadata("/").expect("stat /");
        let identity = FileIdentity::from_stat(
            std::os::unix::fs::MetadataExt::dev(&metadata),
            std::os::unix::fs::MetadataExt::ino(&metadata),
        );
        let major = libc::major(std::os::unix::fs::MetadataExt::dev(&metadata));
        let minor = libc::minor(std::os::unix::fs::MetadataExt::dev(&metadata));
        assert_eq!(identity.dev >> 20, u64::from(major));
        assert_eq!(identity.dev & 0xf_ffff, u64::from(minor));
    }

    #[test]
    fn make_read_only_rejects_reserved_pids() {
        for pid in [0, 1] {
            let error = make_read_only(pid, &[]).expect_err("reserved pid");
            assert!(
                matches!(error, MountNsError::ReservedPid { pid: found } if found == pid),
                "{error}"
            );
        }
    }

    #[test]
    fn make_read_only_rejects_relative_writable_path() {
        let error = make_read_only(12345, &[PathBuf::from("tmp")]).expect_err("relative path");
        assert!(matches!(error, MountNsError::InvalidPath { .. }), "{error}");
    }

    #[test]
    fn report_busy_lists_ebusy_only() {
        let report = ReadOnlyReport {
            failed: vec![
                (PathBuf::from("/"), libc::EBUSY),
                (PathBuf::from("/data"), libc::ESTALE),
            ],
            ..ReadOnlyReport::default()
        };
        assert!(!report.is_complete());
        assert_eq!(report.busy(), [Path::new("/")]);
    }
}
