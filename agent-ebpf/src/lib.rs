//! Empty on purpose: the kernel programs are the `parapet-ebpf` binary,
//! built for `bpfel-unknown-none` by `agent/build.rs`. This library target
//! only lets the agent list the crate as a build dependency.
#![no_std]
