//! netlab: throwaway network sandboxes for chaos's tests and demo.
//!
//! A [`Lab`] is two network namespaces joined by a veth pair, addressed from 198.18.0.0/15 and
//! 2001:db8::/32 only, with names unique to the process and the lab so tests run in parallel.
//! Dropping the lab deletes both namespaces (and with them the veth pair), also when a test
//! panics. Traffic helpers run on threads that have entered a namespace, and every loop in them
//! is bounded in count and time.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Interface name on both sides of the pair (each lives in its own namespace).
pub const IFACE: &str = "veth0";
/// Client side (namespace `a`).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Server side (namespace `b`).
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// A second host address on the server side, for "another host" checks.
pub const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Environment variable giving the namespace-name prefix (default `chaos`): `cargo xtask test`
/// sets one per run so it can check that run left nothing behind.
pub const NETNS_PREFIX_VAR: &str = "CHAOS_NETNS_PREFIX";

/// Serialises the tests that push heavy traffic: on a 2-core machine two of them at once
/// starve each other's receivers, and loss must come from chaos alone.
pub fn heavy_traffic() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding the lock poisons it; the next one may still run.
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, `a` (client) and `b` (server), joined by `veth0` on each side.
pub struct Lab {
    pub a: String,
    pub b: String,
}

impl Lab {
    /// Builds the sandbox. `tag` makes names readable in `ip netns list` while a test runs.
    pub fn new(tag: &str) -> Self {
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = std::env::var(NETNS_PREFIX_VAR).unwrap_or_else(|_| "chaos".to_owned());
        let base = format!("{prefix}-{tag}-{}-{n}", std::process::id());
        let lab = Self {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        // Create both before anything can fail, so Drop always has both names to delete.
        ip(&["netns", "add", &lab.a]);
        ip(&["netns", "add", &lab.b]);
        ip(&[
            "-n", &lab.a, "link", "add", IFACE, "type", "veth", "peer", "name", IFACE, "netns",
            &lab.b,
        ]);
        for (ns, v4, v6) in [
            (&lab.a, CLIENT_V4, CLIENT_V6),
            (&lab.b, SERVER_V4, SERVER_V6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", IFACE]);
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                IFACE,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", IFACE, "up"]);
        }
        ip(&[
            "-n",
            &lab.b,
            "addr",
            "add",
            &format!("{OTHER_V4}/24"),
            "dev",
            IFACE,
        ]);
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            // Best effort: a failure here must not hide the test's own panic.
            match Command::new("ip").args(["netns", "del", ns]).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("netlab: could not delete netns {ns}: {other:?}"),
            }
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result. Sockets made there stay
/// in that namespace wherever they are used afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().expect("netns thread panicked")
}

/// Like [`in_netns`], without waiting.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path: PathBuf = ["/run/netns", ns].iter().collect();
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: valid fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
        f()
    })
}

/// One line of `/proc/net/snmp` (or netstat) counters for the calling thread's namespace, e.g.
/// `snmp("Tcp", "RetransSegs")`. Uses thread-self: /proc/self/net is the main thread's namespace.
pub fn snmp(table: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let prefix = format!("{table}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (
        lines.next().expect("snmp header"),
        lines.next().expect("snmp values"),
    );
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no {table}:{field} in snmp"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Kernel-side UDP receive drops in the calling thread's namespace (buffer overflow and
/// checksum errors): must stay zero for application-level loss to be ours alone.
pub fn udp_receive_errors() -> u64 {
    snmp("Udp", "InErrors") + snmp("Udp", "RcvbufErrors")
}

/// CLOCK_MONOTONIC in ns: the clock of datagram send stamps, shared by every namespace of a
/// kernel, and of fq's departure times.
pub fn monotonic_ns() -> u64 {
    clock_ns(rustix::time::ClockId::Monotonic)
}

/// CPU time of the calling thread in ns (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_ns() -> u64 {
    clock_ns(rustix::time::ClockId::ThreadCPUTime)
}

/// The one place this crate reads a clock by id (both ids always exist, so rustix cannot fail).
fn clock_ns(id: rustix::time::ClockId) -> u64 {
    let ts = rustix::time::clock_gettime(id);
    let (secs, nanos) = (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec));
    secs.expect("clock before its epoch") * 1_000_000_000 + nanos.expect("tv_nsec is 0..1e9")
}

