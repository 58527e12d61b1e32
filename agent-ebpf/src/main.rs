//! Parapet's kernel programs.
//!
//! Every program first finds whether the calling process is policed: its
//! cgroup, or the nearest ancestor cgroup, has an entry in
//! `CGROUP_POLICIES`. A process that is not policed is allowed at once,
//! which keeps the cost for the rest of the node to a few map lookups.
#![no_std]
#![no_main]

mod counters;
mod events;
mod exec;
mod file;
mod generation;
mod hold;
mod lsm;
mod lsm_exec;
mod lsm_file;
mod lsm_net;
mod net;
mod policed;
mod probe;
mod socket;
mod syscall_args;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program in which a panic is reachable, so
    // this body never runs.
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
