//! Finding and removing what a killed chaos left behind.
//!
//! A TCX link dies with the process that held it, but a netlink cls_bpf filter, chaos's fq
//! (handle `ca05:`) and its `chaos-ifb*` devices stay. The lease keeps an orphaned program from
//! injecting anything; this removes the rest.
//!
//! Only what no live chaos owns is a leftover. A chaos TCX program on an interface means a
//! running chaos holds it (the link would have died with its process). A netlink filter says
//! nothing by itself, so its program's config map decides: a controller renews the lease there
//! every third of it, and a filter whose lease has not run out belongs to a live chaos (a
//! `chaos run --attach netlink`, or a daemon on a kernel without TCX). Such an interface keeps
//! its filters, its fq and its ifb; a filter whose lease ran out is removed wherever it is:
//! chaos's own namespace, every named one, and every running process's (a container's or a
//! pod's, which has no name, visited through `/proc/PID/ns/net`).

use std::{
    collections::HashSet, fmt, fs::File, io, os::unix::fs::MetadataExt as _, path::Path, thread,
    time::Duration,
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{SchedClassifier, TcAttachType, loaded_programs},
};
use chaos_common::RuntimeConfig;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};
use serde::Serialize;

use crate::{
    host, netns,
    qdisc::{self, CHAOS_FQ_HANDLE},
    rtnl::Rtnl,
};

/// How long past the end of its lease a program still counts as its controller's. A live
/// controller renews with two thirds of the lease to spare; this covers one that is late
/// (starved of CPU, say) without keeping a killed one's filter for long. The program itself
/// already passes everything in this window.
pub const LEASE_GRACE: Duration = Duration::from_millis(500);

/// The config map every chaos program uses (`chaos-ebpf`'s `maps.rs`; the kernel keeps the
/// first 15 characters of a map name).
const CONFIG_MAP: &str = "CHAOS_CONFIG";

/// Program names chaos attaches (the kernel keeps the first 15 characters).
const PROGRAM_NAMES: [&str; 2] = ["chaos_ingress", "chaos_egress"];

/// One thing removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The namespace: "" for chaos's own, its name under /run/netns, or `pid N` for a
    /// process's without one (N its lowest PID).
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

/// Removes leftovers in chaos's own namespace and, with `all_netns`, in every named one and in
/// every running process's: containers' and pods' namespaces have no name. Each namespace is
/// visited once (by its nsfs device and inode); a process's is named `pid N`, N its lowest PID.
pub fn clean(all_netns: bool) -> Result<Vec<Removed>, String> {
    let mut removed = clean_here("")?;
    if !all_netns {
        return Ok(removed);
    }
    // The namespace clean_here("") just saw: this thread's.
    let own = File::open("/proc/thread-self/ns/net")
        .and_then(|f| ns_id(&f))
        .map_err(|e| format!("chaos's own network namespace: {e}"))?;
    let mut seen = HashSet::from([own]);
    for name in named_namespaces() {
        let path = Path::new(netns::NETNS_RUN_DIR).join(&name);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Deleted while we looked.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("opening {}: {e}", path.display())),
        };
        let id = ns_id(&file).map_err(|e| format!("{}: {e}", path.display()))?;
        if seen.insert(id) {
            removed.extend(clean_in(file, name)?);
        }
    }
    let mut refused = Vec::new();
    for pid in pids() {
        // A process may end while we look (its namespace file is then gone): skipped.
        let file = match File::open(format!("/proc/{pid}/ns/net")) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                refused.push(pid.to_string());
                continue;
            }
            Err(_) => continue,
        };
        let Ok(id) = ns_id(&file) else { continue };
        if !seen.insert(id) {
            continue;
        }
        match clean_in(file, format!("pid {pid}")) {
            Ok(found) => removed.extend(found),
            // It ended while we cleaned (its runtime tearing down the namespace's links).
            Err(_) if proc_ns_id(pid) != Some(id) => {}
            Err(e) => return Err(e),
        }
    }
    if !refused.is_empty() {
        let more = match refused.len() {
            n @ 11.. => format!(" and {} more", n - 10),
            _ => String::new(),
        };
        refused.truncate(10);
        tracing::warn!(
            "left the network namespaces of pid {}{more} unvisited: opening /proc/PID/ns/net \
             takes ptrace access to the process (CAP_SYS_PTRACE, in its user namespace)",
            refused.join(", ")
        );
    }
    Ok(removed)
}

