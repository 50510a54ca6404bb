//! The `chaos` command line.

use std::process::ExitCode;

use chaos_user::{InputError, cmd};
use clap::{CommandFactory as _, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Network fault injection with eBPF: drop, delay or throttle exactly the packets that match rules
/// (protocol, ports, CIDRs, direction), without a proxy and without touching the applications.
#[derive(Debug, Parser)]
#[command(name = "chaos", version, propagate_version = true)]
struct Cli {
    /// Log more (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(cmd::run::RunArgs),
    Daemon(cmd::daemon::DaemonArgs),
    Cleanup(cmd::cleanup::CleanupArgs),
    #[command(flatten)]
    Ctl(cmd::ctl::Ctl),
    /// Print a shell completion script, e.g. `chaos completions bash > /etc/bash_completion.d/chaos`.
    Completions {
        shell: clap_complete::Shell,
    },
    /// Print the NetworkFault CustomResourceDefinition (YAML) for `kubectl apply -f -`; the same
    /// as deploy/crd.yaml.
    Crd,
    /// Write man pages (chaos.1, chaos-run.1, ...) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Daemon(args) => cmd::daemon::run(args),
        Command::Cleanup(args) => cmd::cleanup::run(args),
        Command::Ctl(ctl) => cmd::ctl::run(ctl),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "chaos", &mut std::io::stdout());
            Ok(())
        }
        Command::Crd => {
            print!("{}", chaos_user::k8s::crd::crd_yaml());
            Ok(())
        }
        Command::Man { dir } => clap_mangen::generate_to(Cli::command(), &dir)
            .map_err(|e| anyhow::anyhow!("writing man pages to {}: {e}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chaos: error: {err:#}");
            if err.chain().any(|e| e.is::<InputError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
