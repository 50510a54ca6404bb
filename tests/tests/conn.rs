//! Connection faults judged at the application: real sockets and a real HTTP server with curl,
//! in throwaway namespaces, over IPv4 and IPv6, on egress (the client's side) and ingress (the
//! server's side). Run as root through `cargo xtask test`.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use netlab::{
    ChaosProcess, IFACE, Lab, SERVER_V4, SERVER_V6, UdpCounter, assert_binomial, heavy_traffic,
    in_netns, spawn_in_netns,
};
use serde_json::Value;

fn field(report: &Value, name: &str) -> u64 {
    report[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

/// Runs chaos with `rules` in namespace `ns` (on its veth0).
fn chaos(ns: &str, rules: &[&str]) -> ChaosProcess {
    let mut args = vec!["--netns", ns, "--iface", IFACE, "--output", "json"];
    for r in rules {
        args.extend_from_slice(&["--rule", r]);
    }
    ChaosProcess::start(&args)
}

fn stop(chaos: ChaosProcess) -> Vec<Value> {
    let exit = chaos.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "chaos failed: {}", exit.stderr);
    exit.json()
}

/// What the server side saw of one connection: the bytes it read, then how reading ended.
#[derive(Debug)]
struct Served {
    bytes: u64,
    end: ErrorKind,
}

/// Listens on `addr` in `ns` and, for each connection accepted, reads until EOF, an error or
/// `idle` without data, reporting each on the channel. Ends after `conns` connections, or a
/// minute.
fn tcp_server(ns: &str, addr: SocketAddr, conns: usize, idle: Duration) -> mpsc::Receiver<Served> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in_netns(ns, move || {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        // Polled, so the listener (and its namespace) goes within a bounded time whatever
        // the test does.
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut accepted = 0;
        while accepted < conns && Instant::now() < deadline {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            accepted += 1;
            s.set_nonblocking(false).unwrap();
            let tx = tx.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(idle)).unwrap();
                let mut buf = [0u8; 65536];
                let mut bytes = 0;
                let end = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break ErrorKind::UnexpectedEof,
                        Ok(n) => bytes += n as u64,
                        Err(e) => break e.kind(),
                    }
                };
                tx.send(Served { bytes, end }).ok();
            });
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server did not start");
    rx
}

fn server_v(v6: bool) -> IpAddr {
    if v6 {
        SERVER_V6.into()
    } else {
        SERVER_V4.into()
    }
}

/// `connect()` from `ns`: the error kind (None: connected) and how long it took.
fn connect(ns: &str, dst: SocketAddr) -> (Option<ErrorKind>, Duration) {
    in_netns(ns, move || {
        let start = Instant::now();
        let r = TcpStream::connect_timeout(&dst, Duration::from_secs(3));
        (r.err().map(|e| e.kind()), start.elapsed())
    })
}

/// refuse: `connect()` fails with ECONNREFUSED at once, over IPv4 on the client's egress and
/// IPv6 on the server's ingress; another port connects.
#[test]
fn refuse_fails_connect_at_once_and_spares_other_ports() {
    for (tag, v6, on_server, dir) in [
        ("ref4e", false, false, "egress"),
        ("ref6i", true, true, "ingress"),
    ] {
        let lab = Lab::new(tag);
        let ip = server_v(v6);
        // Listening: a refusal can only come from chaos.
        let _refused = tcp_server(&lab.b, (ip, 8080).into(), 1, Duration::from_secs(1));
        let _open = tcp_server(&lab.b, (ip, 8081).into(), 1, Duration::from_secs(1));
        let ns = if on_server { &lab.b } else { &lab.a };
        let rule = format!("dir={dir} proto=tcp dport=8080 refuse=yes");
        let c = chaos(ns, &[&rule]);
        let (err, took) = connect(&lab.a, (ip, 8080).into());
        eprintln!("{tag}: {rule}: connect() refused after {took:?}");
        assert_eq!(err, Some(ErrorKind::ConnectionRefused), "{tag}: {rule}");
        assert!(
            took < Duration::from_millis(50),
            "{tag}: refused after {took:?}"
        );
        let (err, _) = connect(&lab.a, (ip, 8081).into());
        assert_eq!(err, None, "{tag}: port 8081 must connect");
        let report = &stop(c)[0];
        assert_eq!(field(report, "conns_refused"), 1, "{report}");
        assert_eq!(field(report, "conns_seen"), 1, "{report}");
    }
}

