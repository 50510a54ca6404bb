//! Memory: the kernel memory chaos holds in BPF maps (and, as context, in programs), read from
//! the chaos process's own file descriptors.
//!
//! Five snapshots, each of one process we started: (a) `chaos run` with one rule on a lab's
//! veth, and (a′) with one connection rule instead, whose connection table `chaos run` sizes
//! for 65,536 connections; a `chaos daemon` (b0) idle, (b) holding one interface, (c) holding
//! `INTERFACES`, one lab (two namespaces and a veth pair) per interface and one small
//! experiment each, created with `chaos apply` over the daemon's socket. A snapshot walks
//! `/proc/PID/fd`, keeps the descriptors whose `/proc/PID/fdinfo/FD` names a `map_id` (or a
//! `prog_id`), counts each id once and sums their `memlock` (the kernel's own accounting of the
//! object's memory); each map is named through `BPF_OBJ_GET_INFO_BY_FD` on its id. The cost of
//! a further interface is ((c) − (b)) / (INTERFACES − 1). The connection table
//! (`CHAOS_CONNS`) makes most of the difference between (a′) and (a); a daemon sizes it for
//! 2,048 connections on every interface, whatever its rules.
//!
//! `data`: `{ "rule": "...", "conn_rule": "...", "interfaces": N,
//! "per_further_interface_bytes": f64 | null, "conn_table": { "run_entries", "run_bytes",
//! "run_over_plain_bytes", "daemon_entries", "daemon_bytes" }, "run" | "run_conn" |
//! "daemon_idle" | "daemon_1": { "pid", "maps": [ { "id", "name", "type", "key_size",
//! "value_size", "max_entries", "memlock" } ], "map_count", "map_memlock_bytes", "prog_count",
//! "prog_memlock_bytes" (null when a program is held through a link only) }, "daemon_n": { the
//! same without "maps" } | { "skipped": "why" }, "by_name": [ { "name", "run", "run_conn",
//! "daemon_1", "daemon_n", "per_further_interface" } ] }` (memlock in bytes; `by_name` sums the
//! maps of one name in each snapshot; `conn_table` gives `CHAOS_CONNS` in (a′) and (b), null
//! where it is missing).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use aya::maps::MapInfo;
use netlab::{ChaosProcess, Daemon, IFACE, Lab};
use serde_json::{Value, json};

use crate::{
    Ctx,
    report::{Section, Table},
    stats::f,
};

const ID: &str = "memory";
const TITLE: &str = "Memory: kernel memory held in BPF maps";
/// The small rule set of every snapshot.
const RULE: &str = "proto=udp dport=9 drop=1%";
/// (a′): a rule that keeps connection state.
const CONN_RULE: &str = "proto=tcp dport=9 conn-p=30% reset=yes";
/// The connection table's name as the kernel keeps it.
const CONNS: &str = "CHAOS_CONNS";
/// Interfaces the daemon holds in snapshot (c).
const INTERFACES: usize = 50;
/// The target: what each further interface may cost the daemon.
const PER_INTERFACE_GOAL: f64 = 1024.0 * 1024.0;

/// One BPF map a process holds.
#[derive(Clone, Debug, PartialEq)]
struct MapEntry {
    id: u32,
    name: String,
    kind: String,
    key_size: u64,
    value_size: u64,
    max_entries: u64,
    memlock: u64,
}

/// What one process holds in the kernel, each map and program counted once.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    /// By map id.
    maps: BTreeMap<u32, MapEntry>,
    /// Program id → memlock, `None` while only a link's descriptor names the program (a
    /// link's fdinfo has `prog_id` but no `memlock`).
    progs: BTreeMap<u32, Option<u64>>,
    /// Link ids (a TCX attachment is one): the kernel charges them no memlock.
    pub links: std::collections::BTreeSet<u32>,
}

