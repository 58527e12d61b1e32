//! Types of the BPF LSM backend shared by its kernel programs and the
//! agent: the struct member offsets the programs read kernel memory with,
//! the mounts that are read-only per container, and the flags that record
//! which LSM programs are attached.

/// Offsets of the kernel struct members the LSM programs follow, read from
/// the kernel's BTF by the agent and set before the programs load. Rust
/// BPF programs have no CO-RE relocations, and these offsets differ
/// between kernel builds. `valid` is 0 when the agent could not read them;
/// every LSM program then allows everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmOffsets {
    pub valid: u32,
    /// `file.f_path.mnt` (a `struct vfsmount *`).
    pub file_path_mnt: u32,
    /// `file.f_path.dentry`.
    pub file_path_dentry: u32,
    /// `file.f_mode`, whose `FMODE_WRITE` bit marks a write open.
    pub file_mode: u32,
    /// `file.f_flags`, the `open(2)` flags.
    pub file_flags: u32,
    /// `path.mnt` and `path.dentry` in a `struct path`.
    pub path_mnt: u32,
    pub path_dentry: u32,
    /// `mount.mnt`: the `struct vfsmount` embedded in `struct mount`, so
    /// that `vfsmount - mount_mnt` is the containing `struct mount`.
    pub mount_mnt: u32,
    /// `mount.mnt_id`, the mount id in field 1 of mountinfo, unique on the
    /// whole system while the mount exists.
    pub mount_id: u32,
    /// `mount.mnt_parent` and `mount.mnt_mountpoint`, to cross from the
    /// root of a mount to the directory it is mounted on.
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    /// `vfsmount.mnt_root`.
    pub vfsmount_root: u32,
    /// `dentry.d_parent`, `dentry.d_name.len`, `dentry.d_name.name` and
    /// `dentry.d_inode`.
    pub dentry_parent: u32,
    pub dentry_name_len: u32,
    pub dentry_name: u32,
    pub dentry_inode: u32,
    /// `inode.i_mode`, `inode.i_nlink`, `inode.i_ino`, `inode.i_sb`.
    pub inode_mode: u32,
    pub inode_nlink: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// `linux_binprm.file` and `linux_binprm.filename`.
    pub bprm_file: u32,
    pub bprm_filename: u32,
    /// `vm_area_struct.vm_file` and `vm_area_struct.vm_flags`.
    pub vma_file: u32,
    pub vma_flags: u32,
}

/// Offsets of the socket struct members the LSM network programs follow,
/// set like `LsmOffsets`. They are apart so that a kernel whose BTF lacks
/// one of them loses only the LSM network programs. `valid` is 0 when the
/// agent could not read them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmNetOffsets {
    pub valid: u32,
    /// `socket.type` (a `short`) and `socket.sk`.
    pub socket_type: u32,
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_family` and `sock.sk_protocol` (both `u16`).
    pub sock_family: u32,
    pub sock_protocol: u32,
    /// `msghdr.msg_name`, `msghdr.msg_namelen` and `msghdr.msg_flags`.
    pub msghdr_name: u32,
    pub msghdr_namelen: u32,
    pub msghdr_flags: u32,
    /// `sock.__sk_common.skc_daddr`, `skc_dport` and `skc_v6_daddr`: the
    /// connected peer.
    pub sock_daddr: u32,
    pub sock_dport: u32,
    pub sock_v6_daddr: u32,
}

/// Bits of the one entry of `LSM_BACKENDS`, set by the agent once the LSM
/// programs of a promise are attached.
pub mod backend {
    /// The LSM file programs are attached. They report audit-mode
    /// mutations, so the file tracepoints report only EROFS refusals. Those
    /// come from mounts that were read-only already, and no LSM program
    /// runs for them.
    pub const FILESYSTEM: u32 = 1;
    /// `bprm_check_security` enforces exec lists, so the exec tracepoint
    /// only records program paths and never kills.
    pub const EXEC: u32 = 2;
    /// The LSM socket programs are attached; the cgroup socket programs
    /// and the socket tracepoint are then not attached at all.
    pub const NETWORK: u32 = 4;
}

/// Value of `READ_ONLY_MOUNTS`, keyed by mount id: a mount of a container
/// that a read-only policy covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOnlyMount {
    /// The policy slot that makes the mount read-only, for counters and
    /// events.
    pub slot: u32,
    /// A `Mode`: enforce refuses mutations, audit reports them.
    pub mode: u32,
    /// Cgroup id of the container the mount belongs to.
    pub cgroup_id: u64,
}

/// Key of `READ_ONLY_SUPERBLOCKS`. One superblock can back mounts of many
/// containers (the node's root file system backs every container's
/// `/etc/hosts`), so the entry is per container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReadOnlySuperblockKey {
    /// Cgroup id of the container, as in `ReadOnlyMount::cgroup_id`.
    pub cgroup_id: u64,
    /// Kernel device number of the superblock (`super_block.s_dev`).
    pub dev: u64,
}

/// Value of `READ_ONLY_SUPERBLOCKS`: a superblock that holds a mount in
/// `READ_ONLY_MOUNTS`. The hooks that see
/// only a dentry (the xattr hooks) decide by superblock, and writes to a
/// hard-linked file on a writable mount that shares such a superblock are
/// refused (see the LSM file programs). `mode` is enforce when any of the
/// container's mounts on the superblock is in enforce mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOnlySuperblock {
    pub slot: u32,
    pub mode: u32,
    /// 1 when a writable or audit-mode mount of the container shares this
    /// superblock.
    pub shared_with_writable: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