/// The client side of a connection that writes 100 bytes every 10 ms until a call fails: that
/// call's error and when it came, from the connection's start.
fn write_until_error(ns: &str, dst: SocketAddr, limit: Duration) -> (ErrorKind, Duration) {
    in_netns(ns, move || {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        while start.elapsed() < limit {
            if let Err(e) = s.write_all(&[7u8; 100]) {
                return (e.kind(), start.elapsed());
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("no error within {limit:?}");
    })
}

/// reset after=1s: both ends of an established connection get ECONNRESET, one second (±100 ms)
/// after it opened, over IPv4 on egress and IPv6 on ingress.
#[test]
fn reset_aborts_both_ends_after_one_second() {
    for (tag, v6, on_server, dir) in [
        ("rst4e", false, false, "egress"),
        ("rst6i", true, true, "ingress"),
    ] {
        let lab = Lab::new(tag);
        let ip = server_v(v6);
        let served = tcp_server(&lab.b, (ip, 8080).into(), 1, Duration::from_secs(5));
        let ns = if on_server { &lab.b } else { &lab.a };
        let rule = format!("dir={dir} proto=tcp dport=8080 reset=yes after=1s");
        let c = chaos(ns, &[&rule]);
        let (err, at) = write_until_error(&lab.a, (ip, 8080).into(), Duration::from_secs(5));
        eprintln!("{tag}: {rule}: the client's write failed with {err:?} {at:?} in");
        assert!(
            matches!(err, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{tag}: client got {err:?}"
        );
        assert!(
            (Duration::from_millis(900)..=Duration::from_millis(1100)).contains(&at),
            "{tag}: reset at {at:?}"
        );
        let server = served
            .recv_timeout(Duration::from_secs(5))
            .expect("server end");
        assert_eq!(
            server.end,
            ErrorKind::ConnectionReset,
            "{tag}: server {server:?}"
        );
        let report = &stop(c)[0];
        assert_eq!(field(report, "conns_reset"), 1, "{report}");
    }
}

/// hang: the connection opens, then nothing passes either way until the application's own
/// timeout; a connection to another port is untouched.
#[test]
fn hang_blocks_until_the_applications_timeout() {
    for (tag, v6, on_server, dir) in [
        ("hang4e", false, false, "egress"),
        ("hang6i", true, true, "ingress"),
    ] {
        let lab = Lab::new(tag);
        let ip = server_v(v6);
        let hung = tcp_server(&lab.b, (ip, 8080).into(), 1, Duration::from_millis(1500));
        let open = tcp_server(&lab.b, (ip, 8081).into(), 1, Duration::from_millis(1500));
        let ns = if on_server { &lab.b } else { &lab.a };
        let rule = format!("dir={dir} proto=tcp dport=8080 hang=yes");
        let c = chaos(ns, &[&rule]);
        for (port, want) in [(8080u16, 0u64), (8081, 5)] {
            let dst: SocketAddr = (ip, port).into();
            let got = in_netns(&lab.a, move || {
                let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
                    .expect("the handshake completes");
                s.write_all(b"hello").unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut buf = [0u8; 16];
                s.read(&mut buf).map_err(|e| e.kind())
            });
            let served = (if port == 8080 { &hung } else { &open })
                .recv_timeout(Duration::from_secs(5))
                .expect("server end");
            assert_eq!(served.bytes, want, "{tag}: port {port}: {served:?}");
            if port == 8080 {
                assert_eq!(got, Err(ErrorKind::WouldBlock), "{tag}: recv must time out");
                assert_eq!(served.end, ErrorKind::WouldBlock, "{tag}: {served:?}");
            } else {
                assert_eq!(got, Ok(0), "{tag}: the other port closes cleanly");
            }
        }
        let report = &stop(c)[0];
        assert_eq!(field(report, "conns_hung"), 1, "{report}");
    }
}

/// after-bytes=10000: the receiver gets exactly 10,000 of 100,000 bytes sent in one write (GSO
/// packets on veth), then the connection hangs or is reset.
#[test]
fn after_bytes_delivers_exactly_n_then_hangs_or_resets() {
    for (tag, v6, on_server, dir, fault) in [
        ("ab4e", false, false, "egress", "hang"),
        ("ab6i", true, true, "ingress", "reset"),
        ("ab6e", true, false, "egress", "reset"),
        ("ab4i", false, true, "ingress", "hang"),
    ] {
        let lab = Lab::new(tag);
        let ip = server_v(v6);
        let served = tcp_server(&lab.b, (ip, 8080).into(), 1, Duration::from_secs(3));
        let ns = if on_server { &lab.b } else { &lab.a };
        let rule = format!("dir={dir} proto=tcp dport=8080 {fault}=yes after-bytes=10000");
        let c = chaos(ns, &[&rule]);
        let dst: SocketAddr = (ip, 8080).into();
        let client = spawn_in_netns(&lab.a, move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(8))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            // The send buffer may take it all: how the connection ended shows on a read.
            let wrote = s.write_all(&vec![1u8; 100_000]);
            let mut buf = [0u8; 16];
            wrote.and_then(|()| s.read(&mut buf)).map_err(|e| e.kind())
        });
        let server = served
            .recv_timeout(Duration::from_secs(15))
            .expect("server end");
        let client = client.join().unwrap();
        let report = &stop(c)[0];
        assert_eq!(server.bytes, 10_000, "{tag}: {rule}: {server:?} {report}");
        let want = if fault == "hang" {
            ErrorKind::WouldBlock
        } else {
            ErrorKind::ConnectionReset
        };
        assert_eq!(server.end, want, "{tag}: {server:?}");
        assert_eq!(client, Err(want), "{tag}: the client's side");
        let counter = if fault == "hang" {
            "conns_hung"
        } else {
            "conns_reset"
        };
        assert_eq!(field(report, counter), 1, "{report}");
    }
}

/// conn-p=30% over 2,000 connections: the share refused is within 4σ, and the counters say
/// how many were seen and chosen.
#[test]
fn conn_p_chooses_a_share_of_connections() {
    const CONNS: u64 = 2000;
    let _traffic = heavy_traffic();
    let lab = Lab::new("connp");
    let dst: SocketAddr = (SERVER_V4, 8080).into();
    let _served = tcp_server(&lab.b, dst, CONNS as usize, Duration::from_millis(200));
    let c = chaos(&lab.a, &["proto=tcp dport=8080 conn-p=30% refuse=yes"]);
    let refused = in_netns(&lab.a, move || {
        let mut refused = 0;
        for _ in 0..CONNS {
            match TcpStream::connect_timeout(&dst, Duration::from_secs(3)) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
                Err(e) => panic!("connect: {e}"),
            }
        }
        refused
    });
    eprintln!("conn-p=30%: {refused} of {CONNS} connections refused");
    assert_binomial("conn-p=30%", refused, CONNS, 0.3);
    let report = &stop(c)[0];
    assert_eq!(field(report, "conns_seen"), CONNS, "{report}");
    assert_eq!(field(report, "conns_chosen"), refused, "{report}");
    assert_eq!(field(report, "conns_refused"), refused, "{report}");
}

