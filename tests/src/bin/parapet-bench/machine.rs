//! A description of the machine a bench ran on, for the table's heading.

use std::fs;

use anyhow::{Context as _, Result};

use crate::report::Machine;

/// Path of the `kernel.bpf_stats_enabled` sysctl.
pub const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Returns whether the kernel times every BPF program run.
/// NOTE: only the sysctl is read. A tool that turned the timing on with the
/// `BPF_ENABLE_STATS` command of bpf(2) leaves the sysctl at 0, and is not
/// detected.
pub fn bpf_stats_enabled() -> bool {
    fs::read_to_string(BPF_STATS).is_ok_and(|value| value.trim() != "0")
}

pub fn describe(rounds: usize, quick: bool) -> Result<Machine> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, name)| name.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let meminfo = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").context("reading the kernel release")?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .context("running date")?;
    Ok(Machine {
        date: String::from_utf8_lossy(&date.stdout).trim().to_owned(),
        host: host.trim().to_owned(),
        kernel: kernel.trim().to_owned(),
        cpu,
        cores: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        memory_gib: memory_kib / (1024.0 * 1024.0),
        rounds,
        quick,
        bpf_stats: bpf_stats_enabled(),
    })
}