/// CPU time the whole host has spent busy (user, nice, system, irq and softirq over every CPU,
/// from /proc/stat) in ns: what a piece of work costs the machine, wherever it ran.
pub fn host_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().next().expect("/proc/stat has a cpu line");
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("/proc/stat counts"))
        .collect();
    // user nice system idle iowait irq softirq [steal ...]: idle, iowait and steal are not ours.
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6];
    // SAFETY: plain libc query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    busy * (1_000_000_000 / hz)
}

/// Index of `iface` in the calling thread's namespace.
pub fn ifindex(iface: &str) -> u32 {
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(
        index,
        0,
        "if_nametoindex {iface}: {}",
        io::Error::last_os_error()
    );
    index
}

/// One datagram as received: its sequence number, send time and one-way latency.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub seq: u64,
    /// When it was sent, by [`monotonic_ns`].
    pub sent_ns: u64,
    pub latency: Duration,
}

/// What a [`UdpCounter`] saw.
#[derive(Debug)]
pub struct Received {
    /// In arrival order, duplicates included.
    pub arrivals: Vec<Arrival>,
    /// Distinct sequence numbers.
    pub distinct: u64,
    /// Kernel UDP receive errors in the namespace meanwhile (must be 0).
    pub errors: u64,
}

/// How long the receiver must have seen nothing, once the sender is done, before everything in
/// flight counts as landed. On a veth pair a datagram lands within microseconds of its send (the
/// peer's softirq runs it at once); this is the margin for a loaded machine.
pub const QUIET: Duration = Duration::from_millis(100);

/// How long after [`UdpCounter::finish`] datagrams may keep arriving before the test fails.
const FINISH_WITHIN: Duration = Duration::from_secs(10);

/// Counts distinct datagrams (by sequence number) arriving on a socket, and records when.
pub struct UdpCounter {
    /// Set by `finish`: the quiet period that ends the count.
    finish: Arc<std::sync::OnceLock<Duration>>,
    /// Datagrams received so far, duplicates included.
    arrived: Arc<AtomicU64>,
    handle: thread::JoinHandle<Received>,
}

impl UdpCounter {
    /// Binds `addr` in namespace `ns` and counts until [`UdpCounter::finish`].
    pub fn start(ns: &str, addr: SocketAddr) -> Self {
        let finish = Arc::new(std::sync::OnceLock::new());
        let finish2 = finish.clone();
        let arrived = Arc::new(AtomicU64::new(0));
        let arrived2 = arrived.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = spawn_in_netns(ns, move || {
            let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            set_rcvbuf(&sock, 32 << 20);
            // The end of a quiet period is seen within this; as before, so the receiver wakes no
            // more often than it did (the VM's delay tests run it under emulation).
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let errors_before = udp_receive_errors();
            tx.send(()).unwrap();
            let mut seen = std::collections::HashSet::new();
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 2048];
            let mut last = Instant::now();
            // When finish was first seen: the quiet period counts from then or a later arrival.
            let mut finishing: Option<(Instant, Duration)> = None;
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 16 => {
                        let now = monotonic_ns();
                        last = Instant::now();
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                        let sent_ns = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                        seen.insert(seq);
                        arrived2.fetch_add(1, Ordering::Relaxed);
                        arrivals.push(Arrival {
                            seq,
                            sent_ns,
                            latency: Duration::from_nanos(now.saturating_sub(sent_ns)),
                        });
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("recv: {e}"),
                }
                if finishing.is_none() {
                    finishing = finish2.get().map(|quiet| (Instant::now(), *quiet));
                }
                if let Some((since, quiet)) = finishing {
                    if last.max(since).elapsed() >= quiet {
                        break;
                    }
                    assert!(
                        since.elapsed() < FINISH_WITHIN,
                        "datagrams to {addr} still arriving {FINISH_WITHIN:?} after the sender finished"
                    );
                }
            }
            Received {
                arrivals,
                distinct: seen.len() as u64,
                errors: udp_receive_errors() - errors_before,
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("receiver did not start");
        Self {
            finish,
            arrived,
            handle,
        }
    }

    /// A live count of the datagrams received so far, e.g. for a sender to stop at the first.
    pub fn arrived(&self) -> Arc<AtomicU64> {
        self.arrived.clone()
    }

    /// Call once the sender is done. Waits until in-flight datagrams have landed (nothing arrived
    /// for [`QUIET`]), then returns
    /// (distinct datagrams received, kernel UDP receive errors in the namespace meanwhile).
    pub fn finish(self) -> (u64, u64) {
        let r = self.finish_after(QUIET);
        (r.distinct, r.errors)
    }

    /// Call once the sender is done. Waits until nothing has arrived for `quiet` (at least
    /// [`QUIET`]; longer for datagrams still held, e.g. by a delay), then returns everything seen.
    pub fn finish_after(self, quiet: Duration) -> Received {
        self.finish
            .set(quiet.max(QUIET))
            .expect("finish is called once");
        self.handle.join().expect("receiver panicked")
    }
}

/// Sets a socket's receive buffer to `bytes`, past `rmem_max`.
pub fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    // SO_RCVBUFFORCE ignores rmem_max (we are root): a burst of 20,000 datagrams must not
    // overflow the socket and look like injected loss.
    // SAFETY: valid fd and option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
}

