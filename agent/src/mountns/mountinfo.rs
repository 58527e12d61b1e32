//! Parsing of `/proc/PID/mountinfo`, whose format proc_pid_mountinfo(5)
//! describes.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

/// One line of a mountinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// Mount id (field 1), the number that statx(2) returns as `stx_mnt_id`.
    pub mount_id: u64,
    /// Device of the mount's superblock (field 3, `major:minor`) in the
    /// kernel's encoding, the value of `super_block.s_dev`.
    pub dev: u64,
    /// Mount point (field 5), relative to the root of the process whose
    /// mountinfo this is.
    pub mount_point: PathBuf,
    /// Whether the per-mount options (field 6) contain `ro`. The superblock
    /// options at the end of the line do not count.
    pub read_only: bool,
    /// Whether an optional field reads `shared:N`: the mount is in a peer
    /// group, and mounts attached below it propagate to its peers.
    pub shared: bool,
    pub fs_type: String,
}

/// Error of [`parse`]: the 1-based number and the text of the first invalid
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidLine {
    pub number: usize,
    pub text: String,
}

/// Parses a whole mountinfo file, keeping the kernel's order (parents
/// before their children).
pub(crate) fn parse(text: &[u8]) -> Result<Vec<MountEntry>, InvalidLine> {
    text.split(|&byte| byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            parse_line(line).ok_or_else(|| InvalidLine {
                number: index + 1,
                text: String::from_utf8_lossy(line).into_owned(),
            })
        })
        .collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    // Fields: id parent major:minor root mount-point options [optional...] - type source super-options
    let mut fields = line.split(|&byte| byte == b' ');
    let mount_id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let _parent_id = fields.next()?;
    let (major, minor) = std::str::from_utf8(fields.next()?).ok()?.split_once(':')?;
    let dev = (major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?;
    let _root = fields.next()?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.next()?)));
    let read_only = fields
        .next()?
        .split(|&byte| byte == b',')
        .any(|option| option == b"ro");
    let mut shared = false;
    loop {
        let field = fields.next()?;
        if field == b"-" {
            break;
        }
        shared |= field.starts_with(b"shared:");
    }
    let fs_type = String::from_utf8_lossy(fields.next()?).into_owned();
    Some(MountEntry {
        mount_id,
        dev,
        mount_point,
        read_only,
        shared,
        fs_type,
    })
}

/// Decodes the `\ooo` octal escapes that the kernel writes for space, tab,
/// newline and backslash.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let escaped = field
            .get(i + 1..i + 4)
            .filter(|_| field[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 4;
            }
            None => {
                decoded.push(field[i]);
                i += 1;
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn parse_overlay_root() {
        let text = b"229 144 0:91 / / rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b\n";
        let mounts = parse(text).expect("valid mountinfo");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_id, 229);
        assert_eq!(mounts[0].mount_point, Path::new("/"));
        assert!(!mounts[0].read_only);
        assert!(!mounts[0].shared);
        assert_eq!(mounts[0].fs_type, "overlay");
    }

    #[test]
    fn parse_read_only_per_mount_not_superblock() {
        let text = b"234 229 0:88 / /sys ro,nosuid - sysfs sysfs ro\n\
                     236 235 0:29 /x /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup ro,cpu\n";
        let mounts = parse(text).expect("valid mountinfo");
        assert!(mounts[0].read_only);
        assert!(!mounts[1].read_only, "superblock ro must not count");
    }

    #[test]
    fn parse_optional_fields_and_escapes() {
        let text = b"90 23 0:50 / /data/a\\040b rw shared:5 master:1 - ext4 /dev/vda rw\n";
        let mounts = parse(text).expect("valid mountinfo");
        assert_eq!(mounts[0].mount_point, Path::new("/data/a b"));
        assert!(mounts[0].shared);
        assert_eq!(mounts[0].fs_type, "ext4");
    }

    #[test]
    fn parse_master_is_not_shared() {
        let text = b"90 23 0:50 / /data rw master:1 - ext4 /dev/vda rw\n";
        let mounts = parse(text).expect("valid mountinfo");
        assert!(!mounts[0].shared);
    }

    #[test]
    fn parse_rejects_truncated_line() {
        let text = b"229 144 0:91 / / rw,relatime - overlay overlay rw\n230 229 0:93 / /proc\n";
        let error = parse(text).expect_err("second line is truncated");
        assert_eq!(error.number, 2);
        assert_eq!(error.text, "230 229 0:93 / /proc");
    }
}
