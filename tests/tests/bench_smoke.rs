//! `parapet-bench --quick`: every row the groups promise is in the JSON
//! table, each with finite figures, and the counts that must be exact are.

use std::process::Command;

use anyhow::{Context as _, Result};
use serde_json::Value;

const OPERATIONS: [&str; 7] =
    ["open+close", "write 1 MiB", "write 512 B", "stat", "TCP connect+close", "UDP send", "fork+exec"];
const REACTION_ROWS: [&str; 5] = [
    "policy change → first refusal",
    "policy change → first allowed again",
    "container start → first operation, policed",
    "container start, agent / no agent",
    "new containers refused at their first connect",
];

const EXACT_DENIAL_ROWS: [&str; 4] = [
    "kernel counter off from the refusals the flooding process saw",
    "parapet_violations_total off from the refusals the flooding process saw",
    "refusals that tail neither printed nor was told of as missed or dropped",
    "drops reported to tail off from the parapet_events_lost_total increase by",
];

/// Runs `parapet-bench --quick` on `groups` and returns the JSON table.
fn quick_bench(name: &str, groups: &[&str]) -> Result<(Value, String)> {
    let out = std::env::temp_dir().join(format!("parapet-bench-{name}-{}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_parapet-bench"));
    command.arg("--quick");
    for group in groups {
        command.args(["--only", group]);
    }
    let output = command
        .arg("--out")
        .arg(&out)
        .env("PARAPET_BIN", parapet_tests::agent::parapet_bin()?)
        .output()
        .context("failed to run parapet-bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "parapet-bench failed with {}:\n{stdout}\n{stderr}", output.status);
    let text = std::fs::read_to_string(out.join("bench.json"))?;
    std::fs::remove_dir_all(&out)?;
    Ok((serde_json::from_str(&text)?, text))
}

fn finite(row: &Value) -> bool {
    row["values"].as_array().is_some_and(|values| !values.is_empty() && values.iter().all(|value| value.as_f64().is_some_and(f64::is_finite)))
}

#[test]
fn quick_bench_writes_every_row() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (table, text) = quick_bench("syscalls", &["syscalls", "reaction"])?;
    let rows = table["rows"].as_array().context("bench.json has no rows")?;
    let mut expected: Vec<String> = Vec::new();
    for operation in OPERATIONS {
        expected.push(format!("{operation}, unpoliced / no agent"));
        expected.push(format!("{operation}, policed / no agent"));
    }
    expected.extend(REACTION_ROWS.iter().map(|name| name.to_string()));
    for name in &expected {
        let row = rows.iter().find(|row| row["name"] == name.as_str());
        let row = row.unwrap_or_else(|| panic!("no row {name:?} in {text}"));
        let values = row["values"].as_array().unwrap_or_else(|| panic!("row {name:?} has no values"));
        assert!(!values.is_empty(), "row {name:?} has no figures");
        for value in values {
            assert!(value.as_f64().is_some_and(f64::is_finite), "row {name:?} has a figure that is not finite: {value}");
        }
        assert!(row["median"].as_f64().is_some_and(f64::is_finite), "row {name:?} has no finite median");
    }
    assert_eq!(rows.len(), expected.len(), "unexpected rows in {text}");
    let refused = rows.iter().find(|row| row["name"] == REACTION_ROWS[4]).context("no refusal row")?;
    assert_eq!(refused["median"].as_f64(), Some(100.0), "a new container's first connect got through: {refused}");
    Ok(())
}

#[test]
fn quick_bench_denials_and_cost() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let (table, text) = quick_bench("denials", &["denials", "agent cost"])?;
    let rows = table["rows"].as_array().context("bench.json has no rows")?;
    for name in EXACT_DENIAL_ROWS {
        let row = rows.iter().find(|row| row["name"] == name).unwrap_or_else(|| panic!("no row {name:?} in {text}"));
        assert!(finite(row), "row {name:?} has no finite figures: {row}");
        assert_eq!(row["met"], Value::Bool(true), "a count that must be exact is not: {row}");
    }
    let refused = rows
        .iter()
        .find(|row| row["name"] == "refused connects, one policed process")
        .context("no row of refused connects")?;
    assert!(refused["median"].as_f64().is_some_and(|rate| rate > 0.0), "no refused connects measured: {refused}");
    let cost: Vec<&Value> = rows.iter().filter(|row| row["group"] == "agent cost").collect();
    for kind in ["memory, idle", "memory, flood", "CPU, idle", "CPU, flood"] {
        let row = cost.iter().find(|row| row["name"].as_str().is_some_and(|name| name.starts_with(kind)));
        let row = row.unwrap_or_else(|| panic!("no agent cost row starting {kind:?} in {text}"));
        assert!(finite(row), "row {kind:?} has no finite figures: {row}");
    }
    Ok(())
}
