//! Control plane: how soon a rule change reaches packets.
//!
//! Through the daemon: a sender paces datagrams every 50 µs and records each send time; an
//! experiment with `drop=100%` is created over the API socket, then deleted. The time to the
//! first datagram lost after the request went out, and to the first delivered after the delete,
//! is what a user waits; its resolution is the 50 µs pacing. Directly: `Datapath::apply` (write
//! the idle generation, flip) timed over many alternating rule sets.
//!
//! `data`: `{ "rounds": R, "api": { "create_to_first_drop_us": [..], "delete_to_first_pass_us":
//! [..], "request_us": [..], "median_create_us", "median_delete_us" }, "apply": { "runs",
//! "median_us", "p99_us" } }`.

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chaos_user::{client::Client, datapath::Datapath};
use hyper::Method;
use netlab::{Daemon, IFACE, Lab, SERVER_V4, UdpCounter, monotonic_ns, spawn_in_netns};
use serde_json::json;

use crate::{
    Ctx,
    report::{Section, Table},
    scale::{self, Fault},
    stats::{f, median, min_max, percentile},
};

const EVERY: Duration = Duration::from_micros(50);

/// Sends a datagram every 50 µs (busy-waiting) until `stop` or `max` datagrams; returns each
/// one's send time (CLOCK_MONOTONIC ns), indexed by sequence number.
fn paced_sender(
    ns: &str,
    dst: SocketAddr,
    max: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    spawn_in_netns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = Vec::with_capacity(max as usize);
        let start = Instant::now();
        let mut buf = [0u8; 32];
        for seq in 0..max {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = start + EVERY * seq as u32;
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            let now = monotonic_ns();
            buf[..8].copy_from_slice(&seq.to_be_bytes());
            buf[8..16].copy_from_slice(&now.to_be_bytes());
            sock.send_to(&buf, dst).expect("send");
            sent.push(now);
        }
        sent
    })
}

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("control", "Control plane: rule change to first packet");
    let rounds: usize = ctx.scale(10, 3);
    let lab = Lab::new("bench-ctl");
    let daemon = Daemon::start(&["--lease", "30s"]);
    let client = Client::new(&daemon.socket);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let body = json!({
        "name": "bench", "iface": IFACE, "netns": lab.a,
        "rules": ["proto=udp dport=9000 drop=100%"],
    });
    let (mut create_us, mut delete_us, mut request_us) = (Vec::new(), Vec::new(), Vec::new());
    let cold;
    let round_trip = |create: &mut Vec<f64>, delete: &mut Vec<f64>, request: &mut Vec<f64>| {
        let rx = UdpCounter::start(&lab.b, dst);
        let stop = Arc::new(AtomicBool::new(false));
        // 2 s of datagrams at most: every loop is bounded.
        let sender = paced_sender(&lab.a, dst, 40_000, stop.clone());
        std::thread::sleep(Duration::from_millis(200));
        let t_create = monotonic_ns();
        runtime
            .block_on(client.call(Method::POST, "/v1/experiments", Some(&body)))
            .expect("create");
        request.push((monotonic_ns() - t_create) as f64 / 1e3);
        std::thread::sleep(Duration::from_millis(300));
        let t_delete = monotonic_ns();
        runtime
            .block_on(client.call(Method::DELETE, "/v1/experiments/bench", None))
            .expect("delete");
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().expect("sender");
        let got: HashSet<u64> = rx
            .finish_after(Duration::from_millis(100))
            .arrivals
            .iter()
            .map(|a| a.seq)
            .collect();
        let lost = (0..sent.len() as u64)
            .find(|s| !got.contains(s))
            .expect("the rule dropped datagrams");
        let back = (lost..sent.len() as u64)
            .find(|s| got.contains(s) && sent[*s as usize] >= t_delete)
            .expect("datagrams flowed again after the delete");
        create.push((sent[lost as usize] as f64 - t_create as f64) / 1e3);
        delete.push((sent[back as usize] as f64 - t_delete as f64) / 1e3);
    };
    {
        // Cold: the interface has no experiment yet, so the create loads and attaches the
        // program and the delete detaches it.
        let (mut c, mut d, mut r) = (Vec::new(), Vec::new(), Vec::new());
        round_trip(&mut c, &mut d, &mut r);
        cold = Some((c[0], d[0], r[0]));
    }
    // Warm: another experiment keeps the program attached; only the rule set changes.
    let keep = json!({
        "name": "keep", "iface": IFACE, "netns": lab.a, "rules": ["proto=udp dport=9999 drop=0"],
    });
    runtime
        .block_on(client.call(Method::POST, "/v1/experiments", Some(&keep)))
        .expect("create the keeper");
    for _ in 0..rounds {
        round_trip(&mut create_us, &mut delete_us, &mut request_us);
    }
    let (cold_create, cold_delete, cold_request) = cold.expect("cold round");
    let exit = daemon.stop();
    assert_eq!(exit.code, Some(0), "daemon: {}", exit.stderr);
    drop(lab);

    // Directly: alternate two rule sets so every apply changes something.
    let runs: usize = ctx.scale(2000, 200);
    let mut dp = Datapath::load().expect("load chaos's program");
    let sets = [
        scale::rule_set(1, 1, Fault::Drop, false),
        scale::rule_set(8, 8, Fault::Pass, false),
    ];
    let mut apply_us = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        dp.apply(&sets[i % 2]).expect("apply");
        apply_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // Compiling a two-rule set (what the daemon does before every apply).
    let rules: Vec<chaos_user::rule::Rule> = [
        "proto=udp dport=9999 drop=0",
        "proto=udp dport=9000 drop=100%",
    ]
    .iter()
    .map(|r| r.parse().unwrap())
    .collect();
    let mut compile_us = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(
            chaos_user::ruleset::RuleSetBuilder::new(&chaos_user::guard::Guard::default())
                .rules(rules.iter().cloned())
                .build()
                .unwrap(),
        );
        compile_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (mc, md) = (median(&create_us), median(&delete_us));
    let mut table = Table::new("", &["step", "median µs", "p99 / max µs", "samples"]);
    let max = |v: &[f64]| min_max(v).1;
    table.row(vec![
        "API create → first datagram lost".into(),
        f(mc, 0),
        f(max(&create_us), 0),
        rounds.to_string(),
    ]);
    table.row(vec![
        "API delete → first datagram through".into(),
        f(md, 0),
        f(max(&delete_us), 0),
        rounds.to_string(),
    ]);
    table.row(vec![
        "API request round trip (create)".into(),
        f(median(&request_us), 0),
        f(max(&request_us), 0),
        rounds.to_string(),
    ]);
    table.row(vec![
        "cold create (load + attach) → first datagram lost".into(),
        f(cold_create, 0),
        "-".into(),
        "1".into(),
    ]);
    table.row(vec![
        "cold delete (detach) → first datagram through".into(),
        f(cold_delete, 0),
        "-".into(),
        "1".into(),
    ]);
    table.row(vec![
        "compile a two-rule set".into(),
        f(median(&compile_us), 1),
        f(percentile(&compile_us, 0.99), 1),
        runs.to_string(),
    ]);
    table.row(vec![
        "Datapath::apply (write idle generation, flip)".into(),
        f(median(&apply_us), 1),
        f(percentile(&apply_us, 0.99), 1),
        runs.to_string(),
    ]);
    section.target(
        "rule change latency",
        "under 1 ms from API write to the first packet affected",
        format!(
            "median {mc:.0} µs, worst {:.0} µs over {rounds} creates",
            max(&create_us)
        ),
        mc < 1000.0,
    );
    section.data = json!({
        "rounds": rounds,
        "api": {
            "create_to_first_drop_us": create_us, "delete_to_first_pass_us": delete_us,
            "request_us": request_us, "median_create_us": mc, "median_delete_us": md,
            "cold": { "create_to_first_drop_us": cold_create, "delete_to_first_pass_us": cold_delete, "request_us": cold_request },
        },
        "apply": { "runs": runs, "median_us": median(&apply_us), "p99_us": percentile(&apply_us, 0.99) },
        "compile": { "runs": runs, "median_us": median(&compile_us), "p99_us": percentile(&compile_us, 0.99) },
    });
    section.tables.push(table);
    section.note(format!(
        "Warm rounds ({rounds}): another experiment keeps the program attached, so a create or \
         delete only writes a rule set. The cold round is the first experiment on an idle \
         interface: the daemon loads and attaches the program then (and detaches it after the \
         last one). Send times have the sender's 50 µs pacing as resolution."
    ));
    section
}