/// Runs [`clean_here`] in the namespace open as `file`, called `ns`, on a thread of its own:
/// setns affects only the calling thread.
fn clean_in(file: File, ns: String) -> Result<Vec<Removed>, String> {
    let what = format!("cleaning netns {ns}: the thread panicked");
    thread::spawn(move || {
        netns::enter_file(&file, &ns).map_err(|e| e.to_string())?;
        clean_here(&ns)
    })
    .join()
    .map_err(|_| what)?
}

/// A namespace's identity: the device and inode of its nsfs file.
type NsId = (u64, u64);

fn ns_id(file: &File) -> io::Result<NsId> {
    file.metadata().map(|m| (m.dev(), m.ino()))
}

/// The network namespace process `pid` is in now, if it still runs.
fn proc_ns_id(pid: u32) -> Option<NsId> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The running processes, lowest PID first (so a namespace is named by its lowest).
fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
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
fn tcx_in_use(iface: &str) -> bool {
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

/// A chaos `cls_bpf` filter as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Filter {
    /// The header as dumped: interface, parent, handle, priority and protocol, which is what
    /// deleting exactly this filter takes.
    header: TcHeader,
    name: String,
    prog_id: u32,
}

impl Filter {
    fn direction(&self) -> &'static str {
        if self.header.parent.minor == TcHandle::MIN_EGRESS {
            "egress"
        } else {
            "ingress"
        }
    }
}

/// Who a filter belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owner {
    /// A controller whose lease has not run out.
    Live,
    /// Nobody: its lease ran out, or it never had one.
    Dead,
    /// Its lease could not be read (why): left alone, as if live.
    Unknown(String),
}

/// Whether a lease ending at `lease_until_ns` still holds at `now_ns` (CLOCK_MONOTONIC), with
/// [`LEASE_GRACE`].
fn lease_holds(lease_until_ns: u64, now_ns: u64) -> bool {
    // 0 means "no lease" to the program (it then injects without one). chaos always sets a
    // lease before it attaches, so a program without one is no live chaos's: a leftover.
    lease_until_ns != 0 && now_ns <= lease_until_ns.saturating_add(LEASE_GRACE.as_nanos() as u64)
}

/// The owner of a filter whose program is `prog_id`, by the lease in the program's config map.
fn owner(prog_id: u32) -> Owner {
    match lease_of(prog_id) {
        Ok(Some(lease_until_ns)) if lease_holds(lease_until_ns, host::monotonic_ns()) => {
            Owner::Live
        }
        Ok(Some(_)) => Owner::Dead,
        // A chaos-named filter whose program has no chaos config map: not chaos's to keep.
        Ok(None) => Owner::Dead,
        Err(e) => Owner::Unknown(e),
    }
}

/// The `lease_until_ns` in the config map of program `prog_id`; None when it has no such map.
fn lease_of(prog_id: u32) -> Result<Option<u64>, String> {
    // aya 0.14 opens a program by id only while listing them all. Listing, and opening
    // another process's program or map, takes CAP_SYS_ADMIN: without it the owner stays
    // unknown, and the filter is left.
    let mut refused = None;
    let program = loaded_programs()
        .filter_map(|p| p.map_err(|e| refused.get_or_insert(e.to_string())).ok())
        .find(|p| p.id() == prog_id)
        .ok_or_else(|| match &refused {
            Some(e) => format!("listing BPF programs: {e} (reading a lease needs CAP_SYS_ADMIN)"),
            None => format!("program {prog_id} is gone"),
        })?;
    let map_ids = program
        .map_ids()
        .map_err(|e| format!("maps of program {prog_id}: {e}"))?
        .ok_or_else(|| format!("this kernel does not list the maps of program {prog_id}"))?;
    for id in map_ids {
        let map = MapData::from_id(id).map_err(|e| format!("opening map {id}: {e}"))?;
        let info = map.info().map_err(|e| format!("map {id}: {e}"))?;
        if info.name_as_str() != Some(CONFIG_MAP) {
            continue;
        }
        let config: Array<MapData, RuntimeConfig> = Map::from_map_data(map)
            .and_then(Array::try_from)
            .map_err(|e| format!("map {id} ({CONFIG_MAP}): {e}"))?;
        let entry = config
            .get(&0, 0)
            .map_err(|e| format!("reading map {id} ({CONFIG_MAP}): {e}"))?;
        return Ok(Some(entry.lease_until_ns));
    }
    Ok(None)
}