/// A chosen UDP flow is faulted wholly, an unchosen one not at all: 400 flows (source ports)
/// of 10 datagrams each under conn-p=30% drop=100% arrive whole or not at all.
#[test]
fn conn_p_faults_each_udp_flow_wholly_or_not_at_all() {
    const FLOWS: u64 = 400;
    const EACH: u64 = 10;
    let _traffic = heavy_traffic();
    let lab = Lab::new("connpu");
    let dst: SocketAddr = (SERVER_V6, 9000).into();
    let rx = UdpCounter::start(&lab.b, dst);
    let c = chaos(
        &lab.b,
        &["dir=ingress proto=udp dport=9000 conn-p=30% drop=100%"],
    );
    in_netns(&lab.a, move || {
        // Every flow keeps its socket, and so its source port, to the end: a port used again
        // would be the same 5-tuple, the same flow.
        let mut socks = Vec::new();
        for flow in 0..FLOWS {
            let sock = UdpSocket::bind("[::]:0").unwrap();
            for i in 0..EACH {
                let mut buf = [0u8; 16];
                buf[..8].copy_from_slice(&(flow * EACH + i).to_be_bytes());
                sock.send_to(&buf, dst).unwrap();
            }
            socks.push(sock);
        }
    });
    let got = rx.finish_after(Duration::from_millis(200));
    assert_eq!(got.errors, 0, "receiver drops");
    let mut per_flow = vec![0u64; FLOWS as usize];
    for a in &got.arrivals {
        per_flow[(a.seq / EACH) as usize] += 1;
    }
    let partial: Vec<_> = per_flow
        .iter()
        .filter(|n| **n != 0 && **n != EACH)
        .collect();
    assert!(partial.is_empty(), "flows faulted in part: {partial:?}");
    let lost_flows = per_flow.iter().filter(|n| **n == 0).count() as u64;
    eprintln!("conn-p=30% drop=100%: {lost_flows} of {FLOWS} UDP flows lost whole, none in part");
    assert_binomial("conn-p=30% of UDP flows", lost_flows, FLOWS, 0.3);
    let report = &stop(c)[0];
    assert_eq!(field(report, "conns_seen"), FLOWS, "{report}");
    assert_eq!(field(report, "conns_chosen"), lost_flows, "{report}");
}

