//! Plan of the changes to a container's mounts (binds of writable paths,
//! read-only flags, mounts left alone), decided from its mountinfo before
//! the helper process starts.

use std::path::{Component, Path, PathBuf};

use super::SkipReason;
use super::mountinfo::MountEntry;

/// Types of the kernel's pseudo-filesystems, which are interfaces to the
/// kernel rather than stored files, so their mounts stay as they are.
/// Writing to them changes no file of the image or of a volume, and a
/// runtime already mounts the sensitive ones (`/sys`, cgroup hierarchies)
/// read-only where the container must not write.
const PSEUDO_FILESYSTEMS: [&str; 16] = [
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "bpf",
    "pstore",
    "hugetlbfs",
    "fusectl",
    "configfs",
    "binfmt_misc",
    "nsfs",
];

/// Action for one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    MakeReadOnly,
    AlreadyReadOnly,
    Skip(SkipReason),
}

/// Decides what to do with `mount`. `writable` contains normalized
/// absolute paths, and a mount at or below one of them stays writable.
pub(crate) fn classify(mount: &MountEntry, writable: &[PathBuf]) -> Disposition {
    if writable
        .iter()
        .any(|path| mount.mount_point.starts_with(path))
    {
        return Disposition::Skip(SkipReason::Writable);
    }
    if is_pseudo_filesystem(mount) {
        return Disposition::Skip(SkipReason::PseudoFilesystem {
            fs_type: mount.fs_type.clone(),
        });
    }
    if mount.read_only {
        return Disposition::AlreadyReadOnly;
    }
    Disposition::MakeReadOnly
}

/// A tmpfs stores whatever the application writes, `/dev` and `/dev/shm`
/// included (a program could keep files or new device nodes in `/dev`), so
/// it is not a pseudo-filesystem here and becomes read-only unless
/// declared writable. Writes to a device such as `/dev/null` still work on
/// a read-only mount, because the mount flag only guards changes to the
/// file system itself.
fn is_pseudo_filesystem(mount: &MountEntry) -> bool {
    PSEUDO_FILESYSTEMS.contains(&mount.fs_type.as_str())
}

/// A writable path that is not a mount point yet, to be bound onto itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindStep {
    pub path: PathBuf,
    /// Id of the mount that contains `path` now. The helper checks that
    /// the path still resolves onto this mount before binding.
    pub containing_mount_id: u64,
}

/// A mount to make read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadOnlyStep {
    pub mount_point: PathBuf,
    pub mount_id: u64,
}

/// Steps for the helper process, and the outcomes known without it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub binds: Vec<BindStep>,
    /// Writable paths on a shared mount. A bind below a shared mount
    /// propagates to every peer of that mount, which can be a mount in the
    /// host's namespace, so these are left unbound.
    pub shared_parent: Vec<PathBuf>,
    pub read_only_steps: Vec<ReadOnlyStep>,
    pub already_read_only: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, SkipReason)>,
}

/// Builds the plan for a mount table in mountinfo order and a list of
/// normalized writable paths. Fails with the writable path when no mount
/// contains it, which happens only when the mount table has no `/`.
pub(crate) fn build(mounts: &[MountEntry], writable: &[PathBuf]) -> Result<Plan, PathBuf> {
    let mut plan = Plan::default();
    for path in writable {
        if mounts.iter().any(|mount| &mount.mount_point == path) {
            continue;
        }
        // The deepest mount point above `path` contains it. Among mounts
        // stacked on one point, a lookup reaches the last one listed.
        let containing = mounts
            .iter()
            .filter(|mount| path.starts_with(&mount.mount_point))
            .max_by_key(|mount| mount.mount_point.components().count())
            .ok_or_else(|| path.clone())?;
        if containing.shared {
            plan.shared_parent.push(path.clone());
        } else {
            plan.binds.push(BindStep {
                path: path.clone(),
                containing_mount_id: containing.mount_id,
            });
        }
    }
    for mount in mounts {
        match classify(mount, writable) {
            Disposition::MakeReadOnly => plan.read_only_steps.push(ReadOnlyStep {
                mount_point: mount.mount_point.clone(),
                mount_id: mount.mount_id,
            }),
            Disposition::AlreadyReadOnly => plan.already_read_only.push(mount.mount_point.clone()),
            Disposition::Skip(reason) => plan.skipped.push((mount.mount_point.clone(), reason)),
        }
    }
    Ok(plan)
}