/// The parents of the clsact hooks, ingress and egress.
fn clsact_parents() -> [TcHandle; 2] {
    [TcHandle::MIN_INGRESS, TcHandle::MIN_EGRESS].map(|minor| TcHandle {
        major: TcHandle::CLSACT.major,
        minor,
    })
}

/// The chaos `cls_bpf` filters on `ifindex`'s clsact hooks.
fn chaos_filters(rtnl: &mut Rtnl, ifindex: u32) -> io::Result<Vec<Filter>> {
    let mut found = Vec::new();
    for parent in clsact_parents() {
        let mut request = TcMessage::with_index(ifindex as i32);
        request.header.parent = parent;
        // An interface without clsact lists nothing.
        for reply in rtnl.dump(RouteNetlinkMessage::GetTrafficFilter(request))? {
            if let RouteNetlinkMessage::NewTrafficFilter(message) = reply
                && message.header.index == ifindex as i32
                && message.header.parent == parent
                && let Some(filter) = chaos_filter(message)
            {
                found.push(filter);
            }
        }
    }
    Ok(found)
}

/// The filter in a dumped message, if it is a `cls_bpf` filter with one of chaos's names. (A
/// dump also lists each priority level alone, handle 0 and no options: skipped.)
fn chaos_filter(message: TcMessage) -> Option<Filter> {
    let (mut name, mut prog_id) = (None, None);
    for attribute in message.attributes {
        if let TcAttribute::Options(options) = attribute {
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n),
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => prog_id = Some(id),
                    _ => {}
                }
            }
        }
    }
    let name = name.filter(|n| PROGRAM_NAMES.contains(&n.as_str()))?;
    Some(Filter {
        header: message.header,
        name,
        prog_id: prog_id?,
    })
}

