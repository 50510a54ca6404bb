//! Delay, jitter and rate on a kernel that has sch_fq and sch_netem: Debian's 6.12 under qemu.
//!
//! `on_the_fq_kernel` (a normal host test) boots that kernel once and runs this binary's `vm_*`
//! tests inside it; they are `#[ignore]`d on the host, whose kernel has no fq. Timings carry a
//! tolerance for emulation (TCG): 45-60 ms for 50 ms.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use netlab::{
    Arrival, ChaosProcess, IFACE, Lab, SERVER_V4, UdpCounter, assert_binomial, tcp_bulk,
    udp_send_to, vm,
};

#[test]
fn on_the_fq_kernel() {
    vm::run_ignored_tests_here("vm_");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latencies(arrivals: &[Arrival]) -> Vec<f64> {
    arrivals.iter().map(|a| ms(a.latency)).collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (
        mean,
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt(),
    )
}

/// Share of samples cut from each end before the spread is measured: the VM's rare timer and
/// scheduling stalls (tens of ms, one-sided) would otherwise dominate a standard deviation.
const TRIM: f64 = 0.01;

/// Mean and standard deviation of `v` without its lowest and highest `TRIM` shares.
fn trimmed_mean_sd(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let cut = (s.len() as f64 * TRIM).round() as usize;
    mean_sd(&s[cut..s.len() - cut])
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Every datagram held at least 45 ms (chaos never releases one early) and the median within
/// 50 ms to `median_max`; with `Some(share)`, that share of them at most 60 ms. Emulation (TCG)
/// adds timer and scheduling hiccups on top and never takes time away, so the tail is the
/// VM's: fresh-clone CI runs saw 285 to 300 of 300 within 60 ms on egress, but 228 to 300 on
/// ingress (the ifb adds a softirq and a second fq timer; medians 50.8 to 53.6 ms), old code
/// and new alike. So ingress is held to its floor and median only. The spread chaos adds is
/// judged in `vm_jitter_spread_matches`, the exact departure times by the host's verdict tests.
fn assert_delayed_50ms(latencies: &[f64], median_max: f64, tail: Option<f64>) {
    for (i, d) in latencies.iter().enumerate() {
        assert!(
            *d >= 45.0,
            "datagram {i} took {d:.1} ms, less than 50 ms - 5"
        );
    }
    let p50 = percentile(latencies, 0.5);
    assert!(
        (50.0..=median_max).contains(&p50),
        "median {p50:.1} ms, want 50-{median_max}"
    );
    if let Some(share) = tail {
        let within = latencies.iter().filter(|d| **d <= 60.0).count();
        assert!(
            within as f64 >= latencies.len() as f64 * share,
            "only {within} of {} datagrams took 45-60 ms",
            latencies.len()
        );
    }
}

/// Root qdisc line of IFACE in `ns`, e.g. "qdisc noqueue 0: root refcnt 2".
fn root_qdisc(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "tc", "qdisc", "show", "dev", IFACE, "root",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Sends `count` rounds, one every `interval`, to each of `ports` on the server while chaos runs
/// `rules` on the client; returns what each port's receiver saw.
fn udp_through(
    tag: &str,
    rules: &[&str],
    ports: &[u16],
    count: u64,
    interval: Duration,
) -> Vec<netlab::Received> {
    udp_through_on(tag, rules, ports, count, interval, false)
}

/// Names of the links in `ns`.
fn links(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`udp_through`] with chaos on the server's side (`on_server`) or the client's.
fn udp_through_on(
    tag: &str,
    rules: &[&str],
    ports: &[u16],
    count: u64,
    interval: Duration,
    on_server: bool,
) -> Vec<netlab::Received> {
    let lab = Lab::new(tag);
    let chaos_ns = if on_server {
        lab.b.clone()
    } else {
        lab.a.clone()
    };
    let before = root_qdisc(&chaos_ns);
    let dsts: Vec<SocketAddr> = ports.iter().map(|p| (SERVER_V4, *p).into()).collect();
    let rxs: Vec<_> = dsts.iter().map(|d| UdpCounter::start(&lab.b, *d)).collect();
    let mut args = vec![
        "--netns",
        chaos_ns.as_str(),
        "--iface",
        IFACE,
        "--output",
        "json",
    ];
    for r in rules {
        args.extend(["--rule", r]);
    }
    let chaos = ChaosProcess::start(&args);
    if on_server {
        assert!(
            links(&chaos_ns).contains("chaos-ifb"),
            "ifb made: {}",
            links(&chaos_ns)
        );
    } else {
        let root = root_qdisc(&chaos_ns);
        assert!(root.contains("fq ca05:"), "fq installed: {root}");
    }
    assert_eq!(udp_send_to(&lab.a, &dsts, count, 64, Some(interval)), 0);
    let received: Vec<_> = rxs
        .into_iter()
        .map(|rx| rx.finish_after(Duration::from_millis(500)))
        .collect();
    let exit = chaos.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert_eq!(root_qdisc(&chaos_ns), before, "root qdisc as found");
    assert!(
        !links(&chaos_ns).contains("chaos-ifb"),
        "no ifb of ours left"
    );
    for r in &received {
        assert_eq!(
            (r.distinct, r.errors),
            (count, 0),
            "every datagram arrives, once"
        );
    }
    received
}

#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_udp_delay_50ms_on_one_port() {
    let r = udp_through(
        "d50",
        &["proto=udp dport=9000 delay=50ms"],
        &[9000, 9001],
        300,
        Duration::from_millis(5),
    );
    let (delayed, clean) = (latencies(&r[0].arrivals), latencies(&r[1].arrivals));
    eprintln!(
        "delay=50ms: matched p0 {:.1} p50 {:.1} p100 {:.1} ms; other port p50 {:.2} p99 {:.2} ms",
        percentile(&delayed, 0.0),
        percentile(&delayed, 0.5),
        percentile(&delayed, 1.0),
        percentile(&clean, 0.5),
        percentile(&clean, 0.99)
    );
    assert_delayed_50ms(&delayed, 55.0, Some(0.8));
    assert!(
        percentile(&clean, 0.5) < 5.0,
        "nothing added on other ports"
    );
    assert!(
        percentile(&clean, 0.99) < 20.0,
        "nothing added on other ports"
    );
}

#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_ingress_delay_through_ifb() {
    let r = udp_through_on(
        "din",
        &["dir=ingress proto=udp dport=9000 delay=50ms"],
        &[9000, 9001],
        300,
        Duration::from_millis(5),
        true,
    );
    let (delayed, clean) = (latencies(&r[0].arrivals), latencies(&r[1].arrivals));
    eprintln!(
        "ingress delay=50ms: matched p0 {:.1} p50 {:.1} p100 {:.1} ms; other port p50 {:.2} ms",
        percentile(&delayed, 0.0),
        percentile(&delayed, 0.5),
        percentile(&delayed, 1.0),
        percentile(&clean, 0.5)
    );
    assert_delayed_50ms(&delayed, 58.0, None);
    assert!(
        percentile(&clean, 0.5) < 5.0,
        "nothing added on other ports"
    );
}

#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_udp_delay_share() {
    const N: u64 = 1000;
    let r = udp_through(
        "dp30",
        &["proto=udp dport=9000 delay=50ms delay-p=30% reorder=yes"],
        &[9000],
        N,
        Duration::from_millis(2),
    );
    // Delayed datagrams take at least 45 ms; an undelayed one would need a 40 ms emulation stall.
    let delayed = latencies(&r[0].arrivals)
        .iter()
        .filter(|l| **l > 40.0)
        .count() as u64;
    assert_binomial("datagrams delayed at delay-p=30%", delayed, N, 0.3);
}

