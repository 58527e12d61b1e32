//! The release build that the guest runs, with the paths cargo reports.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::init::TestBinary;

/// The programs the guest needs from this build.
pub struct Build {
    pub agent: PathBuf,
    /// Every binary target of the workspace but xtask: the agent,
    /// `netprobe` and any other helper the tests run.
    pub programs: Vec<PathBuf>,
    pub tests: Vec<TestBinary>,
}

/// Builds the release binaries and the test binaries, and reads their
/// paths from cargo's JSON messages. `guest_tests` names the test targets
/// to return, in the order to run them.
pub fn build(root: &Path, guest_tests: &[&str]) -> anyhow::Result<Build> {
    let mut programs = Vec::new();
    for artifact in cargo_artifacts(root, &["build", "--release", "--bins"])? {
        if artifact.kind == "bin" && !artifact.test && artifact.name != "xtask" {
            programs.push(artifact.executable);
        }
    }
    let agent = programs
        .iter()
        .find(|path| path.file_name().is_some_and(|name| name == "parapet"))
        .cloned()
        .context("cargo build --release --bins built no parapet binary")?;
    let mut tests = Vec::new();
    for artifact in cargo_artifacts(root, &["test", "--release", "--no-run"])? {
        if artifact.kind == "test" && guest_tests.contains(&artifact.name.as_str()) {
            tests.push(TestBinary {
                name: artifact.name,
                path: artifact.executable,
            });
        }
    }
    for &name in guest_tests {
        if !tests.iter().any(|test| test.name == name) {
            bail!("cargo test --release --no-run built no test target named {name}");
        }
    }
    tests.sort_by_key(|test| guest_tests.iter().position(|name| *name == test.name));
    Ok(Build {
        agent,
        programs,
        tests,
    })
}

struct Artifact {
    name: String,
    /// The target's first kind: `bin`, `test`, `lib`.
    kind: String,
    /// Whether it was built with the test harness.
    test: bool,
    executable: PathBuf,
}

/// Runs cargo with `args` and returns the executables it reports.
fn cargo_artifacts(root: &Path, args: &[&str]) -> anyhow::Result<Vec<Artifact>> {
    let output = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run cargo {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("cargo {} failed: {}", args.join(" "), output.status);
    }
    let mut artifacts = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        artifacts.push(Artifact {
            name: message["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            kind: message["target"]["kind"][0]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            test: message["profile"]["test"].as_bool().unwrap_or(false),
            executable: PathBuf::from(executable),
        });
    }
    Ok(artifacts)
}
