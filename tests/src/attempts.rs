//! Reading the record that `netprobe attempts` leaves in a container's
//! log: when each target's outcome changed.

use std::{collections::BTreeMap, path::Path, time::SystemTime};

use anyhow::{Context as _, Result};

/// A stretch of consecutive attempts on one target with the same outcome,
/// in CLOCK_REALTIME nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub outcome: String,
    pub first_ns: u128,
    /// The last attempt of the run, or `None` while it goes on.
    pub last_ns: Option<u128>,
}

/// The record of one `netprobe attempts` process.
#[derive(Debug, Default)]
pub struct Record {
    /// Runs per target name (`tcp:ADDR:PORT`, `write:PATH`), oldest first.
    pub runs: BTreeMap<String, Vec<Run>>,
    /// Attempts per target and outcome, from the last tally or end line.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Whether the process printed its end lines.
    pub ended: bool,
}

impl Record {
    /// Parses a container log in the CRI format
    /// (`TIME STREAM TAG CONTENT` per line).
    pub fn read(log: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(log)
            .with_context(|| format!("failed to read {}", log.display()))?;
        let mut record = Self::default();
        for line in text.lines() {
            let content = line.splitn(4, ' ').nth(3).unwrap_or_default();
            let fields: Vec<&str> = content.split(' ').collect();
            match fields.as_slice() {
                ["change", name, outcome, first, previous_last] => {
                    let runs = record.runs.entry((*name).to_owned()).or_default();
                    if let Some(open) = runs.last_mut() {
                        open.last_ns = Some(previous_last.parse()?);
                    }
                    runs.push(Run {
                        outcome: (*outcome).to_owned(),
                        first_ns: first.parse()?,
                        last_ns: None,
                    });
                }
                ["tally", _, name, counts @ ..] => {
                    let parsed = counts
                        .iter()
                        .filter_map(|pair| pair.split_once('='))
                        .filter_map(|(outcome, count)| {
                            Some((outcome.to_owned(), count.parse().ok()?))
                        })
                        .collect();
                    record.counts.insert((*name).to_owned(), parsed);
                }
                ["end", name, _, last] => {
                    if let Some(open) = record.runs.get_mut(*name).and_then(|runs| runs.last_mut())
                    {
                        open.last_ns = Some(last.parse()?);
                    }
                    record.ended = true;
                }
                _ => {}
            }
        }
        Ok(record)
    }

    /// Returns the runs of `name` that hold an attempt in `[from, to)` with
    /// an outcome for which `unexpected` is true. A run still going on
    /// counts as lasting until `to`.
    pub fn runs_within(
        &self,
        name: &str,
        from: u128,
        to: u128,
        unexpected: impl Fn(&str) -> bool,
    ) -> Vec<Run> {
        self.runs
            .get(name)
            .into_iter()
            .flatten()
            .filter(|run| unexpected(&run.outcome))
            .filter(|run| run.first_ns < to && run.last_ns.is_none_or(|last| last >= from))
            .cloned()
            .collect()
    }
}

/// Returns `time` in nanoseconds since the Unix epoch.
pub fn unix_ns(time: SystemTime) -> u128 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}
