//! `chaos cleanup`: remove what a killed chaos left behind, and say what.

use anyhow::Result;
use clap::Args;

use super::run::Output;
use crate::{InputError, caps, recover};

/// Remove what a killed chaos left behind (netlink filters, its fq, its ifb devices).
///
/// Interfaces a running chaos still owns (TCX links, or a netlink filter whose lease has not run
/// out) are left alone.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Also look in every named network namespace (/run/netns) and every process's, containers'
    /// included (each reached through /proc/PID/ns/net, reported as `pid N`).
    #[arg(long)]
    pub all_netns: bool,

    /// Format of the report.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: CleanupArgs) -> Result<()> {
    let effective = caps::effective()?;
    if let Some(cap) = caps::missing_for_run(effective, args.all_netns).first() {
        return Err(InputError(format!(
            "missing capability {} ({}); run as root or grant it",
            cap.name, cap.why
        ))
        .into());
    }
    let removed = recover::clean(args.all_netns).map_err(anyhow::Error::msg)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&removed)?),
        Output::Text if removed.is_empty() => println!("nothing of chaos's found"),
        Output::Text => {
            for r in &removed {
                println!("removed {r}");
            }
        }
    }
    Ok(())
}