/// Returns `path` with repeated and trailing slashes and `.` components
/// removed. Fails with the reason when the path is relative, contains `..`
/// (which the helper's lookups would resolve differently from this
/// module's string comparisons) or contains a NUL byte.
pub(crate) fn normalize_absolute(path: &Path) -> Result<PathBuf, &'static str> {
    if !path.is_absolute() {
        return Err("the path is not absolute");
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("the path contains a NUL byte");
    }
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Normal(_) => normalized.push(component),
            Component::CurDir => {}
            Component::ParentDir => return Err("the path contains `..`"),
            Component::Prefix(_) => return Err("the path has a Windows prefix"),
        }
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: u64, mount_point: &str, fs_type: &str, read_only: bool) -> MountEntry {
        MountEntry {
            mount_id: id,
            dev: 0,
            mount_point: PathBuf::from(mount_point),
            read_only,
            shared: false,
            fs_type: fs_type.to_string(),
        }
    }

    /// Returns the mount table of a containerd pod on a hybrid-cgroup host,
    /// shortened, plus a read-only volume at `/data`.
    fn pod_mounts() -> Vec<MountEntry> {
        vec![
            mount(229, "/", "overlay", false),
            mount(230, "/proc", "proc", false),
            mount(231, "/dev", "tmpfs", false),
            mount(232, "/dev/pts", "devpts", false),
            mount(233, "/dev/mqueue", "mqueue", false),
            mount(234, "/sys", "sysfs", true),
            mount(235, "/sys/fs/cgroup", "tmpfs", false),
            mount(236, "/sys/fs/cgroup/cpu", "cgroup", true),
            mount(245, "/etc/hostname", "ext4", false),
            mount(246, "/etc/hosts", "ext4", false),
            mount(247, "/etc/resolv.conf", "ext4", false),
            mount(248, "/dev/shm", "tmpfs", false),
            mount(249, "/data", "ext4", true),
        ]
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn classify_dev_tmpfs_is_made_read_only() {
        let disposition = classify(&mount(231, "/dev", "tmpfs", false), &[]);
        assert_eq!(disposition, Disposition::MakeReadOnly);
    }

    #[test]
    fn classify_dev_shm_is_made_read_only() {
        let disposition = classify(&mount(248, "/dev/shm", "tmpfs", false), &[]);
        assert_eq!(disposition, Disposition::MakeReadOnly);
    }

    #[test]
    fn classify_below_writable_is_skipped() {
        let writable = paths(&["/var/cache"]);
        let below = classify(&mount(300, "/var/cache/x", "ext4", false), &writable);
        assert_eq!(below, Disposition::Skip(SkipReason::Writable));
        let sibling = classify(&mount(301, "/var/cachex", "ext4", false), &writable);
        assert_eq!(
            sibling,
            Disposition::MakeReadOnly,
            "prefix must match whole components"
        );
    }

    #[test]
    fn classify_read_only_mount() {
        let disposition = classify(&mount(249, "/data", "ext4", true), &[]);
        assert_eq!(disposition, Disposition::AlreadyReadOnly);
    }

    #[test]
    fn build_pod_plan_with_writable_tmp() {
        let plan = build(&pod_mounts(), &paths(&["/tmp"])).expect("plan");
        assert_eq!(
            plan.binds,
            vec![BindStep {
                path: PathBuf::from("/tmp"),
                containing_mount_id: 229
            }]
        );
        let changed: Vec<&Path> = plan
            .read_only_steps
            .iter()
            .map(|step| step.mount_point.as_path())
            .collect();
        assert_eq!(
            changed,
            [
                "/",
                "/dev",
                "/sys/fs/cgroup",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm"
            ]
            .map(Path::new)
        );
        assert_eq!(plan.already_read_only, paths(&["/data"]));
        let skipped: Vec<&Path> = plan
            .skipped
            .iter()
            .map(|(path, _)| path.as_path())
            .collect();
        assert_eq!(
            skipped,
            [
                "/proc",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup/cpu"
            ]
            .map(Path::new)
        );
        assert!(plan.shared_parent.is_empty());
    }

    #[test]
    fn build_no_bind_for_existing_mount_point() {
        let mut mounts = pod_mounts();
        mounts.push(mount(250, "/tmp", "overlay", false));
        let plan = build(&mounts, &paths(&["/tmp"])).expect("plan");
        assert!(plan.binds.is_empty(), "{:?}", plan.binds);
        assert!(
            plan.skipped
                .contains(&(PathBuf::from("/tmp"), SkipReason::Writable))
        );
    }

    #[test]
    fn build_bind_uses_deepest_containing_mount() {
        let plan = build(&pod_mounts(), &paths(&["/data/cache"])).expect("plan");
        assert_eq!(plan.binds[0].containing_mount_id, 249);
    }

    #[test]
    fn build_bind_uses_top_of_stacked_mounts() {
        let mut mounts = pod_mounts();
        mounts.push(mount(260, "/data", "tmpfs", false));
        let plan = build(&mounts, &paths(&["/data/cache"])).expect("plan");
        assert_eq!(plan.binds[0].containing_mount_id, 260);
    }

    #[test]
    fn build_refuses_bind_on_shared_mount() {
        let mut mounts = pod_mounts();
        mounts[0].shared = true;
        let plan = build(&mounts, &paths(&["/tmp"])).expect("plan");
        assert!(plan.binds.is_empty());
        assert_eq!(plan.shared_parent, paths(&["/tmp"]));
    }

    #[test]
    fn build_fails_without_root_mount() {
        let mounts = vec![mount(230, "/proc", "proc", false)];
        let error = build(&mounts, &paths(&["/tmp"])).expect_err("no mount contains /tmp");
        assert_eq!(error, PathBuf::from("/tmp"));
    }

    #[test]
    fn normalize_cleans_slashes_and_dots() {
        let normalized = normalize_absolute(Path::new("//var/./cache//")).expect("valid");
        assert_eq!(normalized, Path::new("/var/cache"));
    }

    #[test]
    fn normalize_rejects_relative_parent_and_nul() {
        assert!(normalize_absolute(Path::new("tmp")).is_err());
        assert!(normalize_absolute(Path::new("/tmp/../etc")).is_err());
        assert!(normalize_absolute(Path::new("/tmp/a\0b")).is_err());
    }
}