/// Standard deviation of the added delay: the matched port's spread, less the path's own
/// (measured on a clean port at the same time), in quadrature.
fn added_spread(rule: &str) -> (f64, f64) {
    let r = udp_through(
        "jit",
        &[rule],
        &[9000, 9001],
        1000,
        Duration::from_millis(2),
    );
    let (mean, sd) = trimmed_mean_sd(&latencies(&r[0].arrivals));
    let (_, base_sd) = trimmed_mean_sd(&latencies(&r[1].arrivals));
    (mean, (sd * sd - base_sd * base_sd).max(0.0).sqrt())
}

#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_jitter_spread_matches() {
    // Spreads of the middle 98 % (see TRIM); over 1,000 samples their relative standard error
    // is 1.5 % (uniform) and 2.3 % (normal), so 10 % below is over 4σ: chaos never spreads
    // less than asked. Above, the VM's timer noise on held packets (which the clean port's
    // baseline does not see) inflated a run's normal spread by 19 % (11.17 ms for 9.35), so up
    // to 35 % over is taken (measured on fresh-clone CI runs: 10.62-10.66 ms for a uniform 8.49, 25-26 % over, on three runs). The exact shapes are checked on the host, on the stamped
    // departure times (verdict test `jitter_follows_the_distribution`).
    let within = |sd: f64, want: f64| (0.9 * want..=1.35 * want).contains(&sd);
    // Uniform within ±jitter: σ = jitter/√3, 0.98 of it without the outer 1 % each side.
    let (mean, sd) = added_spread("proto=udp dport=9000 delay=50ms jitter=15ms reorder=yes");
    let want = 0.98 * 15.0 / 3f64.sqrt();
    eprintln!("uniform: mean {mean:.1} ms, spread {sd:.2} ms (want {want:.2})");
    assert!(
        within(sd, want),
        "uniform spread {sd:.2} ms, want {want:.2} -10 %/+35 %"
    );
    // Normal: σ = jitter; within ±2.326σ (the middle 98 %) the standard deviation is 0.9346σ.
    let (mean, sd) =
        added_spread("proto=udp dport=9000 delay=50ms jitter=10ms dist=normal reorder=yes");
    let want = 0.9346 * 10.0;
    eprintln!("normal: mean {mean:.1} ms, spread {sd:.2} ms (want {want:.2})");
    assert!(
        within(sd, want),
        "normal spread {sd:.2} ms, want {want:.2} -10 %/+35 %"
    );
}

