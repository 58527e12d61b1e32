//! `cargo xtask test` and `cargo xtask demo`.
//!
//! `cargo xtask test` also runs every fuzz target for a short time and
//! counts a crash as a failed test.
//!
//! The end-to-end tests share kernel state and a private containerd, so
//! they run one at a time. A test that cannot run on this machine prints
//! `SKIPPED:` and returns. cargo counts it as passed, so this task counts
//! those lines and reports them as skipped instead.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::setup::run_command;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub fn build_release() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    run_command(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--release", "--bins"]),
    )?;
    Ok(root.join("target/release/parapet"))
}

pub fn run(test_args: &[String]) -> anyhow::Result<()> {
    let agent = build_release()?;
    let deploy = crate::deploy_checks::run(&workspace_root(), &agent);
    let mut child = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["test", "--release", "--no-fail-fast", "--"])
        .args(["--test-threads=1", "--nocapture"])
        .args(test_args)
        .env("PARAPET_BIN", &agent)
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let mut summary = Summary::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("failed to read the output of cargo test")?;
        println!("{line}");
        summary.read_line(&line);
    }
    let status = child.wait().context("failed to wait for cargo test")?;
    summary.passed += deploy.passed;
    summary.failed += deploy.failed.len() as u64;
    summary.failed_names.extend(deploy.failed);
    // Each fuzz target counts as one test: passed when it ran its time
    // without a crash.
    match crate::fuzz::run_targets(crate::fuzz::TEST_SECONDS, &[]) {
        Ok(outcomes) => {
            for outcome in outcomes {
                if outcome.passed {
                    summary.passed += 1;
                } else {
                    summary.failed += 1;
                    summary
                        .failed_names
                        .push(format!("fuzz: {}", outcome.target));
                }
            }
        }
        Err(error) => {
            println!("fuzz: FAILED to run: {error:#}");
            summary.failed += 1;
            summary.failed_names.push("fuzz: failed to run".to_owned());
        }
    }
    // The LSM backend needs a kernel with BPF LSM active: the same tests
    // run again in virtual machines. Skipped tests there count as skipped.
    match crate::vm::run_and_count(&[], test_args) {
        Ok(counts) => {
            summary.passed += counts.passed + counts.skipped;
            summary.skipped += counts.skipped;
            summary.failed += counts.failed;
            for kernel in counts.broken_kernels {
                println!("vm-test: the run on kernel {kernel} did not complete");
                summary.failed += 1;
            }
            summary.guest_failures.extend(counts.failures);
        }
        Err(error) => {
            println!("vm-test: FAILED to run: {error:#}");
            summary.failed += 1;
            summary
                .guest_failures
                .push(format!("in the guests: vm-test could not run: {error:#}"));
        }
    }
    let passed = summary.passed.saturating_sub(summary.skipped);
    println!(
        "summary: {passed} passed, {} failed, {} skipped",
        summary.failed, summary.skipped
    );
    // The output of a whole run is long and CI may keep only its end, so
    // the failures of the host part are named again here.
    for name in &summary.failed_names {
        println!("failed on the host: {name}");
    }
    for failure in &summary.guest_failures {
        println!("failed {failure}");
    }
    if !status.success() || summary.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

#[derive(Default)]
struct Summary {
    passed: u64,
    failed: u64,
    skipped: u64,
    /// The tests, checks and fuzz targets that failed, by name.
    failed_names: Vec<String>,
    /// The guest tests that failed, each with its kernel and reason.
    guest_failures: Vec<String>,
    /// Whether the lines read follow a `failures:` line of libtest, which
    /// starts either the output of the failed tests or the list of their
    /// names.
    in_failures_section: bool,
}

impl Summary {
    /// Adds up cargo's `test result:` lines and the `SKIPPED:` lines, and
    /// keeps the names libtest lists under `failures:`.
    fn read_line(&mut self, line: &str) {
        // With `--nocapture`, a skip line usually follows libtest's
        // `test NAME ... ` on the same line.
        let skipped = line.starts_with("SKIPPED:")
            || (line.starts_with("test ") && line.contains(" ... SKIPPED:"));
        if skipped {
            self.skipped += 1;
            return;
        }
        if line == "failures:" {
            self.in_failures_section = true;
            return;
        }
        if self.in_failures_section {
            match line.strip_prefix("    ") {
                Some(name) if !name.is_empty() && !name.starts_with(' ') => {
                    if !self.failed_names.iter().any(|known| known == name) {
                        self.failed_names.push(name.to_owned());
                    }
                    return;
                }
                _ if line.is_empty() => return,
                _ => self.in_failures_section = false,
            }
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

pub fn demo() -> anyhow::Result<()> {
    let agent = build_release()?;
    let demo = workspace_root().join("target/release/parapet-demo");
    run_command(Command::new(&demo).env("PARAPET_BIN", &agent))
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summary_counts_results_and_skips() {
        let mut summary = Summary::default();
        for line in [
            "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "SKIPPED: not root",
            "test read_only_root_refuses_with_eperm ... SKIPPED: read_only_root_refuses_with_eperm: bpf is not an active LSM",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            summary.read_line(line);
        }
        assert_eq!(summary.passed, 6);
        assert_eq!(summary.failed, 2);
        assert_eq!(summary.skipped, 2);
    }

    /// libtest's output without `--nocapture`: the first `failures:`
    /// section contains the output of each test, the second the names.
    /// With `--nocapture`, as `cargo xtask test` runs, the first is empty.
    #[test]
    fn summary_keeps_failed_test_names() {
        let mut summary = Summary::default();
        for line in [
            "test b_fails ... FAILED",
            "test m::c_fails ... FAILED",
            "",
            "failures:",
            "",
            "---- b_fails stdout ----",
            "    weird",
            "",
            "thread 'b_fails' (19111) panicked at t.rs:2:47:",
            "",
            "failures:",
            "    b_fails",
            "    m::c_fails",
            "    tests/src/lib.rs - (line 5)",
            "",
            "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            summary.read_line(line);
        }
        assert_eq!(
            summary.failed_names,
            ["b_fails", "m::c_fails", "tests/src/lib.rs - (line 5)"]
        );
        assert_eq!(summary.failed, 3);
    }
}
