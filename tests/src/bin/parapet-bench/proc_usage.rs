//! Memory and CPU time of another process, read from `/proc/PID`.

use std::{fmt::Write as _, fs};

use anyhow::{Context as _, Result};

const KIB_PER_MIB: f64 = 1024.0;

/// Memory of a process, in KiB, from `status` and `smaps_rollup`.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Resident set size, `VmRSS`: what operators see in `top` and what
    /// the target is about.
    pub rss: u64,
    /// Peak resident set size, `VmHWM`.
    pub peak: u64,
    pub anon: u64,
    /// File-backed resident pages: the binary, shared libraries, and the
    /// BPF maps the process mapped (ring buffers count here).
    pub file: u64,
    /// Proportional set size: shared pages divided among their users.
    pub pss: u64,
    pub threads: u64,
}

impl Memory {
    pub fn rss_mib(&self) -> f64 {
        self.rss as f64 / KIB_PER_MIB
    }

    /// Formats a one-line summary for a row's context.
    pub fn summary(&self) -> String {
        format!(
            "anon {:.1} MiB, file {:.1} MiB, Pss {:.1} MiB, peak {:.1} MiB, {} threads",
            self.anon as f64 / KIB_PER_MIB,
            self.file as f64 / KIB_PER_MIB,
            self.pss as f64 / KIB_PER_MIB,
            self.peak as f64 / KIB_PER_MIB,
            self.threads
        )
    }
}

/// Reads the memory of process `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    let path = format!("/proc/{pid}/smaps_rollup");
    let rollup = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    Ok(Memory {
        rss: field(&status, "VmRSS"),
        peak: field(&status, "VmHWM"),
        anon: field(&status, "RssAnon"),
        file: field(&status, "RssFile") + field(&status, "RssShmem"),
        pss: field(&rollup, "Pss"),
        threads: field(&status, "Threads"),
    })
}

/// Returns the number after `name:` in a `/proc` key-value file, 0 when
/// missing.
fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of process `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    // The command name, field 2, is in parentheses and may contain spaces;
    // utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("no command name in stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |number: usize| -> Result<u64> {
        fields
            .get(number - 3)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("no field {number} in {path}"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) as f64 / per_second)
}

/// Resident memory by kind of mapping, from `/proc/PID/smaps`: heap and
/// other anonymous memory (malloc arenas, thread stacks), the program's
/// own file, shared libraries, BPF maps, and the rest.
pub fn breakdown(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let exe = exe.to_string_lossy();
    let kinds = ["heap", "other anon", "binary", "libraries", "bpf maps", "other"];
    let mut resident = [0u64; 6];
    let mut kind = 5;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Rss:") {
            resident[kind] += rest.split_whitespace().next().and_then(|value| value.parse().ok()).unwrap_or(0);
            continue;
        }
        let Some((range, rest)) = line.split_once(' ') else {
            continue;
        };
        if !range.contains('-') || !range.bytes().all(|byte| byte.is_ascii_hexdigit() || byte == b'-') {
            continue;
        }
        let name = rest.split_whitespace().nth(4).unwrap_or("");
        kind = match name {
            "[heap]" => 0,
            "" | "[stack]" => 1,
            _ if name == exe => 2,
            _ if name.contains(".so") => 3,
            _ if name.starts_with("anon_inode:bpf") => 4,
            _ => 5,
        };
    }
    let mut text = String::new();
    for (name, kib) in kinds.iter().zip(resident) {
        let _ = write!(text, "{}{name} {:.1}", if text.is_empty() { "" } else { ", " }, kib as f64 / KIB_PER_MIB);
    }
    Ok(text + " MiB")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let memory = super::memory(pid).unwrap();
        assert!(memory.rss > 0, "{memory:?}");
        assert!(memory.pss > 0, "{memory:?}");
        assert!(memory.threads >= 1, "{memory:?}");
        assert!(super::cpu_seconds(pid).unwrap() >= 0.0);
        let breakdown = super::breakdown(pid).unwrap();
        assert!(breakdown.contains("binary "), "{breakdown}");
    }
}