/// Datagrams received out of sequence order.
fn inversions(arrivals: &[Arrival]) -> usize {
    arrivals.windows(2).filter(|w| w[1].seq < w[0].seq).count()
}

#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_jitter_keeps_flow_order_unless_asked() {
    let rule = "proto=udp dport=9000 delay=50ms jitter=20ms dist=normal";
    let kept = udp_through("ord", &[rule], &[9000], 500, Duration::from_millis(2));
    let free = udp_through(
        "reord",
        &[&format!("{rule} reorder=yes")],
        &[9000],
        500,
        Duration::from_millis(2),
    );
    let (k, f) = (inversions(&kept[0].arrivals), inversions(&free[0].arrivals));
    eprintln!("out-of-order arrivals: {k} kept in order, {f} with reorder=yes");
    assert_eq!(k, 0, "a flow's datagrams must stay in order");
    assert!(f > 10, "reorder=yes lets jittered datagrams overtake ({f})");
}

/// Bits per second of a TCP transfer of `bytes` from client to server on `port`.
fn tcp_rate(lab: &Lab, port: u16, bytes: u64) -> f64 {
    let t = tcp_bulk(
        &lab.a,
        &lab.b,
        (SERVER_V4, port).into(),
        bytes,
        Duration::from_secs(120),
    );
    t.bytes as f64 * 8.0 / t.elapsed.as_secs_f64()
}

#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_rate_10mbit() {
    let lab = Lab::new("rate");
    let before = root_qdisc(&lab.a);
    let chaos = ChaosProcess::start(&[
        "--netns",
        &lab.a,
        "--iface",
        IFACE,
        "--rule",
        "proto=tcp dport=5001 rate=10mbit",
    ]);
    // 6 MB: about 5 s at 10 Mbit/s, long enough that connection start-up is a small share.
    let limited = tcp_rate(&lab, 5001, 6_000_000);
    let other = tcp_rate(&lab, 5002, 30_000_000);
    let exit = chaos.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert_eq!(root_qdisc(&lab.a), before, "root qdisc as found");
    eprintln!(
        "rate=10mbit: {:.2} Mbit/s; unlimited port: {:.1} Mbit/s",
        limited / 1e6,
        other / 1e6
    );
    assert!(
        (9.5e6..=10.5e6).contains(&limited),
        "{:.2} Mbit/s, want 10 ± 5%",
        limited / 1e6
    );
    assert!(
        other > 30e6,
        "other flows unaffected ({:.1} Mbit/s)",
        other / 1e6
    );
}

