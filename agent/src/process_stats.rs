//! The agent's own CPU time, memory and descriptors, read from `/proc/self`
//! for the standard Prometheus `process_*` metrics.

use std::fs;

/// A reading of the agent process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
}

/// Reads the current process's statistics. A field that cannot be read
/// stays 0.
pub fn read() -> ProcessStats {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let mut stats = ProcessStats::default();
    if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may
        // hold spaces: state is field 3, utime 14 and stime 15.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
        stats.cpu_seconds = (field(14) + field(15)) as f64 / ticks;
    }
    if let Ok(statm) = fs::read_to_string("/proc/self/statm") {
        let mut pages = statm.split_whitespace().map(|value| value.parse::<u64>().unwrap_or(0));
        stats.virtual_bytes = pages.next().unwrap_or(0) * page;
        stats.resident_bytes = pages.next().unwrap_or(0) * page;
    }
    stats.open_fds = fs::read_dir("/proc/self/fd").map(|dir| dir.count() as u64).unwrap_or(0);
    stats
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let stats = super::read();
        assert!(stats.resident_bytes > 0, "{stats:?}");
        assert!(stats.virtual_bytes >= stats.resident_bytes, "{stats:?}");
        assert!(stats.open_fds >= 3, "{stats:?}");
    }
}
