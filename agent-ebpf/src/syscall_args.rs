//! The first four arguments of the current task's syscall, read from the
//! user registers the kernel saved on entry. A `sys_exit_*` tracepoint
//! record contains only the return value. The saved registers then still
//! contain the arguments the syscall used, because only the return
//! register changes (`ax`, or `x0` on arm64, hence `orig_x0` there).

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs};

/// Layout of the argument registers in the kernel's `struct pt_regs`: the
/// byte offset of the first register read and, for each argument, its
/// index among the 8-byte words read from there.
#[cfg(bpf_target_arch = "x86_64")]
mod layout {
    /// `r10`, then `r9`, `r8`, `ax`, `cx`, `dx`, `si` and `di`.
    pub const FIRST: usize = 56;
    pub const WORDS: usize = 8;
    /// `di`, `si`, `dx`, `r10`.
    pub const ARGS: [usize; 4] = [7, 6, 5, 0];
}

/// NOTE: this layout has not run on an arm64 kernel. By the exit, `x0`
/// contains the return value, so the first argument is the saved `orig_x0`.
#[cfg(bpf_target_arch = "aarch64")]
mod layout {
    /// `regs[0]` to `regs[30]`, then `sp`, `pc`, `pstate` and `orig_x0`.
    pub const FIRST: usize = 0;
    pub const WORDS: usize = 35;
    /// `orig_x0`, `x1`, `x2`, `x3`.
    pub const ARGS: [usize; 4] = [34, 1, 2, 3];
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("syscall_args has the register layout of x86_64 and aarch64 only");

/// Returns the current syscall's first four arguments, or `None` when the
/// saved registers cannot be read.
#[inline(always)]
pub fn current() -> Option<[u64; 4]> {
    // SAFETY: both helpers take and return kernel pointers that the
    // verifier tracks; the registers are then read with a checked copy.
    let words: [u64; layout::WORDS] = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        if regs.is_null() {
            return None;
        }
        bpf_probe_read_kernel(regs.add(layout::FIRST).cast()).ok()?
    };
    Some(layout::ARGS.map(|index| words[index]))
}
