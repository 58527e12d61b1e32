//! `parapet-bench --quick` on the syscall and reaction groups: every row
//! the groups promise is in the JSON table, each with finite figures.

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

#[test]
fn quick_bench_writes_every_row() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let out = std::env::temp_dir().join(format!("parapet-bench-smoke-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_parapet-bench"))
        .args(["--quick", "--only", "syscalls", "--only", "reaction", "--out"])
        .arg(&out)
        .env("PARAPET_BIN", parapet_tests::agent::parapet_bin()?)
        .output()
        .context("failed to run parapet-bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "parapet-bench failed with {}:\n{stdout}\n{stderr}", output.status);

    let text = std::fs::read_to_string(out.join("bench.json"))?;
    let table: Value = serde_json::from_str(&text)?;
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
    std::fs::remove_dir_all(&out)?;
    Ok(())
}
