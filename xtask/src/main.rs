//! Developer and CI tasks: `cargo xtask setup`, `test`, `fuzz`, `vm-test`,
//! `bench` and `demo`.

mod bench;
mod deploy_checks;
mod fuzz;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need; safe to run again.
    Setup,
    /// Set up, build, and run every test: unit tests and the end-to-end
    /// tests on real containerd pods (needs root).
    Test {
        /// Extra arguments for the test binaries, such as a test name filter.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Set up, then fuzz the policy parser and the event decoder with
    /// `cargo fuzz`; fails if a target crashes.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (`policy_file`, `policy_set`, `event_record`).
        /// Default: every target.
        targets: Vec<String>,
    },
    /// Set up, build, and run the end-to-end tests that need BPF LSM inside
    /// QEMU guests booting Debian's 6.1 and 6.12 cloud kernels (needs root).
    VmTest {
        /// Kernel series to boot (`6.1`, `6.12`); repeat for several.
        /// Default: every series.
        #[arg(long = "kernel", value_name = "SERIES")]
        kernels: Vec<String>,
        /// Test name filters, matched as `cargo test` matches them.
        #[arg(last = true)]
        filters: Vec<String>,
    },
    /// Set up, then show the agent blocking a pod's connection live: starts
    /// containerd and two real pods, runs the agent with an example policy,
    /// and cleans up afterwards (needs root).
    Demo,
    /// Set up, build, and measure what the agent costs against running
    /// without it: syscall overhead and reaction time on real pods (needs
    /// root). Writes target/bench/bench.md and bench.json.
    Bench {
        /// Rounds per measurement; each round measures every configuration.
        /// Default: parapet-bench's own (5).
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        rounds: Option<usize>,
        /// Small counts and one round, for a smoke test.
        #[arg(long)]
        quick: bool,
        /// Groups to run (`syscalls`, `reaction`, ...); repeat for several.
        /// Default: every group.
        #[arg(long = "only", value_name = "GROUP")]
        only: Vec<String>,
        /// Copy the results to docs/bench.md and docs/bench.json and the
        /// table into README.md.
        #[arg(long)]
        publish: bool,
    },
}

/// Prints a failure as one line: a backtrace after the summary would push
/// the summary out of the end of the output, which is what CI keeps.
fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup => setup::run(),
        Command::Test { test_args } => {
            setup::run()?;
            test::run(&test_args)
        }
        Command::Fuzz { seconds, targets } => {
            setup::run()?;
            fuzz::run(seconds, &targets)
        }
        Command::VmTest { kernels, filters } => {
            setup::run()?;
            vm::run(&kernels, &filters)
        }
        Command::Bench {
            rounds,
            quick,
            only,
            publish,
        } => {
            setup::run()?;
            bench::run(&bench::BenchOptions {
                rounds,
                quick,
                only,
                publish,
            })
        }
        Command::Demo => {
            setup::run()?;
            test::demo()
        }
    }
}
