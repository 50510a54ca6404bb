//! End to end: what chaos's program costs a real sender on real veth pairs. Four
//! configurations of the sending side's `veth0` egress: no program, a no-op TC program (the
//! hook's own cost), chaos's program with a rule set none of the traffic matches (1 rule), and
//! with 64 rules and 10,000 destination prefixes
//! (a rule set holds at most 64 rules, so "10,000 rules" are 10,000 destination hosts; see
//! `scale.rs`). In both of chaos's configurations the traffic goes to 198.18.0.3, port 9000: rule 0
//! (`dport=9000 dst=198.18.0.2/32`, both protocols) keeps it a candidate through the protocol
//! and port lookups, so every lookup runs, the destination host lookup included, and only that
//! last one misses.
//!
//! Two identical labs (pairs A and B) run a crossover: in each block of two trials one
//! configuration is on pair A and the other on pair B, then swapped, and the measurement order
//! is X Y Y X (Y X X Y in odd rounds). A block gives one ratio, the geometric mean of the two
//! cross-pair ratios, so a difference between the pairs cancels. The A/A control runs the same
//! blocks with no program on either side; the spread of its ratios is the noise floor.
//!
//! `data`: `{ "rounds": R, "udp_datagrams": N, "udp_payload_bytes": 64, "tcp_bytes": N,
//! "tcp_port": 9000, "dst": "198.18.0.3", "prefixes_10k": { "rules", "dst4_entries" },
//! "sanity": [ { "config", "pair", "hit_datagrams", "matched" } ],
//! "configs": { "none"|"noop"|"no-match"|"prefixes-10k": { "udp_pps", "udp_cpu_ns_per_packet",
//! "udp_lost", "tcp_bytes_per_s", "tcp_retrans_segs" } },` (medians over all trials of that
//! configuration; absolute, so they drift between runs) `"comparisons": { "aa"|"noop"|
//! "no-match"|"prefixes-10k": { "udp_pps_ratio", "udp_cpu_ratio", "udp_cpu_added_ns",
//! "tcp_throughput_ratio": { "median", "min", "max", "rounds": [..] } } },
//! "trials": [ { "round", "comparison", "trial", "pair", "config", "udp_sent",
//! "udp_send_errors", "udp_received", "udp_seconds", "udp_pps", "udp_cpu_ns_per_packet",
//! "tcp_bytes", "tcp_seconds", "tcp_bytes_per_s", "tcp_retrans_segs" } ] }`.
//! Ratios are program / no program (for the A/A control: first-labelled / second-labelled);
//! `udp_cpu_added_ns` is the difference of the block's means.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLinkId, TcAttachOptions},
    },
};
use chaos_user::{
    datapath::{AttachMode, Datapath, PROGRAM_OBJECT},
    rule::Direction,
};
use netlab::{
    IFACE, Lab, OTHER_V4, SERVER_V4, in_netns, set_rcvbuf, spawn_in_netns, tcp_bulk, thread_cpu_ns,
};
use serde_json::{Value, json};

use crate::{
    Ctx,
    report::{Section, Table},
    scale::{self, HIT_PORT},
    stats::{f, median, median_ci, min_max},
};

const ID: &str = "e2e";
const TITLE: &str = "End to end: sender cost and throughput on veth";

/// Payload of each flood datagram.
const PAYLOAD: usize = 64;
/// Bounds every traffic loop in time.
const FLOOD_LIMIT: Duration = Duration::from_secs(30);
const TCP_TIMEOUT: Duration = Duration::from_secs(60);
const PAIRS: [&str; 2] = ["A", "B"];
/// Prefixes in the large rule set.
const PREFIXES: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    None,
    Noop,
    NoMatch,
    Prefixes10k,
}

const CONFIGS: [Config; 4] = [
    Config::None,
    Config::Noop,
    Config::NoMatch,
    Config::Prefixes10k,
];

impl Config {
    fn id(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Noop => "noop",
            Self::NoMatch => "no-match",
            Self::Prefixes10k => "prefixes-10k",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::None => "no program",
            Self::Noop => "no-op TC program (baseline of the hook)",
            Self::NoMatch => "program, no matching rule (1 rule)",
            Self::Prefixes10k => "program, 64 rules + 10,000 prefixes, no match",
        }
    }

    /// Index into the loaded programs; `None` has none.
    fn slot(self) -> Option<usize> {
        match self {
            Self::None => None,
            Self::NoMatch => Some(0),
            Self::Prefixes10k => Some(1),
            Self::Noop => Some(2),
        }
    }
}

