//! Finding and removing what a killed chaos left behind.
//!
//! A TCX link dies with the process that held it, but a netlink cls_bpf filter, chaos's fq
//! (handle `ca05:`) and its `chaos-ifb*` devices stay. The lease keeps an orphaned program from
//! injecting anything; this removes the rest. An interface that still has a chaos TCX program
//! attached belongs to a running chaos and is left alone.

use std::{fmt, thread};

use aya::programs::{SchedClassifier, TcAttachType, tc};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    tc::TcHandle,
};
use serde::Serialize;

use crate::{
    netns,
    qdisc::{self, CHAOS_FQ_HANDLE},
    rtnl::Rtnl,
};

/// Program names chaos attaches (the kernel keeps the first 15 characters).
const PROGRAM_NAMES: [&str; 2] = ["chaos_ingress", "chaos_egress"];

/// One thing removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The namespace ("" for chaos's own).
    pub netns: String,
    pub iface: String,
    /// What: "fq ca05:", "ifb", "cls_bpf chaos_egress (egress)", ...
    pub what: String,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = if self.netns.is_empty() {
            String::new()
        } else {
            format!(" in netns {}", self.netns)
        };
        write!(f, "{} on {}{ns}", self.what, self.iface)
    }
}

/// Removes leftovers in chaos's own namespace and, with `all_netns`, in every named one.
pub fn clean(all_netns: bool) -> Result<Vec<Removed>, String> {
    let mut removed = clean_here("")?;
    if all_netns {
        for ns in named_namespaces() {
            let name = ns.clone();
            // setns affects only the calling thread: one thread per namespace.
            let found = thread::spawn(move || {
                netns::enter(&name).map_err(|e| e.to_string())?;
                clean_here(&name)
            })
            .join()
            .map_err(|_| format!("cleaning netns {ns}: the thread panicked"))??;
            removed.extend(found);
        }
    }
    Ok(removed)
}

fn named_namespaces() -> Vec<String> {
    std::fs::read_dir(netns::NETNS_RUN_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a running chaos holds TCX links on `iface`.
fn in_use(iface: &str) -> bool {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .iter()
        .any(|t| {
            SchedClassifier::query_tcx(iface, *t).is_ok_and(|(_, progs)| {
                progs
                    .iter()
                    .any(|p| p.name_as_str().is_some_and(|n| PROGRAM_NAMES.contains(&n)))
            })
        })
}

fn clean_here(ns: &str) -> Result<Vec<Removed>, String> {
    let mut rtnl = Rtnl::open().map_err(|e| format!("netlink: {e}"))?;
    let links = links(&mut rtnl).map_err(|e| format!("listing links: {e}"))?;
    let mut removed = Vec::new();
    let mut note = |iface: &str, what: String| {
        removed.push(Removed {
            netns: ns.to_owned(),
            iface: iface.to_owned(),
            what,
        })
    };
    for (index, name) in &links {
        if name.starts_with("chaos-ifb") {
            continue; // handled below, with the interface it served
        }
        if in_use(name) {
            continue;
        }
        for (attach, dir) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            for program in PROGRAM_NAMES {
                // An error is NotFound (nothing of ours) or an interface without clsact.
                if tc::qdisc_detach_program(name, attach, program).is_ok() {
                    note(name, format!("cls_bpf {program} ({dir})"));
                }
            }
        }
        let root = qdisc::root_qdisc(&mut rtnl, *index)
            .map_err(|e| format!("listing qdiscs of {name}: {e}"))?;
        if root.is_some_and(|q| q.handle == CHAOS_FQ_HANDLE) {
            qdisc::delete_qdisc(&mut rtnl, *index, TcHandle::ROOT, CHAOS_FQ_HANDLE)
                .map_err(|e| format!("removing fq from {name}: {e}"))?;
            note(name, "fq ca05:".to_owned());
        }
        let ifb = format!("chaos-ifb{index}");
        if let Some((ifb_index, _)) = links.iter().find(|(_, n)| *n == ifb) {
            qdisc::delete_link(&mut rtnl, *ifb_index)
                .map_err(|e| format!("removing {ifb}: {e}"))?;
            note(&ifb, "ifb".to_owned());
        }
    }
    Ok(removed)
}

/// Every link of the namespace: (index, name).
fn links(rtnl: &mut Rtnl) -> std::io::Result<Vec<(u32, String)>> {
    let dump = rtnl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(dump
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => {
                link.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some((link.header.index, name)),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect())
}
