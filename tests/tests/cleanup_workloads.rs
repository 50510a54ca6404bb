//! `chaos cleanup --all-netns` reaches workloads' namespaces, which have no name under
//! /run/netns: a killed `chaos run --target container=... --attach netlink` leaves its cls_bpf
//! filter on the container's eth0, and cleanup removes it, naming the namespace `pid N`. With a
//! real podman container; run as root through `cargo xtask test`.

use std::{
    os::unix::fs::MetadataExt as _,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use netlab::{ChaosProcess, chaos_bin, podman::Podman};
use serde_json::Value;

/// Both clsact hooks' filters on `eth0` in the network namespace of `pid`, as `tc` lists them.
fn tc_filters(pid: u32) -> String {
    let mut all = String::new();
    for hook in ["ingress", "egress"] {
        let out = Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "tc",
                "filter",
                "show",
                "dev",
                "eth0",
                hook,
            ])
            .output()
            .expect("nsenter (util-linux) and tc (iproute2)");
        assert!(
            out.status.success(),
            "tc filter show in pid {pid}'s namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

/// The lowest PID in the network namespace of `pid`: the one cleanup names it by.
fn lowest_pid_in_netns_of(pid: u32) -> u32 {
    let id = |p: &str| {
        std::fs::metadata(format!("/proc/{p}/ns/net"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let want = id(&pid.to_string()).expect("the container runs");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| id(&p.to_string()) == Some(want))
        .min()
        .expect("at least the container's own process")
}

/// `chaos cleanup --all-netns --output json`: what it removed in namespace `netns`.
///
/// Rootful podman names its containers' namespaces (/run/netns/netns-UUID), Docker and most
/// runtimes do not: cleanup runs in a mount namespace of its own with an empty /run/netns, so
/// it finds the container's namespace only through its processes, as it would Docker's.
fn cleanup_in(netns: &str) -> Vec<Value> {
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-euc",
            "if [ -d /run/netns ]; then mount -t tmpfs chaos-cw /run/netns; fi; exec \"$0\" \"$@\"",
        ])
        .arg(chaos_bin())
        .args(["cleanup", "--all-netns", "--output", "json"])
        .output()
        .expect("unshare (util-linux)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "chaos cleanup: {stderr}");
    let all: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("chaos cleanup's JSON: {e}: {stdout}"));
    // Only ours: another test on this host may leave orphans of its own at any time.
    all.into_iter().filter(|r| r["netns"] == netns).collect()
}

#[test]
fn cleanup_removes_a_killed_runs_filter_from_a_container() {
    let podman = Podman::new("cw");
    let a = podman.run(&format!("chaos-cw-{}", std::process::id()));
    let netns = format!("pid {}", lowest_pid_in_netns_of(a.pid));
    let target = format!("container={}", &a.id[..12]);
    let chaos = ChaosProcess::start(&[
        "--target",
        &target,
        "--attach",
        "netlink",
        "--lease",
        "1s",
        "--rule",
        "drop=100%",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tc_filters(a.pid).contains("chaos_") {
        assert!(
            Instant::now() < deadline,
            "chaos's filter never showed on the container's eth0: {}",
            tc_filters(a.pid)
        );
        sleep(Duration::from_millis(50));
    }

    // A live run's filter is its own: cleanup leaves it.
    assert_eq!(cleanup_in(&netns), Vec::<Value>::new(), "a live run's");
    assert!(
        tc_filters(a.pid).contains("chaos_"),
        "the live run's filter"
    );

    chaos.stop(libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        tc_filters(a.pid).contains("chaos_egress"),
        "the filter was orphaned: {}",
        tc_filters(a.pid)
    );
    // Until its lease (1 s) and the grace run out it still counts as a live chaos's.
    let deadline = killed + Duration::from_secs(10);
    let removed = loop {
        let removed = cleanup_in(&netns);
        if !removed.is_empty() {
            break removed;
        }
        assert!(
            Instant::now() < deadline,
            "cleanup never removed the orphaned filter in netns {netns}: {}",
            tc_filters(a.pid)
        );
        sleep(Duration::from_millis(200));
    };
    eprintln!(
        "kill -9 of chaos run on a container (lease 1 s): cleanup removed {removed:?} after {:?}",
        killed.elapsed()
    );
    assert!(
        removed.iter().all(|r| r["iface"] == "eth0"
            && r["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("cls_bpf chaos_"))),
        "{removed:?}"
    );
    assert!(
        removed
            .iter()
            .any(|r| r["what"] == "cls_bpf chaos_egress (egress)"),
        "{removed:?}"
    );
    let left = tc_filters(a.pid);
    assert!(!left.contains("chaos_"), "nothing of chaos's left: {left}");

    // Nothing left to remove.
    assert_eq!(cleanup_in(&netns), Vec::<Value>::new(), "a second run");
}
