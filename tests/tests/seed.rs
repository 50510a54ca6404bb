//! Replayable randomness (`seed=N`), seen at the application: which datagrams, by the index
//! each carries, arrive. Run as root through `cargo xtask test`.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    thread,
    time::Duration,
};

use chaos_common::{
    rules::{FAMILY_V4, FlowKey, PROB_ONE, PROTO_UDP},
    seed::{lands, packet_draws},
};
use netlab::{
    CLIENT_V4, ChaosProcess, IFACE, Lab, SERVER_V4, UdpCounter, assert_binomial, heavy_traffic,
    in_netns, monotonic_ns,
};
use serde_json::Value;

const DATAGRAMS: u64 = 5_000;

/// The client's source port: fixed, so that every run's datagrams are one and the same flow.
const SPORT: u16 = 40_123;
const DPORT: u16 = 9000;

const RULE: &str = "proto=udp dport=9000 dst=198.18.0.2/32 drop=30%";

/// What one run of chaos did to the datagrams.
struct Run {
    /// Indexes of the datagrams that never arrived.
    lost: BTreeSet<u64>,
    /// The rule's JSON report.
    report: Value,
    stderr: String,
}

/// Sends DATAGRAMS from `CLIENT_V4:SPORT` while chaos runs `rule` on the client's egress.
fn run(lab: &Lab, rule: &str, extra: &[&str]) -> Run {
    let dst: SocketAddr = (SERVER_V4, DPORT).into();
    let rx = UdpCounter::start(&lab.b, dst);
    let mut args = vec![
        "--netns", &lab.a, "--iface", IFACE, "--rule", rule, "--output", "json",
    ];
    args.extend_from_slice(extra);
    let chaos = ChaosProcess::start(&args);
    let send_errors = send_from_fixed_port(&lab.a, dst);
    let received = rx.finish_after(netlab::QUIET);
    let exit = chaos.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "chaos failed: {}", exit.stderr);
    assert_eq!(send_errors, 0, "loss must be silent to the sender");
    assert_eq!(
        received.errors, 0,
        "the receiver's kernel dropped datagrams: loss not attributable"
    );
    let arrived: BTreeSet<u64> = received.arrivals.iter().map(|a| a.seq).collect();
    let lost = (0..DATAGRAMS).filter(|i| !arrived.contains(i)).collect();
    let report = exit.json().swap_remove(0);
    assert_eq!(report["matched_packets"], DATAGRAMS, "{report}");
    Run {
        lost,
        report,
        stderr: exit.stderr,
    }
}

/// As `netlab::udp_send` (index, send time, padding; paced so the receiver keeps up), from a
/// fixed source port. Returns the send errors.
fn send_from_fixed_port(ns: &str, dst: SocketAddr) -> u64 {
    in_netns(ns, move || {
        let sock = UdpSocket::bind((CLIENT_V4, SPORT)).expect("bind the client's fixed port");
        let mut buf = [0u8; 64];
        let mut errors = 0;
        for seq in 0..DATAGRAMS {
            buf[..8].copy_from_slice(&seq.to_be_bytes());
            buf[8..16].copy_from_slice(&monotonic_ns().to_be_bytes());
            if sock.send_to(&buf, dst).is_err() {
                errors += 1;
            }
            if seq % 200 == 199 {
                thread::sleep(Duration::from_micros(500));
            }
        }
        errors
    })
}

/// The datagrams `seed` drops at `p`, as `chaos_common::seed` says the kernel draws: the
/// first draw of datagram `i` of the flow decides its loss.
fn predicted(seed: u64, p: f64) -> BTreeSet<u64> {
    let mut flow = FlowKey {
        sport: SPORT,
        dport: DPORT,
        proto: PROTO_UDP as u8,
        family: FAMILY_V4 as u8,
        ..FlowKey::default()
    };
    flow.src[..4].copy_from_slice(&CLIENT_V4.octets());
    flow.dst[..4].copy_from_slice(&SERVER_V4.octets());
    let p = (p * f64::from(PROB_ONE)).round() as u32;
    (0..DATAGRAMS)
        .filter(|i| lands(packet_draws(seed, &flow, *i).next_u32(), p))
        .collect()
}

#[test]
fn the_same_seed_drops_the_same_datagrams() {
    let _traffic = heavy_traffic();
    let lab = Lab::new("seed");
    let seven = format!("{RULE} seed=7");
    let first = run(&lab, &seven, &[]);
    assert_binomial("seed=7", first.lost.len() as u64, DATAGRAMS, 0.3);
    assert_eq!(first.report["seed"], 7, "{}", first.report);
    assert_eq!(
        first.lost,
        predicted(7, 0.3),
        "the kernel's draws are chaos_common::seed's"
    );
    let again = run(&lab, &seven, &[]);
    assert_eq!(
        again.lost, first.lost,
        "seed=7 twice: the same datagrams lost"
    );
    let eight = run(&lab, &format!("{RULE} seed=8"), &[]);
    assert_binomial("seed=8", eight.lost.len() as u64, DATAGRAMS, 0.3);
    let shared = first.lost.intersection(&eight.lost).count() as u64;
    // Independent draws share 30 % of 30 %: about 450 of 5,000, nowhere near all 1,500.
    assert_binomial("lost under both seeds", shared, DATAGRAMS, 0.09);
    eprintln!(
        "seed=7 lost {} twice, seed=8 {}, {shared} in common",
        first.lost.len(),
        eight.lost.len()
    );
}

#[test]
fn a_run_without_a_seed_prints_the_one_that_replays_it() {
    let _traffic = heavy_traffic();
    let lab = Lab::new("replay");
    let first = run(&lab, RULE, &[]);
    assert_binomial("picked seed", first.lost.len() as u64, DATAGRAMS, 0.3);
    let seed = first.report["seed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seed in {}", first.report));
    let line = format!("chaos: seed {seed} (replay with --seed {seed})");
    assert!(first.stderr.contains(&line), "{line} in {}", first.stderr);
    assert_eq!(
        first.report["spec"].as_str(),
        Some(format!("{RULE} seed={seed}").as_str())
    );
    let replay = run(&lab, RULE, &["--seed", &seed.to_string()]);
    assert_eq!(replay.report["seed"], seed);
    assert_eq!(
        replay.lost, first.lost,
        "--seed {seed}: the same datagrams lost"
    );
}
