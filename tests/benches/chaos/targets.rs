//! Many targets: one experiment over `CONTAINERS` containers, through the daemon.
//!
//! A podman of the test harness (`netlab::podman`, its own store and network, busybox httpd
//! on port 8080 in each container) starts `CONTAINERS` containers named `PREFIX-00` to
//! `PREFIX-49` (set-up, timed but not a figure). A `chaos daemon` looks them up through
//! podman's Docker API (`DOCKER_HOST`). Each round, interleaved: one experiment on one
//! container (`container=PREFIX-00*`), applied and deleted; then one on all of them
//! (`container=PREFIX-*`), applied and deleted. The daemon loads and verifies one program per
//! experiment and attaches it to every match (two TCX links per container) before it answers,
//! so the time of `chaos apply` from its start to its exit is what a user waits for all of
//! them. Every apply is checked: `chaos get NAME --output json` lists every match `attached`,
//! and a sample of the containers really is faulted (a connect from the host to ip:8080 times
//! out, the SYN dropped), a container not matched still serves; after each delete the sample
//! serves again. A figure of an apply that did nothing would be worthless.
//!
//! Kernel memory: the daemon's BPF maps and programs, memlock summed from
//! `/proc/PID/fdinfo` (each id once; see `memory.rs`), idle, with the one-container
//! experiment, with the 50-container one, and after its delete. The daemon's RSS and its link
//! count are context: links carry no memlock.
//!
//! `data`: `{ "containers": N, "rule", "rounds", "setup_s", "apply_s": { "one": [..],
//! "many": [..] }, "release_s": { "one": [..], "many": [..] }, "cli_round_trip_s": [..],
//! "released_rss_bytes": [..], "released_kernel_bytes": [..] (the daemon after each delete of
//! the 50-container experiment, by round),
//! "memory": { "idle" | "one" | "many" | "released": { "map_count", "map_memlock_bytes",
//! "prog_count", "prog_memlock_bytes", "link_count", "rss_bytes" } }, "per_container_bytes",
//! "further_container_bytes", "fixed_bytes", "sample": [ container indexes checked ] }`
//! (times in seconds, memory from the first round; `per_container_bytes` = (many − idle) / N,
//! `further_container_bytes` = (many − one) / (N − 1), `fixed_bytes` = one − idle −
//! further_container_bytes, all over maps and programs).

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use netlab::{
    Daemon,
    podman::{Container, Podman},
};
use serde_json::{Value, json};

use crate::{
    Ctx,
    memory::Snapshot,
    report::{Section, Table},
    stats::{f, median, min_max},
};

const ID: &str = "targets";
const TITLE: &str = "Many targets: one experiment over 50 containers";
const CONTAINERS: usize = 50;
const RULE: &str = "dir=ingress proto=tcp dport=8080 drop=100%";
/// Containers checked after each apply and delete (indexes).
const SAMPLE: [usize; 5] = [0, 12, 25, 37, 49];
const APPLY_GOAL_S: f64 = 2.0;
/// The daemon's per-interface goal of `memory`, as the bound for a container.
const PER_CONTAINER_GOAL: f64 = 1024.0 * 1024.0;