/// A crossover comparison: `x` against `y`.
#[derive(Clone, Copy)]
struct Comparison {
    id: &'static str,
    label: &'static str,
    x: Config,
    y: Config,
}

const COMPARISONS: [Comparison; 4] = [
    Comparison {
        id: "aa",
        label: "A/A control (no program on both)",
        x: Config::None,
        y: Config::None,
    },
    Comparison {
        id: "noop",
        label: "no-op TC program",
        x: Config::Noop,
        y: Config::None,
    },
    Comparison {
        id: "no-match",
        label: "program, no matching rule",
        x: Config::NoMatch,
        y: Config::None,
    },
    Comparison {
        id: "prefixes-10k",
        label: "program, 10,000 prefixes",
        x: Config::Prefixes10k,
        y: Config::None,
    },
];

/// One measurement on one pair.
#[derive(Clone, Copy, Debug)]
struct Measure {
    udp_sent: u64,
    udp_errors: u64,
    udp_received: u64,
    udp_seconds: f64,
    udp_cpu_ns: u64,
    tcp_bytes: u64,
    tcp_seconds: f64,
    tcp_retrans: u64,
}

impl Measure {
    fn udp_pps(&self) -> f64 {
        self.udp_received as f64 / self.udp_seconds
    }
    fn cpu_per_packet(&self) -> f64 {
        self.udp_cpu_ns as f64 / self.udp_sent.max(1) as f64
    }
    fn tcp_rate(&self) -> f64 {
        self.tcp_bytes as f64 / self.tcp_seconds
    }
}

/// A program the bench attaches: chaos's, or the no-op classifier from the same object.
enum Program {
    Chaos(Box<Datapath>),
    Noop {
        ebpf: Ebpf,
        link: Option<SchedClassifierLinkId>,
    },
}

const NOOP: &str = "chaos_noop";

impl Program {
    /// The no-op baseline, if the object has it.
    fn noop() -> Result<Self, String> {
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).map_err(|e| e.to_string())?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(NOOP)
            .ok_or_else(|| format!("chaos's object has no {NOOP}"))?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        prog.load().map_err(|e| e.to_string())?;
        Ok(Self::Noop { ebpf, link: None })
    }

    /// Packets chaos's rule 0 has matched so far.
    fn rule0_matched(&self) -> u64 {
        match self {
            Self::Chaos(dp) => dp.counters_of(0).unwrap().matched_pkts,
            Self::Noop { .. } => unreachable!("the no-op has no counters"),
        }
    }
}