/// max-conns=3: the first three connections are refused, every later one connects.
#[test]
fn max_conns_faults_only_the_first_ones() {
    let lab = Lab::new("maxc");
    let dst: SocketAddr = (SERVER_V4, 8080).into();
    let _served = tcp_server(&lab.b, dst, 10, Duration::from_millis(200));
    let c = chaos(&lab.a, &["proto=tcp dport=8080 refuse=yes max-conns=3"]);
    let results: Vec<_> = (0..8).map(|_| connect(&lab.a, dst).0).collect();
    let refused = Some(ErrorKind::ConnectionRefused);
    assert_eq!(
        results,
        [refused, refused, refused, None, None, None, None, None],
        "refused, then transient no more"
    );
    let report = &stop(c)[0];
    assert_eq!(
        (field(report, "conns_seen"), field(report, "conns_chosen")),
        (8, 3),
        "{report}"
    );
}

/// duplicate=10%: the receiver sees each datagram once or twice, the copies within 4σ and
/// equal to the counter.
#[test]
fn duplicate_at_the_receiver() {
    const N: u64 = 20_000;
    let _traffic = heavy_traffic();
    for (tag, on_server, dir) in [("dup4e", false, "egress"), ("dup4i", true, "ingress")] {
        let lab = Lab::new(tag);
        let dst: SocketAddr = (SERVER_V4, 9000).into();
        let rx = UdpCounter::start(&lab.b, dst);
        let ns = if on_server { &lab.b } else { &lab.a };
        let c = chaos(
            ns,
            &[&format!("dir={dir} proto=udp dport=9000 duplicate=10%")],
        );
        let errors = netlab::udp_send(&lab.a, dst, N, 64);
        let got = rx.finish_after(Duration::from_millis(200));
        assert_eq!(
            (errors, got.errors),
            (0, 0),
            "{tag}: send or receive errors"
        );
        assert_eq!(got.distinct, N, "{tag}: nothing lost");
        let copies = got.arrivals.len() as u64 - got.distinct;
        eprintln!("{tag}: duplicate=10%: {copies} copies of {N} datagrams");
        assert_binomial(tag, copies, N, 0.1);
        let report = &stop(c)[0];
        assert_eq!(field(report, "duplicated_packets"), copies, "{report}");
    }
}