/// A connect from the host to `ip:8080` timed out: the SYN was dropped.
fn times_out(ip: &str) -> bool {
    let dst: SocketAddr = format!("{ip}:8080").parse().unwrap();
    matches!(
        TcpStream::connect_timeout(&dst, Duration::from_millis(300)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
    )
}

/// `ip:8080` accepts a connection within `limit` (tried every 100 ms).
fn serves(ip: &str, limit: Duration) -> bool {
    let dst: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&dst, Duration::from_millis(300)).is_ok() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// What the daemon holds at one moment.
struct Reading {
    snap: Snapshot,
    rss: u64,
}

impl Reading {
    fn of(pid: i32) -> Self {
        let snap = Snapshot::settled(pid);
        Self {
            snap,
            rss: rss(pid),
        }
    }

    /// Maps and programs, memlock (a program held through a link only counts 0).
    fn kernel(&self) -> u64 {
        self.snap.map_bytes() + self.snap.prog_bytes().unwrap_or(0)
    }

    fn json(&self) -> Value {
        json!({
            "map_count": self.snap.map_count(),
            "map_memlock_bytes": self.snap.map_bytes(),
            "prog_count": self.snap.prog_count(),
            "prog_memlock_bytes": self.snap.prog_bytes(),
            "link_count": self.snap.links.len(),
            "rss_bytes": self.rss,
        })
    }
}

fn kib(bytes: f64) -> String {
    f(bytes / 1024.0, 1)
}

fn mib(bytes: f64) -> String {
    f(bytes / (1024.0 * 1024.0), 2)
}

/// Why the section cannot run here, if it cannot.
fn missing() -> Option<String> {
    let podman = Command::new("podman").arg("--version").output();
    if !podman.is_ok_and(|o| o.status.success()) {
        return Some("no podman (cargo xtask bootstrap installs it)".to_owned());
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        return Some("no /bin/busybox (Debian's busybox-static) for the image".to_owned());
    }
    None
}

/// One experiment's apply and delete, each checked: how long each took, and what the daemon
/// held while it was applied and after its delete.
struct Cycle {
    apply_s: f64,
    release_s: f64,
    applied: Reading,
    released: Reading,
}

fn cycle(
    daemon: &Daemon,
    name: &str,
    target: &str,
    expected: usize,
    matched: &[&Container],
    untouched: Option<&Container>,
) -> Cycle {
    let t = Instant::now();
    let out = daemon.ctl(&["apply", "--name", name, "--target", target, "--rule", RULE]);
    let apply_s = t.elapsed().as_secs_f64();
    assert_eq!(out.code, Some(0), "chaos apply {name}: {}", out.stderr);
    let get = daemon.ctl(&["get", name, "--output", "json"]);
    assert_eq!(get.code, Some(0), "chaos get {name}: {}", get.stderr);
    let view: Value = serde_json::from_str(&get.stdout).expect("chaos get: JSON");
    let targets = view["targets"].as_array().cloned().unwrap_or_default();
    let attached = targets.iter().filter(|t| t["state"] == "attached").count();
    assert_eq!(
        (targets.len(), attached),
        (expected, expected),
        "{name}: every match attached: {view}"
    );
    for c in matched {
        assert!(
            times_out(&c.ip),
            "{name}: {} ({}) still accepts connections on 8080",
            c.name,
            c.ip
        );
    }
    if let Some(c) = untouched {
        assert!(
            serves(&c.ip, Duration::ZERO),
            "{name}: {} is not matched but does not serve",
            c.name
        );
    }
    let applied = Reading::of(daemon.pid());
    let t = Instant::now();
    let out = daemon.ctl(&["delete", name]);
    let release_s = t.elapsed().as_secs_f64();
    assert_eq!(out.code, Some(0), "chaos delete {name}: {}", out.stderr);
    for c in matched {
        assert!(
            serves(&c.ip, Duration::from_secs(1)),
            "{name} deleted: {} ({}) does not serve again",
            c.name,
            c.ip
        );
    }
    let released = Reading::of(daemon.pid());
    Cycle {
        apply_s,
        release_s,
        applied,
        released,
    }
}

pub fn run(ctx: &Ctx) -> Section {
    if let Some(why) = missing() {
        return Section::skipped(ID, TITLE, why);
    }
    let mut section = Section::new(ID, TITLE);
    let rounds: usize = ctx.scale(5, 2);
    let started = Instant::now();

    let mut podman = Podman::new("targets");
    let api = podman.api();
    let prefix = format!("chaos-t{}", std::process::id());
    let t = Instant::now();
    let containers: Vec<Container> = (0..CONTAINERS)
        .map(|i| podman.run(&format!("{prefix}-{i:02}")))
        .collect();
    let setup_s = t.elapsed().as_secs_f64();
    eprintln!("bench:   {CONTAINERS} containers started in {setup_s:.1} s");
    for &i in &SAMPLE {
        let c = &containers[i];
        assert!(
            serves(&c.ip, Duration::from_secs(5)),
            "{} ({}) does not serve before chaos",
            c.name,
            c.ip
        );
    }

    let host = format!("unix://{}", api.display());
    let daemon = Daemon::start_with_env(&[], &[("DOCKER_HOST", &host)]);
    let pid = daemon.pid();
    let idle = Reading::of(pid);
    let all = format!("container={prefix}-*");
    let first = format!("container={prefix}-00*");
    let sample: Vec<&Container> = SAMPLE.iter().map(|&i| &containers[i]).collect();
    let everyone: Vec<&Container> = containers.iter().collect();
    let (mut one_apply, mut one_release, mut many_apply, mut many_release, mut cli) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first_round = None;
    // After each delete of `many`: the daemon's RSS, and maps + programs (a leak would grow).
    let (mut rss_released, mut kernel_released) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // A request that changes nothing: what the client itself costs.
        let t = Instant::now();
        let status = daemon.ctl(&["status"]);
        cli.push(t.elapsed().as_secs_f64());
        assert_eq!(status.code, Some(0), "chaos status: {}", status.stderr);
        let one = cycle(
            &daemon,
            "one",
            &first,
            1,
            &[&containers[0]],
            Some(&containers[1]),
        );
        // Every container is checked in the first round, the sample after.
        let checked = if round == 0 { &everyone } else { &sample };
        let many = cycle(&daemon, "many", &all, CONTAINERS, checked, None);
        eprintln!(
            "bench:   round {}: 1 container {:.3} s (release {:.3} s), {CONTAINERS} containers \
             {:.3} s (release {:.3} s)",
            round + 1,
            one.apply_s,
            one.release_s,
            many.apply_s,
            many.release_s
        );
        one_apply.push(one.apply_s);
        one_release.push(one.release_s);
        many_apply.push(many.apply_s);
        many_release.push(many.release_s);
        rss_released.push(many.released.rss);
        kernel_released.push(many.released.kernel());
        if first_round.is_none() {
            first_round = Some((one, many));
        }
    }
    let exit = daemon.stop();
    assert_eq!(exit.code, Some(0), "chaos daemon: {}", exit.stderr);
    drop(podman);
    let elapsed = started.elapsed().as_secs_f64();
    let (one, many) = first_round.expect("at least one round");

    let n = CONTAINERS as f64;
    let (idle_b, one_b, many_b) = (
        idle.kernel() as f64,
        one.applied.kernel() as f64,
        many.applied.kernel() as f64,
    );
    let per_container = (many_b - idle_b) / n;
    let further = (many_b - one_b) / (n - 1.0);
    let fixed = one_b - idle_b - further;
    let rss_further = (many.applied.rss as f64 - one.applied.rss as f64) / (n - 1.0);
    let links_further =
        (many.applied.snap.links.len() as f64 - one.applied.snap.links.len() as f64) / (n - 1.0);
    let leftover = many.released.kernel() as f64 - idle_b;

    let spread = |v: &[f64]| {
        let (lo, hi) = min_max(v);
        (median(v), lo, hi)
    };
    let mut times = Table::new(
        &format!(
            "`chaos apply` from start to answer and `chaos delete` likewise, {rounds} rounds \
             (seconds; each apply checked: every match attached, containers faulted)"
        ),
        &[
            "experiment",
            "apply median",
            "apply min",
            "apply max",
            "release median",
            "release max",
        ],
    );
    for (what, apply, release) in [
        ("1 container".to_owned(), &one_apply, &one_release),
        (
            format!("{CONTAINERS} containers"),
            &many_apply,
            &many_release,
        ),
    ] {
        let (am, alo, ahi) = spread(apply);
        let (rm, _, rhi) = spread(release);
        times.row(vec![
            what,
            f(am, 3),
            f(alo, 3),
            f(ahi, 3),
            f(rm, 3),
            f(rhi, 3),
        ]);
    }
    let (cli_med, _, _) = spread(&cli);
    times.row(vec![
        "`chaos status` (the client alone)".to_owned(),
        f(cli_med, 3),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);

    let mut memory = Table::new(
        "The daemon: BPF maps and programs it holds (memlock, each id once), links, RSS",
        &[
            "daemon",
            "maps",
            "maps (KiB)",
            "programs",
            "programs (KiB)",
            "maps + programs (KiB)",
            "links",
            "RSS (MiB)",
        ],
    );
    for (what, r) in [
        ("idle", &idle),
        ("1 container", &one.applied),
        ("after its delete", &one.released),
        ("50 containers", &many.applied),
        ("after its delete", &many.released),
    ] {
        memory.row(vec![
            what.to_owned(),
            r.snap.map_count().to_string(),
            kib(r.snap.map_bytes() as f64),
            r.snap.prog_count().to_string(),
            r.snap
                .prog_bytes()
                .map_or("— (through links only)".to_owned(), |b| kib(b as f64)),
            kib(r.kernel() as f64),
            r.snap.links.len().to_string(),
            mib(r.rss as f64),
        ]);
    }
    let mut costs = Table::new(
        "What an experiment costs: fixed, and per container",
        &["cost", "maps + programs (KiB)", "links", "daemon RSS (KiB)"],
    );
    costs.row(vec![
        format!("{CONTAINERS} containers over idle, / {CONTAINERS}"),
        kib(per_container),
        f(many.applied.snap.links.len() as f64 / n, 1),
        kib((many.applied.rss as f64 - idle.rss as f64) / n),
    ]);
    costs.row(vec![
        format!(
            "a further container: ({CONTAINERS} − 1) / {}",
            CONTAINERS - 1
        ),
        kib(further),
        f(links_further, 1),
        kib(rss_further),
    ]);
    costs.row(vec![
        "fixed: 1 container over idle, less a further container".to_owned(),
        kib(fixed),
        String::new(),
        String::new(),
    ]);

    let (many_med, _, many_max) = spread(&many_apply);
    let (one_med, _, _) = spread(&one_apply);
    let (rel_med, _, rel_max) = spread(&many_release);
    section.target(
        "apply over 50 containers",
        "< 2 s from `chaos apply` to its answer for one experiment matching 50 containers, \
         every round (all attached, containers faulted)",
        format!(
            "median {} s, max {} s over {rounds} rounds (1 container: {} s median, so {} ms per \
             further container; the client alone {} s); release {} s median, {} s max",
            f(many_med, 2),
            f(many_max, 2),
            f(one_med, 2),
            f(1e3 * (many_med - one_med) / (n - 1.0), 1),
            f(cli_med, 3),
            f(rel_med, 2),
            f(rel_max, 2),
        ),
        many_max < APPLY_GOAL_S,
    );
    section.target(
        "memory per container",
        "≤ 1 MiB of BPF maps and programs per container an experiment matches (the daemon's \
         per-interface goal), its fixed cost stated beside it",
        format!(
            "{} KiB per container ({CONTAINERS} containers over idle, / {CONTAINERS}), {} KiB \
             per further container, against a fixed {} MiB per experiment (one program and its \
             maps); each container adds {} links (TCX, not in memlock) and {} KiB of daemon RSS",
            kib(per_container),
            kib(further),
            mib(fixed),
            f(links_further, 1),
            kib(rss_further),
        ),
        per_container <= PER_CONTAINER_GOAL,
    );
    section.tables.push(times);
    section.tables.push(memory);
    section.tables.push(costs);
    section.note(format!(
        "Podman (the test harness: runc, cgroupfs, netavark, its own store) started \
         {CONTAINERS} busybox httpd containers named {prefix}-00 to -{:02} in {} s (set-up, not \
         a figure). `chaos daemon` with DOCKER_HOST at podman's API socket. Each round: \
         `chaos apply --name one --target 'container=PREFIX-00*' --rule '{RULE}'`, checked and \
         deleted, then the same as `many` with `container=PREFIX-*`. Times are of the `chaos` \
         client process, start to exit: the daemon answers once every match is attached. \
         After each apply, `chaos get NAME --output json` must list every match `attached` \
         and a connect from the host to ip:8080 must time out (300 ms) on every container in \
         the first round and on containers {SAMPLE:?} after, PREFIX-01 must still serve \
         under `one`; after each delete they must serve again. The section took {elapsed:.0} s.",
        CONTAINERS - 1,
        f(setup_s, 1),
    ));
    section.note(format!(
        "Memory as in the memory section (memlock from /proc/PID/fdinfo, each map and program \
         id once, read once two readings 300 ms apart agree), from the first round. The daemon \
         loads one program (with its maps) per experiment and attaches it to each container \
         it matches: two TCX links per container, kernel objects that carry no memlock, so \
         the per-container figure of maps and programs is near zero by construction; the \
         RSS of the daemon (namespace handles, bookkeeping) is given beside it. The memory \
         section's daemon pays its fixed cost per interface instead, one program each. After \
         each delete of `many` the daemon holds {} KiB of maps and programs more than idle \
         (first round; every round, B: {:?}) and an RSS of {} MiB, round by round.",
        kib(leftover),
        kernel_released,
        rss_released
            .iter()
            .map(|b| mib(*b as f64))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    section.data = json!({
        "containers": CONTAINERS,
        "rule": RULE,
        "rounds": rounds,
        "setup_s": setup_s,
        "apply_s": { "one": one_apply, "many": many_apply },
        "release_s": { "one": one_release, "many": many_release },
        "cli_round_trip_s": cli,
        "released_rss_bytes": rss_released,
        "released_kernel_bytes": kernel_released,
        "memory": {
            "idle": idle.json(),
            "one": one.applied.json(),
            "many": many.applied.json(),
            "released": many.released.json(),
        },
        "per_container_bytes": per_container,
        "further_container_bytes": further,
        "fixed_bytes": fixed,
        "sample": SAMPLE,
    });
    section
}