/// Throughput of a local TCP sender for `secs` through 50 ms of added delay, by chaos or netem.
fn local_tcp_through_delay(with_chaos: bool) -> f64 {
    let lab = Lab::new(if with_chaos { "ltc" } else { "ltn" });
    let chaos = if with_chaos {
        Some(ChaosProcess::start(&[
            "--netns",
            &lab.a,
            "--iface",
            IFACE,
            "--rule",
            "proto=tcp dport=5001 delay=50ms",
        ]))
    } else {
        netlab::ip(&["-n", &lab.a, "link", "set", IFACE, "up"]);
        let out = Command::new("ip")
            .args([
                "netns", "exec", &lab.a, "tc", "qdisc", "add", "dev", IFACE, "root",
            ])
            .args(["netem", "delay", "50ms", "limit", "100000"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "netem: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        None
    };
    let start = Instant::now();
    let rate = tcp_rate(&lab, 5001, 8_000_000);
    eprintln!(
        "local TCP, 50 ms delay by {}: {:.1} Mbit/s ({:?})",
        if with_chaos { "chaos" } else { "netem" },
        rate / 1e6,
        start.elapsed()
    );
    if let Some(c) = chaos {
        let exit = c.stop(libc::SIGINT);
        assert_eq!(exit.code, Some(0), "{}", exit.stderr);
        assert!(
            root_qdisc(&lab.a).contains("noqueue"),
            "root qdisc as found"
        );
        assert!(!links(&lab.a).contains("chaos-ifb"), "no ifb of ours left");
    }
    rate
}

#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_local_tcp_delay_against_netem() {
    let netem = local_tcp_through_delay(false);
    let chaos = local_tcp_through_delay(true);
    eprintln!(
        "local TCP through 50 ms: chaos {:.1} Mbit/s, netem {:.1} Mbit/s",
        chaos / 1e6,
        netem / 1e6
    );
    assert!(
        chaos >= 0.5 * netem,
        "chaos {:.1} Mbit/s vs netem {:.1}",
        chaos / 1e6,
        netem / 1e6
    );
}

/// The daemon with one rule mixing faults: 10 % lost and 20 % of the rest delayed, each share
/// honoured independently.
#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_daemon_mixed_drop_and_delay() {
    const N: u64 = 2000;
    let lab = Lab::new("dmixvm");
    let d = netlab::Daemon::start(&[]);
    let apply = d.ctl(&[
        "apply",
        "--name",
        "mix",
        "--iface",
        IFACE,
        "--netns",
        &lab.a,
        "--rule",
        "proto=udp dport=9000 drop=10% delay=50ms delay-p=20% reorder=yes",
    ]);
    assert_eq!(apply.code, Some(0), "{}", apply.stderr);
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let rx = UdpCounter::start(&lab.b, dst);
    assert_eq!(
        udp_send_to(&lab.a, &[dst], N, 64, Some(Duration::from_millis(1))),
        0
    );
    let r = rx.finish_after(Duration::from_millis(500));
    // Delayed datagrams take at least 45 ms; an undelayed one would need a 40 ms emulation stall.
    let delayed = latencies(&r.arrivals).iter().filter(|l| **l > 40.0).count() as u64;
    assert_binomial("daemon mix: lost", N - r.distinct, N, 0.1);
    assert_binomial(
        "daemon mix: delayed among received",
        delayed,
        r.distinct,
        0.2,
    );
    let exit = d.stop();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(
        root_qdisc(&lab.a).contains("noqueue"),
        "root qdisc as found"
    );
}

/// connect-delay=200ms: `connect()` to the port takes 200 ms more (the SYN waits in fq), the
/// exchanges after it on the same connection are not delayed, and another port connects at
/// once. Measured at the client, from its own clock.
#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_connect_delay_holds_only_the_first_packet() {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
    };
    let lab = Lab::new("cdel");
    for port in [8080u16, 8081] {
        let addr: SocketAddr = (SERVER_V4, port).into();
        let (tx, rx) = std::sync::mpsc::channel();
        netlab::spawn_in_netns(&lab.b, move || {
            let listener = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            // One connection per port: echo until it closes.
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    let chaos = ChaosProcess::start(&[
        "--netns",
        &lab.a,
        "--iface",
        IFACE,
        "--output",
        "json",
        "--rule",
        "proto=tcp dport=8080 connect-delay=200ms",
    ]);
    let timings = |port: u16| {
        let dst: SocketAddr = (SERVER_V4, port).into();
        netlab::in_netns(&lab.a, move || {
            let start = Instant::now();
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
            let connect = start.elapsed();
            s.set_nodelay(true).unwrap();
            let mut rtts = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                s.write_all(b"ping").unwrap();
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).unwrap();
                rtts.push(ms(t.elapsed()));
            }
            (ms(connect), rtts)
        })
    };
    let (slow, rtts) = timings(8080);
    let (fast, _) = timings(8081);
    let exit = chaos.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let median = percentile(&rtts, 0.5);
    eprintln!(
        "connect-delay=200ms: connect {slow:.1} ms (other port {fast:.1} ms), echo p50 {median:.2} ms after it"
    );
    assert!((199.0..400.0).contains(&slow), "connect took {slow:.1} ms");
    assert!(
        fast < 100.0,
        "the other port connects at once: {fast:.1} ms"
    );
    assert!(
        median < 50.0,
        "the transfer is not delayed: p50 {median:.2} ms"
    );
    let report = &exit.json()[0];
    assert_eq!(report["conns_seen"], 1, "{report}");
}