/// Attaches the program in `slot` to `veth0` egress in namespace `ns`, first in the TCX chain.
fn attach(slot: &mut Option<Program>, ns: &str) {
    let program = slot.take().expect("program in its slot");
    *slot = Some(in_netns(ns, move || {
        let mut program = program;
        match &mut program {
            Program::Chaos(dp) => dp
                .attach(IFACE, Direction::Egress, AttachMode::Tcx)
                .expect("attach chaos's program (TCX)"),
            Program::Noop { ebpf, link } => {
                let prog: &mut SchedClassifier =
                    ebpf.program_mut(NOOP).unwrap().try_into().unwrap();
                *link = Some(
                    prog.attach_with_options(
                        IFACE,
                        TcAttachType::Egress,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .expect("attach the no-op program (TCX)"),
                );
            }
        }
        program
    }));
}

fn detach(slot: &mut Option<Program>) {
    match slot.as_mut().expect("program in its slot") {
        Program::Chaos(dp) => dp.detach_all().expect("detach chaos's program"),
        Program::Noop { ebpf, link } => {
            let prog: &mut SchedClassifier = ebpf.program_mut(NOOP).unwrap().try_into().unwrap();
            prog.detach(link.take().expect("no-op attached"))
                .expect("detach the no-op program");
        }
    }
}

/// Sends `count` datagrams as fast as one thread can from `lab.a` to `dst` in `lab.b`.
/// Returns (sent, send errors, received, seconds from the first send to the last arrival,
/// sending thread's CPU ns).
fn udp_flood(lab: &Lab, dst: SocketAddr, count: u64) -> (u64, u64, u64, f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = spawn_in_netns(&lab.b, move || {
        let sock = UdpSocket::bind(dst).unwrap_or_else(|e| panic!("bind {dst}: {e}"));
        set_rcvbuf(&sock, 256 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + FLOOD_LIMIT + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        let mut received = 0u64;
        let mut last = None;
        loop {
            match sock.recv(&mut buf) {
                Ok(_) => {
                    received += 1;
                    last = Some(Instant::now());
                    if received == count
                        || (received.is_multiple_of(4096) && Instant::now() > deadline)
                    {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop2.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        (received, last)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver did not start");
    let (start, sent, errors, cpu) = in_netns(&lab.a, move || {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        sock.connect(dst).unwrap();
        let buf = [0x5au8; PAYLOAD];
        let (mut sent, mut errors) = (0u64, 0u64);
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        while sent < count {
            if sock.send(&buf).is_err() {
                errors += 1;
            }
            sent += 1;
            if sent.is_multiple_of(4096) && start.elapsed() > FLOOD_LIMIT {
                break;
            }
        }
        (start, sent, errors, thread_cpu_ns() - cpu0)
    });
    stop.store(true, Ordering::Relaxed);
    let (received, last) = receiver.join().expect("receiver panicked");
    let seconds = last.map_or(f64::NAN, |l| l.duration_since(start).as_secs_f64());
    (sent, errors, received, seconds, cpu)
}

fn measure(lab: &Lab, datagrams: u64, tcp_bytes: u64) -> Measure {
    let dst: SocketAddr = (OTHER_V4, HIT_PORT).into();
    let (udp_sent, udp_errors, udp_received, udp_seconds, udp_cpu_ns) =
        udp_flood(lab, dst, datagrams);
    let tcp = tcp_bulk(&lab.a, &lab.b, dst, tcp_bytes, TCP_TIMEOUT);
    Measure {
        udp_sent,
        udp_errors,
        udp_received,
        udp_seconds,
        udp_cpu_ns,
        tcp_bytes: tcp.bytes,
        tcp_seconds: tcp.elapsed.as_secs_f64(),
        tcp_retrans: tcp.retrans_segs,
    }
}

/// Median, range and per-round values.
fn summary(v: &[f64]) -> Value {
    json!({
        "median": median(v),
        "min": min_max(v).0,
        "max": min_max(v).1,
        "rounds": v,
    })
}

/// "0.991 [0.985–0.998]"
fn ratio_cell(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{} [{}–{}]", f(median(v), 3), f(lo, 3), f(hi, 3))
}

/// Per-comparison, per-metric block results.
#[derive(Default)]
struct Blocks {
    udp_pps: Vec<f64>,
    udp_cpu: Vec<f64>,
    udp_cpu_added: Vec<f64>,
    tcp: Vec<f64>,
}

pub fn run(ctx: &Ctx) -> Section {
    let datagrams: u64 = ctx.scale(150_000, 30_000);
    let tcp_bytes: u64 = ctx.scale(256 << 20, 64 << 20);
    let rounds: usize = ctx.scale(12, 3);

    let no_match = scale::rule_set_tcp_and_udp(1, 1);
    let big = scale::rule_set_tcp_and_udp(64, PREFIXES);
    let big_dst4 = big.prefixes(chaos_common::rules::TABLE_DST4).len();

    // Labs first: locals drop in reverse order, so the programs detach before the namespaces go.
    let labs = [Lab::new("bench-e2e"), Lab::new("bench-e2e")];
    let mut programs: [Option<Program>; 3] = [None, None, None];
    for (slot, set) in programs.iter_mut().zip([&no_match, &big]) {
        let mut dp = match Datapath::load() {
            Ok(dp) => dp,
            Err(e) => {
                return Section::skipped(ID, TITLE, format!("cannot load chaos's program: {e}"));
            }
        };
        dp.apply(set).expect("write the rule set");
        *slot = Some(Program::Chaos(Box::new(dp)));
    }
    // Without the no-op baseline the section still runs, one comparison short.
    let noop_missing = match Program::noop() {
        Ok(p) => {
            programs[2] = Some(p);
            None
        }
        Err(why) => Some(why),
    };
    let comparisons_run: Vec<Comparison> = COMPARISONS
        .into_iter()
        .filter(|c| noop_missing.is_none() || c.x != Config::Noop)
        .collect();

    // Sanity: on each pair, each program is live and its rule 0 sees datagrams to 198.18.0.2.
    let mut sanity = Vec::new();
    let mut sane = true;
    const HITS: u64 = 100;
    for (p, lab) in labs.iter().enumerate() {
        for config in [Config::NoMatch, Config::Prefixes10k] {
            let slot = &mut programs[config.slot().unwrap()];
            let before = slot.as_ref().unwrap().rule0_matched();
            attach(slot, &lab.a);
            let (sent, _, _, _, _) = udp_flood(lab, (SERVER_V4, HIT_PORT).into(), HITS);
            detach(slot);
            let matched = slot.as_ref().unwrap().rule0_matched() - before;
            sane &= sent == HITS && matched == HITS;
            sanity.push(json!({
                "config": config.id(), "pair": PAIRS[p], "hit_datagrams": sent, "matched": matched,
            }));
        }
    }
    let matched_before: Vec<u64> = programs[..2]
        .iter()
        .map(|s| s.as_ref().unwrap().rule0_matched())
        .collect();

    // Warm-up, not recorded.
    for lab in &labs {
        measure(lab, datagrams / 4, tcp_bytes / 4);
    }

    let mut trials = Vec::new();
    let mut by_config: [Vec<Measure>; 4] = Default::default();
    let mut blocks: Vec<Blocks> = (0..comparisons_run.len())
        .map(|_| Blocks::default())
        .collect();
    let started = Instant::now();
    for round in 0..rounds {
        for k in 0..comparisons_run.len() {
            // Rotate the comparisons' order from round to round.
            let ci = (k + round) % comparisons_run.len();
            let cmp = comparisons_run[ci];
            // Trial layouts: whether x is on pair A (else on B; y takes the other pair).
            let layouts = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            // x and y measurements of this block, each on A and B.
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for (t, x_on_a) in layouts.into_iter().enumerate() {
                for p in 0..2 {
                    // In the A/A control x and y are both "no program": the roles still follow
                    // the layout, so its ratios come from the same estimator as the others'.
                    let is_x = (p == 0) == x_on_a;
                    let config = if is_x { cmp.x } else { cmp.y };
                    let lab = &labs[p];
                    if let Some(s) = config.slot() {
                        attach(&mut programs[s], &lab.a);
                    }
                    let m = measure(lab, datagrams, tcp_bytes);
                    if let Some(s) = config.slot() {
                        detach(&mut programs[s]);
                    }
                    trials.push(json!({
                        "round": round, "comparison": cmp.id, "trial": t, "pair": PAIRS[p],
                        "config": config.id(), "udp_sent": m.udp_sent,
                        "udp_send_errors": m.udp_errors, "udp_received": m.udp_received,
                        "udp_seconds": m.udp_seconds, "udp_pps": m.udp_pps(),
                        "udp_cpu_ns_per_packet": m.cpu_per_packet(), "tcp_bytes": m.tcp_bytes,
                        "tcp_seconds": m.tcp_seconds, "tcp_bytes_per_s": m.tcp_rate(),
                        "tcp_retrans_segs": m.tcp_retrans,
                    }));
                    by_config[config as usize].push(m);
                    if is_x { xs.push(m) } else { ys.push(m) }
                }
            }
            let geo =
                |g: fn(&Measure) -> f64| ((g(&xs[0]) * g(&xs[1])) / (g(&ys[0]) * g(&ys[1]))).sqrt();
            let b = &mut blocks[ci];
            b.udp_pps.push(geo(Measure::udp_pps));
            b.udp_cpu.push(geo(Measure::cpu_per_packet));
            b.udp_cpu_added.push(
                (xs[0].cpu_per_packet() + xs[1].cpu_per_packet()
                    - ys[0].cpu_per_packet()
                    - ys[1].cpu_per_packet())
                    / 2.0,
            );
            b.tcp.push(geo(Measure::tcp_rate));
            eprintln!(
                "bench:   e2e round {} of {rounds}, {}: UDP pps ratio {:.3}, CPU/datagram {:+.0} ns, TCP ratio {:.3}",
                round + 1,
                cmp.id,
                b.udp_pps.last().unwrap(),
                b.udp_cpu_added.last().unwrap(),
                b.tcp.last().unwrap()
            );
        }
    }
    let elapsed = started.elapsed();

    // No traffic of the rounds may have matched rule 0: it went to 198.18.0.3.
    let stray: Vec<u64> = programs[..2]
        .iter()
        .zip(&matched_before)
        .map(|(s, b)| s.as_ref().unwrap().rule0_matched() - b)
        .collect();
    sane &= stray.iter().all(|&n| n == 0);
    drop(programs);

    let mut section = Section::new(ID, TITLE);
    let mut configs = serde_json::Map::new();
    let mut abs = Table::new(
        "Absolute figures, median over every trial of a configuration (these drift between runs; \
         compare the ratios)",
        &[
            "configuration",
            "trials",
            "UDP delivered (kpps)",
            "sender CPU per datagram (ns)",
            "UDP lost (median)",
            "TCP (Gbit/s)",
            "TCP retransmits (median)",
        ],
    );
    for config in CONFIGS {
        let ms = &by_config[config as usize];
        if ms.is_empty() {
            continue;
        }
        let col = |g: &dyn Fn(&Measure) -> f64| median(&ms.iter().map(g).collect::<Vec<_>>());
        let pps = col(&|m| m.udp_pps());
        let cpu = col(&|m| m.cpu_per_packet());
        let lost = col(&|m| (m.udp_sent - m.udp_received) as f64);
        let tcp = col(&|m| m.tcp_rate());
        let retrans = col(&|m| m.tcp_retrans as f64);
        configs.insert(
            config.id().to_owned(),
            json!({
                "udp_pps": pps, "udp_cpu_ns_per_packet": cpu, "udp_lost": lost,
                "tcp_bytes_per_s": tcp, "tcp_retrans_segs": retrans,
            }),
        );
        abs.row(vec![
            config.label().to_owned(),
            ms.len().to_string(),
            f(pps / 1e3, 0),
            f(cpu, 0),
            f(lost, 0),
            f(tcp * 8e-9, 2),
            f(retrans, 0),
        ]);
    }

    let mut ratios = Table::new(
        &format!(
            "Against no program: crossover of two veth pairs, median [min–max] over {rounds} \
             blocks"
        ),
        &[
            "comparison",
            "UDP delivered pps ratio",
            "sender CPU per datagram ratio",
            "added sender CPU per datagram (ns)",
            "TCP throughput ratio",
        ],
    );
    let mut comparisons = serde_json::Map::new();
    for (cmp, b) in comparisons_run.iter().zip(&blocks) {
        let (lo, hi) = min_max(&b.udp_cpu_added);
        ratios.row(vec![
            cmp.label.to_owned(),
            ratio_cell(&b.udp_pps),
            ratio_cell(&b.udp_cpu),
            format!(
                "{} [{}–{}]",
                f(median(&b.udp_cpu_added), 0),
                f(lo, 0),
                f(hi, 0)
            ),
            ratio_cell(&b.tcp),
        ]);
        comparisons.insert(
            cmp.id.to_owned(),
            json!({
                "udp_pps_ratio": summary(&b.udp_pps),
                "udp_cpu_ratio": summary(&b.udp_cpu),
                "udp_cpu_added_ns": summary(&b.udp_cpu_added),
                "tcp_throughput_ratio": summary(&b.tcp),
            }),
        );
    }
    section.tables.push(ratios);
    section.tables.push(abs);

    let block = |id: &str| &blocks[comparisons_run.iter().position(|c| c.id == id).unwrap()];
    let aa = block("aa");
    let nm = block("no-match");
    let (aa_lo, aa_hi) = min_max(&aa.tcp);
    let (aau_lo, aau_hi) = min_max(&aa.udp_pps);
    let tcp_ratio = median(&nm.tcp);
    let (ci_lo, ci_hi) = median_ci(&nm.tcp);
    let udp_ratio = median(&nm.udp_pps);
    let noop_udp = comparisons_run
        .iter()
        .position(|c| c.id == "noop")
        .map_or(f64::NAN, |i| median(&blocks[i].udp_pps));
    section.target(
        "no-match throughput ratio",
        "≥ 0.98 against no program",
        format!(
            "TCP throughput {} (95 % CI of the median {}–{}; UDP 64-byte pps {}, the no-op \
             hook alone {}); A/A noise floor TCP {}–{}, UDP {}–{}",
            f(tcp_ratio, 3),
            f(ci_lo, 3),
            f(ci_hi, 3),
            f(udp_ratio, 3),
            f(noop_udp, 3),
            f(aa_lo, 3),
            f(aa_hi, 3),
            f(aau_lo, 3),
            f(aau_hi, 3)
        ),
        sane && tcp_ratio >= 0.98,
    );

    section.note(format!(
        "Each trial sends {datagrams} UDP datagrams of {PAYLOAD} bytes from one thread as fast \
         as it can (connected socket, no pacing) from namespace a to 198.18.0.3:{HIT_PORT} in b, \
         then one TCP bulk transfer of {} MiB (netlab::tcp_bulk) to the same address; chaos's \
         program, when present, is attached by TCX to a's veth0 egress. Delivered pps = datagrams \
         received / (first send to last arrival). The target uses the TCP throughput ratio: \
         with 64-byte datagrams every packet pays the TCX hook, whose cost alone (the no-op's \
         row) is about as large as chaos's own work.",
        tcp_bytes >> 20
    ));
    section.note(format!(
        "\"10,000 rules\" is 64 rules and {PREFIXES} destination prefixes ({big_dst4} IPv4 \
         entries, /32 hosts beside the traffic's address in 198.18.0.0/16, which chaos keeps in \
         its host table): a rule set holds at most 64 rules. The traffic misses every rule, but \
         only at the destination lookup: rule 0 (dport={HIT_PORT} dst=198.18.0.2/32, UDP and \
         TCP) keeps it a candidate through the protocol and port lookups. Traffic to a port no \
         rule names would stop at the port array and never look the address up. \"No matching \
         rule\" is the same with 1 rule."
    ));
    section.note(match &noop_missing {
        None => format!(
            "The no-op is a classifier from chaos's own object that returns \"no decision\" at \
             once ({NOOP}), attached the same way: its added CPU is what any TCX egress program \
             costs here, and the program rows' added CPU minus it is chaos's own work."
        ),
        Some(why) => format!("No no-op baseline: {why}."),
    });
    section.note(
        "Crossover: each block measures X and Y on both pairs, in the order X Y Y X (Y X X Y in \
         odd rounds), and its ratio is the geometric mean of the two cross-pair ratios. The A/A \
         control runs identical blocks with no program on either side: its range is the noise \
         floor of every ratio above.",
    );
    let irq_time = kernel_config("CONFIG_IRQ_TIME_ACCOUNTING");
    section.note(format!(
        "Sender CPU is CLOCK_THREAD_CPUTIME_ID of the sending thread over the flood. On veth, \
         the receive side mostly runs as softirq in the sender's context (when it re-enables \
         bottom halves), so it is included unless the kernel accounts IRQ time separately \
         (CONFIG_IRQ_TIME_ACCOUNTING here: {irq_time})."
    ));
    section.note(format!(
        "Sanity: on each pair, each program's rule 0 counted {HITS} of {HITS} datagrams sent to \
         198.18.0.2:{HIT_PORT}, and nothing of the measured traffic: {}. The rounds took {:.0} s.",
        if sane {
            "yes"
        } else {
            "NO, the figures are not to be trusted"
        },
        elapsed.as_secs_f64()
    ));
    section.data = json!({
        "rounds": rounds,
        "udp_datagrams": datagrams,
        "udp_payload_bytes": PAYLOAD,
        "tcp_bytes": tcp_bytes,
        "tcp_port": HIT_PORT,
        "dst": OTHER_V4.to_string(),
        "prefixes_10k": { "rules": 64, "dst4_entries": big_dst4 },
        "sanity": sanity,
        "stray_matches": stray,
        "configs": configs,
        "comparisons": comparisons,
        "trials": trials,
    });
    section
}

/// `y`, `n` or `unknown` for a kernel config option (from /proc/config.gz or /boot).
fn kernel_config(option: &str) -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let text = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .or_else(|| std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok())
        .unwrap_or_default();
    if text.is_empty() {
        return "unknown".to_owned();
    }
    let set = format!("{option}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&set).map(str::to_owned))
        .unwrap_or_else(|| "not set".to_owned())
}