impl Snapshot {
    /// Reads `/proc/PID/fdinfo` of every open descriptor of `pid`.
    pub fn of(pid: i32) -> Self {
        let dir = format!("/proc/{pid}/fd");
        let mut snap = Self::default();
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for entry in entries {
            let fd = entry.unwrap_or_else(|e| panic!("{dir}: {e}")).file_name();
            let path = format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy());
            // A descriptor closed since the listing has no fdinfo any more: nothing to count.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let fields: Vec<(String, u64)> = text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_owned(), v.trim().parse().ok()?))
                })
                .collect();
            let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
            let memlock = get("memlock").unwrap_or(0);
            if let Some(id) = get("map_id") {
                let id = id as u32;
                // Named by the kernel while the process still holds the map.
                let info = MapInfo::from_id(id);
                let name = info.as_ref().map_or_else(
                    |e| format!("? ({e})"),
                    |i| String::from_utf8_lossy(i.name()).into_owned(),
                );
                let kind = info
                    .as_ref()
                    .ok()
                    .and_then(|i| i.map_type().ok())
                    .map_or_else(
                        || format!("type {}", get("map_type").unwrap_or(0)),
                        |t| format!("{t:?}"),
                    );
                let entry = MapEntry {
                    id,
                    name,
                    kind,
                    key_size: get("key_size").unwrap_or(0),
                    value_size: get("value_size").unwrap_or(0),
                    max_entries: get("max_entries").unwrap_or(0),
                    memlock,
                };
                snap.maps.insert(id, entry);
            } else if let Some(id) = get("prog_id") {
                if let Some(link) = get("link_id") {
                    snap.links.insert(link as u32);
                }
                let held = snap.progs.entry(id as u32).or_default();
                if get("link_id").is_none() {
                    *held = Some(memlock);
                }
            }
        }
        snap
    }

    /// Waits until two readings 300 ms apart agree (the daemon attaches on worker threads),
    /// for at most 20 s.
    pub fn settled(pid: i32) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = Self::of(pid);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = Self::of(pid);
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    pub fn map_count(&self) -> usize {
        self.maps.len()
    }

    pub fn prog_count(&self) -> usize {
        self.progs.len()
    }

    pub fn map_bytes(&self) -> u64 {
        self.maps.values().map(|m| m.memlock).sum()
    }

    /// `None` when some program is held through a link only, so its memlock is not in sight.
    pub fn prog_bytes(&self) -> Option<u64> {
        self.progs.values().copied().sum()
    }

    fn json(&self, pid: i32, with_maps: bool) -> Value {
        let mut v = json!({
            "pid": pid,
            "map_count": self.maps.len(),
            "map_memlock_bytes": self.map_bytes(),
            "prog_count": self.progs.len(),
            "prog_memlock_bytes": self.prog_bytes(),
        });
        if with_maps {
            v["maps"] = self
                .maps
                .values()
                .map(|m| {
                    json!({
                        "id": m.id, "name": m.name, "type": m.kind, "key_size": m.key_size,
                        "value_size": m.value_size, "max_entries": m.max_entries,
                        "memlock": m.memlock,
                    })
                })
                .collect();
        }
        v
    }

    /// The map named `name` (the first, by id).
    fn map(&self, name: &str) -> Option<&MapEntry> {
        self.maps.values().find(|m| m.name == name)
    }

    /// memlock summed by map name.
    fn by_name(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for m in self.maps.values() {
            *out.entry(m.name.clone()).or_default() += m.memlock;
        }
        out
    }
}

/// Bytes as MiB with two decimals.
fn mib(bytes: f64) -> String {
    f(bytes / (1024.0 * 1024.0), 2)
}

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Creates one experiment on `lab`'s client veth over the daemon's socket.
fn apply(daemon: &Daemon, lab: &Lab, name: &str) {
    let out = daemon.ctl(&[
        "apply", "--name", name, "--iface", IFACE, "--netns", &lab.a, "--rule", RULE,
    ]);
    assert_eq!(out.code, Some(0), "chaos apply {name}: {}", out.stderr);
}

