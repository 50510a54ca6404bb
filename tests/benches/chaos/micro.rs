//! Micro: ns per packet of the real program through BPF_PROG_TEST_RUN, against a no-op TC
//! program from the same object, interleaved round by round.
//!
//! `data`: `{ "repeat": N, "rounds": R, "noop_ns": median, "program": { "xlated_insns",
//! "jited_bytes" }, "conn": { "rule", "conn_hit_over_plain_ns", "conn_miss_over_plain_ns",
//! "conn_miss_reverse_over_plain_ns", "conn_hit_reverse_over_plain_ns", "matched_pkts",
//! "conns_seen" }, "cases": [ { "family": "ipv4"|"ipv6", "proto": "udp"|"tcp", "rules",
//! "prefixes", "kind", "path": "hit-pass"|"hit-drop"|"hit-delay"|"miss"|"miss-reverse"|
//! "hit-conn"|"miss-conn"|"hit-conn-reverse"|"miss-conn-reverse"|"hit-chance"|
//! "hit-chance-seeded", "median_ns",
//! "noop_median_ns", "delta_ns", "ratio", "rounds_ns": [..] } ] }`. `delta_ns` is the median
//! over rounds of (program - no-op) taken within each round. The TCP cases carry a 6-byte
//! segment of an open connection: "*-conn*" under a connection rule (`proto=tcp dport=9000
//! dst=SERVER hang=yes after=1h`), the others under the same rule as a plain one; "*-reverse"
//! run the ingress program, on a packet of another connection or (hit-conn-reverse) on the
//! server's reply. `conn_*_over_plain_ns` are medians over rounds of the difference of two
//! cases' Δ within each round (IPv4; the reverse hit against the plain rule's reverse miss),
//! and `matched_pkts`/`conns_seen` the connection rule's counters over the last round's
//! "hit-conn" runs. `seed` holds `seeded_over_unseeded_ns`: per round, Δ of "hit-chance-seeded"
//! (`drop=30% seed=7`) minus Δ of "hit-chance" (`drop=30%`), the median (IPv4 UDP, 1 rule);
//! and `seeded_dropped`/`seeded_matched`, the seeded rule's counters over the last round.

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use chaos_common::RuleCounters;
use chaos_user::{
    datapath::{Datapath, PROGRAM_OBJECT},
    rule::Direction,
};
use serde_json::{Value, json};

use crate::{
    Ctx,
    report::{Section, Table},
    scale::{
        self, CLIENT_V4, CLIENT_V6, CONN_FAULT, Fault, HIT_PORT, MISS_PORT, SERVER_V4, SERVER_V6,
        Shape,
    },
    stats::{f, median},
};

/// What a port + CIDR hit may cost over the no-op, per packet (the hit-path target).
const HIT_BUDGET_NS: f64 = 20.0;
/// What a connection-state hit may cost over a plain hit of the same packet.
const CONN_HIT_BUDGET_NS: f64 = 40.0;
/// How far a miss under a connection rule may read from a miss under a plain rule: noise, not
/// a cost (on the rule's way a packet no rule matches never reaches the connection table).
/// Eight runs on a shared 2-core machine read -4 to +9 ns.
const CONN_MISS_NOISE_NS: f64 = 10.0;
/// What drawing from a seed (counting the packet in its flow, then mixing) may cost over a
/// draw from the kernel's generator, per packet.
const SEEDED_BUDGET_NS: f64 = 40.0;
/// `TC_ACT_UNSPEC` as BPF_PROG_TEST_RUN returns it: chaos's "pass".
const PASSED: u32 = u32::MAX;

/// A 64-byte-on-the-wire UDP frame (60 bytes without the FCS) for IPv4, 78 bytes for IPv6.
pub fn udp_frame(v6: bool, dport: u16) -> Vec<u8> {
    let payload = [0u8; 18];
    let mut l4 = Vec::new();
    l4.extend_from_slice(&40000u16.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(&payload);
    ip_frame(v6, 17, false, &l4)
}

/// A TCP segment with 6 bytes of data of an open connection (flags ACK|PSH), 64 bytes on the
/// wire for IPv4 (60 without the FCS), 80 bytes for IPv6: from the client to the server's
/// `port`, or (`reply`) from that port back to the client.
pub fn tcp_frame(v6: bool, port: u16, reply: bool) -> Vec<u8> {
    let (sport, dport) = if reply { (port, 40000) } else { (40000, port) };
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&1_000_000u32.to_be_bytes()); // seq
    l4.extend_from_slice(&2_000_000u32.to_be_bytes()); // ack
    l4.extend_from_slice(&[0x50, 0x18]); // 20-byte header; ACK|PSH
    l4.extend_from_slice(&64240u16.to_be_bytes()); // window
    l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    l4.extend_from_slice(&[0u8; 6]);
    ip_frame(v6, 6, reply, &l4)
}

