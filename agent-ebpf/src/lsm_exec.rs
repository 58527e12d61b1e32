//! The allowed-programs promise on kernels with BPF LSM:
//! `bprm_check_security` refuses a program with EPERM before the kernel
//! loads it, so `execve(2)` fails and the caller keeps running.
//!
//! The hook runs once for each file the kernel is about to execute: the
//! file `execve` named, then, for a script, its interpreter (and so on for
//! nested interpreters). Each file is judged by the same lists as the exec
//! tracepoint (device and inode, and for deny lists the path `execve`
//! named), so a script runs only if the script file and its interpreter
//! both pass. A memfd or an `O_PATH` descriptor run through `execveat(2)`
//! is judged by the identity of the file behind it, which an allow list
//! names only if it is that very file.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{lsm, map},
    maps::PerCpuArray,
    programs::LsmContext,
};
use parapet_common::{ExecPath, MAX_EXEC_PATH, Verdict};

use crate::{
    exec,
    lsm::{ALLOW, DENY, offsets, previous_verdict, read, read_ptr},
    policed,
};

/// Room for the path `execve` named, too large for the stack.
#[map]
static BPRM_PATH_SCRATCH: PerCpuArray<ExecPath> = PerCpuArray::with_max_entries(1, 0);

#[lsm(hook = "bprm_check_security")]
pub fn parapet_bprm_check_security(ctx: LsmContext) -> i32 {
    let bprm: *const u8 = ctx.arg(0);
    if let Some(verdict) = previous_verdict(ctx.arg(1)) {
        return verdict;
    }
    let Some(policed) = policed::current() else {
        return ALLOW;
    };
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    let Some(scratch) = BPRM_PATH_SCRATCH.get_ptr_mut(0) else {
        return ALLOW;
    };
    // SAFETY: the per-CPU scratch entry belongs to this program run.
    let path = unsafe { &mut *scratch };
    path.len = 0;
    path.truncated = 0;
    if let Some(filename) = read_ptr(bprm, offsets.bprm_filename) {
        // SAFETY: a checked read of a kernel string.
        if let Ok(bytes) = unsafe { bpf_probe_read_kernel_str_bytes(filename, &mut path.bytes) } {
            let len = bytes.len();
            path.len = len as u32;
            path.truncated = u32::from(len >= MAX_EXEC_PATH - 1);
        }
    }
    let identity = read_ptr(bprm, offsets.bprm_file)
        .and_then(|file| read_ptr(file, offsets.file_path_dentry))
        .and_then(|dentry| read_ptr(dentry, offsets.dentry_inode))
        .and_then(|inode| {
            let ino: u64 = read(inode, offsets.inode_ino)?;
            let superblock = read_ptr(inode, offsets.inode_sb)?;
            let dev: u32 = read(superblock, offsets.sb_dev)?;
            Some((u64::from(dev), ino))
        });
    let (dev, ino) = identity.unwrap_or((0, 0));
    match exec::judge(&policed, dev, ino, path) {
        Some(Verdict::Deny) => DENY,
        _ => ALLOW,
    }
}
