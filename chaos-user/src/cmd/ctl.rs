//! The daemon's client commands: `chaos apply`, `list`, `get`, `delete`, `pause`, `resume`,
//! `status`. They talk to the daemon's unix socket.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::{daemon::DEFAULT_SOCKET, run::Output};
use crate::{
    InputError,
    client::{Client, ClientError},
    experiment::{ExperimentFile, ExperimentSpec},
};

/// How to reach the daemon, and how to print.
#[derive(Debug, Args)]
pub struct Conn {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Format of what is printed.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum Ctl {
    /// Create or replace experiments, from a TOML file or from one command line.
    Apply(ApplyArgs),
    /// List the daemon's experiments.
    List(Conn),
    /// Show one experiment and its counters.
    Get {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an experiment: its faults stop at once.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop every fault at once (experiments are kept).
    Pause(Conn),
    /// Restart the faults after a pause.
    Resume(Conn),
    /// End every experiment at once, whoever owns it, and refuse new ones until `chaos unhalt`.
    Halt {
        /// Why, for the audit trail and `chaos status`.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Accept experiments again after `chaos halt`.
    Unhalt(Conn),
    /// The daemon's campaigns: random experiments over time, from `[[campaign]]` tables
    /// (`chaos apply -f`, `--config`).
    #[command(subcommand)]
    Campaign(super::campaign::CampaignCmd),
    /// The audit trail: every change, who asked (uid from the socket's peer credentials, or the
    /// token), when, what and why; the daemon keeps the last 1,000 (`--audit-log` keeps all).
    History(Conn),
    /// The daemon's state and every experiment's counters.
    Status {
        /// Redraw every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `chaos apply -f FILE` or `chaos apply --name NAME --iface IFACE --rule RULE ...`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// TOML file of `[[experiment]]` and `[[campaign]]` tables (the config file's format).
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["name", "iface", "target", "namespace", "rules"])]
    pub file: Option<PathBuf>,

    /// Name of a one-line experiment.
    #[arg(long, required_unless_present = "file", requires = "rules")]
    pub name: Option<String>,

    /// Interface the faults apply on; with --target, the workload's default-route interface
    /// when left out.
    #[arg(long, value_name = "IFACE", required_unless_present_any = ["file", "target"])]
    pub iface: Option<String>,

    #[arg(long, value_name = "NAME", conflicts_with = "target")]
    pub netns: Option<String>,

    /// A workload: container=ID-or-NAME, pod=NAMESPACE/NAME, pid=PID, cgroup=DIR or
    /// netns=FILE (as chaos run), or a selector the daemon follows while the experiment runs:
    /// container=GLOB ('cart-*'), pod=NAMESPACE/GLOB, pods=LABELS ('app=cart,tier!=canary').
    /// Matches that appear later are faulted within 2 s; those that go are released. Workloads
    /// on the host's network are refused unless a rule says force=yes.
    #[arg(long, value_name = "KIND=VALUE")]
    pub target: Option<String>,

    /// The Kubernetes namespace a pods= target looks in (default: "default").
    #[arg(long, value_name = "NAMESPACE", requires = "target")]
    pub namespace: Option<String>,

    /// A rule in `chaos run`'s language; repeat for several.
    #[arg(long = "rule", value_name = "RULE")]
    pub rules: Vec<String>,

    /// Revert by itself after this long, e.g. 5m.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,

    /// Start after this long, e.g. 30s.
    #[arg(long, value_name = "DURATION")]
    pub start_delay: Option<String>,

    /// Higher wins where experiments overlap.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,

    /// Only count what the rules match.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(command: Ctl) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(dispatch(command))
        .map_err(|e| match e.downcast::<ClientError>() {
            // The daemon refused what was asked, or is not there: the user's to fix.
            Ok(e @ (ClientError::NoDaemon(_) | ClientError::Refused { .. }))
                if !is_server_error(&e) =>
            {
                InputError(e.to_string()).into()
            }
            Ok(e) => e.into(),
            Err(e) => e,
        })
}

fn is_server_error(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused { status, .. } if status.is_server_error())
}

async fn dispatch(command: Ctl) -> Result<()> {
    match command {
        Ctl::Apply(args) => apply(args).await,
        Ctl::List(conn) => show(&conn, Method::GET, "/v1/experiments", list_table).await,
        Ctl::Get { name, conn } => {
            show(
                &conn,
                Method::GET,
                &format!("/v1/experiments/{name}"),
                detail,
            )
            .await
        }
        Ctl::Delete { name, conn } => {
            Client::new(&conn.socket)
                .call(Method::DELETE, &format!("/v1/experiments/{name}"), None)
                .await?;
            print(&conn, &json!({ "deleted": name }), || {
                format!("deleted {name}\n")
            })
        }
        Ctl::Pause(conn) => {
            show(&conn, Method::POST, "/v1/pause", |_| {
                "paused: every fault is off until `chaos resume`\n".into()
            })
            .await
        }
        Ctl::Halt { reason, conn } => {
            let body = json!({ "reason": reason });
            let s = Client::new(&conn.socket)
                .call(Method::POST, "/v1/halt", Some(&body))
                .await?;
            print(&conn, &s, || {
                "halted: every experiment ended; none is accepted until `chaos unhalt`\n".into()
            })
        }
        Ctl::Unhalt(conn) => {
            show(&conn, Method::POST, "/v1/unhalt", |_| {
                "unhalted: experiments are accepted again\n".into()
            })
            .await
        }
        Ctl::History(conn) => show(&conn, Method::GET, "/v1/history", history_table).await,
        Ctl::Resume(conn) => show(&conn, Method::POST, "/v1/resume", |_| "resumed\n".into()).await,
        Ctl::Status { watch, conn } => status(&conn, watch).await,
        Ctl::Campaign(cmd) => super::campaign::dispatch(cmd).await,
    }
}

async fn apply(args: ApplyArgs) -> Result<()> {
    let mut campaigns = Vec::new();
    let specs: Vec<ExperimentSpec> = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InputError(format!("{}: {e}", path.display())))?;
            // Checked here first, so a bad file is reported without touching the daemon.
            campaigns = ExperimentFile::parse_campaigns(&text)
                .map_err(|e| InputError(format!("{}: {e}", path.display())))?;
            ExperimentFile::parse(&text)
                .map_err(|e| InputError(format!("{}: {e}", path.display())))?
                .into_iter()
                .map(|e| e.spec)
                .collect()
        }
        None => vec![ExperimentSpec {
            name: args.name.clone().unwrap_or_default(),
            iface: args.iface.clone().unwrap_or_default(),
            netns: args.netns.clone(),
            target: args.target.clone(),
            namespace: args.namespace.clone(),
            rules: args.rules.clone(),
            duration: args.duration.clone(),
            start_delay: args.start_delay.clone(),
            priority: args.priority,
            dry_run: args.dry_run,
            stop_conditions: Vec::new(),
        }],
    };
    let client = Client::new(&args.conn.socket);
    let mut applied = Vec::new();
    for spec in &specs {
        let body = serde_json::to_value(spec)?;
        let view = client
            .call(
                Method::PUT,
                &format!("/v1/experiments/{}", spec.name),
                Some(&body),
            )
            .await?;
        applied.push(view);
    }
    for spec in &campaigns {
        let body = serde_json::to_value(spec)?;
        let view = client
            .call(
                Method::PUT,
                &format!("/v1/campaigns/{}", spec.name),
                Some(&body),
            )
            .await?;
        applied.push(view);
    }
    let applied = Value::Array(applied);
    print(&args.conn, &applied, || {
        let experiments = specs.iter().map(|s| format!("applied {}\n", s.name));
        let campaigns = campaigns
            .iter()
            .map(|c| format!("applied campaign {}\n", c.name));
        experiments.chain(campaigns).collect()
    })
}

