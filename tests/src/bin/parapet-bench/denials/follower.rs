//! A `parapet tail` client whose output the bench counts: events on its
//! stdout, and the counts of missed events it reports on its stderr.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use parapet_tests::agent::{Agent, parapet_bin};

/// Counts of what the client printed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Event lines on stdout.
    pub events: u64,
    /// Events the agent reported this client missed (`missed N events` lines).
    pub missed: u64,
    /// Records the agent reported the kernel dropped (`the kernel dropped
    /// N events` lines).
    pub dropped: u64,
}

impl Seen {
    /// Events printed or reported missed or dropped.
    pub fn accounted(&self) -> u64 {
        self.events + self.missed + self.dropped
    }

    fn since(&self, earlier: Seen) -> Seen {
        Seen {
            events: self.events - earlier.events,
            missed: self.missed - earlier.missed,
            dropped: self.dropped - earlier.dropped,
        }
    }
}

pub struct Follower {
    child: Child,
    events: Arc<AtomicU64>,
    missed: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    readers: Vec<JoinHandle<()>>,
}

impl Follower {
    /// Starts `parapet tail --output json` on the agent with `filters`.
    pub fn start(agent: &Agent, filters: &[&str]) -> Result<Self> {
        let mut child = Command::new(parapet_bin()?)
            .arg("tail")
            .arg("--api-socket")
            .arg(&agent.api_socket)
            .args(["--output", "json"])
            .args(filters)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start parapet tail")?;
        let events = Arc::new(AtomicU64::new(0));
        let missed = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().context("tail has no stdout pipe")?;
        let stderr = child.stderr.take().context("tail has no stderr pipe")?;
        let stdout_reader = {
            let events = Arc::clone(&events);
            std::thread::spawn(move || {
                for line in BufReader::with_capacity(1 << 20, stdout).split(b'\n').map_while(Result::ok) {
                    if line.starts_with(b"{") {
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let stderr_reader = {
            let missed = Arc::clone(&missed);
            let dropped = Arc::clone(&dropped);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(count) = count_after(&line, "parapet tail: missed ") {
                        missed.fetch_add(count, Ordering::Relaxed);
                    } else if let Some(count) = count_after(&line, "parapet tail: the kernel dropped ") {
                        dropped.fetch_add(count, Ordering::Relaxed);
                    } else {
                        eprintln!("{line}");
                    }
                }
            })
        };
        Ok(Self { child, events, missed, dropped, readers: vec![stdout_reader, stderr_reader] })
    }

    pub fn seen(&self) -> Seen {
        Seen {
            events: self.events.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Waits until the client has accounted for `expected` events since
    /// `since`, or until its counts stop changing for `quiet`. Returns the
    /// counts since `since`.
    pub fn settle(&self, since: Seen, expected: u64, quiet: Duration) -> Seen {
        let mut last = self.seen();
        let mut changed = Instant::now();
        loop {
            let now = self.seen();
            let delta = now.since(since);
            if delta.accounted() >= expected {
                return delta;
            }
            if now != last {
                last = now;
                changed = Instant::now();
            } else if changed.elapsed() >= quiet {
                return delta;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the client by its pid and waits for its output to be read.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Parses the count in a tail message such as `parapet tail: missed N
/// events ...`, where `prefix` is the text before the count.
fn count_after(line: &str, prefix: &str) -> Option<u64> {
    line.strip_prefix(prefix)?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::count_after;

    #[test]
    fn message_counts_are_parsed() {
        let missed = "parapet tail: missed 4096 events because this client read too slowly";
        assert_eq!(count_after(missed, "parapet tail: missed "), Some(4096));
        let dropped = "parapet tail: the kernel dropped 12 events because the agent's ring buffer was full";
        assert_eq!(count_after(dropped, "parapet tail: the kernel dropped "), Some(12));
        assert_eq!(count_after("parapet tail: the replay lacks its oldest events", "parapet tail: missed "), None);
    }
}
