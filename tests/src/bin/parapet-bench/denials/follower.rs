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
}

pub struct Follower {
    child: Child,
    events: Arc<AtomicU64>,
    missed: Arc<AtomicU64>,
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
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    match missed_count(&line) {
                        Some(count) => {
                            missed.fetch_add(count, Ordering::Relaxed);
                        }
                        None => eprintln!("{line}"),
                    }
                }
            })
        };
        Ok(Self { child, events, missed, readers: vec![stdout_reader, stderr_reader] })
    }

    pub fn seen(&self) -> Seen {
        Seen { events: self.events.load(Ordering::Relaxed), missed: self.missed.load(Ordering::Relaxed) }
    }

    /// Waits until the client has accounted for `expected` events since
    /// `since` (printed or reported missed), or until its counts stop
    /// changing for `quiet`. Returns the counts since `since`.
    pub fn settle(&self, since: Seen, expected: u64, quiet: Duration) -> Seen {
        let mut last = self.seen();
        let mut changed = Instant::now();
        loop {
            let now = self.seen();
            let delta = Seen { events: now.events - since.events, missed: now.missed - since.missed };
            if delta.events + delta.missed >= expected {
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

    /// Stops the client by its pid and waits for its output to be read.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Parses tail's `parapet tail: missed N events ...` line.
fn missed_count(line: &str) -> Option<u64> {
    line.strip_prefix("parapet tail: missed ")?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::missed_count;

    #[test]
    fn missed_line_is_parsed() {
        let line = "parapet tail: missed 4096 events because this client read too slowly";
        assert_eq!(missed_count(line), Some(4096));
        assert_eq!(missed_count("parapet tail: the replay lacks its oldest events"), None);
    }
}
