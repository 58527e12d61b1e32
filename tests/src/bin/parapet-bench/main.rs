//! `parapet-bench`, run by `cargo xtask bench`: measures what the agent
//! costs a node against running without it, in one run, and writes the
//! table of results as Markdown and JSON.

mod agent_cost;
mod denials;
mod machine;
mod proc_usage;
mod programs;
mod reaction;
mod report;
mod syscalls;

use std::path::PathBuf;

use anyhow::{Result, bail};
use parapet_tests::Containerd;
use report::Row;

/// Options parsed from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds per measurement. Each round measures every configuration.
    pub rounds: usize,
    /// Where `bench.md` and `bench.json` go.
    pub out: PathBuf,
    /// Groups to run, or every group when empty.
    pub only: Vec<String>,
    /// Small counts and few rounds, for a smoke test.
    pub quick: bool,
}

/// The groups of measurements, in the order they run. Each group's module
/// has `pub async fn run(options: &Options) -> Result<Vec<Row>>`.
const GROUPS: [&str; 4] = ["syscalls", "denials", "reaction", "agent cost"];

async fn run_group(group: &str, options: &Options) -> Result<Vec<Row>> {
    match group {
        "syscalls" => syscalls::run(options).await,
        "denials" => denials::run(options).await,
        "reaction" => reaction::run(options).await,
        "agent cost" => agent_cost::run(options).await,
        _ => bail!("unknown group {group:?}"),
    }
}

/// Starts a private containerd whose image contains `netprobe`, runs
/// `measure` on it and removes it again, also when `measure` fails. An error
/// of `measure` is returned before one of the clean-up.
pub async fn with_containerd(
    group: &str,
    measure: impl AsyncFnOnce(&Containerd) -> Result<Vec<Row>>,
) -> Result<Vec<Row>> {
    if let Some(reason) = parapet_tests::skip_reason() {
        bail!("the {group} group needs the test harness: {reason}");
    }
    let containerd = Containerd::start(netprobe_path()?).await?;
    let measured = measure(&containerd).await;
    let cleaned = containerd.cleanup().await;
    let rows = measured?;
    cleaned?;
    Ok(rows)
}

/// Returns the path of `netprobe`, which is built next to this binary.
pub fn netprobe_path() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("netprobe");
    if !path.is_file() {
        bail!("netprobe not found at {}; build it with cargo build --release --bins", path.display());
    }
    Ok(path)
}

async fn run_groups(options: &Options) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for group in GROUPS {
        if options.only.is_empty() || options.only.iter().any(|only| only == group) {
            println!("bench: {group}");
            rows.extend(run_group(group, options).await?);
        }
    }
    Ok(rows)
}

/// Creates the output folder before any measurement, so that a bad
/// `--out` fails at once rather than after the whole run.
fn prepare_out(out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|error| anyhow::anyhow!("--out {}: failed to create the folder: {error}", out.display()))?;
    let probe = out.join(".parapet-bench-write-check");
    std::fs::write(&probe, b"").map_err(|error| anyhow::anyhow!("--out {}: the folder is not writable: {error}", out.display()))?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

const USAGE: &str = "usage: parapet-bench [--rounds N] [--quick] [--out DIR] [--only GROUP]...";

fn parse_options() -> Result<Options> {
    let mut options = Options { rounds: 5, out: PathBuf::from("target/bench"), only: Vec::new(), quick: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                let value = args.next().unwrap_or_default();
                options.rounds = value
                    .parse()
                    .ok()
                    .filter(|rounds| *rounds > 0)
                    .ok_or_else(|| anyhow::anyhow!("--rounds needs a whole number above 0, got {value:?}"))?;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--quick" => options.quick = true,
            "--out" => match args.next() {
                Some(out) if !out.is_empty() && !out.starts_with("--") => options.out = PathBuf::from(out),
                _ => bail!("--out: missing folder; pass --out DIR"),
            },
            "--only" => {
                let group = args.next().unwrap_or_default();
                if !GROUPS.contains(&group.as_str()) {
                    bail!("--only {group:?}: unknown group; the groups are {}", GROUPS.join(", "));
                }
                options.only.push(group);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = parse_options()?;
    prepare_out(&options.out)?;
    // On SIGINT or SIGTERM the running group is dropped, and with it the
    // agent, the containerd run and the fake workloads, which remove what
    // they made.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let rows = tokio::select! {
        rows = run_groups(&options) => rows?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted by SIGINT; the bench removed the pods, cgroups and mounts it made"),
        _ = terminate.recv() => bail!("stopped by SIGTERM; the bench removed the pods, cgroups and mounts it made"),
    };
    let machine = machine::describe(options.rounds, options.quick)?;
    report::write(&options.out, &machine, &rows)?;
    print!("{}", report::markdown(&machine, &rows));
    println!("\nwritten to {}", options.out.join("bench.md").display());
    Ok(())
}
