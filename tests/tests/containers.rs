//! Workloads as targets, with real containers: podman (runc, cgroupfs, netavark) on a network
//! inside 198.18.0.0/15, an image from busybox-static, clients outside the containers (this
//! test process, in the host's namespace). Run as root through `cargo xtask test`.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use netlab::{ChaosProcess, READY, assert_binomial, chaos_bin, heavy_traffic, podman::Podman};
use serde_json::Value;

/// `connect()` from the host to `ip:port`: the error kind, or None when it connected.
fn connect(ip: &str, port: u16) -> Option<ErrorKind> {
    let dst: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&dst, Duration::from_secs(3))
        .err()
        .map(|e| e.kind())
}

/// `chaos run --target TARGET` with `rules`, DOCKER_HOST pointing at `api` when given.
fn chaos(target: &str, rules: &[&str], api: Option<&std::path::Path>) -> ChaosProcess {
    let mut command = Command::new(chaos_bin());
    command.args(["run", "--target", target, "--output", "json"]);
    for r in rules {
        command.args(["--rule", r]);
    }
    if let Some(socket) = api {
        command.env("DOCKER_HOST", format!("unix://{}", socket.display()));
    }
    ChaosProcess::spawn_command(command, READY)
}

/// The cgroup directory of a process: its v2 path under the unified hierarchy (mounted at
/// /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
fn cgroup_dir(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let dir = format!("{root}{path}");
        if std::path::Path::new(&dir).join("cgroup.procs").exists() {
            return dir;
        }
    }
    panic!("no cgroup directory for {path}");
}

/// Every way to name a container finds it (ID prefix, name through podman's Docker API, PID,
/// cgroup, namespace file), attaches to its eth0 (its default route's interface), refuses
/// connections to it from outside while a second container is untouched, and leaves nothing
/// once stopped.
#[test]
fn a_container_by_id_name_pid_cgroup_and_netns_file() {
    let mut podman = Podman::new("tgt");
    let me = std::process::id();
    let a = podman.run(&format!("chaos-a-{me}"));
    let b = podman.run(&format!("chaos-b-{me}"));
    let api = podman.api();
    assert_eq!(
        connect(&a.ip, 8080),
        None,
        "the container serves before chaos"
    );
    for target in [
        format!("container={}", &a.id[..12]),
        format!("container={}", a.name),
        format!("pid={}", a.pid),
        format!("cgroup={}", cgroup_dir(a.pid)),
        format!("netns=/proc/{}/ns/net", a.pid),
    ] {
        let c = chaos(
            &target,
            &["dir=ingress proto=tcp dport=8080 refuse=yes"],
            Some(&api),
        );
        let ready = c.stderr_lines.last().cloned().unwrap_or_default();
        assert!(ready.contains("injecting on eth0"), "{target}: {ready}");
        let (to_a, to_b) = (connect(&a.ip, 8080), connect(&b.ip, 8080));
        let exit = c.stop(libc::SIGINT);
        assert_eq!(exit.code, Some(0), "{target}: {}", exit.stderr);
        let report = &exit.json()[0];
        assert_eq!(
            to_a,
            Some(ErrorKind::ConnectionRefused),
            "{target}: refused by chaos ({ready}; container pid {}; {report})",
            a.pid
        );
        assert_eq!(to_b, None, "{target}: the other container");
        assert_eq!(report["conns_refused"], 1, "{target}: {report}");
        assert_eq!(connect(&a.ip, 8080), None, "{target}: restored after");
    }
}

