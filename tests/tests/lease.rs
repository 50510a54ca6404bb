//! Faults never outlive their controller: the lease and expiry enforced by the program itself,
//! and the clean-up of what a killed chaos left behind. Measured with real traffic.

use std::{
    net::SocketAddr, process::Command, sync::atomic::Ordering, thread::sleep, time::Duration,
};

use chaos_user::{client::Client, recover::LEASE_GRACE};
use hyper::Method;
use netlab::{
    ChaosProcess, Daemon, IFACE, Lab, QUIET, SERVER_V4, UdpCounter, heavy_traffic, monotonic_ns,
    udp_send_to, udp_send_until,
};
use serde_json::json;

const DATAGRAM_EVERY: Duration = Duration::from_millis(10);

/// Datagrams sent before the event, every one of which must be lost: the fault is live.
const BEFORE: u64 = 30;

/// Sends a datagram every 10 ms to `port`: [`BEFORE`] of them, then runs `event`, then more until
/// one gets through, for `for_` at most. Returns when `event` returned and when the first
/// datagram that got through was sent (None: none did), both by `monotonic_ns`.
fn first_through(lab: &Lab, port: u16, for_: Duration, event: impl FnOnce()) -> (u64, Option<u64>) {
    let dst: SocketAddr = (SERVER_V4, port).into();
    let rx = UdpCounter::start(&lab.b, dst);
    assert_eq!(
        udp_send_to(&lab.a, &[dst], BEFORE, 32, Some(DATAGRAM_EVERY)),
        0
    );
    event();
    let event_done = monotonic_ns();
    let count = (for_.as_millis() / DATAGRAM_EVERY.as_millis()) as u64;
    let arrived = rx.arrived();
    let through = move || arrived.load(Ordering::Relaxed) > 0;
    let (errors, _) = udp_send_until(&lab.a, &[dst], count, 32, Some(DATAGRAM_EVERY), through);
    assert_eq!(errors, 0);
    let r = rx.finish_after(QUIET);
    let before: Vec<_> = r
        .arrivals
        .iter()
        .filter(|a| a.sent_ns < event_done)
        .collect();
    assert!(
        before.is_empty(),
        "got through before the event: {before:?}"
    );
    (event_done, r.arrivals.iter().map(|a| a.sent_ns).min())
}

/// How long after `event` returned traffic first got through, to within one datagram's 10 ms.
fn recovery_after(lab: &Lab, port: u16, for_: Duration, event: impl FnOnce()) -> Option<Duration> {
    let (event_done, first) = first_through(lab, port, for_, event);
    Some(Duration::from_nanos(first? - event_done))
}

fn tc_filters(ns: &str) -> String {
    let mut all = String::new();
    for hook in ["ingress", "egress"] {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "filter", "show", "dev", IFACE, hook,
            ])
            .output()
            .unwrap();
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

#[test]
fn killed_daemon_stops_injecting_at_once() {
    // One at a time: a starting daemon cleans every namespace, orphans of other tests included.
    let _serial = heavy_traffic();
    let lab = Lab::new("lkill");
    let d = Daemon::start(&["--lease", "2s"]);
    let body = json!({ "name": "cut", "iface": IFACE, "netns": lab.a, "rules": ["proto=udp dport=9000 drop=100%"] });
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Client::new(&d.socket).call(Method::POST, "/v1/experiments", Some(&body)))
        .unwrap();
    // Measured from when the daemon is dead and reaped.
    let back = recovery_after(&lab, 9000, Duration::from_secs(4), || {
        d.kill();
    })
    .expect("traffic flows again");
    eprintln!("kill -9 of the daemon (TCX, lease 2 s): traffic flowed again after {back:?}");
    assert!(back <= Duration::from_secs(3), "{back:?} > lease + 1 s");
}

/// A netlink cls_bpf filter outlives its process: the lease is what ends its faults.
#[test]
fn killed_run_with_an_orphaned_filter_stops_at_the_lease() {
    // One at a time: a starting daemon cleans every namespace, orphans of other tests included.
    let _serial = heavy_traffic();
    let lab = Lab::new("lorph");
    let chaos = ChaosProcess::start(&[
        "--netns",
        &lab.a,
        "--iface",
        IFACE,
        "--attach",
        "netlink",
        "--lease",
        "1s",
        "--rule",
        "proto=udp dport=9000 drop=100%",
    ]);
    // Measured from when chaos is dead and reaped.
    let back = recovery_after(&lab, 9000, Duration::from_secs(4), || {
        chaos.stop(libc::SIGKILL);
    })
    .expect("traffic flows again");
    eprintln!(
        "kill -9 of chaos run (netlink filter orphaned, lease 1 s): traffic flowed again after {back:?}"
    );
    assert!(back <= Duration::from_secs(2), "{back:?} > lease + 1 s");
    assert!(
        tc_filters(&lab.a).contains("chaos_egress"),
        "the filter was orphaned"
    );
    // Its lease ran out (traffic flows); past the grace it is nobody's.
    sleep(LEASE_GRACE);
    // chaos cleanup finds it, says so, and removes it.
    let out = netlab::chaos_output(&["cleanup", "--all-netns"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "removed cls_bpf chaos_egress (egress) on {IFACE} in netns {}",
            lab.a
        )),
        "{}",
        out.stdout
    );
    assert!(
        !tc_filters(&lab.a).contains("chaos_"),
        "nothing of ours left"
    );
}