/// Round-trip times of `n` pings from this namespace to `ip`, in ms (ping's own figures).
fn ping_rtts(ip: &str, n: u32) -> Vec<f64> {
    let out = Command::new("ping")
        .args(["-n", "-c", &n.to_string(), "-i", "0.05", "-W", "2", ip])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(rtts.len() as u32 >= n * 9 / 10, "ping {ip}: {text}");
    rtts
}

/// A container's egress to the host delayed by 50 ms, measured by `ping` from the host: a real
/// podman container (its own netns, netavark's bridge), the client outside it, a second
/// container untouched.
#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_delay_on_a_container_measured_from_outside() {
    let podman = netlab::podman::Podman::new("vmd");
    let me = std::process::id();
    let a = podman.run(&format!("chaos-vd{me}-a"));
    let b = podman.run(&format!("chaos-vd{me}-b"));
    let chaos = ChaosProcess::start(&[
        "--target",
        &format!("container={}", &a.id[..12]),
        "--rule",
        &format!("dst={}/32 delay=50ms", podman.gateway),
    ]);
    let (mut slow, mut fast) = (ping_rtts(&a.ip, 100), ping_rtts(&b.ip, 100));
    let exit = chaos.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let (slow_p50, fast_p50) = (percentile_of(&mut slow, 0.5), percentile_of(&mut fast, 0.5));
    eprintln!(
        "container delay=50ms: ping p0 {:.1} p50 {slow_p50:.1} ms; other container p50 {fast_p50:.1} ms",
        percentile_of(&mut slow, 0.0)
    );
    assert!(
        percentile_of(&mut slow, 0.0) >= 45.0,
        "every reply held: {slow:?}"
    );
    assert!(slow_p50 < 70.0, "held about 50 ms: {slow:?}");
    assert!(fast_p50 < 20.0, "the other container untouched: {fast:?}");
}

/// The daemon's glob over containers with a TCP delay: one program shared by the matches,
/// fq in each, and local TCP's delay moved to the returning packets through an ifb made with
/// the same index in every container's namespace. Measured as HTTP exchanges from the host.
#[test]
#[ignore = "needs sch_fq: runs inside the 6.12 VM through on_the_fq_kernel"]
fn vm_daemon_delays_every_container_a_glob_matches() {
    use std::io::{Read as _, Write as _};
    let mut podman = netlab::podman::Podman::new("vmg");
    let api = podman.api();
    let me = std::process::id();
    let matched = [
        podman.run(&format!("chaos-vg{me}-a")),
        podman.run(&format!("chaos-vg{me}-b")),
    ];
    let other = podman.run(&format!("chaos-vo{me}"));
    let host = format!("unix://{}", api.display());
    let d = netlab::Daemon::start_with_env(&[], &[("DOCKER_HOST", &host)]);
    let apply = d.ctl(&[
        "apply",
        "--name",
        "slow",
        "--target",
        &format!("container=chaos-vg{me}-*"),
        "--rule",
        "proto=tcp sport=8080 delay=50ms",
    ]);
    assert_eq!(apply.code, Some(0), "{}", apply.stderr);
    // One HTTP/1.0 exchange (connect, request, whole answer), in ms.
    let fetch = |ip: &str| {
        let start = Instant::now();
        let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).unwrap();
        assert!(String::from_utf8_lossy(&body).contains("hello"));
        start.elapsed().as_secs_f64() * 1e3
    };
    let p50 = |ip: &str| {
        let mut t: Vec<f64> = (0..20).map(|_| fetch(ip)).collect();
        (percentile_of(&mut t, 0.0), percentile_of(&mut t, 0.5))
    };
    let slow: Vec<(f64, f64)> = matched.iter().map(|c| p50(&c.ip)).collect();
    let fast = p50(&other.ip);
    eprintln!("glob delay=50ms: matched (p0, p50) {slow:?} ms; other {fast:?} ms");
    for (min, _) in &slow {
        assert!(*min >= 45.0, "every exchange held: {slow:?}");
    }
    assert!(
        fast.1 < 40.0,
        "the container not matched is untouched: {fast:?}"
    );
    let view = d.ctl(&["get", "slow", "--output", "json"]);
    assert!(
        view.stdout.matches("\"attached\"").count() == 2,
        "{}",
        view.stdout
    );
    let delete = d.ctl(&["delete", "slow"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    assert!(p50(&matched[0].ip).1 < 40.0, "deleted: the delay is gone");
    assert_eq!(d.stop().code, Some(0));
}

fn percentile_of(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}
