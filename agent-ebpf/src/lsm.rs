//! What the BPF LSM programs share: the struct member offsets the agent
//! sets before load, kernel reads that follow them, the flags that record
//! which LSM programs are attached, and the path rebuilt for events.
//!
//! An LSM program returns 0 to let an operation go on and a negative errno
//! to refuse it. BPF LSM programs run after the kernel's own LSMs, and the
//! kernel passes the verdict so far as the program's last argument; every
//! program returns a nonzero one unchanged, so it never turns a refusal
//! into a permission.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_probe_read_kernel as probe_read_raw},
    macros::map,
    maps::{Array, PerCpuArray},
};
use parapet_common::{ExecPath, MAX_EXEC_PATH, lsm::LsmOffsets};

/// Struct member offsets for this kernel, set by the agent before load.
#[unsafe(no_mangle)]
static LSM_OFFSETS: LsmOffsets = LsmOffsets {
    valid: 0,
    file_path_mnt: 0,
    file_path_dentry: 0,
    file_mode: 0,
    file_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    mount_mnt: 0,
    mount_id: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    vfsmount_root: 0,
    dentry_parent: 0,
    dentry_name_len: 0,
    dentry_name: 0,
    dentry_inode: 0,
    inode_mode: 0,
    inode_nlink: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    bprm_file: 0,
    bprm_filename: 0,
    vma_file: 0,
    vma_flags: 0,
};

/// `parapet_common::lsm::backend` bits, in entry 0. The agent sets them
/// after the programs load, which is why this is a map and not a global.
#[map]
static LSM_BACKENDS: Array<u32> = Array::with_max_entries(1, 0);

/// Return value that lets the operation go on.
pub const ALLOW: i32 = 0;
/// `-EPERM`, the refusal.
pub const DENY: i32 = -1;
/// Lowest errno a BPF LSM program may return. Linux 6.12 rejects a
/// program whose return value it cannot bound to [-4095, 0] ("R0 has
/// unknown scalar value should have been in [-4095, 0]").
const MIN_ERRNO: i32 = -4095;

/// Returns the verdict of the LSMs that ran before, bounded so that the
/// verifier can prove the range, or `None` when they allowed.
#[inline(always)]
pub fn previous_verdict(ret: i32) -> Option<i32> {
    if ret == 0 {
        return None;
    }
    if ret < 0 && ret >= MIN_ERRNO {
        return Some(ret);
    }
    // A hook's verdict is 0 or a negative errno. Anything else would be a
    // kernel bug, and EPERM keeps it a refusal.
    Some(DENY)
}

/// Returns the offsets when the agent set them.
#[inline(always)]
pub fn offsets() -> Option<LsmOffsets> {
    // SAFETY: a volatile read of a global the loader set before load.
    let offsets = unsafe { core::ptr::read_volatile(&LSM_OFFSETS) };
    (offsets.valid != 0).then_some(offsets)
}

/// Returns whether the LSM programs of `backend` (a
/// `parapet_common::lsm::backend` bit) are attached.
#[inline(always)]
pub fn active(backend: u32) -> bool {
    LSM_BACKENDS.get(0).is_some_and(|bits| bits & backend != 0)
}

/// Reads a `T` at `base + offset` of kernel memory.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: a checked kernel read; a bad address returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()).ok() }
}

/// Reads a kernel pointer at `base + offset`, `None` when it is null.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    let pointer: *const u8 = read(base, offset)?;
    (!pointer.is_null()).then_some(pointer)
}

/// Returns the `struct mount` that embeds a `struct vfsmount`, as the
/// kernel's `real_mount()` does.
#[inline(always)]
pub fn real_mount(offsets: &LsmOffsets, vfsmount: *const u8) -> *const u8 {
    vfsmount.wrapping_sub(offsets.mount_mnt as usize)
}

/// Bytes of the scratch buffer a path is rebuilt in: twice the path limit,
/// so that a write at an offset below `MAX_EXEC_PATH` of a length below
/// `MAX_EXEC_PATH` stays inside it, which the verifier checks from the
/// masked offset and length alone.
const SCRATCH_BYTES: usize = 2 * MAX_EXEC_PATH;

/// Deepest path rebuilt; a deeper one is reported cut.
const MAX_PATH_COMPONENTS: u32 = 32;

/// Index mask for `SCRATCH_BYTES`-sized writes; `MAX_EXEC_PATH` is a
/// power of two.
const MASK: usize = MAX_EXEC_PATH - 1;