/// corrupt=10%: with checksum offload off on both ends, the receiving kernel verifies every
/// UDP checksum, so a datagram that arrives passed it. Each arrives; a share within 4σ has
/// exactly one bit flipped, the rest none.
#[test]
fn corrupt_flips_one_bit_and_the_checksum_still_verifies() {
    const N: u64 = 10_000;
    const LEN: usize = 200;
    let _traffic = heavy_traffic();
    for (tag, v6, on_server, dir) in [
        ("cor4e", false, false, "egress"),
        ("cor6i", true, true, "ingress"),
    ] {
        let lab = Lab::new(tag);
        for ns in [&lab.a, &lab.b] {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", ns, "ethtool", "-K", IFACE, "tx", "off", "rx", "off",
                ])
                .output()
                .expect("ethtool (cargo xtask bootstrap installs it)");
            assert!(
                out.status.success(),
                "ethtool: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dst: SocketAddr = (server_v(v6), 9000).into();
        let (tx, rx) = mpsc::channel();
        let receiver = spawn_in_netns(&lab.b, move || {
            let sock = UdpSocket::bind(dst).unwrap();
            netlab::set_rcvbuf(&sock, 32 << 20);
            // The first datagram comes once chaos is up; the end is 300 ms without any.
            sock.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let before = udp_errors(v6);
            tx.send(()).unwrap();
            let mut flips = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = sock.recv(&mut buf) {
                sock.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                assert_eq!(n, LEN);
                // In order and none lost on a veth pair (both checked below): the n-th to
                // arrive is the n-th sent, whichever of its bits, its number's included, flipped.
                let want = pattern(flips.len() as u64);
                let bits: u32 = buf[..LEN]
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a ^ b).count_ones())
                    .sum();
                flips.push(bits);
            }
            (flips, udp_errors(v6) - before)
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let ns = if on_server { &lab.b } else { &lab.a };
        let c = chaos(
            ns,
            &[&format!("dir={dir} proto=udp dport=9000 corrupt=10%")],
        );
        in_netns(&lab.a, move || {
            let sock = UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" }).unwrap();
            for seq in 0..N {
                sock.send_to(&pattern(seq), dst).unwrap();
            }
        });
        let (flips, errors) = receiver.join().unwrap();
        assert_eq!(errors, 0, "{tag}: checksum or receive errors");
        assert_eq!(flips.len() as u64, N, "{tag}: every datagram arrives");
        assert!(
            flips.iter().all(|b| *b <= 1),
            "{tag}: at most one bit flipped"
        );
        let corrupted = flips.iter().filter(|b| **b == 1).count() as u64;
        eprintln!(
            "{tag}: corrupt=10%: {corrupted} of {N} datagrams with one bit flipped, all checksums verified"
        );
        assert_binomial(tag, corrupted, N, 0.1);
        let report = &stop(c)[0];
        assert_eq!(field(report, "corrupted_packets"), corrupted, "{report}");
    }
}

/// UDP checksum and receive errors in the calling thread's namespace, of one family.
fn udp_errors(v6: bool) -> u64 {
    if !v6 {
        return netlab::udp_receive_errors() + netlab::snmp("Udp", "InCsumErrors");
    }
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp6").expect("read snmp6");
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .filter(|(k, _)| matches!(*k, "Udp6InErrors" | "Udp6RcvbufErrors" | "Udp6InCsumErrors"))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        .sum()
}

/// A datagram's expected payload: its sequence number, then bytes that follow from it.
fn pattern(seq: u64) -> Vec<u8> {
    let mut p = vec![0u8; 200];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    p
}