/// Loss measured by a client outside the container: 2,000 pings from the host, the replies
/// dropped at 30 % on the container's egress, within 4σ; the second container loses none.
#[test]
fn loss_on_a_container_measured_from_outside() {
    let _traffic = heavy_traffic();
    let podman = Podman::new("loss");
    let me = std::process::id();
    let a = podman.run(&format!("chaos-la-{me}"));
    let b = podman.run(&format!("chaos-lb-{me}"));
    let c = chaos(
        &format!("container={}", &a.id[..12]),
        // Only what goes to the host: the container's own IPv6 chatter (router solicitations)
        // is not the pings'.
        &[&format!("dst={}/32 drop=30%", podman.gateway)],
        None,
    );
    let received = |ip: &str| {
        let out = Command::new("ping")
            .args(["-c", "2000", "-i", "0.002", "-W", "1", "-q", ip])
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split(", ")
            .find_map(|p| p.strip_suffix(" received"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("ping said: {text}"))
    };
    let (got_a, got_b) = (received(&a.ip), received(&b.ip));
    let exit = c.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert_binomial("drop=30% on a container", 2000 - got_a, 2000, 0.3);
    assert_eq!(got_b, 2000, "the other container loses nothing");
    let report: &Value = &exit.json()[0];
    assert_eq!(report["dropped_packets"], 2000 - got_a, "{report}");
}

/// A container stopped mid-experiment: chaos notices, reports the target gone, prints its
/// counters and exits, leaving nothing behind.
#[test]
fn a_stopped_container_ends_the_run_and_leaves_nothing() {
    let podman = Podman::new("gone");
    let a = podman.run(&format!("chaos-g-{}", std::process::id()));
    let c = chaos(
        &format!("pid={}", a.pid),
        &["proto=tcp dport=8080 drop=100%"],
        None,
    );
    podman.remove(&a);
    let exit = c.wait(Duration::from_secs(10));
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    assert!(
        exit.stderr.contains(&format!(
            "pid {} is gone (its process ended): stopped",
            a.pid
        )),
        "{}",
        exit.stderr
    );
    assert_eq!(exit.json().len(), 1, "the counters are still reported");
}

/// Targets that cannot be resolved are refused with exit status 2 and a reason, before
/// anything is attached.
#[test]
fn unresolvable_targets_are_refused_by_name() {
    let cases = [
        (
            "pid=999999999",
            "pid=999999999: no process 999999999 (it may have ended)",
        ),
        (
            "container=0123456789abcdef",
            "no running container's cgroup names an ID starting with 0123456789abcdef",
        ),
        ("pod=cart", "expected pod=NAMESPACE/NAME"),
        ("pods=app=", "--target pods=app=: "),
        ("cgroup=/nonexistent", "/nonexistent/cgroup.procs"),
    ];
    for (target, want) in cases {
        let exit = netlab::chaos_output(&["run", "--target", target, "--rule", "drop=1%"]);
        assert_eq!(exit.code, Some(2), "{target}: {}", exit.stderr);
        assert!(exit.stderr.contains(want), "{target}: {}", exit.stderr);
    }
}

/// The daemon takes the same target: an experiment on a container refuses connections to it
/// from outside; once the container is removed, the experiment shows failed with the target
/// gone, the rest of the daemon goes on, and deleting it works.
#[test]
fn the_daemon_targets_a_container_and_reports_it_gone() {
    let podman = Podman::new("dmn");
    let a = podman.run(&format!("chaos-d-{}", std::process::id()));
    let d = netlab::Daemon::start(&[]);
    let target = format!("container={}", &a.id[..12]);
    let apply = d.ctl(&[
        "apply",
        "--name",
        "boxed",
        "--target",
        &target,
        "--rule",
        "dir=ingress proto=tcp dport=8080 refuse=yes",
    ]);
    assert_eq!(apply.code, Some(0), "{}", apply.stderr);
    assert_eq!(connect(&a.ip, 8080), Some(ErrorKind::ConnectionRefused));
    let get = |d: &netlab::Daemon| {
        let out = d.ctl(&["get", "boxed", "--output", "json"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        serde_json::from_str::<Value>(&out.stdout).expect("JSON")
    };
    let view = get(&d);
    assert_eq!(view["phase"], "active", "{view}");
    assert_eq!(view["target"], target.as_str(), "{view}");
    assert_eq!(view["counters"][0]["conns_refused"], 1, "{view}");
    podman.remove(&a);
    // The worker looks every third of the lease (3 s by default).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = get(&d);
        if view["phase"] == "failed" || std::time::Instant::now() > deadline {
            break view;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(view["phase"], "failed", "{view}");
    let reason = view["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("target gone"), "{view}");
    let status = d.ctl(&["status"]);
    assert_eq!(
        status.code,
        Some(0),
        "the rest of the daemon answers: {}",
        status.stderr
    );
    let delete = d.ctl(&["delete", "boxed"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    assert_eq!(d.stop().code, Some(0));
}

/// `connect()` from the host with a short timeout: whether it timed out (the SYN dropped).
fn times_out(ip: &str, port: u16) -> bool {
    let dst: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    matches!(
        TcpStream::connect_timeout(&dst, Duration::from_millis(300)),
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock
    )
}

/// Polls `done` every 50 ms until it holds or `limit` passes: how long it took, if it held.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A glob over container names, in the daemon: every match is faulted (one program attached
/// in each container's namespace), one that does not match is untouched, a container started
/// later that matches is faulted within 2 s, and one removed is released while the others go
/// on. `chaos get` lists each with its namespace and interface.
#[test]
fn the_daemon_follows_containers_matching_a_glob() {
    let mut podman = Podman::new("glob");
    let api = podman.api();
    let me = std::process::id();
    let a = podman.run(&format!("chaos-s{me}-a"));
    let b = podman.run(&format!("chaos-s{me}-b"));
    let other = podman.run(&format!("chaos-o{me}"));
    let host = format!("unix://{}", api.display());
    let d = netlab::Daemon::start_with_env(&[], &[("DOCKER_HOST", &host)]);
    let apply = d.ctl(&[
        "apply",
        "--name",
        "globbed",
        "--target",
        &format!("container=chaos-s{me}-*"),
        "--rule",
        "dir=ingress proto=tcp dport=8080 drop=100%",
    ]);
    assert_eq!(apply.code, Some(0), "{}", apply.stderr);
    let get = || {
        let out = d.ctl(&["get", "globbed", "--output", "json"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        serde_json::from_str::<Value>(&out.stdout).expect("JSON")
    };
    assert!(times_out(&a.ip, 8080) && times_out(&b.ip, 8080));
    assert_eq!(
        connect(&other.ip, 8080),
        None,
        "the container not matched is untouched"
    );
    let view = get();
    let targets = view["targets"].as_array().expect("targets").clone();
    assert_eq!(targets.len(), 2, "{view}");
    for c in [&a, &b] {
        // Listed by container ID, not by name.
        let t = targets
            .iter()
            .find(|t| t["workload"].as_str().unwrap().contains(&c.name))
            .unwrap_or_else(|| panic!("{} not listed: {view}", c.name));
        assert_eq!(t["state"], "attached", "{view}");
        assert_eq!(t["iface"], "eth0", "{view}");
        assert!(t["workload"].as_str().unwrap().contains(&c.name), "{view}");
        assert!(t["netns"].as_str().unwrap().ends_with("/ns/net"), "{view}");
    }
    let text = d.ctl(&["get", "globbed"]);
    assert!(
        text.stdout.contains("WORKLOAD") && text.stdout.contains(&a.name),
        "{}",
        text.stdout
    );

    // A new match: faulted within 2 s of running (podman run returns once it runs).
    let c = podman.run(&format!("chaos-s{me}-c"));
    let took = within(Duration::from_secs(2), || times_out(&c.ip, 8080));
    assert!(
        took.is_some(),
        "a new matching container was not faulted within 2 s"
    );
    eprintln!("a new match faulted after {:?}", took.unwrap());

    // One removed: released; the others stay faulted.
    podman.remove(&a);
    let released = within(Duration::from_secs(3), || {
        get()["targets"].as_array().is_some_and(|t| t.len() == 2)
    });
    assert!(released.is_some(), "{}", get());
    let view = get();
    assert_eq!(view["phase"], "active", "{view}");
    assert!(times_out(&b.ip, 8080) && times_out(&c.ip, 8080));
    let delete = d.ctl(&["delete", "globbed"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    assert_eq!(connect(&b.ip, 8080), None, "deleted: the faults are gone");
    assert_eq!(connect(&c.ip, 8080), None, "deleted: the faults are gone");
    assert_eq!(d.stop().code, Some(0));
}

/// A container on the host's network shares the node's namespace: targeting it would fault
/// the host. It is refused unless a rule says force=yes.
#[test]
fn a_host_network_workload_is_refused_without_force() {
    let podman = Podman::new("hostnet");
    let h = podman.run_host_network(&format!("chaos-h{}", std::process::id()));
    let target = format!("container={}", &h.id[..12]);
    // A duration, so that a chaos that wrongly attaches still ends.
    let exit = netlab::chaos_output(&[
        "run",
        "--target",
        &target,
        "--rule",
        "drop=1%",
        "--duration",
        "5s",
    ]);
    assert_eq!(exit.code, Some(2), "{}", exit.stderr);
    assert!(
        exit.stderr.contains(
            "is on the host's network (its namespace is the node's): refused unless a rule says force=yes"
        ),
        "{}",
        exit.stderr
    );
    // Forced, with a rule that matches nothing here: it attaches, and stops cleanly.
    let c = chaos(
        &target,
        &["dst=198.18.255.254/32 drop=100% force=yes"],
        None,
    );
    let exit = c.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}
