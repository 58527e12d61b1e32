//! Reading `/proc/self/mountinfo` (format in proc(5)).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// Per-superblock options, such as `rw,memory` for a cgroup v1 hierarchy.
    pub super_options: String,
}

/// Lists the mounts of this process's mount namespace, in mount order.
pub fn mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
    text.lines()
        .map(|line| parse_line(line).with_context(|| format!("invalid mountinfo line {line:?}")))
        .collect()
}

/// Lists mount points at or below `dir`, deepest first, so that unmounting
/// them in order never meets a busy parent.
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut points: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|mount| mount.mount_point)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    Ok(points)
}

fn parse_line(line: &str) -> Option<Mount> {
    // Fields: id parent major:minor root mount-point options [optional...] - type source super-options
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let mut after = after.split(' ');
    let fs_type = after.next()?;
    let _source = after.next()?;
    let super_options = after.next().unwrap_or("");
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: fs_type.to_string(),
        super_options: super_options.to_string(),
    })
}

/// Decodes the `\ooo` octal escapes that the kernel writes for space, tab,
/// newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match escape
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) => {
                decoded.push(byte);
                i += 4;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cgroup_v1_line() {
        let line = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        let mount = parse_line(line).expect("valid line");
        assert_eq!(mount.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mount.fs_type, "cgroup");
        assert_eq!(mount.super_options, "rw,memory");
    }

    #[test]
    fn parse_line_with_optional_fields_and_escape() {
        let line =
            "90 23 0:50 / /tmp/a\\040b rw shared:5 master:1 - overlay overlay rw,lowerdir=/x";
        let mount = parse_line(line).expect("valid line");
        assert_eq!(mount.mount_point, Path::new("/tmp/a b"));
        assert_eq!(mount.fs_type, "overlay");
    }
}
