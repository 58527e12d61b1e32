//! Developer and CI tasks: `cargo xtask setup`, `test` and `demo`.

mod deploy_checks;
mod setup;
mod test;

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
    /// Set up, then show the agent blocking a pod's connection live: starts
    /// containerd and two real pods, runs the agent with an example policy,
    /// and cleans up afterwards (needs root).
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { test_args } => {
            setup::run()?;
            test::run(&test_args)
        }
        Command::Demo => {
            setup::run()?;
            test::demo()
        }
    }
}