/// Ethernet and IP headers around the transport `l4`: the bench's client to its server, or
/// (`reply`) the server to the client.
fn ip_frame(v6: bool, proto: u8, reply: bool, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    let (src4, dst4) = if reply {
        (SERVER_V4, CLIENT_V4)
    } else {
        (CLIENT_V4, SERVER_V4)
    };
    let (src6, dst6) = if reply {
        (SERVER_V6, CLIENT_V6)
    } else {
        (CLIENT_V6, SERVER_V6)
    };
    if v6 {
        p.extend_from_slice(&0x86ddu16.to_be_bytes());
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        p.extend_from_slice(&[proto, 64]);
        p.extend_from_slice(&src6);
        p.extend_from_slice(&dst6);
    } else {
        p.extend_from_slice(&0x0800u16.to_be_bytes());
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&src4);
        p.extend_from_slice(&dst4);
    }
    p.extend_from_slice(l4);
    p
}

/// Loads the no-op baseline from chaos's own object.
pub fn load_noop() -> Ebpf {
    let mut ebpf = Ebpf::load(PROGRAM_OBJECT).expect("load chaos's object");
    let prog: &mut SchedClassifier = ebpf
        .program_mut("chaos_noop")
        .expect("chaos_noop in the object")
        .try_into()
        .expect("a classifier");
    prog.load().expect("load chaos_noop");
    ebpf
}

pub fn noop(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut("chaos_noop").unwrap().try_into().unwrap()
}

/// Average ns per run over `repeat` runs of `prog` on `packet`, and the program's verdict.
fn test_run(prog: &SchedClassifier, packet: &[u8], repeat: u32) -> (f64, u32) {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.repeat = repeat;
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    (r.duration.as_nanos() as f64, r.return_value)
}

fn ns_per_run(prog: &SchedClassifier, packet: &[u8], repeat: u32) -> f64 {
    test_run(prog, packet, repeat).0
}

struct Case {
    v6: bool,
    tcp: bool,
    /// Run through the ingress program: packets coming back against the (egress) rule's way.
    ingress: bool,
    /// The server's packet back to the client.
    reply: bool,
    rules: usize,
    prefixes: usize,
    shape: Shape,
    path: &'static str,
    fault: Fault,
    dport: u16,
    /// Per round: (program ns, no-op ns).
    samples: Vec<(f64, f64)>,
}