/// Datagrams of `n` sent from the lab's client to `dst` (its server) that arrive.
pub fn delivered(lab: &Lab, dst: SocketAddr, n: u64) -> u64 {
    let rx = UdpCounter::start(&lab.b, dst);
    assert_eq!(udp_send(&lab.a, dst, n, 64), 0);
    rx.finish().0
}

/// Sends `count` datagrams (8-byte sequence number, 8-byte send time, padding) from namespace
/// `ns` to `dst`, paced in bursts so the receiver keeps up. Returns the number of send errors,
/// which must be zero: injected loss is silent.
pub fn udp_send(ns: &str, dst: SocketAddr, count: u64, payload: usize) -> u64 {
    udp_send_to(ns, &[dst], count, payload, None)
}

/// Like [`udp_send`], to each of `dsts` in turn, one round every `interval` when given.
pub fn udp_send_to(
    ns: &str,
    dsts: &[SocketAddr],
    count: u64,
    payload: usize,
    interval: Option<Duration>,
) -> u64 {
    udp_send_until(ns, dsts, count, payload, interval, || false).0
}

/// Like [`udp_send_to`], stopping early once `done()` holds (asked before each round). Returns
/// (send errors, rounds sent).
pub fn udp_send_until(
    ns: &str,
    dsts: &[SocketAddr],
    count: u64,
    payload: usize,
    interval: Option<Duration>,
    done: impl Fn() -> bool + Send + 'static,
) -> (u64, u64) {
    let dsts = dsts.to_vec();
    in_netns(ns, move || {
        let dst = dsts[0];
        let bind: SocketAddr = match dst.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind).unwrap();
        let mut buf = vec![0u8; payload.max(16)];
        let mut errors = 0;
        let start = Instant::now();
        let mut rounds = 0;
        for seq in 0..count {
            if done() {
                break;
            }
            rounds += 1;
            buf[..8].copy_from_slice(&seq.to_be_bytes());
            for dst in &dsts {
                buf[8..16].copy_from_slice(&monotonic_ns().to_be_bytes());
                if sock.send_to(&buf, dst).is_err() {
                    errors += 1;
                }
            }
            match interval {
                Some(every) => {
                    let next = start + every * (seq as u32 + 1);
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                None if seq % 200 == 199 => thread::sleep(Duration::from_micros(500)),
                None => {}
            }
        }
        (errors, rounds)
    })
}

/// Binomial 4σ check: `observed` successes out of `n` trials with probability `p`.
pub fn assert_binomial(what: &str, observed: u64, n: u64, p: f64) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let (lo, hi) = (mean - 4.0 * sigma, mean + 4.0 * sigma);
    assert!(
        (lo..=hi).contains(&(observed as f64)),
        "{what}: {observed} of {n} is outside {lo:.0}..={hi:.0} (p = {p}, 4σ)"
    );
    eprintln!(
        "{what}: {observed} of {n} ({:.2}%), bound {lo:.0}..={hi:.0}",
        100.0 * observed as f64 / n as f64
    );
}