pub fn run(_ctx: &Ctx) -> Section {
    let mut section = Section::new(ID, TITLE);
    let started = Instant::now();

    // (a) chaos run with one rule, (a′) with one connection rule, one after the other.
    let run_lab = Lab::new("bench-mem-run");
    let chaos_run = |rule: &str| {
        let run = ChaosProcess::start(&["--netns", &run_lab.a, "--iface", IFACE, "--rule", rule]);
        let pid = run.pid();
        let snap = Snapshot::settled(pid);
        let exit = run.stop(libc::SIGINT);
        assert_eq!(
            exit.code,
            Some(0),
            "chaos run --rule '{rule}': {}",
            exit.stderr
        );
        (pid, snap)
    };
    let (run_pid, run_snap) = chaos_run(RULE);
    let (conn_pid, conn_snap) = chaos_run(CONN_RULE);
    drop(run_lab);

    // The daemon: idle, one interface, then INTERFACES. Labs are declared before the daemon,
    // so on a panic the daemon (killed by its guard) goes first and the labs after it.
    let mut labs: Vec<Lab> = Vec::with_capacity(INTERFACES);
    labs.push(Lab::new("bench-mem"));
    let daemon = Daemon::start(&[]);
    let pid = daemon.pid();
    let idle = Snapshot::settled(pid);
    apply(&daemon, &labs[0], "mem-0");
    let one = Snapshot::settled(pid);
    let one_cost = one.map_bytes().saturating_sub(idle.map_bytes());
    // Refuse to take more than half of the memory available: the figure is not worth an OOM.
    let needed = one_cost * (INTERFACES as u64 - 1);
    let available = mem_available();
    let many = if needed > available / 2 {
        Err(format!(
            "{INTERFACES} interfaces would take about {} MiB of kernel memory ({} MiB per \
             interface), more than half of the {} MiB available",
            mib(needed as f64),
            mib(one_cost as f64),
            mib(available as f64)
        ))
    } else {
        for i in 1..INTERFACES {
            labs.push(Lab::new("bench-mem"));
            apply(&daemon, &labs[i], &format!("mem-{i}"));
        }
        Ok(Snapshot::settled(pid))
    };
    let exit = daemon.stop();
    assert_eq!(exit.code, Some(0), "chaos daemon: {}", exit.stderr);
    drop(labs);
    let elapsed = started.elapsed();

    let per_further = many
        .as_ref()
        .ok()
        .map(|m| (m.map_bytes() as f64 - one.map_bytes() as f64) / (INTERFACES - 1) as f64);

    // (a)'s maps one by one.
    let mut maps_table = Table::new(
        &format!("(a) `chaos run --rule '{RULE}'` on one veth: each map it holds"),
        &[
            "map",
            "type",
            "key B",
            "value B",
            "max entries",
            "memlock (KiB)",
            "share",
        ],
    );
    let run_total = run_snap.map_bytes();
    let mut sorted: Vec<&MapEntry> = run_snap.maps.values().collect();
    sorted.sort_by(|x, y| y.memlock.cmp(&x.memlock).then(x.name.cmp(&y.name)));
    for m in &sorted {
        maps_table.row(vec![
            m.name.clone(),
            m.kind.clone(),
            m.key_size.to_string(),
            m.value_size.to_string(),
            m.max_entries.to_string(),
            f(m.memlock as f64 / 1024.0, 1),
            format!("{} %", f(100.0 * m.memlock as f64 / run_total as f64, 1)),
        ]);
    }
    maps_table.row(vec![
        format!("total ({} maps)", sorted.len()),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        f(run_total as f64 / 1024.0, 1),
        "100 %".to_owned(),
    ]);

    // Totals per snapshot.
    let mut totals = Table::new(
        "Per process: BPF maps and programs it holds (each id once), memlock summed",
        &[
            "process",
            "maps",
            "maps memlock (MiB)",
            "programs",
            "programs memlock (KiB)",
        ],
    );
    let mut total_row = |what: String, s: &Snapshot| {
        totals.row(vec![
            what,
            s.maps.len().to_string(),
            mib(s.map_bytes() as f64),
            s.progs.len().to_string(),
            s.prog_bytes()
                .map_or("— (through links only)".to_owned(), |b| {
                    f(b as f64 / 1024.0, 1)
                }),
        ]);
    };
    total_row("(a) chaos run, 1 rule, 1 interface".to_owned(), &run_snap);
    total_row(
        "(a′) chaos run, 1 connection rule, 1 interface".to_owned(),
        &conn_snap,
    );
    total_row("chaos daemon, idle".to_owned(), &idle);
    total_row("(b) chaos daemon, 1 interface".to_owned(), &one);
    if let Ok(m) = &many {
        total_row(format!("(c) chaos daemon, {INTERFACES} interfaces"), m);
    }

    // By name: where a further interface's bytes go.
    let run_by = run_snap.by_name();
    let conn_by = conn_snap.by_name();
    let one_by = one.by_name();
    let many_by = many.as_ref().map(Snapshot::by_name).unwrap_or_default();
    let mut names: Vec<&String> = run_by
        .keys()
        .chain(conn_by.keys())
        .chain(one_by.keys())
        .chain(many_by.keys())
        .collect();
    names.sort();
    names.dedup();
    let per_name = |n: &String| {
        many.as_ref().ok().map(|_| {
            (*many_by.get(n).unwrap_or(&0) as f64 - *one_by.get(n).unwrap_or(&0) as f64)
                / (INTERFACES - 1) as f64
        })
    };
    names.sort_by(|a, b| {
        per_name(b)
            .unwrap_or(0.0)
            .total_cmp(&per_name(a).unwrap_or(0.0))
            .then(a.cmp(b))
    });
    let mut by_table = Table::new(
        "By map name: memlock (KiB) summed over the maps of that name in each process",
        &[
            "map",
            "(a) run",
            "(a′) run, connection rule",
            "(b) daemon, 1 interface",
            &format!("(c) daemon, {INTERFACES} interfaces"),
            "per further interface",
        ],
    );
    let kib = |v: Option<u64>| v.map_or("—".to_owned(), |b| f(b as f64 / 1024.0, 1));
    let mut by_json = Vec::new();
    for n in &names {
        let per = per_name(n);
        by_table.row(vec![
            (*n).clone(),
            kib(run_by.get(*n).copied()),
            kib(conn_by.get(*n).copied()),
            kib(one_by.get(*n).copied()),
            kib(many.as_ref().ok().map(|_| *many_by.get(*n).unwrap_or(&0))),
            per.map_or("—".to_owned(), |b| f(b / 1024.0, 1)),
        ]);
        by_json.push(json!({
            "name": n,
            "run": run_by.get(*n),
            "run_conn": conn_by.get(*n),
            "daemon_1": one_by.get(*n),
            "daemon_n": many.as_ref().ok().map(|_| many_by.get(*n).copied().unwrap_or(0)),
            "per_further_interface": per,
        }));
    }

    // The connection table: (a′) against (a), and what each daemon interface holds of it.
    let conn_total = conn_snap.map_bytes();
    let run_conns = conn_snap.map(CONNS).cloned();
    let daemon_conns = one.map(CONNS).cloned();
    let conn_over_plain = conn_total as f64 - run_total as f64;
    let mut conn_table = Table::new(
        &format!(
            "The connection table ({CONNS}, an LRU hash of {} B keys and {} B values)",
            run_conns.as_ref().map_or(0, |m| m.key_size),
            run_conns.as_ref().map_or(0, |m| m.value_size)
        ),
        &[
            "process",
            "max entries",
            "memlock (MiB)",
            "B per entry",
            "all maps (MiB)",
        ],
    );
    let per_entry = |m: &MapEntry| m.memlock as f64 / m.max_entries.max(1) as f64;
    for (what, m, all) in [
        (
            format!("(a′) chaos run --rule '{CONN_RULE}'"),
            &run_conns,
            Some(conn_total),
        ),
        (
            format!("(a) chaos run --rule '{RULE}'"),
            &run_snap.map(CONNS).cloned(),
            Some(run_total),
        ),
        (
            "(b) chaos daemon, each interface".to_owned(),
            &daemon_conns,
            None,
        ),
    ] {
        let Some(m) = m else {
            conn_table.row(vec![what, "—".into(), "—".into(), "—".into(), "—".into()]);
            continue;
        };
        conn_table.row(vec![
            what,
            m.max_entries.to_string(),
            mib(m.memlock as f64),
            f(per_entry(m), 0),
            all.map_or("—".to_owned(), |b| mib(b as f64)),
        ]);
    }
    let conn_text = |m: &Option<MapEntry>| {
        m.as_ref().map_or("not found".to_owned(), |m| {
            format!("{} MiB at {} entries", mib(m.memlock as f64), m.max_entries)
        })
    };

    section.target(
        "memory per further interface",
        "≤ 1 MiB for each further interface a daemon attaches with a small rule set",
        match &many {
            Ok(m) => format!(
                "{} MiB per further interface, of which the connection table {} (daemon maps: \
                 {} MiB with 1 interface, {} MiB with {INTERFACES}); `chaos run` with 1 rule: \
                 {} MiB, with 1 connection rule: {} MiB (connection table {})",
                mib(per_further.unwrap_or(f64::NAN)),
                conn_text(&daemon_conns),
                mib(one.map_bytes() as f64),
                mib(m.map_bytes() as f64),
                mib(run_total as f64),
                mib(conn_total as f64),
                conn_text(&run_conns),
            ),
            Err(why) => format!(
                "not measured with {INTERFACES} interfaces: {why}; 1 interface: {} MiB over the \
                 idle daemon",
                mib(one_cost as f64),
            ),
        },
        per_further.is_some_and(|p| p <= PER_INTERFACE_GOAL),
    );
    section.tables.push(totals);
    section.tables.push(conn_table);
    section.tables.push(maps_table);
    section.tables.push(by_table);
    section.note(format!(
        "Each process's maps and programs are read from its own descriptors: \
         /proc/PID/fdinfo/FD gives `map_id` (or `prog_id`) and `memlock`, the bytes the kernel \
         charges for the object; each id is counted once, however many descriptors hold it. \
         Map names (cut to 15 characters by the kernel) and types come from \
         BPF_OBJ_GET_INFO_BY_FD on the id. Preallocated maps (arrays, hashes, LRU hashes) \
         charge their full size from creation; an LPM trie charges only the entries it holds, \
         so its figure is what this small rule set puts in it. A program held only through a \
         link shows no memlock (a link's fdinfo has none). A snapshot is taken once two \
         readings 300 ms apart agree. The rule everywhere: `{RULE}`."
    ));
    section.note(format!(
        "(a) `chaos run --netns NS --iface {IFACE} --rule '{RULE}'` on a lab's veth. The daemon \
         (`chaos daemon`, defaults) is read idle, with one experiment, and with {INTERFACES} \
         experiments on {INTERFACES} labs (one veth pair between two namespaces each), created \
         one by one with `chaos apply --name mem-N --iface {IFACE} --netns NS --rule '{RULE}'`. \
         Per further interface: (maps with {INTERFACES} − maps with 1) / {}. Programs' memlock \
         is context, not part of the target. The section took {:.0} s.",
        INTERFACES - 1,
        elapsed.as_secs_f64()
    ));
    section.note(format!(
        "(a′) `chaos run --netns NS --iface {IFACE} --rule '{CONN_RULE}'` on the same veth, \
         after (a) ended: a rule set that keeps connection state gets a connection table of \
         65,536 entries, one without gets a single entry. (a′) − (a): {} MiB, the connection \
         table {}. A daemon sizes the table of every interface for 2,048 connections whatever \
         its rules, so the daemon figures above include {} per interface.",
        mib(conn_over_plain),
        conn_text(&run_conns),
        conn_text(&daemon_conns),
    ));
    if let Err(why) = &many {
        section.note(format!("Not measured with {INTERFACES} interfaces: {why}."));
    }
    section.data = json!({
        "rule": RULE,
        "conn_rule": CONN_RULE,
        "interfaces": INTERFACES,
        "per_further_interface_bytes": per_further,
        "conn_table": {
            "run_entries": run_conns.as_ref().map(|m| m.max_entries),
            "run_bytes": run_conns.as_ref().map(|m| m.memlock),
            "run_over_plain_bytes": conn_over_plain,
            "daemon_entries": daemon_conns.as_ref().map(|m| m.max_entries),
            "daemon_bytes": daemon_conns.as_ref().map(|m| m.memlock),
        },
        "run": run_snap.json(run_pid, true),
        "run_conn": conn_snap.json(conn_pid, true),
        "daemon_idle": idle.json(pid, true),
        "daemon_1": one.json(pid, true),
        "daemon_n": match &many {
            Ok(m) => m.json(pid, false),
            Err(why) => json!({ "skipped": why }),
        },
        "by_name": by_json,
    });
    section
}