/// Gilbert-Elliott loss=ge:2%/25%: loss p/(p+r) = 7.4 % and bursts of 1/r = 4 datagrams on
/// average, both within 4σ of the chain's own variance (a Markov chain's losses are correlated:
/// the loss share's variance is the binomial one times (1+λ)/(1-λ), λ = 1-p-r).
#[test]
fn gilbert_elliott_loss_share_and_burst_length() {
    const N: u64 = 40_000;
    let (p, r) = (0.02f64, 0.25f64);
    let _traffic = heavy_traffic();
    let lab = Lab::new("ge");
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let rx = UdpCounter::start(&lab.b, dst);
    let c = chaos(&lab.a, &["proto=udp dport=9000 loss=ge:2%/25%"]);
    let errors = netlab::udp_send(&lab.a, dst, N, 64);
    let got = rx.finish();
    assert_eq!((errors, got.1), (0, 0), "send or receive errors");
    let report = &stop(c)[0];
    let lost = field(report, "dropped_packets");
    assert_eq!(N - got.0, lost, "the receiver's losses are the rule's");
    let share = lost as f64 / N as f64;
    let pi = p / (p + r);
    eprintln!(
        "loss=ge:2%/25%: {lost} of {N} lost ({:.2} %, model {:.2} %)",
        share * 100.0,
        pi * 100.0
    );
    let lambda = 1.0 - p - r;
    let sigma = (pi * (1.0 - pi) / N as f64 * (1.0 + lambda) / (1.0 - lambda)).sqrt();
    assert!(
        (share - pi).abs() <= 4.0 * sigma,
        "loss {share:.4}, model {pi:.4} ± {:.4}",
        4.0 * sigma
    );
}

/// Bursts measured at the receiver: runs of consecutive missing sequence numbers.
#[test]
fn gilbert_elliott_bursts_at_the_receiver() {
    const N: u64 = 40_000;
    let r = 0.25f64;
    let _traffic = heavy_traffic();
    let lab = Lab::new("geb");
    let dst: SocketAddr = (SERVER_V6, 9000).into();
    let rx = UdpCounter::start(&lab.b, dst);
    let c = chaos(&lab.b, &["dir=ingress proto=udp dport=9000 loss=ge:2%/25%"]);
    let errors = netlab::udp_send(&lab.a, dst, N, 64);
    let got = rx.finish_after(Duration::from_millis(200));
    assert_eq!((errors, got.errors), (0, 0), "send or receive errors");
    stop(c);
    let mut present = vec![false; N as usize];
    for a in &got.arrivals {
        present[a.seq as usize] = true;
    }
    let mut bursts = Vec::new();
    let mut run = 0u64;
    for p in present {
        if p {
            if run > 0 {
                bursts.push(run);
            }
            run = 0;
        } else {
            run += 1;
        }
    }
    let b = bursts.len() as f64;
    let mean = bursts.iter().sum::<u64>() as f64 / b;
    // Geometric bursts: mean 1/r, variance (1-r)/r².
    let sigma = ((1.0 - r) / (r * r) / b).sqrt();
    eprintln!(
        "loss=ge:2%/25%: {} bursts, mean {mean:.2} datagrams (model {:.2})",
        bursts.len(),
        1.0 / r
    );
    assert!(
        bursts.len() > 200,
        "too few bursts to judge: {}",
        bursts.len()
    );
    assert!(
        (mean - 1.0 / r).abs() <= 4.0 * sigma,
        "mean burst {mean:.2}, model {:.2} ± {:.2}",
        1.0 / r,
        4.0 * sigma
    );
}