/// The median over rounds of what `a` costs over `b`, each against its round's no-op: paired
/// by round, so the machine's drift between rounds cancels.
fn paired_delta(a: &Case, b: &Case) -> f64 {
    let d: Vec<f64> = a
        .samples
        .iter()
        .zip(&b.samples)
        .map(|(x, y)| (x.0 - x.1) - (y.0 - y.1))
        .collect();
    median(&d)
}

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("micro", "Micro: ns per packet in BPF_PROG_TEST_RUN");
    let repeat: u32 = ctx.scale(200_000, 20_000);
    let rounds: usize = ctx.scale(7, 3);
    let scales: &[(usize, usize, Shape)] = &[
        (1, 1, Shape::Hosts),
        (1, 10_000, Shape::Hosts),
        (64, 64, Shape::Hosts),
        (64, 1_000, Shape::Hosts),
        (64, 10_000, Shape::Hosts),
        (64, 60_000, Shape::Hosts),
        (1, 1, Shape::Nets),
        (1, 10_000, Shape::Nets),
    ];
    let mut cases = Vec::new();
    for v6 in [false, true] {
        for &(rules, prefixes, shape) in scales {
            // The seeded and unseeded draw at one scale: what a seed adds does not grow with
            // the rule set (it follows the match).
            let chance: &[_] = if rules == 1 && prefixes == 1 && shape == Shape::Hosts {
                &[
                    ("hit-chance", Fault::Chance, HIT_PORT),
                    ("hit-chance-seeded", Fault::SeededChance, HIT_PORT),
                ]
            } else {
                &[]
            };
            for &(path, fault, dport) in [
                ("hit-pass", Fault::Pass, HIT_PORT),
                ("miss", Fault::Pass, MISS_PORT),
                ("hit-drop", Fault::Drop, HIT_PORT),
                ("hit-delay", Fault::Delay, HIT_PORT),
            ]
            .iter()
            .chain(chance)
            {
                cases.push(Case {
                    v6,
                    tcp: false,
                    ingress: false,
                    reply: false,
                    rules,
                    prefixes,
                    shape,
                    path,
                    fault,
                    dport,
                    samples: Vec::new(),
                });
            }
        }
    }
    // The IPv4 rule of the "-conn" paths, as scale::rule_set_tcp writes it.
    let conn_rule = format!("proto=tcp dport={HIT_PORT} dst=198.18.0.2/32 {CONN_FAULT}");
    // A connection rule against the same rule as a plain one: one TCP packet of an open
    // connection, at the rule's port and at another, IPv4 and IPv6, 1 rule and 1 prefix; and
    // packets coming back on ingress, where a hanging rule looks every packet's connection up:
    // the reply of the connection the egress packets opened, and a packet of another one.
    for v6 in [false, true] {
        for (path, fault, dport, ingress, reply) in [
            ("hit-pass", Fault::Pass, HIT_PORT, false, false),
            ("miss", Fault::Pass, MISS_PORT, false, false),
            ("miss-reverse", Fault::Pass, MISS_PORT, true, false),
            ("hit-drop", Fault::Drop, HIT_PORT, false, false),
            ("hit-conn", Fault::Conn, HIT_PORT, false, false),
            ("miss-conn", Fault::Conn, MISS_PORT, false, false),
            ("hit-conn-reverse", Fault::Conn, HIT_PORT, true, true),
            ("miss-conn-reverse", Fault::Conn, MISS_PORT, true, false),
        ] {
            cases.push(Case {
                v6,
                tcp: true,
                ingress,
                reply,
                rules: 1,
                prefixes: 1,
                shape: Shape::Hosts,
                path,
                fault,
                dport,
                samples: Vec::new(),
            });
        }
    }
    let mut dp = Datapath::load().expect("load chaos's program (run as root)");
    let mut noop_obj = load_noop();
    let frames: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| {
            if c.tcp {
                tcp_frame(c.v6, c.dport, c.reply)
            } else {
                udp_frame(c.v6, c.dport)
            }
        })
        .collect();
    // The connection rule's counters over the last round's "hit-conn" runs.
    let mut conn_counters = RuleCounters::default();
    // The seeded rule's over the last round's IPv4 "hit-chance-seeded" runs.
    let mut seeded_counters = RuleCounters::default();
    // Cases sharing a rule set run back to back, so each set is written once per round.
    for round in 0..rounds {
        let mut applied: Option<(bool, bool, usize, usize, Shape, Fault)> = None;
        for (case, frame) in cases.iter_mut().zip(&frames) {
            let key = (
                case.v6,
                case.tcp,
                case.rules,
                case.prefixes,
                case.shape,
                case.fault,
            );
            if applied != Some(key) {
                let set = if case.tcp {
                    scale::rule_set_tcp(case.rules, case.prefixes, case.fault, case.v6)
                } else {
                    scale::rule_set_shaped(
                        case.rules,
                        case.prefixes,
                        case.fault,
                        case.v6,
                        case.shape,
                    )
                };
                dp.apply(&set).expect("write the rule set");
                applied = Some(key);
            }
            if case.path == "hit-conn" || case.path == "hit-chance-seeded" {
                dp.reset_counters(0).expect("reset rule 0's counters");
            }
            let dir = if case.ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            // Alternate which goes first, so a drift within the pair cancels over rounds.
            let prog = dp.program(dir).expect("chaos's program");
            let ((p, verdict), n) = if round % 2 == 0 {
                let p = test_run(prog, frame, repeat);
                (p, ns_per_run(noop(&mut noop_obj), frame, repeat))
            } else {
                let n = ns_per_run(noop(&mut noop_obj), frame, repeat);
                let prog = dp.program(dir).unwrap();
                (test_run(prog, frame, repeat), n)
            };
            if case.tcp && case.fault != Fault::Drop {
                // TCP packets of an open connection (or of none) pass.
                assert_eq!(verdict, PASSED, "{conn_rule}: {} packet", case.path);
            }
            if case.path == "hit-conn" {
                // The connection must be tracked: one entry made, every later run finding it.
                conn_counters = dp.counters_of(0).expect("rule 0's counters");
                assert!(
                    conn_counters.matched_pkts >= u64::from(repeat)
                        && conn_counters.conns_seen <= 1
                        && conn_counters.conn_dropped_pkts == 0,
                    "{conn_rule}: not a connection-state hit: {conn_counters:?}"
                );
            }
            if case.path == "hit-chance-seeded" && !case.v6 {
                // Every run is the same flow's next packet: its count found and stepped, and
                // the seed's draws dropping their share.
                seeded_counters = dp.counters_of(0).expect("rule 0's counters");
                let share = seeded_counters.dropped_pkts as f64 / f64::from(repeat);
                assert!(
                    seeded_counters.matched_pkts == u64::from(repeat)
                        && (0.25..0.35).contains(&share),
                    "drop=30% seed=7: not a seeded draw: {seeded_counters:?}"
                );
            }
            case.samples.push((p, n));
        }
        eprintln!("bench:   micro round {} of {rounds}", round + 1);
    }
    let info = dp
        .program(Direction::Egress)
        .unwrap()
        .info()
        .expect("program info");
    let xlated = info.size_translated().map_or(0, |b| b / 8);
    let jited = info.size_jitted();
    let mut table = Table::new(
        "Median over rounds; Δ is the median of (program − no-op) within each round.",
        &[
            "family", "proto", "rules", "prefixes", "kind", "path", "ns/pkt", "no-op ns", "Δ ns",
            "ratio",
        ],
    );
    let mut json_cases = Vec::new();
    let mut all_noop = Vec::new();
    let summary = |c: &Case| {
        let prog: Vec<f64> = c.samples.iter().map(|s| s.0).collect();
        let noop: Vec<f64> = c.samples.iter().map(|s| s.1).collect();
        let delta: Vec<f64> = c.samples.iter().map(|s| s.0 - s.1).collect();
        (median(&prog), median(&noop), median(&delta))
    };
    for c in &cases {
        let (p, n, d) = summary(c);
        all_noop.extend(c.samples.iter().map(|s| s.1));
        let family = if c.v6 { "ipv6" } else { "ipv4" };
        let proto = if c.tcp { "tcp" } else { "udp" };
        let kind = match c.shape {
            Shape::Hosts => "hosts",
            Shape::Nets => "networks",
        };
        table.row(vec![
            family.to_owned(),
            proto.to_owned(),
            c.rules.to_string(),
            c.prefixes.to_string(),
            kind.to_owned(),
            c.path.to_owned(),
            f(p, 1),
            f(n, 1),
            f(d, 1),
            f(p / n, 2),
        ]);
        json_cases.push(json!({
            "family": family, "proto": proto, "rules": c.rules, "prefixes": c.prefixes,
            "kind": kind, "path": c.path,
            "median_ns": p, "noop_median_ns": n, "delta_ns": d, "ratio": p / n,
            "rounds_ns": c.samples.iter().map(|s| s.0).collect::<Vec<_>>(),
        }));
    }
    let case = |v6: bool, tcp: bool, rules: usize, prefixes: usize, shape: Shape, path: &str| {
        cases
            .iter()
            .find(|c| {
                c.v6 == v6
                    && c.tcp == tcp
                    && c.rules == rules
                    && c.prefixes == prefixes
                    && c.shape == shape
                    && c.path == path
            })
            .expect("case")
    };
    let find = |v6: bool, rules: usize, prefixes: usize, shape: Shape, path: &str| {
        summary(case(v6, false, rules, prefixes, shape, path))
    };
    let find_tcp = |v6: bool, path: &str| summary(case(v6, true, 1, 1, Shape::Hosts, path));
    // Per round, Δ of `path` minus Δ of `base` (both IPv4 TCP, 1 rule): the median.
    let over = |path: &str, base: &str| {
        let (a, b) = (
            case(false, true, 1, 1, Shape::Hosts, path),
            case(false, true, 1, 1, Shape::Hosts, base),
        );
        (paired_delta(a, b), summary(a).2, summary(b).2)
    };
    let (_, _, hit_delta) = find(false, 1, 1, Shape::Hosts, "hit-pass");
    section.target(
        "hit path cost",
        &format!("port + CIDR hit within {HIT_BUDGET_NS:.0} ns of the no-op"),
        format!("{hit_delta:+.1} ns (IPv4, 1 rule, hit, pass)"),
        hit_delta <= HIT_BUDGET_NS,
    );
    for (shape, what) in [(Shape::Hosts, "hosts"), (Shape::Nets, "networks")] {
        let (one, _, one_d) = find(false, 1, 1, shape, "hit-pass");
        let (many, _, many_d) = find(false, 1, 10_000, shape, "hit-pass");
        let growth = many / one - 1.0;
        section.target(
            &format!("prefix scale ({what})"),
            "10,000 prefixes within 20 % of 1 prefix",
            format!(
                "{:+.1} % per packet ({one:.1} → {many:.1} ns; Δ over no-op {one_d:.1} → \
                 {many_d:.1} ns; IPv4, hit)",
                growth * 100.0
            ),
            growth <= 0.20,
        );
    }
    let (conn_hit, conn_hit_d, plain_hit_d) = over("hit-conn", "hit-pass");
    let (_, _, plain_drop_d) = find_tcp(false, "hit-drop");
    section.target(
        "connection-state hit cost",
        &format!("a connection-state hit within {CONN_HIT_BUDGET_NS:.0} ns of a plain hit"),
        format!(
            "{conn_hit:+.1} ns over the plain rule (Δ over no-op: connection rule \
             {conn_hit_d:.1}, plain pass {plain_hit_d:.1}, plain drop {plain_drop_d:.1} ns; \
             IPv4 TCP, 1 rule)"
        ),
        conn_hit <= CONN_HIT_BUDGET_NS,
    );
    let (conn_miss, conn_miss_d, plain_miss_d) = over("miss-conn", "miss");
    section.target(
        "no-match path with a connection rule",
        &format!(
            "a miss under a connection rule as under a plain rule, within \
             {CONN_MISS_NOISE_NS:.0} ns (noise)"
        ),
        format!(
            "{conn_miss:+.1} ns (Δ over no-op: {conn_miss_d:.1} under the connection rule, \
             {plain_miss_d:.1} under the plain rule; IPv4 TCP, 1 rule, egress)"
        ),
        conn_miss.abs() <= CONN_MISS_NOISE_NS,
    );
    let (back_miss, back_miss_d, plain_back_d) = over("miss-conn-reverse", "miss-reverse");
    let (back_hit, back_hit_d, _) = over("hit-conn-reverse", "miss-reverse");
    section.target(
        "no-match path against a connection rule's way",
        &format!(
            "a packet the other way under a hanging rule, of no tracked connection, as under a \
             plain rule, within {CONN_MISS_NOISE_NS:.0} ns (noise)"
        ),
        format!(
            "{back_miss:+.1} ns (Δ over no-op: {back_miss_d:.1} under the connection rule, \
             {plain_back_d:.1} under the plain rule; a tracked connection's reply \
             {back_hit_d:.1}, {back_hit:+.1}; IPv4 TCP, 1 egress rule, ingress)"
        ),
        back_miss.abs() <= CONN_MISS_NOISE_NS,
    );
    let seeded = {
        let (a, b) = (
            case(false, false, 1, 1, Shape::Hosts, "hit-chance-seeded"),
            case(false, false, 1, 1, Shape::Hosts, "hit-chance"),
        );
        paired_delta(a, b)
    };
    let (_, _, chance_d) = find(false, 1, 1, Shape::Hosts, "hit-chance");
    let (_, _, seeded_d) = find(false, 1, 1, Shape::Hosts, "hit-chance-seeded");
    section.target(
        "seeded draw cost",
        &format!("a seeded draw (seed=) within {SEEDED_BUDGET_NS:.0} ns of an unseeded one"),
        format!(
            "{seeded:+.1} ns (Δ over no-op: drop=30% seed=7 {seeded_d:.1}, drop=30% \
             {chance_d:.1} ns; IPv4 UDP, 1 rule)"
        ),
        seeded <= SEEDED_BUDGET_NS,
    );
    section.data = json!({
        "repeat": repeat,
        "rounds": rounds,
        "noop_ns": median(&all_noop),
        "program": { "xlated_insns": xlated, "jited_bytes": jited },
        "conn": {
            "rule": conn_rule,
            "conn_hit_over_plain_ns": conn_hit,
            "conn_miss_over_plain_ns": conn_miss,
            "conn_miss_reverse_over_plain_ns": back_miss,
            "conn_hit_reverse_over_plain_ns": back_hit,
            "matched_pkts": conn_counters.matched_pkts,
            "conns_seen": conn_counters.conns_seen,
        },
        "seed": {
            "seeded_over_unseeded_ns": seeded,
            "seeded_matched": seeded_counters.matched_pkts,
            "seeded_dropped": seeded_counters.dropped_pkts,
        },
        "cases": Value::Array(json_cases),
    });
    section.tables.push(table);
    section.note(format!(
        "{rounds} rounds of {repeat} runs per case, program and no-op interleaved (order \
         alternating by round). The egress program is {xlated} instructions after the verifier, \
         {jited} bytes JIT-compiled."
    ));
    section.note(
        "A rule set holds at most 64 rules; prefix counts past that are the rules' dst= lists, \
         beside the looked-up host (198.18.0.0/16, 2001:db8::/112). \
         \"hosts\" are /32 and /128 prefixes; \"networks\" are /30 and /126 prefixes, the hit \
         rule's own prefix a network too. Both are in chaos's hash tables by prefix length (a \
         rule set's six longest lengths are hashed; an LPM trie takes only shorter lengths \
         than those, and its walk grows with the prefixes: 10,000 /30s in the trie measured \
         +161 % per packet over one).",
    );
    section.note(format!(
        "Connection rules: the TCP rows carry one 6-byte segment (ACK|PSH) of a connection, \
         under `{conn_rule}` (IPv6: its own address; hit-conn at its port, miss-conn at \
         another) and under the same rule as a plain one, `drop=0` and `drop=100%` (hit-pass, \
         hit-drop, miss). A packet the connection rule matches leaves the matching program by \
         tail call, finds its connection's entry in the connection table (an LRU hash of \
         65,536 entries, as `chaos run` sizes it) and has its trigger checked: within the hour \
         the connection stays open and the packet passes. A rule that hangs or resets also \
         looks up, on the other direction's program, the connection of every TCP and UDP \
         packet: the \"-reverse\" rows run the ingress program on the server's reply \
         (hit-conn-reverse) and on a packet of another connection (miss-conn-reverse), against \
         the plain rule, which leaves ingress before parsing (miss-reverse). \
         Over the last round's hit-conn runs the rule matched {} packets and saw {} \
         connection begin (the entry made by the first run; every later run found it). The \
         targets compare IPv4 Δs taken in the same round.",
        conn_counters.matched_pkts, conn_counters.conns_seen
    ));
    section.note(format!(
        "Seeded draws: hit-chance runs `drop=30%` (one draw from bpf_get_prandom_u32), \
         hit-chance-seeded `drop=30% seed=7`: the packet is counted in its flow's entry of an \
         LRU hash keyed by rule and flow (4,096 entries, as `chaos run` sizes it when a rule \
         is seeded), and its draw mixed from the seed, the flow and that count (splitmix64). \
         Every run is the same flow's next packet; over the last round the seeded rule dropped \
         {} of {} ({:.1} %). The unseeded rules never look the count up.",
        seeded_counters.dropped_pkts,
        seeded_counters.matched_pkts,
        100.0 * seeded_counters.dropped_pkts as f64 / seeded_counters.matched_pkts.max(1) as f64
    ));
    section.note(
        "hit-drop returns the silent-drop redirect; under BPF_PROG_TEST_RUN the redirect is not \
         carried out. hit-delay includes the departure-time stamp and the flow-order map update.",
    );
    section
}
