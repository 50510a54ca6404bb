//! Faults never outlive their controller: the lease and expiry enforced by the program itself,
//! and the clean-up of what a killed chaos left behind. Measured with real traffic.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use chaos_user::client::Client;
use hyper::Method;
use netlab::{ChaosProcess, Daemon, IFACE, Lab, SERVER_V4, UdpCounter, heavy_traffic, udp_send_to};
use serde_json::json;

const DATAGRAM_EVERY: Duration = Duration::from_millis(10);

/// Sends a datagram every 10 ms for `for_` while `during` runs at the start, and returns how long
/// after `during` returned traffic first got through (None: it never did).
fn recovery_after(lab: &Lab, port: u16, for_: Duration, during: impl FnOnce()) -> Option<Duration> {
    let dst: SocketAddr = (SERVER_V4, port).into();
    let rx = UdpCounter::start(&lab.b, dst);
    let count = (for_.as_millis() / DATAGRAM_EVERY.as_millis()) as u64;
    let ns = lab.a.clone();
    let sender =
        std::thread::spawn(move || udp_send_to(&ns, &[dst], count, 32, Some(DATAGRAM_EVERY)));
    // Let a few datagrams go (and be dropped) before the event.
    std::thread::sleep(Duration::from_millis(300));
    let event_seq = 30;
    during();
    assert_eq!(sender.join().unwrap(), 0);
    let r = rx.finish_after(Duration::from_millis(200));
    let first = r.arrivals.iter().map(|a| a.seq).min()?;
    Some(DATAGRAM_EVERY * first.saturating_sub(event_seq) as u32)
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
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
    let pid = d.pid();
    let back = recovery_after(&lab, 9000, Duration::from_secs(4), || sigkill(pid))
        .expect("traffic flows again");
    eprintln!("kill -9 of the daemon (TCX, lease 2 s): traffic flowed again after {back:?}");
    assert!(back <= Duration::from_secs(3), "{back:?} > lease + 1 s");
    drop(d);
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
    let pid = chaos.pid();
    let back = recovery_after(&lab, 9000, Duration::from_secs(4), || sigkill(pid))
        .expect("traffic flows again");
    eprintln!(
        "kill -9 of chaos run (netlink filter orphaned, lease 1 s): traffic flowed again after {back:?}"
    );
    assert!(back <= Duration::from_secs(2), "{back:?} > lease + 1 s");
    drop(chaos);
    assert!(
        tc_filters(&lab.a).contains("chaos_egress"),
        "the filter was orphaned"
    );
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
    let applied = Instant::now();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Client::new(&d.socket).call(Method::POST, "/v1/experiments", Some(&body)))
        .unwrap();
    d.signal(libc::SIGSTOP);
    let stopped_at = applied.elapsed();
    let back = recovery_after(&lab, 9000, Duration::from_secs(4), || {});
    d.signal(libc::SIGCONT);
    let back = back.expect("traffic flows again while the daemon is stopped");
    // recovery_after counts from 300 ms into its run.
    let since_apply = stopped_at + Duration::from_millis(300) + back;
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
        "--rule",
        "proto=udp dport=9000 drop=100%",
    ]);
    sigkill(chaos.pid());
    drop(chaos);
    assert!(tc_filters(&lab.a).contains("chaos_egress"), "left behind");
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