/// A frozen daemon cannot extend an experiment: the program ends it at its expiry time.
#[test]
fn stopped_daemon_still_ends_the_experiment_on_time() {
    // One at a time: a starting daemon cleans every namespace, orphans of other tests included.
    let _serial = heavy_traffic();
    let lab = Lab::new("lstop");
    // A lease far longer than the experiment: only the expiry in the map can end it.
    let d = Daemon::start(&["--lease", "60s"]);
    let body = json!({
        "name": "short", "iface": IFACE, "netns": lab.a, "duration": "2s",
        "rules": ["proto=udp dport=9000 drop=100%"],
    });
    let applied = monotonic_ns();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Client::new(&d.socket).call(Method::POST, "/v1/experiments", Some(&body)))
        .unwrap();
    d.signal(libc::SIGSTOP);
    let (_, first) = first_through(&lab, 9000, Duration::from_secs(4), || {});
    d.signal(libc::SIGCONT);
    let first = first.expect("traffic flows again while the daemon is stopped");
    let since_apply = Duration::from_nanos(first - applied);
    eprintln!(
        "SIGSTOP'd daemon, duration=2s: traffic flowed again {since_apply:?} after the experiment was applied"
    );
    assert!(
        (Duration::from_millis(1800)..=Duration::from_millis(2600)).contains(&since_apply),
        "ended {since_apply:?} after apply, want about 2 s"
    );
    assert_eq!(d.stop().code, Some(0));
}

#[test]
fn a_new_daemon_removes_what_a_killed_one_left() {
    // One at a time: a starting daemon cleans every namespace, orphans of other tests included.
    let _serial = heavy_traffic();
    let lab = Lab::new("lrec");
    // A killed chaos run with a netlink filter leaves it behind.
    let chaos = ChaosProcess::start(&[
        "--netns",
        &lab.a,
        "--iface",
        IFACE,
        "--attach",
        "netlink",
        "--lease",
        "1s",
        "--rule",
        "proto=udp dport=9000 drop=100%",
    ]);
    chaos.stop(libc::SIGKILL);
    assert!(tc_filters(&lab.a).contains("chaos_egress"), "left behind");
    // Until its lease (and the grace) runs out it could be a live chaos's: wait that out.
    sleep(Duration::from_secs(1) + LEASE_GRACE + Duration::from_millis(100));
    let d = Daemon::start(&[]);
    assert!(
        !tc_filters(&lab.a).contains("chaos_"),
        "removed when the daemon started"
    );
    let exit = d.stop();
    assert!(
        exit.stderr.contains("removed a leftover"),
        "and said so: {}",
        exit.stderr
    );
    let again = netlab::chaos_output(&["cleanup", "--all-netns"]);
    assert!(
        !again.stdout.contains(&lab.a),
        "nothing more to find: {}",
        again.stdout
    );
}

fn tc_qdiscs(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "qdisc", "show", "dev", IFACE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Datagrams of `count` sent to `port`, 5 ms apart, that arrived.
fn arrived_of(lab: &Lab, port: u16, count: u64) -> u64 {
    let dst: SocketAddr = (SERVER_V4, port).into();
    let rx = UdpCounter::start(&lab.b, dst);
    let errors = udp_send_to(&lab.a, &[dst], count, 32, Some(Duration::from_millis(5)));
    assert_eq!(errors, 0, "loss is silent");
    rx.finish().0
}

/// A running `chaos run --attach netlink` is nobody's leftover: `chaos cleanup` and a starting
/// daemon (which cleans every named namespace, other tests' included) leave its filter, and its
/// faults, alone. The lease in its program's config map says it is alive.
#[test]
fn a_live_netlink_run_survives_cleanup_and_a_new_daemon() {
    // One at a time: a starting daemon cleans every namespace, orphans of other tests included.
    let _serial = heavy_traffic();
    let lab = Lab::new("llive");
    let clsact_before = tc_qdiscs(&lab.a).contains("clsact");
    let chaos = ChaosProcess::start(&[
        "--netns",
        &lab.a,
        "--iface",
        IFACE,
        "--attach",
        "netlink",
        "--lease",
        "1s",
        "--rule",
        "proto=udp dport=9000 drop=100%",
    ]);
    // Past the first lease: only the run's renewals keep it live now.
    sleep(Duration::from_millis(1500));
    let cleanup = netlab::chaos_output(&["cleanup", "--all-netns"]);
    assert_eq!(cleanup.code, Some(0), "{}", cleanup.stderr);
    assert!(
        !cleanup.stdout.contains(&lab.a) && !cleanup.stderr.contains(&lab.a),
        "chaos cleanup touched the live run: {}{}",
        cleanup.stdout,
        cleanup.stderr
    );
    let d = Daemon::start(&[]);
    let dropped = arrived_of(&lab, 9000, 300);
    let other = arrived_of(&lab, 9001, 100);
    let daemon = d.stop();
    eprintln!(
        "live netlink run after chaos cleanup and a new daemon: {dropped} of 300 to the dropped port arrived, {other} of 100 to another"
    );
    assert!(
        !daemon.stderr.contains(&lab.a),
        "the daemon touched the live run: {}",
        daemon.stderr
    );
    assert_eq!(dropped, 0, "the run still drops everything");
    assert_eq!(other, 100, "and only what it matches");
    let during = tc_filters(&lab.a);
    assert!(during.contains("chaos_egress"), "still attached: {during}");
    let exit = chaos.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(
        !tc_filters(&lab.a).contains("chaos_"),
        "the run removed its own filter"
    );
    assert_eq!(
        tc_qdiscs(&lab.a).contains("clsact"),
        clsact_before,
        "and the clsact it added"
    );
}