/// curl against a real HTTP server (Python's http.server) on four ports: refused (curl exit 7),
/// hung (28, its timeout), reset (56, connection reset while receiving), untouched (0).
#[test]
fn curl_against_a_real_http_server() {
    let lab = Lab::new("curl");
    let mut servers = Vec::new();
    for port in ["8001", "8002", "8003", "8004"] {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.b,
                "python3",
                "-m",
                "http.server",
                "--bind",
                "198.18.0.2",
                port,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server");
        servers.push(netlab::serve::KillOnDrop(child));
    }
    // Wait for the servers: each answers a plain request first.
    for port in [8001, 8002, 8003, 8004] {
        let dst: SocketAddr = (SERVER_V4, port).into();
        let up = in_netns(&lab.a, move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&dst, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(up, "http.server on {port} did not start");
    }
    let c = chaos(
        &lab.a,
        &[
            "proto=tcp dport=8001 refuse=yes",
            "proto=tcp dport=8002 hang=yes",
            "proto=tcp dport=8003 reset=yes",
        ],
    );
    for (port, want) in [(8001, 7), (8002, 28), (8003, 56), (8004, 0)] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.a,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                &format!("http://198.18.0.2:{port}/"),
            ])
            .output()
            .expect("curl");
        assert_eq!(out.status.code(), Some(want), "curl to :{port}");
    }
    let reports = stop(c);
    assert_eq!(field(&reports[0], "conns_refused"), 1);
    assert_eq!(field(&reports[1], "conns_hung"), 1);
    assert_eq!(field(&reports[2], "conns_reset"), 1);
    drop(servers);
}

/// The daemon: an experiment that resets connections to one port mixes with one that drops
/// datagrams to another; deleting the reset experiment restores the connections at once, and
/// the counters (API and /metrics) say what happened.
#[test]
fn the_daemon_mixes_reset_with_drop_and_delete_restores() {
    let _traffic = heavy_traffic();
    let lab = Lab::new("dconn");
    let d = netlab::Daemon::start(&[]);
    let tcp: SocketAddr = (SERVER_V4, 8080).into();
    let udp: SocketAddr = (SERVER_V4, 9000).into();
    let served = tcp_server(&lab.b, tcp, 2, Duration::from_secs(2));
    for (name, rule) in [
        ("resets", "proto=tcp dport=8080 reset=yes"),
        ("drops", "proto=udp dport=9000 drop=100%"),
    ] {
        let apply = d.ctl(&[
            "apply", "--name", name, "--iface", IFACE, "--netns", &lab.a, "--rule", rule,
        ]);
        assert_eq!(apply.code, Some(0), "{}", apply.stderr);
    }
    let exchange = |lab: &Lab| {
        in_netns(&lab.a, move || {
            let mut s = TcpStream::connect_timeout(&tcp, Duration::from_secs(3)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"ping").unwrap();
            // A reset may already have closed it (ENOTCONN): the read tells how.
            s.shutdown(Shutdown::Write).ok();
            let mut buf = [0u8; 16];
            s.read(&mut buf).map_err(|e| e.kind())
        })
    };
    assert_eq!(
        exchange(&lab),
        Err(ErrorKind::ConnectionReset),
        "reset while applied"
    );
    let rx = UdpCounter::start(&lab.b, udp);
    netlab::udp_send(&lab.a, udp, 100, 32);
    assert_eq!(rx.finish().0, 0, "the drop experiment holds beside it");
    let metrics = d.ctl(&["status", "--output", "json"]);
    assert_eq!(metrics.code, Some(0), "{}", metrics.stderr);
    assert!(
        metrics.stdout.contains("\"conns_reset\":1"),
        "status shows the reset: {}",
        metrics.stdout
    );
    let delete = d.ctl(&["delete", "resets"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    assert_eq!(
        exchange(&lab),
        Ok(0),
        "after delete the connection closes cleanly"
    );
    let first = served
        .recv_timeout(Duration::from_secs(5))
        .expect("server end");
    assert_eq!(first.end, ErrorKind::ConnectionReset, "{first:?}");
    let second = served
        .recv_timeout(Duration::from_secs(5))
        .expect("server end");
    assert_eq!(
        (second.bytes, second.end),
        (4, ErrorKind::UnexpectedEof),
        "{second:?}"
    );
    assert_eq!(d.stop().code, Some(0));
}

/// Three namespaces: client — router — server, on 198.18.1.0/24 and 198.18.2.0/24, removed
/// with the value (also when a test panics).
struct Routed {
    client: String,
    router: String,
    server: String,
}

impl Routed {
    fn new(tag: &str) -> Self {
        let lab = Lab::new(tag);
        // The lab's two namespaces serve as client and server; the router is a third.
        let router = format!("{}-r", lab.a);
        let me = Self {
            client: lab.a.clone(),
            router: router.clone(),
            server: lab.b.clone(),
        };
        std::mem::forget(lab);
        netlab::ip(&["netns", "add", &router]);
        // The lab's own pair goes (deleting one end deletes both); a pair to each side comes.
        netlab::ip(&["-n", &me.client, "link", "del", "veth0"]);
        for (ns, peer) in [(&me.client, "to-client"), (&me.server, "to-server")] {
            netlab::ip(&[
                "-n", &router, "link", "add", peer, "type", "veth", "peer", "name", "veth0",
                "netns", ns,
            ]);
        }
        let run = |ns: &str, args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            netlab::ip(&all);
        };
        run(
            &me.client,
            &["addr", "add", "198.18.1.1/24", "dev", "veth0"],
        );
        run(
            &me.server,
            &["addr", "add", "198.18.2.1/24", "dev", "veth0"],
        );
        run(
            &router,
            &["addr", "add", "198.18.1.254/24", "dev", "to-client"],
        );
        run(
            &router,
            &["addr", "add", "198.18.2.254/24", "dev", "to-server"],
        );
        for (ns, links) in [
            (&me.client, &["veth0", "lo"][..]),
            (&me.server, &["veth0", "lo"][..]),
            (&router, &["to-client", "to-server", "lo"][..]),
        ] {
            for l in links {
                run(ns, &["link", "set", l, "up"]);
            }
        }
        run(
            &me.client,
            &["route", "add", "default", "via", "198.18.1.254"],
        );
        run(
            &me.server,
            &["route", "add", "default", "via", "198.18.2.254"],
        );
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "ip_forward: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        for ns in [&self.client, &self.router, &self.server] {
            Command::new("ip").args(["netns", "del", ns]).status().ok();
        }
    }
}

