//! `flotilla`: the hub (`flotilla hub serve`), the demo and the operator CLI.

use clap::{Parser, Subcommand};
use cloud_hub::cli::{self, client::HubArgs, output::Format};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: a profile of the hub at 256 concurrent API writes
/// spent a sixth of its CPU in glibc's malloc and free (consolidation of fragmented chunks).
/// Only the hub's binary; the agent keeps the system allocator and its size budget.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "flotilla", version, about = "Flotilla: edge fleet orchestration")]
struct Cli {
    #[command(flatten)]
    hub: HubArgs,
    /// How the hub, the demo and the simulator write their logs to stderr: `text`
    /// for people, `json` (one object a line) for log collectors.
    #[arg(long, global = true, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Hub {
        #[command(subcommand)]
        command: HubCommand,
    },
    /// Run a hub, an agent and the demo app on this machine (as root).
    Demo(cloud_hub::demo::DemoArgs),
    /// Create or update objects from YAML or JSON (a file, a directory, or - for stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Turn other tools' descriptions into Flotilla objects (printed as YAML).
    Convert {
        #[command(subcommand)]
        command: cli::ConvertCommand,
    },
    /// List objects of a kind, or show one.
    Get {
        /// sites, devices, apps, images, configs or secrets.
        kind: String,
        name: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// Only objects whose labels match, e.g. `app=pos,tier!=db,env in (a,b),!canary`.
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        /// Only the site's own object, its devices, and the apps placed there.
        #[arg(long)]
        site: Option<String>,
        /// Only objects whose fields match, e.g. `status.phase=Online,spec.site=s1`.
        #[arg(long)]
        field_selector: Option<String>,
        /// After the list, print changes as they come (resuming where it left off when the
        /// connection drops).
        #[arg(short = 'w', long)]
        watch: bool,
        /// Apps, configs or secrets of every namespace, not just `-n`'s.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Create or replace a Config or a Secret from values and files.
    Create {
        #[command(subcommand)]
        command: cli::config::CreateCommand,
    },
    /// Print a container's log (through the hub).
    Logs(cli::attach::LogsArgs),
    /// Run a command in a container and exit with its code (through the hub).
    Exec(cli::attach::ExecArgs),
    /// Show one object in detail.
    Describe { kind: String, name: String },
    /// Delete one object.
    Delete { kind: String, name: String },
    /// Enrolment tokens for devices.
    Token {
        #[command(subcommand)]
        command: cli::TokenCommand,
    },
    /// API tokens for operators and tools.
    ApiToken {
        #[command(subcommand)]
        command: cli::ApiTokenCommand,
    },
    /// Device lifecycle.
    Device {
        #[command(subcommand)]
        command: cli::DeviceCommand,
    },
    /// The fleet CA: its status and rotation, without re-flashing devices.
    Ca {
        #[command(subcommand)]
        command: cli::ca::CaCommand,
    },
    /// Who changed what: the hub's audit log of mutating API calls (admins).
    Audit {
        /// Entries since an RFC 3339 time or a duration back from now (1h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// The newest this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Back up the hub's store, or restore a hub from a backup.
    Backup {
        #[command(subcommand)]
        command: cli::backup::BackupCommand,
    },
    /// Simulate a fleet of agents against a hub (for scale tests and benchmarks).
    Sim(cloud_hub::sim::SimArgs),
    /// OCI images.
    Image {
        #[command(subcommand)]
        command: cli::ImageCommand,
    },
}

#[derive(Subcommand)]
enum HubCommand {
    /// Serve the API and the agent endpoint (a one-member Raft cluster by default).
    Serve(Box<cloud_hub::hub::ServeArgs>),
    /// Join a hub cluster (first start of an empty data directory), then serve as one of
    /// its members. Later starts may use `hub serve` with the same data directory.
    Join {
        /// The API URL of any hub of the cluster, e.g. https://hub-1.example:7440.
        url: String,
        /// A token from `flotilla hub join-token create`.
        #[arg(long, env = "FLOTILLA_JOIN_TOKEN", hide_env_values = true)]
        join_token: String,
        #[command(flatten)]
        serve: Box<cloud_hub::hub::ServeArgs>,
    },
    /// Make the fleet CA, the hub key and one data directory per hub for a cluster formed
    /// from static peers; then run `hub serve --raft-listen` on each.
    Bootstrap {
        /// A member: its node id and the HOST:PORT the other hubs reach its Raft listener
        /// at, e.g. `--member 1=hub-1.example:7450` (once per hub).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Where to write the data directories (`hub-<id>` each).
        #[arg(long)]
        out: PathBuf,
    },
    /// The hubs of the cluster, their Raft addresses and the leader.
    Members,
    /// Remove a hub from the cluster (to retire or replace it).
    Remove { node_id: u64 },
    /// Tokens with which new hubs join the cluster.
    JoinToken {
        #[command(subcommand)]
        command: cli::cluster::JoinTokenCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr, filtered by `FLOTILLA_LOG`. `init` also installs tracing-log's
/// `LogTracer`, so records of crates that log through `log` (rustls) arrive here too,
/// under their own targets.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // One JSON object per line, fields flattened beside the message.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
        // Colour only on a terminal: logs that go to files and journals stay greppable.
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let h = &cli.hub;
    match cli.command {
        Command::Hub { command: HubCommand::Serve(args) } => cloud_hub::hub::serve(*args).await,
        Command::Hub { command: HubCommand::Join { url, join_token, serve } } => {
            cloud_hub::hub::join(url, join_token, *serve).await
        }
        Command::Hub { command: HubCommand::Bootstrap { members, out } } => {
            let mut map = std::collections::BTreeMap::new();
            for m in &members {
                let (id, addr) = anyhow::Context::with_context(cloud_hub::cluster::parse_member(m), || {
                    format!("--member {m}")
                })?;
                if map.insert(id, addr).is_some() {
                    anyhow::bail!("node {id} is named twice");
                }
            }
            println!("{}", cloud_hub::cluster::bootstrap(&out, &map)?);
            Ok(())
        }
        Command::Hub { command: HubCommand::Members } => cli::cluster::members(h).await,
        Command::Hub { command: HubCommand::Remove { node_id } } => cli::cluster::remove(h, node_id).await,
        Command::Hub { command: HubCommand::JoinToken { command } } => {
            cli::cluster::join_token(h, &command).await
        }
        Command::Demo(args) => cloud_hub::demo::run(args).await,
        Command::Apply { file } => cli::apply(h, &file).await,
        Command::Convert { command } => cli::convert(&command),
        Command::Get { kind, name, output, selector, site, field_selector, watch, all_namespaces } => {
            let namespace = match all_namespaces {
                true => None,
                false => {
                    Some(h.namespace.clone().unwrap_or_else(|| shared_proto::DEFAULT_NAMESPACE.to_string()))
                }
            };
            let filters = cli::watch::Filters { selector, site, field_selector, namespace };
            cli::get(h, &kind, name.as_deref(), output, &filters, watch).await
        }
        Command::Logs(a) => cli::attach::logs(h, &a).await,
        Command::Exec(a) => {
            let code = cli::attach::exec(h, &a).await?;
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        Command::Create { command } => cli::config::create(h, &command).await,
        Command::Describe { kind, name } => cli::describe(h, &kind, &name).await,
        Command::Delete { kind, name } => cli::delete(h, &kind, &name).await,
        Command::Token { command } => cli::token(h, &command).await,
        Command::ApiToken { command } => cli::api_token(h, &command).await,
        Command::Image { command } => cli::image(h, &command).await,
        Command::Device { command } => cli::device(h, &command).await,
        Command::Ca { command } => cli::ca::run(h, &command).await,
        Command::Audit { since, limit, output } => cli::audit(h, since.as_deref(), limit, output).await,
        Command::Backup { command } => cli::backup::run(h, &command).await,
        Command::Sim(args) => cloud_hub::sim::run(h, args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Hub { command: HubCommand::Serve(_) | HubCommand::Join { .. } }
            | Command::Demo(_)
            | Command::Sim(_)
    );
    if serving {
        init_tracing(cli.log_format);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // Every subcommand: no two arguments share a name (global ones included).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