#[map]
static PATH_SCRATCH: PerCpuArray<[u8; SCRATCH_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// Returns `value` through a volatile stack slot, so that the compiler
/// knows nothing of it and keeps the masks applied after it. From the
/// comparisons before a mask the compiler can prove the mask changes
/// nothing and drop it, but the verifier cannot follow that proof and
/// rejects the unmasked offset ("value -4294967295 makes map_value pointer
/// be out of bounds" on 6.1).
#[inline(always)]
fn opaque(value: usize) -> usize {
    let slot = value;
    // SAFETY: a read of a local variable.
    unsafe { core::ptr::read_volatile(&slot) }
}

/// Rebuilds the path of `dentry` on the mount `vfsmount` into `out`, as the
/// process sees it in its mount namespace: names are collected from the
/// dentry up to the mount's root, then on through the directory each mount
/// is mounted on, up to the namespace's root mount. The path is only ever
/// reported; no decision depends on it. A path longer than
/// `MAX_EXEC_PATH - 1` bytes or deeper than `MAX_PATH_COMPONENTS` keeps its
/// last components and is marked `truncated`; a failed kernel read also
/// marks it.
#[inline(always)]
pub fn rebuild_path(offsets: &LsmOffsets, dentry: *const u8, vfsmount: *const u8, out: &mut ExecPath) {
    out.len = 0;
    out.truncated = 1;
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let buffer = scratch.cast::<u8>();
    // Components are written backwards, ending at `MASK`, which keeps the
    // finished path below `MAX_EXEC_PATH` bytes with room for a NUL.
    let mut position: usize = MASK;
    let mut dentry = dentry;
    let mut mount = real_mount(offsets, vfsmount);
    let mut root = read_ptr(vfsmount, offsets.vfsmount_root).unwrap_or(core::ptr::null());
    let mut complete = false;
    let mut step = 0;
    while step < MAX_PATH_COMPONENTS {
        step += 1;
        let Some(parent) = read_ptr(dentry, offsets.dentry_parent) else {
            break;
        };
        if dentry == root || dentry == parent {
            // The root of this mount: continue on the mount below it, or
            // stop at the root mount of the namespace, its own parent.
            let Some(mount_parent) = read_ptr(mount, offsets.mount_parent) else {
                break;
            };
            if mount_parent == mount {
                complete = true;
                break;
            }
            let Some(mountpoint) = read_ptr(mount, offsets.mount_mountpoint) else {
                break;
            };
            dentry = mountpoint;
            mount = mount_parent;
            let parent_vfsmount = mount.wrapping_add(offsets.mount_mnt as usize);
            root = read_ptr(parent_vfsmount, offsets.vfsmount_root).unwrap_or(core::ptr::null());
            continue;
        }
        let Some(length) = read::<u32>(dentry, offsets.dentry_name_len) else {
            break;
        };
        let Some(name) = read_ptr(dentry, offsets.dentry_name) else {
            break;
        };
        let length = length as usize;
        // The component and its slash must fit before `position`.
        if length >= position {
            break;
        }
        // Masking keeps `position` in [0, MASK] at the head of every
        // iteration, whichever branch ran, so that the verifier finds the
        // states of the two branches equal and explores each iteration
        // once. Without it, the states multiply with every component and
        // 6.1 stops at its limit of a million instructions.
        let slash = opaque(position - length - 1) & MASK;
        // SAFETY: `slash + 1` and `length` are both at most `MASK`, so the
        // write stays inside the scratch buffer of twice that size.
        let read = unsafe {
            probe_read_raw(
                buffer.add(opaque(slash + 1) & MASK).cast(),
                (opaque(length) & MASK) as u32,
                name.cast(),
            )
        };
        if read != 0 {
            break;
        }
        // SAFETY: as above.
        unsafe { *buffer.add(slash) = b'/' };
        position = slash;
        dentry = parent;
    }
    if position == MASK {
        // The root directory itself.
        position -= 1;
        unsafe { *buffer.add(position & MASK) = b'/' };
    }
    let length = opaque(MASK - position) & MASK;
    // SAFETY: source and destination ranges are below `MAX_EXEC_PATH`
    // bytes inside buffers of at least that size.
    let copied = unsafe {
        probe_read_raw(
            out.bytes.as_mut_ptr().cast(),
            length as u32,
            buffer.add(opaque(position) & MASK).cast(),
        )
    };
    if copied == 0 {
        out.len = length as u32;
        out.truncated = u32::from(!complete);
    }
}
