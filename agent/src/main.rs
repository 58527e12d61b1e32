//! `parapet`: the agent daemon and its command-line tools in one binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use parapet::{api, daemon, tail};

#[derive(Parser)]
#[command(name = "parapet", version, about = "Runtime enforcement agent for container nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: enforce the policies on this node's pods.
    Agent(AgentArgs),
    /// Follow live violations from the local agent.
    Tail(TailArgs),
    /// Show what the local agent enforces.
    Status(StatusArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Remove every kernel program, link and map the agent pinned, which
    /// ends enforcement on this node. Refuses while an agent runs.
    Uninstall(UninstallArgs),
}

#[derive(clap::Args)]
struct UninstallArgs {
    /// bpffs directory the agent pinned its kernel objects in.
    #[arg(long, default_value = parapet::pins::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Directory of RuntimePolicy YAML files (a mounted ConfigMap works).
    #[arg(long, default_value = "/etc/parapet/policies")]
    policy_dir: PathBuf,
    /// CRI socket of the container runtime.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    cri_socket: PathBuf,
    /// Cgroup v2 directory that holds the pods; the kernel programs attach
    /// here. Default: the kubepods cgroup below the cgroup v2 mount.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Address and port to serve /metrics on.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics_address: SocketAddr,
    /// Path of the local API socket that `parapet tail` reads.
    #[arg(long, default_value = api::DEFAULT_SOCKET)]
    api_socket: PathBuf,
    /// Node name reported in events. Default: $NODE_NAME, else the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// Seconds a removed workload's counters stay in /metrics, so that
    /// scrapes see the final counts of short-lived pods.
    #[arg(long, default_value_t = parapet::identity::DEFAULT_RETENTION.as_secs())]
    removed_workload_retention: u64,
    /// Refuse to start unless the BPF LSM backend can enforce the
    /// network, filesystem and exec promises.
    #[arg(long)]
    require_lsm: bool,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// bpffs directory to pin the kernel links and maps in, so that
    /// enforcement goes on while the agent is stopped or restarted. The
    /// agent mounts bpffs on /sys/fs/bpf when the directory is below it
    /// and nothing is mounted there.
    #[arg(long, default_value = parapet::pins::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct TailArgs {
    /// Only events of pods in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only events of this pod (by name).
    #[arg(long)]
    pod: Option<String>,
    /// Only events of this container (by name).
    #[arg(long)]
    container: Option<String>,
    /// Only events of this kind.
    #[arg(long, value_enum)]
    kind: Option<tail::KindFilter>,
    /// Only events with this verdict.
    #[arg(long, value_enum)]
    verdict: Option<tail::VerdictFilter>,
    /// Only events under this policy (by name).
    #[arg(long)]
    policy: Option<String>,
    /// Also show operations that the policies allowed.
    #[arg(long)]
    include_allowed: bool,
    /// First replay the events of this last period (such as 30s, 5m or 1h)
    /// that the agent still keeps, then follow live ones.
    #[arg(long, value_parser = tail::parse_since)]
    since: Option<std::time::Duration>,
    #[arg(long, value_enum, default_value = "text")]
    output: tail::Output,
    /// Path of the agent's API socket.
    #[arg(long, default_value = api::DEFAULT_SOCKET)]
    api_socket: PathBuf,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// `text` for a terminal, `json` for one JSON object.
    #[arg(long, value_enum, default_value = "text")]
    output: StatusOutput,
    /// Path of the agent's API socket.
    #[arg(long, default_value = api::DEFAULT_SOCKET)]
    api_socket: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusOutput {
    Text,
    Json,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files offline; exits 0 only when every file is valid.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(PolicyCommand::Check { files }) => policy_check(&files),
        Command::Agent(args) => {
            init_logging(args.log_format);
            if let Err(error) = parapet::pins::ensure_bpffs(&args.pin_dir) {
                eprintln!("parapet: {error}");
                return ExitCode::FAILURE;
            }
            if let Err(error) = private_mount_namespace() {
                eprintln!("parapet: {error:#}");
                return ExitCode::FAILURE;
            }
            run_async(daemon::run(daemon::AgentOptions {
                policy_dir: args.policy_dir,
                cri_socket: args.cri_socket,
                cgroup_root: args.cgroup_root,
                metrics_address: args.metrics_address,
                api_socket: args.api_socket,
                node_name: args.node_name,
                require_lsm: args.require_lsm,
                retention: std::time::Duration::from_secs(args.removed_workload_retention),
                pin_dir: args.pin_dir,
            }))
        }
        Command::Uninstall(args) => match parapet::pins::uninstall(&args.pin_dir) {
            Ok(removed) => {
                println!(
                    "removed {removed} pinned kernel objects from {}; Parapet no longer enforces anything on this node",
                    args.pin_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("parapet: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Tail(args) => run_async(tail::run(
            &args.api_socket,
            api::Subscription {
                namespace: args.namespace,
                pod: args.pod,
                container: args.container,
                kind: args.kind.map(Into::into),
                verdict: args.verdict.map(Into::into),
                policy: args.policy,
                include_allowed: args.include_allowed,
                since_ms: args.since.map(|since| since.as_millis().try_into().unwrap_or(u64::MAX)),
            },
            args.output,
        )),
        Command::Status(args) => run_async(async move {
            let status = tail::status(&args.api_socket).await?;
            match args.output {
                StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                StatusOutput::Text => print!("{}", parapet::status::render_text(&status)),
            }
            Ok(())
        }),
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("parapet: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parapet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy_check(files: &[PathBuf]) -> ExitCode {
    let report = parapet::policy::check_files(files);
    print!("{report}");
    if report.all_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Moves the agent into a mount namespace of its own, receiving the host's
/// mount events but sending none back, so that the tracefs and securityfs
/// mounts it may make stay private to it. Runs before any thread starts,
/// because unshare(CLONE_NEWNS) fails in a multi-threaded process.
fn private_mount_namespace() -> anyhow::Result<()> {
    // SAFETY: plain syscalls on constant arguments, made while the process
    // has a single thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        anyhow::bail!(
            "unshare(CLONE_NEWNS) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    let result = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    };
    if result != 0 {
        anyhow::bail!(
            "making the agent's mounts private (mount MS_REC|MS_SLAVE on /) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
