//! A program that is only ever loaded, never attached: whether the kernel
//! accepts it tells the agent whether BPF LSM programs can run here.

use aya_ebpf::{macros::lsm, programs::LsmContext};

/// Return value of an LSM program that lets the operation go on.
const ALLOW: i32 = 0;

#[lsm(hook = "file_open")]
pub fn parapet_probe_lsm(_ctx: LsmContext) -> i32 {
    ALLOW
}
