//! The bench's results: one row per measurement, its figures per round,
//! the target it is held to, and the table written as Markdown and JSON.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// What a row is held to. Ratios compare the configuration measured with
/// the one without the agent, taken in the same round.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The median must be at most this.
    AtMost(f64),
    /// The median must be at least this.
    AtLeast(f64),
    /// Every round's figure must be at most this: for counts that must be
    /// exact, where one round off is a failure.
    EveryRoundAtMost(f64),
    /// Shown for context; no target applies.
    None,
}

/// One measurement: a figure per round, in `unit`.
#[derive(Debug, Clone)]
pub struct Row {
    /// The group the row belongs to, such as `syscalls` or `agent cost`.
    pub group: &'static str,
    /// What was measured, such as `open+close, policed / no agent`.
    pub name: String,
    /// `ratio`, `ops/s`, `events/s`, `MiB`, `ms`, `% of a core`.
    pub unit: &'static str,
    /// One figure per round.
    pub values: Vec<f64>,
    pub target: Target,
    /// Absolute figures behind a ratio, or anything else the reader needs,
    /// printed for context.
    pub context: String,
}

impl Row {
    pub fn new(group: &'static str, name: impl Into<String>, unit: &'static str, target: Target) -> Self {
        Self { group, name: name.into(), unit, values: Vec::new(), target, context: String::new() }
    }

    pub fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    pub fn median(&self) -> f64 {
        median(&self.values)
    }

    /// Returns whether the row meets its target, or `None` where no target
    /// applies or nothing was measured.
    pub fn met(&self) -> Option<bool> {
        if self.values.is_empty() {
            return None;
        }
        match self.target {
            Target::AtMost(limit) => Some(self.median() <= limit),
            Target::AtLeast(floor) => Some(self.median() >= floor),
            Target::EveryRoundAtMost(limit) => Some(self.max() <= limit),
            Target::None => None,
        }
    }
}

/// Returns the median of `values`, or NaN when there are none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 }
}

/// Where the run happened, for the table's heading.
#[derive(Debug, Clone)]
pub struct Machine {
    pub date: String,
    pub host: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub rounds: usize,
    /// Whether this was a `--quick` run, whose groups use small counts and
    /// one to three rounds whatever the value of `rounds`.
    pub quick: bool,
    /// Whether `kernel.bpf_stats_enabled` was on: the kernel then reads the
    /// clock twice around every BPF program run, which adds to the agent's
    /// figures.
    pub bpf_stats: bool,
}

fn figure(value: f64, unit: &str) -> String {
    if !value.is_finite() {
        return "n/a".to_owned();
    }
    match unit {
        "ratio" => format!("{value:.3}"),
        "ops/s" | "events/s" => format!("{value:.0}"),
        _ if value.abs() >= 100.0 => format!("{value:.0}"),
        _ => format!("{value:.1}"),
    }
}

fn target_text(target: Target, unit: &str) -> String {
    match target {
        Target::AtMost(limit) => format!("≤ {} {unit}", figure(limit, unit)),
        Target::AtLeast(floor) => format!("≥ {} {unit}", figure(floor, unit)),
        Target::EveryRoundAtMost(limit) => format!("≤ {} {unit} in every round", figure(limit, unit)),
        Target::None => "none".to_owned(),
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    }
}

/// Formats the table as Markdown: a heading naming the machine, then one
/// table.
pub fn markdown(machine: &Machine, rows: &[Row]) -> String {
    let mut text = String::new();
    let rounds = if machine.quick {
        "a quick run with small counts and 1 to 3 rounds".to_owned()
    } else {
        format!("{} rounds", machine.rounds)
    };
    let _ = writeln!(
        text,
        "Measured {} on `{}`: {}, {} cores, {:.0} GiB, Linux {}; {rounds}. The syscalls, denials and reaction groups alternate with and without the agent; agent cost measures the agent alone.\n",
        machine.date, machine.host, machine.cpu, machine.cores, machine.memory_gib, machine.kernel
    );
    if machine.bpf_stats {
        text.push_str("**kernel.bpf_stats_enabled was 1**: the kernel timed every BPF program run, so the figures with the agent include that cost.\n\n");
    }
    text.push_str("| Group | Measurement | Unit | Min | Median | Max | Target | Result | Context |\n");
    text.push_str("|---|---|---|---:|---:|---:|---|---|---|\n");
    for row in rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.group,
            row.name,
            row.unit,
            figure(row.min(), row.unit),
            figure(row.median(), row.unit),
            figure(row.max(), row.unit),
            target_text(row.target, row.unit),
            verdict(row.met()),
            row.context.replace('|', "/"),
        );
    }
    text
}

/// Formats the same table as JSON, with every round's figure.
pub fn json(machine: &Machine, rows: &[Row]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let (kind, bound) = match row.target {
                Target::AtMost(limit) => ("at_most", Some(limit)),
                Target::AtLeast(floor) => ("at_least", Some(floor)),
                Target::EveryRoundAtMost(limit) => ("every_round_at_most", Some(limit)),
                Target::None => ("none", None),
            };
            json!({
                "group": row.group,
                "name": row.name,
                "unit": row.unit,
                "values": row.values,
                "min": finite(row.min()),
                "median": finite(row.median()),
                "max": finite(row.max()),
                "target": {"kind": kind, "bound": bound},
                "met": row.met(),
                "context": row.context,
            })
        })
        .collect();
    json!({
        "date": machine.date,
        "host": machine.host,
        "kernel": machine.kernel,
        "cpu": machine.cpu,
        "cores": machine.cores,
        "memory_gib": machine.memory_gib,
        // A quick run's groups choose their own rounds, so none is named.
        "rounds": (!machine.quick).then_some(machine.rounds),
        "quick": machine.quick,
        "bpf_stats": machine.bpf_stats,
        "rows": rows,
    })
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// Writes `bench.md` and `bench.json` into `dir`.
pub fn write(dir: &Path, machine: &Machine, rows: &[Row]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let markdown_path = dir.join("bench.md");
    fs::write(&markdown_path, markdown(machine, rows)).with_context(|| format!("writing {}", markdown_path.display()))?;
    let json_path = dir.join("bench.json");
    let text = serde_json::to_string_pretty(&json(machine, rows))?;
    fs::write(&json_path, text + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Row, Target, median};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn targets_judged_on_median_or_rounds() {
        let mut row = Row::new("syscalls", "stat", "ratio", Target::AtMost(1.02));
        assert_eq!(row.met(), None);
        row.values = vec![0.99, 1.01, 1.30];
        assert_eq!(row.met(), Some(true));
        row.values = vec![1.03, 1.04, 0.90];
        assert_eq!(row.met(), Some(false));
        let floor = Row { values: vec![2.0e5], ..Row::new("denials", "tail", "events/s", Target::AtLeast(2.0e5)) };
        assert_eq!(floor.met(), Some(true));
        let exact = Row { values: vec![0.0, 3.0, 0.0], ..Row::new("denials", "off by", "ops", Target::EveryRoundAtMost(0.0)) };
        assert_eq!(exact.met(), Some(false));
    }
}
