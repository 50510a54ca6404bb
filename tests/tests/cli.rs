//! `chaos run` as a user drives it: clean-up on every way out, and bad input refused whole.

use std::{process::Command, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use netlab::{ChaosExit, ChaosProcess, IFACE, Lab, chaos_bin, chaos_output, in_netns};

/// Names of the TCX programs on IFACE in `ns`, ingress then egress.
fn tcx_programs(ns: &str) -> [Vec<String>; 2] {
    in_netns(ns, || {
        [TcAttachType::Ingress, TcAttachType::Egress].map(|t| {
            let (_, progs) = SchedClassifier::query_tcx(IFACE, t).expect("query tcx");
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect()
        })
    })
}

/// Everything tc shows on IFACE in `ns`: qdiscs and classic filters on both hooks.
fn tc_state(ns: &str) -> String {
    let mut state = String::new();
    for args in [
        &["qdisc", "show", "dev", IFACE][..],
        &["filter", "show", "dev", IFACE, "ingress"],
        &["filter", "show", "dev", IFACE, "egress"],
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "tc"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        state.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    state
}

const BOTH_WAYS: [&str; 4] = [
    "--rule",
    "dir=ingress proto=udp drop=10%",
    "--rule",
    "proto=tcp dport=80 drop=10%",
];

fn cleanup_case(tag: &str, stop: impl FnOnce(ChaosProcess) -> ChaosExit, extra: &[&str]) {
    let lab = Lab::new(tag);
    let before = tc_state(&lab.a);
    assert_eq!(tcx_programs(&lab.a), [Vec::<String>::new(), Vec::new()]);
    let mut args = vec!["--netns", &lab.a, "--iface", IFACE];
    args.extend_from_slice(&BOTH_WAYS);
    args.extend_from_slice(extra);
    let chaos = ChaosProcess::start(&args);
    assert_eq!(
        tcx_programs(&lab.a),
        [
            vec!["chaos_ingress".to_owned()],
            vec!["chaos_egress".to_owned()]
        ],
        "attached while running"
    );
    let exit = stop(chaos);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(
        exit.stdout.contains("MATCHED"),
        "final counters printed: {}",
        exit.stdout
    );
    assert_eq!(
        tcx_programs(&lab.a),
        [Vec::<String>::new(), Vec::new()],
        "nothing of ours left"
    );
    assert_eq!(tc_state(&lab.a), before, "qdiscs and filters as found");
}

#[test]
fn cleanup_after_duration() {
    cleanup_case(
        "cdur",
        |c| c.wait(Duration::from_secs(20)),
        &["--duration", "1s"],
    );
}

#[test]
fn cleanup_after_sigint() {
    cleanup_case("cint", |c| c.stop(libc::SIGINT), &[]);
}

#[test]
fn cleanup_after_sigterm() {
    cleanup_case("cterm", |c| c.stop(libc::SIGTERM), &[]);
}

/// Netlink cls_bpf attachment: chaos adds clsact only when missing and removes only what it added.
fn netlink_cleanup_case(tag: &str, clsact_before: bool) {
    let lab = Lab::new(tag);
    if clsact_before {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &lab.a, "tc", "qdisc", "add", "dev", IFACE, "clsact",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = tc_state(&lab.a);
    assert_eq!(before.contains("clsact"), clsact_before);
    let mut args = vec!["--netns", &lab.a, "--iface", IFACE, "--attach", "netlink"];
    args.extend_from_slice(&BOTH_WAYS);
    let chaos = ChaosProcess::start(&args);
    let during = tc_state(&lab.a);
    for name in ["chaos_ingress", "chaos_egress"] {
        assert!(during.contains(name), "{name} not attached:\n{during}");
    }
    assert_eq!(tcx_programs(&lab.a), [Vec::<String>::new(), Vec::new()]);
    let exit = chaos.stop(libc::SIGTERM);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert_eq!(tc_state(&lab.a), before, "qdiscs and filters as found");
}

#[test]
fn netlink_cleanup_removes_the_clsact_it_added() {
    netlink_cleanup_case("nlnew", false);
}

#[test]
fn netlink_cleanup_keeps_a_clsact_that_was_there() {
    netlink_cleanup_case("nlold", true);
}

/// Runs `chaos run` with `prefix` (e.g. setpriv) and `args`; expects exit 2, one line naming the
/// problem, and nothing attached or changed.
fn refused(lab: &Lab, prefix: &[&str], args: &[&str], message: &str) {
    let before = tc_state(&lab.a);
    let exit = if prefix.is_empty() {
        chaos_output(&[&["run"], args].concat())
    } else {
        let bin = chaos_bin();
        let out = Command::new(prefix[0])
            .args(&prefix[1..])
            .arg(&bin)
            .arg("run")
            .args(args)
            .output()
            .unwrap();
        ChaosExit {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    assert_eq!(exit.code, Some(2), "{args:?}: {}", exit.stderr);
    let lines: Vec<&str> = exit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected, got {lines:?}");
    assert!(
        lines[0].contains(message),
        "{args:?}: {:?} does not say {message:?}",
        lines[0]
    );
    assert_eq!(
        tcx_programs(&lab.a),
        [Vec::<String>::new(), Vec::new()],
        "{args:?} attached something"
    );
    assert_eq!(
        tc_state(&lab.a),
        before,
        "{args:?} changed qdiscs or filters"
    );
}

#[test]
fn durations_where_zero_makes_no_sense_are_refused() {
    // Once `chaos daemon --lease 0s` ran with no lease at all (its worker spinning on a zero
    // timeout) and `chaos run --lease 2ns` panicked with exit status 101.
    let lab = Lab::new("dur");
    let run = |extra: &[&str]| {
        let args = [
            &["run", "--netns", lab.a.as_str(), "--iface", IFACE],
            &["--rule", "proto=udp drop=1"][..],
            extra,
        ]
        .concat();
        chaos_output(&args)
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["--lease", "2ns"],
            "2ns is shorter than the minimum 100ms (the lease is renewed every third of it)",
        ),
        (&["--lease", "0s"], "0s is shorter than the minimum 100ms"),
        (
            &["--duration", "0s"],
            "0s is shorter than the minimum 1ns (a zero-length fault does nothing)",
        ),
        (
            &["--duration", "soon"],
            "'soon' is not a duration (examples: 200us, 50ms, 1.5s, 5m, 1h30m)",
        ),
    ];
    for (extra, message) in cases {
        let exit = run(extra);
        assert_eq!(exit.code, Some(2), "{extra:?}: {}", exit.stderr);
        assert!(exit.stderr.contains(message), "{extra:?}: {}", exit.stderr);
        assert_eq!(
            tcx_programs(&lab.a),
            [Vec::<String>::new(), Vec::new()],
            "{extra:?} attached something"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("chaos.sock");
    let socket = socket.to_str().unwrap();
    for (lease, message) in [
        ("0s", "0s is shorter than the minimum 100ms"),
        ("2ns", "2ns is shorter than the minimum 100ms"),
    ] {
        let exit = chaos_output(&["daemon", "--socket", socket, "--lease", lease]);
        assert_eq!(exit.code, Some(2), "--lease {lease}: {}", exit.stderr);
        assert!(exit.stderr.contains(message), "{}", exit.stderr);
        assert!(!std::path::Path::new(socket).exists(), "the daemon started");
    }
}

#[test]
fn bad_input_is_refused_with_status_2() {
    let lab = Lab::new("bad");
    let base = ["--netns", lab.a.as_str(), "--iface", IFACE];
    let with_rule = |rule: &'static str| [&base[..], &["--rule", rule]].concat();
    let cases: &[(&str, &str)] = &[
        ("dst=198.18.0.0/33 drop=1", "dst=198.18.0.0/33: not a CIDR"),
        (
            "src=not-an-address drop=1",
            "src=not-an-address: not a CIDR",
        ),
        ("dport=0 drop=1", "dport=0: ports are 1-65535"),
        ("sport=65536 drop=1", "sport=65536: ports are 1-65535"),
        ("dport=9001-9000 drop=1", "range start is above its end"),
        ("drop=1.5", "drop=1.5: expected a probability"),
        ("drop=-3%", "drop=-3%: expected a probability"),
        ("colour=red drop=1", "unknown key 'colour'"),
        (
            "proto=tcp dport=22 drop=10%",
            "dport=22: TCP port 22 (SSH) is excluded from faults; add force=yes",
        ),
        (
            "sport=6443 drop=1",
            "sport=6443: TCP port 6443 (Kubernetes API) is excluded",
        ),
    ];
    for (rule, message) in cases {
        refused(&lab, &[], &with_rule(rule), message);
    }
    // A good rule after a bad one: nothing at all is applied.
    refused(
        &lab,
        &[],
        &[&base[..], &["--rule", "drop=0.1", "--rule", "dport=0"]].concat(),
        "--rule 'dport=0'",
    );
    refused(
        &lab,
        &[],
        &[
            "--netns",
            &lab.a,
            "--iface",
            "nosuch0",
            "--rule",
            "proto=udp drop=1",
        ],
        "interface 'nosuch0' not found in network namespace",
    );
    refused(
        &lab,
        &[],
        &[
            "--netns",
            "chaos-no-such-netns",
            "--iface",
            IFACE,
            "--rule",
            "proto=udp drop=1",
        ],
        "network namespace 'chaos-no-such-netns' not found",
    );
    for (drop, cap) in [
        ("-net_admin", "missing capability CAP_NET_ADMIN"),
        ("-bpf,-sys_admin", "missing capability CAP_BPF"),
        ("-sys_admin", "missing capability CAP_SYS_ADMIN"),
        ("-perfmon,-sys_admin", "missing capability CAP_PERFMON"),
    ] {
        refused(
            &lab,
            &["setpriv", "--bounding-set", drop, "--"],
            &with_rule("proto=udp drop=1"),
            cap,
        );
    }
}

#[test]
fn help_explains_the_rule_language() {
    let exit = chaos_output(&["run", "--help"]);
    assert_eq!(exit.code, Some(0));
    for needle in [
        "--iface",
        "--netns",
        "--duration",
        "dport=N | dport=N-M",
        "drop=P",
        "Exit status 2",
    ] {
        assert!(
            exit.stdout.contains(needle),
            "help lacks {needle:?}:\n{}",
            exit.stdout
        );
    }
    let usage = chaos_output(&["run", "--iface", IFACE]);
    assert_eq!(usage.code, Some(2), "a missing --rule is a usage error");
}

/// Whether this kernel has sch_fq: tried on a throwaway interface of `ns`.
fn kernel_has_fq(ns: &str) -> bool {
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap()
    };
    let add = run(&["ip", "link", "add", "fqprobe", "type", "dummy"]);
    let probe = if add.status.success() {
        "fqprobe"
    } else {
        "lo"
    };
    let has = run(&["tc", "qdisc", "add", "dev", probe, "root", "fq"])
        .status
        .success();
    if has {
        run(&["tc", "qdisc", "del", "dev", probe, "root"]);
    }
    if add.status.success() {
        run(&["ip", "link", "del", "fqprobe"]);
    }
    has
}

#[test]
fn delay_needs_fq() {
    let lab = Lab::new("nofq");
    let before = tc_state(&lab.a);
    let args = [
        "--netns",
        lab.a.as_str(),
        "--iface",
        IFACE,
        "--rule",
        "proto=udp delay=50ms",
    ];
    if kernel_has_fq(&lab.a) {
        let chaos = ChaosProcess::start(&args);
        assert!(
            tc_state(&lab.a).contains("qdisc fq ca05:"),
            "{}",
            tc_state(&lab.a)
        );
        let exit = chaos.stop(libc::SIGINT);
        assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    } else {
        refused(&lab, &[], &args, "this kernel has no fq qdisc (sch_fq");
    }
    assert_eq!(tc_state(&lab.a), before, "root qdisc as found");
}

#[test]
fn guard_rails_can_be_overridden_explicitly() {
    let lab = Lab::new("guard");
    let base = [
        "--netns",
        lab.a.as_str(),
        "--iface",
        IFACE,
        "--duration",
        "1s",
    ];
    for extra in [
        &["--rule", "proto=tcp dport=22 drop=1 force=yes"][..],
        &[
            "--rule",
            "proto=tcp dport=22 drop=1",
            "--exclude-ports",
            "2222",
        ],
        &["--rule", "drop=1 force=yes", "--dry-run"],
    ] {
        let exit = chaos_output(&[&["run"], &base[..], extra].concat());
        assert_eq!(exit.code, Some(0), "{extra:?}: {}", exit.stderr);
    }
}

/// Whether a TCP connection from `client` to `addr` opens within a second.
fn tcp_connects(client: &str, addr: std::net::SocketAddr) -> bool {
    in_netns(client, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    })
}

#[test]
fn excluded_ports_are_never_faulted_by_a_host_wide_rule() {
    let lab = Lab::new("guardlive");
    let ssh: std::net::SocketAddr = (netlab::SERVER_V4, 22).into();
    let web: std::net::SocketAddr = (netlab::SERVER_V4, 8080).into();
    let listeners = in_netns(&lab.b, move || {
        [ssh, web].map(|a| std::net::TcpListener::bind(a).unwrap())
    });
    for rule in [
        "dst=198.18.0.2/32 drop=100%",
        "dst=198.18.0.2/32 drop=100% force=yes",
    ] {
        let chaos = ChaosProcess::start(&[
            "--netns", &lab.a, "--iface", IFACE, "--rule", rule, "--lease", "30s",
        ]);
        let forced = rule.contains("force");
        assert_eq!(tcp_connects(&lab.a, ssh), !forced, "{rule}: TCP to port 22");
        assert!(
            !tcp_connects(&lab.a, web),
            "{rule}: TCP to port 8080 is lost"
        );
        let exit = chaos.stop(libc::SIGTERM);
        assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    }
    drop(listeners);
}

/// CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON are enough (no CAP_SYS_ADMIN) when chaos need not
/// enter a namespace itself: the datagrams of the rule are lost, the others arrive.
#[test]
fn runs_without_sys_admin() {
    let lab = Lab::new("caps");
    let dst: std::net::SocketAddr = (netlab::SERVER_V4, 9000).into();
    let rx = netlab::UdpCounter::start(&lab.b, dst);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.a])
        .args([
            "setpriv",
            "--bounding-set",
            "-all,+net_admin,+bpf,+perfmon",
            "--",
        ])
        .arg(chaos_bin())
        .args(["run", "--iface", IFACE, "--duration", "3s"])
        .args(["--rule", "proto=udp dport=9000 drop=100%"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.contains("injecting"), "{line}");
    assert_eq!(netlab::udp_send(&lab.a, dst, 100, 32), 0);
    let (received, _) = rx.finish();
    assert_eq!(received, 0, "every datagram of the rule lost");
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
}