/// Deletes exactly `filter` (its handle at its priority), not every filter of that name.
fn delete_filter(rtnl: &mut Rtnl, filter: &Filter) -> io::Result<()> {
    let message = TcMessage::from_parts(filter.header.clone(), Vec::new());
    match rtnl.request(RouteNetlinkMessage::DelTrafficFilter(message), 0) {
        Ok(_) => Ok(()),
        // Gone meanwhile (its owner exited, or another clean-up was first).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
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
    let place = if ns.is_empty() {
        String::new()
    } else {
        format!(" in netns {ns}")
    };
    for (index, name) in &links {
        if name.starts_with("chaos-ifb") {
            continue; // handled below, with the interface it served
        }
        let mut live = tcx_in_use(name);
        let filters = chaos_filters(&mut rtnl, *index)
            .map_err(|e| format!("listing the filters of {name}: {e}"))?;
        for filter in filters {
            match owner(filter.prog_id) {
                Owner::Live => live = true,
                Owner::Unknown(why) => {
                    tracing::warn!(
                        "left cls_bpf {} on {name}{place}: cannot tell whether a chaos still owns it: {why}",
                        filter.name
                    );
                    live = true;
                }
                Owner::Dead => {
                    delete_filter(&mut rtnl, &filter).map_err(|e| {
                        format!("removing cls_bpf {} from {name}: {e}", filter.name)
                    })?;
                    note(
                        name,
                        format!("cls_bpf {} ({})", filter.name, filter.direction()),
                    );
                }
            }
        }
        if live {
            // A running chaos's fq and ifb.
            continue;
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

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_lease_holds_until_its_end_and_the_grace() {
        let grace = LEASE_GRACE.as_nanos() as u64;
        let end = 100 * SECOND;
        assert!(
            lease_holds(end, end - 2 * SECOND),
            "renewed, two thirds to spare"
        );
        assert!(lease_holds(end, end), "at its end");
        assert!(
            lease_holds(end, end + grace),
            "a late renewal is still live"
        );
        assert!(
            !lease_holds(end, end + grace + 1),
            "ran out: a killed chaos's"
        );
        assert!(lease_holds(u64::MAX, u64::MAX), "no overflow");
        // No lease at all is no live chaos's: chaos sets one before attaching.
        assert!(!lease_holds(0, 0));
        assert!(!lease_holds(0, 100 * SECOND));
    }

    /// A filter as the kernel dumps it: header, kind, then cls_bpf's options.
    fn dumped(parent_minor: u16, handle: u32, options: Vec<TcFilterBpfOption>) -> Vec<u8> {
        let mut message = TcMessage::with_index(7);
        message.header.parent = TcHandle {
            major: 0xffff,
            minor: parent_minor,
        };
        message.header.handle = handle.into();
        // Priority 49152, protocol ETH_P_ALL in network order.
        message.header.info = (49152 << 16) | u32::from(0x0003u16.to_be());
        message.attributes = vec![TcAttribute::Kind("bpf".to_owned())];
        if !options.is_empty() {
            message.attributes.push(TcAttribute::Options(
                options.into_iter().map(TcOption::Bpf).collect(),
            ));
        }
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        bytes
    }

    #[test]
    fn finds_chaos_filters_in_a_dump() {
        let bytes = dumped(
            0xfff3,
            1,
            vec![
                TcFilterBpfOption::ProgName("chaos_egress".to_owned()),
                TcFilterBpfOption::ProgId(42),
                TcFilterBpfOption::ProgTag([1; 8]),
            ],
        );
        let filter = chaos_filter(TcMessage::parse(&bytes[..]).unwrap()).expect("ours");
        assert_eq!(filter.name, "chaos_egress");
        assert_eq!(filter.prog_id, 42);
        assert_eq!(filter.direction(), "egress");
        assert_eq!(u32::from(filter.header.parent), 0xffff_fff3);
        assert_eq!(filter.header.info >> 16, 49152);
        assert_eq!(u32::from(filter.header.handle), 1);
        assert!(clsact_parents().contains(&filter.header.parent));
    }

    #[test]
    fn skips_what_is_not_a_chaos_filter() {
        let named = |name: &str| {
            dumped(
                0xfff2,
                1,
                vec![
                    TcFilterBpfOption::ProgName(name.to_owned()),
                    TcFilterBpfOption::ProgId(9),
                ],
            )
        };
        let parse = |bytes: Vec<u8>| chaos_filter(TcMessage::parse(&bytes[..]).unwrap());
        assert!(parse(named("chaos_ingress")).is_some());
        assert_eq!(parse(named("cilium_ingress")), None);
        // A priority level listed alone: no handle, no options.
        assert_eq!(parse(dumped(0xfff2, 0, Vec::new())), None);
    }

    #[test]
    fn deleting_a_filter_names_exactly_it() {
        let bytes = dumped(
            0xfff3,
            5,
            vec![
                TcFilterBpfOption::ProgName("chaos_egress".to_owned()),
                TcFilterBpfOption::ProgId(42),
            ],
        );
        let filter = chaos_filter(TcMessage::parse(&bytes[..]).unwrap()).unwrap();
        let request = TcMessage::from_parts(filter.header.clone(), Vec::new());
        let mut emitted = vec![0; request.buffer_len()];
        request.emit(&mut emitted);
        // struct tcmsg only: ifindex, handle, parent, priority and protocol as dumped.
        assert_eq!(emitted, bytes[..20]);
    }
}