async fn status(conn: &Conn, watch: bool) -> Result<()> {
    let client = Client::new(&conn.socket);
    let mut drawn = 0;
    loop {
        let status = client.call(Method::GET, "/v1/status", None).await?;
        let list = client.call(Method::GET, "/v1/experiments", None).await?;
        if conn.output == Output::Json {
            println!("{}", json!({ "status": status, "experiments": list }));
        } else {
            let halted = status["halted"]
                .as_str()
                .map_or(String::new(), |why| format!("HALTED ({why})   "));
            let text = format!(
                "{halted}paused: {}   experiments: {}   interfaces: {}\n{}",
                status["paused"],
                status["experiments"],
                status["interfaces"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                list_table(&list)
            );
            let mut out = std::io::stdout().lock();
            if drawn > 0 {
                // Cursor up over the last frame, clear to the end of the screen.
                write!(out, "\x1b[{drawn}A\x1b[J")?;
            }
            out.write_all(text.as_bytes())?;
            out.flush()?;
            drawn = text.lines().count();
        }
        if !watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Calls the daemon without a body and prints its answer: as JSON, or as `text` makes it.
pub(super) async fn show(
    conn: &Conn,
    method: Method,
    path: &str,
    text: impl FnOnce(&Value) -> String,
) -> Result<()> {
    let answer = Client::new(&conn.socket).call(method, path, None).await?;
    print(conn, &answer, || text(&answer))
}

pub(super) fn print(conn: &Conn, value: &Value, text: impl FnOnce() -> String) -> Result<()> {
    let out = match conn.output {
        Output::Json => format!("{value}\n"),
        Output::Text => text(),
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn history_table(history: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<12} {:<8} {:<24} {}\n",
        "TIME", "WHO", "ACTION", "EXPERIMENT", "WHAT / WHY"
    );
    for r in history.as_array().into_iter().flatten() {
        let field = |k: &str| r[k].as_str().unwrap_or("").to_owned();
        let mut what = field("what");
        if let Some(why) = r["why"].as_str() {
            what = if what.is_empty() {
                format!("({why})")
            } else {
                format!("{what} ({why})")
            };
        }
        out.push_str(&format!(
            "{:<24} {:<12} {:<8} {:<24} {what}\n",
            field("time"),
            field("who"),
            field("action"),
            field("experiment"),
        ));
    }
    out
}

fn sum(view: &Value, field: &str) -> u64 {
    view["counters"]
        .as_array()
        .map_or(0, |cs| cs.iter().filter_map(|c| c[field].as_u64()).sum())
}

fn list_table(list: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:<8} {:>5} {:>9} {:>10} {:>10} {:>10}\n",
        "NAME", "IFACE", "PHASE", "RULES", "EXPIRES", "MATCHED", "DROPPED", "DELAYED"
    );
    for e in list.as_array().into_iter().flatten() {
        let iface = match (e["netns"].as_str(), e["target"].as_str()) {
            (Some(ns), _) => format!("{}@{ns}", e["iface"].as_str().unwrap_or("?")),
            (None, Some(target)) => {
                format!("{target} ({})", e["targets"].as_array().map_or(0, Vec::len))
            }
            (None, None) => e["iface"].as_str().unwrap_or("?").to_owned(),
        };
        let expires = e["expires_in_seconds"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.0}s"));
        out.push_str(&format!(
            "{:<24} {:<16} {:<8} {:>5} {:>9} {:>10} {:>10} {:>10}\n",
            e["name"].as_str().unwrap_or("?"),
            iface,
            e["phase"].as_str().unwrap_or("?"),
            e["rules"].as_array().map_or(0, Vec::len),
            expires,
            sum(e, "matched_packets"),
            sum(e, "dropped_packets"),
            sum(e, "delayed_packets"),
        ));
    }
    out
}

fn detail(e: &Value) -> String {
    let mut out = format!(
        "name: {}\niface: {}{}\nphase: {}\n",
        e["name"].as_str().unwrap_or("?"),
        e["iface"].as_str().unwrap_or("?"),
        e["netns"]
            .as_str()
            .map_or(String::new(), |ns| format!(" (netns {ns})")),
        e["phase"].as_str().unwrap_or("?"),
    );
    for key in [
        "target",
        "namespace",
        "duration",
        "start_delay",
        "priority",
        "expires_in_seconds",
        "reason",
    ] {
        if !e[key].is_null() {
            out.push_str(&format!("{key}: {}\n", e[key]));
        }
    }
    if let Some(targets) = e["targets"].as_array().filter(|t| !t.is_empty()) {
        out.push_str(&format!(
            "{:<48}  {:<8}  {:<24}  STATE\n",
            "WORKLOAD", "IFACE", "NETNS"
        ));
        for t in targets {
            let field = |key: &str| t[key].as_str().unwrap_or("-").to_owned();
            out.push_str(&format!(
                "{:<48}  {:<8}  {:<24}  {}\n",
                field("workload"),
                field("iface"),
                field("netns"),
                field("state"),
            ));
        }
    }
    out.push_str(&format!(
        "{:>4}  {:>10}  {:>10}  {:>10}  {:>10}  {}\n",
        "RULE", "MATCHED", "DROPPED", "DELAYED", "BYTES", "SPEC"
    ));
    for c in e["counters"].as_array().into_iter().flatten() {
        // JSON values ignore widths: format them as text first.
        let n = |key: &str| c[key].to_string();
        out.push_str(&format!(
            "{:>4}  {:>10}  {:>10}  {:>10}  {:>10}  {}\n",
            n("rule"),
            n("matched_packets"),
            n("dropped_packets"),
            n("delayed_packets"),
            n("matched_bytes"),
            c["spec"].as_str().unwrap_or("?"),
        ));
    }
    out
}
