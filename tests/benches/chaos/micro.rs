//! Micro: ns per packet of the real program through BPF_PROG_TEST_RUN, against a no-op TC
//! program from the same object, interleaved round by round.
//!
//! `data`: `{ "repeat": N, "rounds": R, "noop_ns": median, "program": { "xlated_insns",
//! "jited_bytes" }, "cases": [ { "family": "ipv4"|"ipv6", "rules", "prefixes", "path":
//! "hit-pass"|"hit-drop"|"hit-delay"|"miss", "median_ns", "noop_median_ns", "delta_ns",
//! "ratio", "rounds_ns": [..] } ] }`. `delta_ns` is the median over rounds of
//! (program - no-op) taken within each round.

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use chaos_user::datapath::{Datapath, PROGRAM_OBJECT};
use serde_json::{Value, json};

use crate::{
    Ctx,
    report::{Section, Table},
    scale::{self, CLIENT_V4, CLIENT_V6, Fault, HIT_PORT, MISS_PORT, SERVER_V4, SERVER_V6, Shape},
    stats::{f, median},
};

/// What a port + CIDR hit may cost over the no-op, per packet (the hit-path target).
const HIT_BUDGET_NS: f64 = 20.0;

/// A 64-byte-on-the-wire UDP frame (60 bytes without the FCS) for IPv4, 78 bytes for IPv6.
pub fn udp_frame(v6: bool, dport: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    let payload = [0u8; 18];
    let mut l4 = Vec::new();
    l4.extend_from_slice(&40000u16.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(&payload);
    if v6 {
        p.extend_from_slice(&0x86ddu16.to_be_bytes());
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&CLIENT_V6);
        p.extend_from_slice(&SERVER_V6);
    } else {
        p.extend_from_slice(&0x0800u16.to_be_bytes());
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&CLIENT_V4);
        p.extend_from_slice(&SERVER_V4);
    }
    p.extend_from_slice(&l4);
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

/// Average ns per run over `repeat` runs of `prog` on `packet`.
fn ns_per_run(prog: &SchedClassifier, packet: &[u8], repeat: u32) -> f64 {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.repeat = repeat;
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    r.duration.as_nanos() as f64
}

struct Case {
    v6: bool,
    rules: usize,
    prefixes: usize,
    shape: Shape,
    path: &'static str,
    fault: Fault,
    dport: u16,
    /// Per round: (program ns, no-op ns).
    samples: Vec<(f64, f64)>,
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
            for (path, fault, dport) in [
                ("hit-pass", Fault::Pass, HIT_PORT),
                ("miss", Fault::Pass, MISS_PORT),
                ("hit-drop", Fault::Drop, HIT_PORT),
                ("hit-delay", Fault::Delay, HIT_PORT),
            ] {
                cases.push(Case {
                    v6,
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
    let mut dp = Datapath::load().expect("load chaos's program (run as root)");
    let mut noop_obj = load_noop();
    let frames: Vec<Vec<u8>> = cases.iter().map(|c| udp_frame(c.v6, c.dport)).collect();
    // Cases sharing a rule set run back to back, so each set is written once per round.
    for round in 0..rounds {
        let mut applied: Option<(bool, usize, usize, Shape, Fault)> = None;
        for (case, frame) in cases.iter_mut().zip(&frames) {
            let key = (case.v6, case.rules, case.prefixes, case.shape, case.fault);
            if applied != Some(key) {
                dp.apply(&scale::rule_set_shaped(
                    case.rules,
                    case.prefixes,
                    case.fault,
                    case.v6,
                    case.shape,
                ))
                .expect("write the rule set");
                applied = Some(key);
            }
            // Alternate which goes first, so a drift within the pair cancels over rounds.
            let prog = dp
                .program(chaos_user::rule::Direction::Egress)
                .expect("egress program");
            let (p, n) = if round % 2 == 0 {
                let p = ns_per_run(prog, frame, repeat);
                (p, ns_per_run(noop(&mut noop_obj), frame, repeat))
            } else {
                let n = ns_per_run(noop(&mut noop_obj), frame, repeat);
                let prog = dp.program(chaos_user::rule::Direction::Egress).unwrap();
                (ns_per_run(prog, frame, repeat), n)
            };
            case.samples.push((p, n));
        }
        eprintln!("bench:   micro round {} of {rounds}", round + 1);
    }
    let info = dp
        .program(chaos_user::rule::Direction::Egress)
        .unwrap()
        .info()
        .expect("program info");
    let xlated = info.size_translated().map_or(0, |b| b / 8);
    let jited = info.size_jitted();
    let mut table = Table::new(
        "Median over rounds; Δ is the median of (program − no-op) within each round.",
        &[
            "family", "rules", "prefixes", "kind", "path", "ns/pkt", "no-op ns", "Δ ns", "ratio",
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
        let kind = match c.shape {
            Shape::Hosts => "hosts",
            Shape::Nets => "networks",
        };
        table.row(vec![
            family.to_owned(),
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
            "family": family, "rules": c.rules, "prefixes": c.prefixes, "kind": kind, "path": c.path,
            "median_ns": p, "noop_median_ns": n, "delta_ns": d, "ratio": p / n,
            "rounds_ns": c.samples.iter().map(|s| s.0).collect::<Vec<_>>(),
        }));
    }
    let find = |v6: bool, rules: usize, prefixes: usize, shape: Shape, path: &str| {
        summary(
            cases
                .iter()
                .find(|c| {
                    c.v6 == v6
                        && c.rules == rules
                        && c.prefixes == prefixes
                        && c.shape == shape
                        && c.path == path
                })
                .expect("case"),
        )
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
    section.data = json!({
        "repeat": repeat,
        "rounds": rounds,
        "noop_ns": median(&all_noop),
        "program": { "xlated_insns": xlated, "jited_bytes": jited },
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
    section.note(
        "hit-drop returns the silent-drop redirect; under BPF_PROG_TEST_RUN the redirect is not \
         carried out. hit-delay includes the departure-time stamp and the flow-order map update.",
    );
    section
}