/// Writes `bytes` to `stream`, ends its sending side, and waits for the peer to close: then
/// every byte was read. Panics past `timeout`.
pub fn send_all_and_wait(stream: &mut TcpStream, bytes: u64, timeout: Duration) {
    let start = Instant::now();
    stream.set_write_timeout(Some(timeout)).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
        assert!(start.elapsed() < timeout, "transfer exceeded {timeout:?}");
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = [0u8; 1];
    let closed = stream.read(&mut rest);
    assert!(
        matches!(closed, Ok(0)),
        "sink did not close cleanly: {closed:?}"
    );
}

/// Result of a bulk TCP transfer.
#[derive(Debug)]
pub struct TcpTransfer {
    pub bytes: u64,
    pub elapsed: Duration,
    /// Tcp RetransSegs grown in the sender's namespace during the transfer.
    pub retrans_segs: u64,
    /// Tcp OutSegs grown in the sender's namespace during the transfer.
    pub out_segs: u64,
}

/// Sends `bytes` from namespace `client` to a sink in namespace `server` on `addr`; panics if it
/// does not complete within `timeout`.
pub fn tcp_bulk(
    client: &str,
    server: &str,
    addr: SocketAddr,
    bytes: u64,
    timeout: Duration,
) -> TcpTransfer {
    let listener = in_netns(server, move || TcpListener::bind(addr).unwrap());
    let sink = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break total,
                Ok(n) => total += n as u64,
                Err(e) => panic!("sink read after {total} bytes: {e}"),
            }
        }
    });
    let sent = in_netns(client, move || {
        let (retrans0, out0) = (snmp("Tcp", "RetransSegs"), snmp("Tcp", "OutSegs"));
        let start = Instant::now();
        let mut stream = TcpStream::connect_timeout(&addr, timeout).unwrap();
        send_all_and_wait(&mut stream, bytes, timeout);
        let elapsed = start.elapsed();
        (
            elapsed,
            snmp("Tcp", "RetransSegs") - retrans0,
            snmp("Tcp", "OutSegs") - out0,
        )
    });
    let received = sink.join().expect("sink panicked");
    assert_eq!(received, bytes, "transfer incomplete");
    TcpTransfer {
        bytes: received,
        elapsed: sent.0,
        retrans_segs: sent.1,
        out_segs: sent.2,
    }
}

/// A running `chaos` process we started; killed and reaped on drop if still running.
pub struct ChaosProcess {
    child: Child,
    stdout: Option<ChildStdout>,
    pub stderr_lines: Vec<String>,
    /// What stderr says after the ready line.
    later_stderr: Arc<StderrLog>,
}

/// Lines a process writes to stderr, kept as they come, and whether its stderr has ended.
#[derive(Default)]
struct StderrLog {
    state: std::sync::Mutex<(Vec<String>, bool)>,
    changed: std::sync::Condvar,
}