/// Forwarded traffic, and the netlink attachment: chaos on a router's interface towards the
/// server resets the connections it forwards (both ends get ECONNRESET) and refuses those to
/// another port, through a cls_bpf filter instead of a TCX link.
#[test]
fn forwarded_connections_are_reset_and_refused_on_a_router() {
    let net = Routed::new("fwd");
    let server: IpAddr = "198.18.2.1".parse().unwrap();
    let served = tcp_server(
        &net.server,
        (server, 8080).into(),
        1,
        Duration::from_secs(5),
    );
    let _refused = tcp_server(
        &net.server,
        (server, 8081).into(),
        1,
        Duration::from_secs(1),
    );
    let c = ChaosProcess::start(&[
        "--netns",
        &net.router,
        "--iface",
        "to-server",
        "--attach",
        "netlink",
        "--output",
        "json",
        "--rule",
        "proto=tcp dport=8080 reset=yes after=500ms",
        "--rule",
        "proto=tcp dport=8081 refuse=yes",
    ]);
    let (err, _) = connect(&net.client, (server, 8081).into());
    assert_eq!(
        err,
        Some(ErrorKind::ConnectionRefused),
        "refused on the router"
    );
    let (err, at) = write_until_error(&net.client, (server, 8080).into(), Duration::from_secs(5));
    assert!(
        matches!(err, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "client got {err:?}"
    );
    assert!(
        (Duration::from_millis(400)..=Duration::from_millis(700)).contains(&at),
        "reset at {at:?}"
    );
    let end = served
        .recv_timeout(Duration::from_secs(5))
        .expect("server end");
    assert_eq!(
        end.end,
        ErrorKind::ConnectionReset,
        "the server too: {end:?}"
    );
    let reports = stop(c);
    assert_eq!(field(&reports[0], "conns_reset"), 1, "{}", reports[0]);
    assert_eq!(field(&reports[1], "conns_refused"), 1, "{}", reports[1]);
}
