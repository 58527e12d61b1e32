//! Allowed programs as the exec tracepoint program reads them, and the exec
//! event record it sends.
//!
//! A program is matched by identity: the device and inode of the file the
//! process now runs, so a hard link under another name matches and a copy
//! does not. Deny lists also match by path, a hash of the path the
//! `execve` call named.

use crate::{EventHeader, ExecPath};

/// `ExecRuleKey::kind`: `first` is the kernel device number of the file's
/// superblock (`major << 20 | minor`), `second` the inode number.
pub const RULE_IDENTITY: u32 = 1;
/// `ExecRuleKey::kind`: `first` is `path_hash` of the path, `second` is 0.
pub const RULE_PATH: u32 = 2;

/// `ExecRuleValue::lists` bits.
pub const LIST_ALLOW: u32 = 1;
pub const LIST_DENY: u32 = 2;

/// `EventHeader::rule` of an exec event: the list in the bits above
/// `RULE_LIST_SHIFT` (`LIST_ALLOW` or `LIST_DENY`), the index in that list
/// below.
pub const RULE_LIST_SHIFT: u32 = 16;

/// `ExecEvent::flags` bit: the program is not on an allow list, but the
/// agent had not yet looked up the allowed files of this container, so the
/// refusal was only reported.
pub const EXEC_EVENT_UNRESOLVED: u32 = 1;

/// `CgroupPolicies::flags` bit: the agent has looked up the identities of
/// the files on the allow lists of this container, so the kernel enforces
/// them. Before that, a program missing from an allow list is reported
/// with `EXEC_EVENT_UNRESOLVED` and allowed.
pub const CGROUP_EXEC_RESOLVED: u32 = 1;

/// Key of `EXEC_RULES`, a hash of the files on each policy's lists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecRuleKey {
    pub slot: u32,
    /// `RULE_IDENTITY` or `RULE_PATH`.
    pub kind: u32,
    pub first: u64,
    pub second: u64,
}

/// Value of `EXEC_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRuleValue {
    /// `LIST_ALLOW`, `LIST_DENY` or both.
    pub lists: u32,
    /// Index of the entry in the allow list.
    pub allow_index: u32,
    /// Index of the entry in the deny list.
    pub deny_index: u32,
}

/// Exec part of one policy: value of `EXEC_POLICIES`, by policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecPolicy {
    /// A `Mode`.
    pub mode: u32,
    /// 1 when the policy has an exec section.
    pub restricted: u32,
    /// 1 when the policy has an allow list, so that only its files run.
    pub has_allow: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Offsets of the kernel struct members that lead from the current task to
/// the device and inode of its executable, read from the kernel's BTF by
/// the agent and set before the programs load. `valid` is 0 when the agent
/// could not read them; the exec program then matches by path only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeOffsets {
    pub valid: u32,
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_dentry: u32,
    pub dentry_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
}

/// Event record of an exec decision.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Kernel device number of the program file's superblock.
    pub dev: u64,
    pub ino: u64,
    /// `EXEC_EVENT_UNRESOLVED` or 0.
    pub flags: u32,
    /// `RULE_IDENTITY` or `RULE_PATH` when a list entry matched, else 0.
    pub matched_by: u32,
    /// The program, as the `execve` call named it.
    pub binary: ExecPath,
}

/// 64-bit FNV-1a hash of a path, as the kernel computes it over the path
/// an `execve` call named.
#[inline(always)]
pub fn path_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= u64::from(bytes[index]);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        index += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::path_hash;

    #[test]
    fn path_hash_is_fnv1a_64() {
        assert_eq!(path_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(path_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(path_hash(b"/bin/sh"), path_hash(b"/bin/ls"));
    }
}