impl StderrLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<String>, bool)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut (Vec<String>, bool))) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for `done` to hold over (lines, ended); returns the lines and
    /// whether it held.
    fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[String], bool) -> bool,
    ) -> (Vec<String>, bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state.0, state.1) {
                return (state.0.clone(), true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || state.1 {
                return (state.0.clone(), false);
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// What a `chaos` process left when it ended.
#[derive(Debug)]
pub struct ChaosExit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ChaosExit {
    /// The `--output json` objects, one per rule.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }
}

/// The chaos binary: `CHAOS_BIN` (set by `cargo xtask test`), else the workspace's debug build.
pub fn chaos_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAOS_BIN") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/chaos");
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask test`",
        p.display()
    );
    p
}

/// Line chaos prints on stderr once its rules are live.
pub const READY: &str = "chaos: injecting on";

impl ChaosProcess {
    /// Starts `chaos run` with `args` and waits until it reports its rules live. Panics with its
    /// stderr if it exits first or takes longer than 30 s.
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        Self::spawn(&all, READY)
    }

    /// Starts `chaos` with `args` and waits for a stderr line starting with `ready`.
    pub fn spawn(args: &[&str], ready: &str) -> Self {
        let mut command = Command::new(chaos_bin());
        command.args(args);
        Self::spawn_command(command, ready)
    }

    /// Like [`ChaosProcess::spawn`], for a command that ends up exec'ing chaos (through
    /// `ip netns exec`, say), so the child's PID is chaos's own.
    pub fn spawn_command(mut command: Command, ready: &str) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chaos");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = child.stdout.take();
        let mut me = Self {
            child,
            stdout,
            stderr_lines: Vec::new(),
            later_stderr: Arc::default(),
        };
        // Under the VM's emulation (TCG) the verifier runs many times slower: the stage
        // programs of connection rules alone take it tens of seconds.
        let within = if std::env::var_os(vm::IN_VM_VAR).is_some() {
            Duration::from_secs(180)
        } else {
            Duration::from_secs(30)
        };
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let is_ready = line.starts_with(ready);
                    me.stderr_lines.push(line);
                    if is_ready {
                        break;
                    }
                }
                Err(_) => panic!(
                    "chaos never became ready; stderr:\n{}",
                    me.stderr_lines.join("\n")
                ),
            }
        }
        // Keep draining stderr, so chaos never blocks on a full pipe, and keep what it says.
        let later = me.later_stderr.clone();
        thread::spawn(move || {
            for line in rx {
                later.update(|(lines, _)| lines.push(line));
            }
            // The pipe's end (the reader dropped its sender): every line is in `later`.
            later.update(|(_, ended)| *ended = true);
        });
        me
    }

    /// Waits up to `timeout` for a stderr line (after the ready line) containing `text`, and
    /// returns it; panics with everything said so far if none comes.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> String {
        let (lines, found) = self
            .later_stderr
            .wait_until(timeout, |lines, _| lines.iter().any(|l| l.contains(text)));
        assert!(
            found,
            "chaos did not say {text:?} within {timeout:?}; it said:\n{}",
            lines.join("\n")
        );
        lines.into_iter().find(|l| l.contains(text)).unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to this process (ours, by PID) and waits for it to exit.
    pub fn stop(self, signal: libc::c_int) -> ChaosExit {
        // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
        self.wait(Duration::from_secs(30))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> ChaosExit {
        assert!(
            wait_for_exit(self.pid(), timeout),
            "chaos did not exit within {timeout:?}"
        );
        // It has exited: this reaps it at once.
        let status = self.child.wait().unwrap();
        let mut stdout = String::new();
        if let Some(mut out) = self.stdout.take() {
            out.read_to_string(&mut stdout).unwrap();
        }
        // Its stderr closed with it: wait for the reader to take the last lines from the pipe.
        let (later, ended) = self
            .later_stderr
            .wait_until(Duration::from_secs(10), |_, ended| ended);
        assert!(ended, "chaos's stderr still open after it exited");
        ChaosExit {
            code: status.code(),
            stdout,
            stderr: self
                .stderr_lines
                .iter()
                .chain(later.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Waits up to `timeout` for our child `pid` to exit, without reaping it: its pidfd becomes
/// readable then. Returns whether it exited.
pub fn wait_for_exit(pid: i32, timeout: Duration) -> bool {
    use rustix::{
        event::{PollFd, PollFlags, Timespec, poll},
        io::Errno,
        process::{Pid, PidfdFlags, pidfd_open},
    };
    let pid = Pid::from_raw(pid).expect("a child's PID is positive");
    let fd = pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open");
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let left = Timespec::try_from(left).expect("timeout fits a timespec");
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&left)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::INTR) => {}
            Err(e) => panic!("poll on a pidfd: {e}"),
        }
    }
}

impl Drop for ChaosProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Only reached when a test panicked mid-run: end our own child and reap it.
            if let Err(e) = self.child.kill() {
                eprintln!("netlab: kill chaos {}: {e}", self.child.id());
            }
            if let Err(e) = self.child.wait() {
                eprintln!("netlab: wait chaos: {e}");
            }
        }
    }
}

/// A `chaos daemon` we started, on a socket of its own; killed and reaped on drop if running.
pub struct Daemon {
    pub socket: PathBuf,
    process: ChaosProcess,
    /// Holds the socket; removed on drop, after `process` (fields drop in order).
    _dir: tempfile::TempDir,
}

/// Line the daemon prints on stderr once its API answers.
pub const DAEMON_READY: &str = "chaos: daemon listening on";

impl Daemon {
    /// Starts `chaos daemon` with `args` on a fresh socket and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// As [`Daemon::start`], with `env` set for the daemon (e.g. `DOCKER_HOST`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chaos-test-")
            .tempdir()
            .expect("a temporary directory for the daemon's socket");
        let socket = dir.path().join("chaos.sock");
        let mut command = Command::new(chaos_bin());
        command.args(["daemon", "--socket", socket.to_str().unwrap()]);
        command.args(args);
        command.envs(env.iter().copied());
        Self {
            process: ChaosProcess::spawn_command(command, DAEMON_READY),
            socket,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Sends `signal` to the daemon (ours, by PID) without waiting.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.process.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Stops the daemon with SIGTERM and returns how it ended.
    pub fn stop(self) -> ChaosExit {
        self.process.stop(libc::SIGTERM)
    }

    /// Kills the daemon with SIGKILL; returns once it is dead and reaped.
    pub fn kill(self) -> ChaosExit {
        self.process.stop(libc::SIGKILL)
    }

    /// See [`ChaosProcess::wait_for_stderr`].
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> String {
        self.process.wait_for_stderr(text, timeout)
    }

    /// The daemon's `/metrics`, over its socket.
    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket", self.socket.to_str().unwrap()])
            .arg("http://chaos/metrics")
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a `chaos` client command against this daemon.
    pub fn ctl(&self, args: &[&str]) -> ChaosExit {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--socket", self.socket.to_str().unwrap()]);
        chaos_output(&all)
    }
}

/// Runs `chaos` with `args` to completion (for bad-input checks).
pub fn chaos_output(args: &[&str]) -> ChaosExit {
    let out = Command::new(chaos_bin())
        .args(args)
        .output()
        .expect("run chaos");
    ChaosExit {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub mod cri;
pub mod serve;

/// Polls `done` every 10 ms until it holds and returns how long that took; panics naming
/// `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}
/// Running tests on a second kernel: Debian's 6.12 (which has sch_fq, sch_netem, ifb) under
/// qemu, booted from the host's own root filesystem by `vm/run-in-vm.sh`.
pub mod podman;

pub mod vm {
    use std::{path::PathBuf, process::Command};

    /// Set inside the VM, so a test knows where it runs.
    pub const IN_VM_VAR: &str = "CHAOS_IN_VM";

    /// The project's VM script.
    pub fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vm/run-in-vm.sh")
    }

    /// Where the script caches the kernel and initramfs: under the workspace's target/.
    pub fn cache_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vm")
    }

    /// Boots the VM once and runs, inside it, this test binary's ignored tests whose names start
    /// with `prefix`, one at a time. Panics unless they all pass.
    pub fn run_ignored_tests_here(prefix: &str) {
        assert!(
            std::env::var_os(IN_VM_VAR).is_none(),
            "already inside the VM: run the {prefix}* tests with --ignored"
        );
        let exe = std::env::current_exe().expect("test binary path");
        let mut env = format!(
            "{IN_VM_VAR}=1 CHAOS_BIN={}",
            shell_quote(&super::chaos_bin())
        );
        if let Ok(p) = std::env::var(super::NETNS_PREFIX_VAR) {
            env.push_str(&format!(" {}={p}", super::NETNS_PREFIX_VAR));
        }
        // Each test once more if it fails: under emulation (TCG) the guest now and then stalls
        // for tens of milliseconds (seen: a packet of no rule at p99 33 ms), which timing
        // bounds cannot tell from a fault. A test failing twice in a row fails the run, and
        // every retry is announced in the output.
        let run_one = format!(
            "{env} {} --ignored --exact --test-threads=1 --nocapture",
            shell_quote(&exe)
        );
        let command = format!(
            "for t in {}; do {run_one} \"$t\" || {{ echo \"retrying $t once (VM timing noise)\" >&2; {run_one} \"$t\"; }} || exit 1; done",
            ignored_tests(&exe, prefix).join(" ")
        );
        let status = Command::new("bash")
            .arg(script())
            .arg(&command)
            .env("VM_CACHE", cache_dir())
            .status()
            .expect("run vm/run-in-vm.sh");
        assert!(
            status.success(),
            "tests in the VM failed ({status}); their output is above"
        );
    }

    /// Names of this binary's ignored tests starting with `prefix`.
    fn ignored_tests(exe: &std::path::Path, prefix: &str) -> Vec<String> {
        let out = Command::new(exe)
            .args(["--list", "--ignored", "--format", "terse"])
            .output()
            .expect("list tests");
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|n| n.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        assert!(!names.is_empty(), "no ignored tests starting with {prefix}");
        names
    }

    fn shell_quote(path: &std::path::Path) -> String {
        format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
    }
}
