//! `cargo xtask fuzz`: builds the `cargo fuzz` targets in `fuzz/` and runs
//! each for a bounded time.
//!
//! libFuzzer starts from the seed corpus in `fuzz/corpus/TARGET/` and
//! writes the inputs it finds to `fuzz/target/corpus/TARGET/`, so a run
//! never changes the committed seeds. A crashing input is saved by
//! cargo fuzz under `fuzz/artifacts/TARGET/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::test::workspace_root;

/// The fuzz targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 3] = ["policy_file", "policy_set", "event_record"];

/// Seconds each target runs in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 30;

/// Result of fuzzing one target.
pub struct Outcome {
    pub target: String,
    /// Whether the target ran for its whole time without a crash, a leak,
    /// a timeout or running out of memory.
    pub passed: bool,
}

/// Runs `cargo xtask fuzz`: every target in `targets` (all when empty) for
/// `seconds` each, failing if any of them crashed.
pub fn run(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let outcomes = run_targets(seconds, targets)?;
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| !outcome.passed)
        .map(|outcome| outcome.target.as_str())
        .collect();
    println!(
        "fuzz: {} passed, {} failed",
        outcomes.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the targets, then runs each of `targets` (all when empty) for
/// `seconds`. A build failure is an error; a crash is a failed outcome.
pub fn run_targets(seconds: u64, targets: &[String]) -> anyhow::Result<Vec<Outcome>> {
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "unknown fuzz target {target:?}, expected one of: {}",
                TARGETS.join(", ")
            );
        }
    }
    let targets: Vec<String> = if targets.is_empty() {
        TARGETS.iter().map(|target| target.to_string()).collect()
    } else {
        targets.to_vec()
    };
    let sanitizer = sanitizer()?;
    let fuzz_dir = workspace_root().join("fuzz");
    let mut build = cargo_fuzz(&fuzz_dir, "build", sanitizer);
    crate::setup::run_command(&mut build).context("failed to build the fuzz targets")?;
    let mut outcomes = Vec::new();
    for target in targets {
        let passed = run_target(&fuzz_dir, &target, seconds, sanitizer)?;
        println!(
            "fuzz: {target} {} after {seconds} s",
            if passed { "passed" } else { "FAILED" }
        );
        outcomes.push(Outcome { target, passed });
    }
    Ok(outcomes)
}

/// Runs one target for `seconds`. Returns whether it ran without a
/// failure.
fn run_target(
    fuzz_dir: &Path,
    target: &str,
    seconds: u64,
    sanitizer: &str,
) -> anyhow::Result<bool> {
    let work_corpus = fuzz_dir.join("target/corpus").join(target);
    std::fs::create_dir_all(&work_corpus)
        .with_context(|| format!("failed to create {}", work_corpus.display()))?;
    let seeds: PathBuf = fuzz_dir.join("corpus").join(target);
    let mut command = cargo_fuzz(fuzz_dir, "run", sanitizer);
    command
        .arg(target)
        .arg(&work_corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes 10 s, or a process that grows past 2 GiB,
        // is a failure as much as a crash is.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        // Let policy inputs grow to 64 KiB, past the 4 KiB of the largest
        // seed, to reach the limits on list lengths.
        .arg("-max_len=65536");
    let status = command
        .status()
        .with_context(|| format!("failed to start cargo fuzz run {target}"))?;
    Ok(status.success())
}

/// `cargo fuzz SUBCOMMAND` in `fuzz_dir` with the stable toolchain.
fn cargo_fuzz(fuzz_dir: &Path, subcommand: &str, sanitizer: &str) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(fuzz_dir)
        .args(["fuzz", subcommand, "--sanitizer", sanitizer])
        // cargo fuzz passes `-Z` flags to rustc (the sanitizer, the
        // coverage instrumentation), which the stable toolchain accepts
        // only with RUSTC_BOOTSTRAP=1.
        .env("RUSTC_BOOTSTRAP", "1");
    command
}

/// Returns `address` when the toolchain ships the AddressSanitizer runtime,
/// and `none` with a printed note when it does not.
fn sanitizer() -> anyhow::Result<&'static str> {
    let output = Command::new("rustc")
        .args(["--print", "target-libdir"])
        .output()
        .context("failed to start rustc")?;
    if !output.status.success() {
        bail!("rustc --print target-libdir failed");
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let has_asan = std::fs::read_dir(&libdir)
        .with_context(|| format!("failed to read {}", libdir.display()))?
        .flatten()
        .any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("librustc-") && name.ends_with("_rt.asan.a")
        });
    if has_asan {
        Ok("address")
    } else {
        println!(
            "fuzz: the toolchain has no AddressSanitizer runtime in {}; fuzzing with \
             --sanitizer none, so memory errors in unsafe code go undetected",
            libdir.display()
        );
        Ok("none")
    }
}
