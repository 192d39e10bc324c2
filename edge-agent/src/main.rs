//! `flotilla-agent`: `run --config FILE`, `reset --config FILE`, `check`, and the internal
//! `runtime-helper` mode the agent re-executes itself in for container operations.

use clap::{Parser, Subcommand};
use edge_agent::config::AgentConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla edge agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol if needed, then run the desired containers and sync with the hub.
    Run {
        #[arg(long, short, default_value = "/etc/flotilla/agent.toml")]
        config: PathBuf,
    },
    /// Stop and remove every container this agent runs (identity and images stay).
    Reset {
        #[arg(long, short, default_value = "/etc/flotilla/agent.toml")]
        config: PathBuf,
    },
    /// Check that this host can run containers (cgroup controllers, overlayfs,
    /// namespaces, seccomp; with --config, the agent's directories) and say how to fix
    /// what it lacks. Exits 1 when something must be fixed.
    Check {
        /// Also check the directories this config names.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Read /proc and /sys under this directory instead of / (for tests).
        #[arg(long, hide = true, default_value = "/")]
        root: PathBuf,
    },
}

fn check(config: Option<&std::path::Path>, root: &std::path::Path) -> ExitCode {
    let config = match config.map(AgentConfig::load).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let dirs = config.as_ref().map(|c| (c.state_dir.as_path(), c.runtime_dir.as_path()));
    let facts = edge_agent::check::read_host(root, dirs);
    match edge_agent::check::print(&edge_agent::check::assess(&facts)) {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    // The runtime helper must start before any thread exists: it forks containers.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(agent_runtime::HELPER_SUBCOMMAND) {
        return agent_runtime::helper_main(args.into_iter().skip(2));
    }
    // Started by the agent inside a new pod's user namespace (agent_runtime::pod).
    if args.get(1).map(String::as_str) == Some(agent_runtime::POD_HOLDER_SUBCOMMAND) {
        return agent_runtime::pod_holder_main();
    }
    let cli = Cli::parse();
    if let Command::Check { config, root } = &cli.command {
        return check(config.as_deref(), root);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: logs that go to files and journals stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(8).build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run { config } => edge_agent::agent::run(AgentConfig::load(&config)?).await,
            Command::Reset { config } => edge_agent::agent::reset(AgentConfig::load(&config)?).await,
            Command::Check { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<edge_agent::enrol::EnrolRefused>().is_some() {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}
