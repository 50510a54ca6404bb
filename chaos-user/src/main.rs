//! The `chaos` command line.

use std::process::ExitCode;

use chaos_user::{InputError, cmd};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Network fault injection with eBPF: drop exactly the packets that match rules (protocol, ports,
/// CIDRs, direction) on an interface, without a proxy and without touching the applications.
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
