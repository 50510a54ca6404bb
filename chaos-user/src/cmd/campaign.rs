//! `chaos campaign list|get|plan|pause|resume|delete`: the daemon's campaigns. Campaigns are
//! created from `[[campaign]]` tables with `chaos apply -f FILE` or the daemon's `--config`.

use anyhow::Result;
use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use super::ctl::{Conn, print, show};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum CampaignCmd {
    /// List the campaigns: state, next and last experiment, started and skipped counts.
    List(Conn),
    /// Show one campaign: its spec with the seed in use, next and last experiment, why slots
    /// were skipped, and its recent experiments.
    Get {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// The campaign's next slots as its seed plans them (what each would run, and which the
    /// schedule itself skips).
    Plan {
        name: String,
        /// How many slots.
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[command(flatten)]
        conn: Conn,
    },
    /// End the campaign's running experiments and skip its slots until resumed.
    Pause {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Let a paused campaign start experiments again.
    Resume {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a campaign: its running experiments end at once.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn dispatch(command: CampaignCmd) -> Result<()> {
    match command {
        CampaignCmd::List(conn) => show(&conn, Method::GET, "/v1/campaigns", list_table).await,
        CampaignCmd::Get { name, conn } => {
            show(&conn, Method::GET, &format!("/v1/campaigns/{name}"), detail).await
        }
        CampaignCmd::Plan { name, count, conn } => {
            let plan = Client::new(&conn.socket)
                .call(
                    Method::GET,
                    &format!("/v1/campaigns/{name}/plan?count={count}"),
                    None,
                )
                .await?;
            print(&conn, &plan, || slots_table(&plan))
        }
        CampaignCmd::Pause { name, conn } => {
            show(
                &conn,
                Method::POST,
                &format!("/v1/campaigns/{name}/pause"),
                |_| format!("paused {name}: its experiments ended\n"),
            )
            .await
        }
        CampaignCmd::Resume { name, conn } => {
            show(
                &conn,
                Method::POST,
                &format!("/v1/campaigns/{name}/resume"),
                |_| format!("resumed {name}\n"),
            )
            .await
        }
        CampaignCmd::Delete { name, conn } => {
            Client::new(&conn.socket)
                .call(Method::DELETE, &format!("/v1/campaigns/{name}"), None)
                .await?;
            print(&conn, &json!({ "deleted": name }), || {
                format!("deleted campaign {name}\n")
            })
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

fn list_table(list: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<8} {:>7} {:>7} {:<26} {}\n",
        "NAME", "STATE", "STARTED", "SKIPPED", "NEXT", "LAST"
    );
    for c in list.as_array().into_iter().flatten() {
        let skipped: u64 = c["skipped"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let last = match c["last"]["outcome"].as_str() {
            Some(o) => format!("{} {o}", text(&c["last"]["experiment"])),
            None => "-".into(),
        };
        out.push_str(&format!(
            "{:<24} {:<8} {:>7} {:>7} {:<26} {last}\n",
            text(&c["spec"]["name"]),
            text(&c["state"]),
            c["started"],
            skipped,
            text(&c["next"]["start"]),
        ));
    }
    out
}

fn slots_table(slots: &Value) -> String {
    let mut out = format!(
        "{:<26} {:>8} {:<28} {:<40} {}\n",
        "START", "LENGTH", "TARGET", "RULE", "OUTCOME"
    );
    for s in slots.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<26} {:>8} {:<28} {:<40} {}\n",
            text(&s["start"]),
            text(&s["duration"]),
            text(&s["target"]),
            text(&s["rule"]),
            s["outcome"].as_str().unwrap_or(""),
        ));
    }
    out
}

fn detail(c: &Value) -> String {
    let spec = &c["spec"];
    let mut out = format!(
        "name: {}\nstate: {}\nseed: {}\nwindow: {}\nevery: {}\nduration: {}\n\
         max_concurrent: {}\nstarted: {}\nskipped: {}\nrunning: {}\n",
        text(&spec["name"]),
        text(&c["state"]),
        spec["seed"],
        spec["window"].as_str().unwrap_or("always"),
        text(&spec["every"]),
        text(&spec["duration"]),
        spec["max_concurrent"].as_u64().unwrap_or(1),
        c["started"],
        c["skipped"],
        c["running"],
    );
    if let Some(reason) = c["reason"].as_str() {
        out.push_str(&format!("reason: {reason}\n"));
    }
    for (label, key) in [("next", "next"), ("last", "last")] {
        if c[key].is_object() {
            out.push_str(&format!(
                "{label}: {} at {} for {} on {} ({}){}\n",
                text(&c[key]["experiment"]),
                text(&c[key]["start"]),
                text(&c[key]["duration"]),
                text(&c[key]["target"]),
                text(&c[key]["rule"]),
                c[key]["outcome"]
                    .as_str()
                    .map(|o| format!(": {o}"))
                    .unwrap_or_default()
            ));
        }
    }
    out.push_str("recent:\n");
    out.push_str(&slots_table(&c["recent"]));
    out
}
