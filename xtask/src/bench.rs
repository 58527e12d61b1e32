//! `cargo xtask bench`: builds the release binaries and runs
//! `parapet-bench`, which measures what the agent costs against running
//! without it. With `--publish`, the results go to `docs/bench.md` and
//! `docs/bench.json`, and the table into README.md between the
//! `<!-- bench:start -->` and `<!-- bench:end -->` markers.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    setup::run_command,
    test::{build_release, workspace_root},
};

const START_MARKER: &str = "<!-- bench:start -->";
const END_MARKER: &str = "<!-- bench:end -->";

/// Options of `cargo xtask bench`, passed on to `parapet-bench`.
pub struct BenchOptions {
    pub rounds: Option<usize>,
    pub quick: bool,
    pub only: Vec<String>,
    pub publish: bool,
}

pub fn run(options: &BenchOptions) -> anyhow::Result<()> {
    // The published table replaces the whole previous one, so it must hold
    // every group, measured in full.
    if options.publish && !options.only.is_empty() {
        anyhow::bail!("--publish needs every group; run it without --only");
    }
    if options.publish && options.quick {
        anyhow::bail!("--publish needs the full counts; run it without --quick");
    }
    let stats = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    if options.publish && !matches!(stats.trim(), "" | "0") {
        bail!(
            "--publish: kernel.bpf_stats_enabled is on, so the kernel times every BPF program run and the agent's figures would include that cost; turn it off with `sysctl kernel.bpf_stats_enabled=0` and run again"
        );
    }
    let agent = build_release()?;
    let root = workspace_root();
    let out = root.join("target/bench");
    let mut command = Command::new(root.join("target/release/parapet-bench"));
    command
        .current_dir(&root)
        .env("PARAPET_BIN", &agent)
        .arg("--out")
        .arg(&out);
    if let Some(rounds) = options.rounds {
        command.args(["--rounds", &rounds.to_string()]);
    }
    if options.quick {
        command.arg("--quick");
    }
    for group in &options.only {
        command.args(["--only", group]);
    }
    run_command(&mut command)?;
    if options.publish {
        publish(&root, &out)?;
    }
    Ok(())
}

/// Copies the results into `docs/` and the table into README.md.
fn publish(root: &Path, out: &Path) -> anyhow::Result<()> {
    let docs = root.join("docs");
    for name in ["bench.md", "bench.json"] {
        let from = out.join(name);
        fs::copy(&from, docs.join(name))
            .with_context(|| format!("failed to copy {} to {}", from.display(), docs.display()))?;
    }
    let table =
        fs::read_to_string(out.join("bench.md")).context("failed to read the bench table")?;
    let readme_path = root.join("README.md");
    let readme = fs::read_to_string(&readme_path).context("failed to read README.md")?;
    fs::write(&readme_path, replace_block(&readme, &table)?)
        .context("failed to write README.md")?;
    println!("published to docs/bench.md, docs/bench.json and README.md");
    Ok(())
}

/// Replaces the text between the bench markers with `table`.
fn replace_block(readme: &str, table: &str) -> anyhow::Result<String> {
    let (Some(start), Some(end)) = (readme.find(START_MARKER), readme.find(END_MARKER)) else {
        bail!("README.md lacks the {START_MARKER} and {END_MARKER} markers");
    };
    if end < start {
        bail!("README.md has {END_MARKER} before {START_MARKER}");
    }
    let before = &readme[..start + START_MARKER.len()];
    let after = &readme[end..];
    Ok(format!("{before}\n{}\n{after}", table.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::replace_block;

    #[test]
    fn block_between_markers_is_replaced() {
        let readme = "intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nrest\n";
        let replaced = replace_block(readme, "| new |\n").expect("markers present");
        assert_eq!(
            replaced,
            "intro\n<!-- bench:start -->\n| new |\n<!-- bench:end -->\nrest\n"
        );
    }

    #[test]
    fn missing_markers_are_an_error() {
        assert!(replace_block("no markers here\n", "| new |").is_err());
    }
}
