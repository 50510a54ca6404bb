//! Against the alternatives: chaos in the path of a TCP flow, against a userspace proxy hop
//! (socat from Debian), the floor of what a proxy-based injector such as Toxiproxy costs.
//!
//! One lab. Namespace b runs a sink (198.18.0.2:9101) and an echo server (198.18.0.2:9102).
//! The client in namespace a takes four paths, interleaved in an order that rotates from round
//! to round:
//! - `direct`: straight to the servers;
//! - `direct-again`: the same, a second time: the A/A control, whose difference from `direct`
//!   is the noise floor of the latency and host CPU figures;
//! - `chaos`: straight to the servers with chaos's program on a's veth0 egress (TCX) and a rule
//!   matching the flow that does nothing (`proto=tcp dport=9101-9102 dst=198.18.0.2/32
//!   drop=0`): what chaos costs a flow it is set up for, attached only for this path;
//! - `proxy`: to socat listening in a on 198.18.0.1:9201 and 9202, forwarding to the servers.
//!
//! Throughput and host CPU: per round, one bulk transfer per path (bytes/s from the first write
//! until the sink has closed after reading everything; the whole host's busy CPU time over it,
//! per KiB). Latency: one 64-byte request/response
//! connection per path with TCP_NODELAY, held for the whole run, and many short slices of round
//! trips, the paths interleaved within each slice, so a disturbance from the rest of the
//! machine hits all four alike.
//!
//! `data`: `{ "bulk_rounds": R, "bulk_bytes": N, "slices": S, "round_trips_per_slice": N,
//! "message_bytes": 64, "socat": { "path", "version", "buffer_bytes" }, "rule": "...",
//! "chaos_matched": { "during_chaos": pkts, "during_other_paths": pkts },
//! "paths": { "direct"|"direct-again"|"chaos"|"proxy": { "bytes_per_s": median,
//! "bytes_per_s_rounds": [..], "host_cpu_ns_per_kib", "host_cpu_ns_per_kib_rounds": [..],
//! "rtt_median_us", "rtt_p99_us" (over all round trips),
//! "slice_median_us": [..], "slice_p99_us": [..] } },
//! "added_us": { "direct-again"|"chaos"|"proxy": { "median", "p99", "slices": [..] } },
//! "noise_us": median over slices of |direct-again - direct| (slice medians), "aa_us": [min,
//! max] of direct-again - direct, "throughput_ratio": { "chaos_over_proxy"|
//! "chaos_over_direct"|"proxy_over_direct": { "median", "rounds": [..] } },
//! "host_cpu_ratio_proxy_over_chaos", "added_host_cpu_ns_per_kib": { "chaos"|"proxy": {
//! "median", "ci95": [lo, hi], "rounds": [..] }, "direct-again": { "median", "rounds" } },
//! "host_cpu_noise_ns_per_kib": median over rounds of |direct-again - direct|,
//! "host_cpu_tick_ns_per_kib": one /proc/stat tick per KiB of a transfer,
//! "added_host_cpu_chaos_over_proxy": ratio of the medians }`. Added latency
//! is, within a slice, the path's median (or p99) RTT minus the mean of the two direct runs';
//! the figures are medians over slices. Added host CPU per KiB is likewise, within a round, the
//! path's figure minus the mean of the two direct runs'; the figures are medians over rounds.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use chaos_user::{
    datapath::{AttachMode, Datapath},
    guard::Guard,
    rule::{Direction, Rule},
    ruleset::RuleSetBuilder,
};
use netlab::{CLIENT_V4, IFACE, Lab, SERVER_V4, host_busy_ns, in_netns, send_all_and_wait};
use serde_json::{Value, json};

use crate::{
    Ctx,
    report::{Section, Table},
    stats::{f, median, median_ci, min_max, percentile},
};

const ID: &str = "proxy";
const TITLE: &str = "Against a userspace proxy hop (socat)";

const SINK_PORT: u16 = 9101;
const ECHO_PORT: u16 = 9102;
const PROXY_SINK_PORT: u16 = 9201;
const PROXY_ECHO_PORT: u16 = 9202;
const MESSAGE: usize = 64;
/// socat's copy buffer: its default is 8 KiB; 64 KiB is kinder to it.
const SOCAT_BUFFER: usize = 64 << 10;
/// Bounds every traffic loop and every socket wait.
const LIMIT: Duration = Duration::from_secs(60);
/// The CPU target: chaos's added host CPU per byte at most this share of the proxy's.
const CPU_SHARE_GOAL: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    DirectAgain,
    Chaos,
    Proxy,
}

const PATHS: [Path; 4] = [Path::Direct, Path::Chaos, Path::DirectAgain, Path::Proxy];

impl Path {
    fn id(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::DirectAgain => "direct-again",
            Self::Chaos => "chaos",
            Self::Proxy => "proxy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::DirectAgain => "direct, again (A/A control)",
            Self::Chaos => "chaos in the path (matching rule, drop=0)",
            Self::Proxy => "socat hop",
        }
    }

    fn addrs(self) -> (SocketAddr, SocketAddr) {
        match self {
            Self::Proxy => (
                (CLIENT_V4, PROXY_SINK_PORT).into(),
                (CLIENT_V4, PROXY_ECHO_PORT).into(),
            ),
            _ => ((SERVER_V4, SINK_PORT).into(), (SERVER_V4, ECHO_PORT).into()),
        }
    }
}

/// The sink and echo servers in namespace b; stopped and joined on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (port, echo) in [(SINK_PORT, false), (ECHO_PORT, true)] {
            let addr: SocketAddr = (SERVER_V4, port).into();
            let listener = in_netns(ns, move || TcpListener::bind(addr).unwrap());
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(thread::spawn(move || accept_loop(&listener, echo, &stop)));
        }
        Self { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                eprintln!("bench: proxy: a server thread panicked");
            }
        }
    }
}

/// Serves connections until `stop`; each on its own thread, joined before returning.
fn accept_loop(listener: &TcpListener, echo: bool, stop: &AtomicBool) {
    let mut handlers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                handlers.push(thread::spawn(move || serve(stream, echo)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
        handlers.retain(|h: &thread::JoinHandle<()>| !h.is_finished());
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Sink: reads to EOF, then closes. Echo: writes back what it reads until EOF. A connection
/// idle for longer than `LIMIT` is dropped.
fn serve(mut stream: TcpStream, echo: bool) {
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if echo => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
}

/// A socat we started in its own process group; the group is ended on drop.
struct Socat {
    child: Child,
}

impl Socat {
    fn start(socat: &std::path::Path, ns: &str, listen: u16, to: SocketAddr) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(socat)
            .args([
                "-b".to_owned(),
                SOCAT_BUFFER.to_string(),
                format!("TCP-LISTEN:{listen},bind={CLIENT_V4},reuseaddr,fork,nodelay"),
                format!("TCP:{to},nodelay"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn ip netns exec socat");
        Self { child }
    }

    /// Waits until the listener accepts a connection from namespace `ns` (that probe is
    /// forwarded and closed at once).
    fn wait_ready(&mut self, ns: &str, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr: SocketAddr = (CLIENT_V4, port).into();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("socat exited early: {status}"));
            }
            let ok = in_netns(ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("socat not listening on {addr} after 10 s"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        // `ip netns exec` execs socat, so the child's PID leads the group of socat and the
        // children it forked per connection: end that group, ours, by its id.
        let pgid = self.child.id() as libc::pid_t;
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            // SAFETY: kill(2) on the process group we created.
            unsafe { libc::kill(-pgid, signal) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!("bench: proxy: socat {pgid} did not end");
    }
}

/// socat's path, installing Debian's package if it is missing.
fn find_socat() -> Result<PathBuf, String> {
    let which = || {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .chain(["/usr/bin".into(), "/usr/sbin".into()])
                .map(|d| d.join("socat"))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = which() {
        return Ok(p);
    }
    eprintln!(
        "bench: proxy: socat not found; running apt-get install -y -q --no-install-recommends socat"
    );
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", "socat"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("socat is not installed and apt-get could not run: {e}"))?;
    if !status.success() {
        return Err(format!(
            "socat is not installed and apt-get install socat failed ({status})"
        ));
    }
    which().ok_or_else(|| "apt-get installed socat but it is not on PATH".to_owned())
}

fn socat_version(socat: &std::path::Path) -> String {
    Command::new(socat)
        .arg("-V")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("socat version"))
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Sends `bytes` to the sink at `addr` from namespace `ns`; returns bytes/s from the first
/// write until the sink closed after reading all of it.
fn bulk(ns: &str, addr: SocketAddr, bytes: u64) -> f64 {
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, LIMIT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let start = Instant::now();
        send_all_and_wait(&mut stream, bytes, LIMIT);
        bytes as f64 / start.elapsed().as_secs_f64()
    })
}

/// An echo connection from namespace `ns` to `addr`, with TCP_NODELAY, warmed up by 100 round
/// trips. It stays in `ns` whichever thread uses it.
fn echo_connection(ns: &str, addr: SocketAddr) -> TcpStream {
    let mut stream = in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, LIMIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    });
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    round_trips(&mut stream, 100);
    stream
}

/// `count` round trips of `MESSAGE` bytes; each RTT in µs.
fn round_trips(stream: &mut TcpStream, count: usize) -> Vec<f64> {
    let out = [0x42u8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let start = Instant::now();
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        stream.write_all(&out).unwrap();
        stream.read_exact(&mut back).unwrap();
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(start.elapsed() < LIMIT, "round trips exceeded {LIMIT:?}");
    }
    rtts
}

fn summary(v: &[f64]) -> Value {
    json!({ "median": median(v), "rounds": v })
}

/// `+12` or `-3`: an added figure in whole units, with its sign.
fn signed(x: f64) -> String {
    format!("{x:+.0}")
}

/// chaos's program, attached only while the chaos path runs.
struct Chaos {
    slot: Option<Datapath>,
    ns: String,
}

impl Chaos {
    fn attach(&mut self) {
        let dp = self.slot.take().expect("datapath in its slot");
        self.slot = Some(in_netns(&self.ns, move || {
            let mut dp = dp;
            dp.attach(IFACE, Direction::Egress, AttachMode::Tcx)
                .expect("attach chaos's program (TCX)");
            dp
        }));
    }

    fn detach(&mut self) {
        self.slot
            .as_mut()
            .expect("datapath in its slot")
            .detach_all()
            .expect("detach chaos's program");
    }

    fn matched(&self) -> u64 {
        let dp = self.slot.as_ref().expect("datapath in its slot");
        dp.counters_of(0).unwrap().matched_pkts
    }
}

/// Per path, in `PATHS` order.
type PerPath<T> = [Vec<T>; 4];

pub fn run(ctx: &Ctx) -> Section {
    let bulk_bytes: u64 = ctx.scale(1 << 30, 128 << 20);
    let bulk_rounds: usize = ctx.scale(8, 3);
    let slices: usize = ctx.scale(40, 8);
    let per_slice: usize = ctx.scale(500, 250);

    let socat = match find_socat() {
        Ok(p) => p,
        Err(why) => return Section::skipped(ID, TITLE, why),
    };
    let rule_text = format!("proto=tcp dport={SINK_PORT}-{ECHO_PORT} dst={SERVER_V4}/32 drop=0");
    let rule: Rule = rule_text.parse().expect("the bench's rule parses");
    let mut dp = match Datapath::load() {
        Ok(dp) => dp,
        Err(e) => return Section::skipped(ID, TITLE, format!("cannot load chaos's program: {e}")),
    };
    dp.apply(
        &RuleSetBuilder::new(&Guard::default())
            .rules([rule])
            .build()
            .unwrap(),
    )
    .expect("write the rule set");

    // Declared first, dropped last: the lab outlives the servers, socat and the program.
    let lab = Lab::new("bench-proxy");
    let servers = Servers::start(&lab.b);
    let mut proxies = Vec::new();
    for (listen, to) in [(PROXY_SINK_PORT, SINK_PORT), (PROXY_ECHO_PORT, ECHO_PORT)] {
        let mut p = Socat::start(&socat, &lab.a, listen, (SERVER_V4, to).into());
        if let Err(why) = p.wait_ready(&lab.a, listen) {
            return Section::skipped(ID, TITLE, why);
        }
        proxies.push(p);
    }
    let mut chaos = Chaos {
        slot: Some(dp),
        ns: lab.a.clone(),
    };
    let (mut during_chaos, mut during_other) = (0u64, 0u64);
    // Runs `f` on `path`, with chaos attached when it is the chaos path, and books the rule's
    // matches.
    let mut on_path = |path: Path, f: &mut dyn FnMut()| {
        let before = chaos.matched();
        if path == Path::Chaos {
            chaos.attach();
        }
        f();
        if path == Path::Chaos {
            chaos.detach();
        }
        let grown = chaos.matched() - before;
        if path == Path::Chaos {
            during_chaos += grown;
        } else {
            during_other += grown;
        }
    };

    // Warm-up, not recorded.
    for path in [Path::Direct, Path::Proxy] {
        bulk(&lab.a, path.addrs().0, bulk_bytes / 8);
    }

    let started = Instant::now();
    // Throughput: one bulk transfer per path per round.
    let mut tput: PerPath<f64> = Default::default();
    // Host CPU per byte: a proxy can hide its cost in throughput on an idle core, not here.
    let mut cpu_per_kib: PerPath<f64> = Default::default();
    for round in 0..bulk_rounds {
        for k in 0..PATHS.len() {
            let pi = (k + round) % PATHS.len();
            let path = PATHS[pi];
            let (mut rate, mut busy) = (0.0, 0);
            on_path(path, &mut || {
                let before = host_busy_ns();
                rate = bulk(&lab.a, path.addrs().0, bulk_bytes);
                busy = host_busy_ns() - before;
            });
            cpu_per_kib[pi].push(busy as f64 / (bulk_bytes >> 10) as f64);
            eprintln!(
                "bench:   proxy bulk round {round} {}: {:.2} Gbit/s",
                path.id(),
                rate * 8e-9
            );
            tput[pi].push(rate);
        }
    }
    // Latency: one connection per path, held for the whole run, and many short slices of
    // round trips, the paths' order rotating from slice to slice.
    let mut conns: Vec<TcpStream> = PATHS
        .iter()
        .map(|p| echo_connection(&lab.a, p.addrs().1))
        .collect();
    let mut slice_med: PerPath<f64> = Default::default();
    let mut slice_p99: PerPath<f64> = Default::default();
    let mut pooled: PerPath<f64> = Default::default();
    for slice in 0..slices {
        for k in 0..PATHS.len() {
            let pi = (k + slice) % PATHS.len();
            let mut rtts = Vec::new();
            let conn = &mut conns[pi];
            on_path(PATHS[pi], &mut || rtts = round_trips(conn, per_slice));
            slice_med[pi].push(median(&rtts));
            slice_p99[pi].push(percentile(&rtts, 0.99));
            pooled[pi].extend(rtts);
        }
        if slice % 8 == 7 || slice + 1 == slices {
            eprintln!(
                "bench:   proxy latency slice {slice}: median RTT {}",
                PATHS
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("{} {:.1} µs", p.id(), slice_med[i][slice]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let elapsed = started.elapsed();
    drop(conns);
    drop(proxies);
    drop(servers);
    drop(chaos);

    let idx = |p: Path| PATHS.iter().position(|&q| q == p).unwrap();
    let ratio = |a: Path, b: Path| -> Vec<f64> {
        tput[idx(a)]
            .iter()
            .zip(&tput[idx(b)])
            .map(|(x, y)| x / y)
            .collect()
    };
    // Within each slice (or round): the path's figure minus the mean of the two direct runs'.
    let added = |p: Path, per: &PerPath<f64>| -> Vec<f64> {
        (0..per[idx(p)].len())
            .map(|s| {
                per[idx(p)][s] - (per[idx(Path::Direct)][s] + per[idx(Path::DirectAgain)][s]) / 2.0
            })
            .collect()
    };
    // The A/A difference: direct-again against direct, slice by slice.
    let aa: Vec<f64> = (0..slices)
        .map(|s| slice_med[idx(Path::DirectAgain)][s] - slice_med[idx(Path::Direct)][s])
        .collect();
    // A typical slice's difference between two identical runs: the median, not the largest,
    // so one slice disturbed by the rest of the machine does not swallow every figure.
    let noise = median(&aa.iter().map(|d| d.abs()).collect::<Vec<_>>());
    let (aa_lo, aa_hi) = min_max(&aa);

    // SAFETY: plain libc query.
    let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let mut section = Section::new(ID, TITLE);
    let mut paths_json = serde_json::Map::new();
    let mut added_json = serde_json::Map::new();
    let mut table = Table::new(
        &format!(
            "Per path: throughput and host CPU median over {bulk_rounds} rounds (added: \
             median over rounds of the path's figure minus the mean of the two direct runs' \
             in the same round); RTT over {} round trips \
             each, in {slices} interleaved slices; added RTT: median over slices of the path's \
             slice figure minus the mean of the two direct runs' in the same slice",
            slices * per_slice
        ),
        &[
            "path",
            "throughput (Gbit/s)",
            "throughput / direct",
            "host CPU per KiB (ns)",
            "added host CPU per KiB (ns)",
            "RTT median (µs)",
            "RTT p99 (µs)",
            "added RTT median (µs)",
            "added RTT p99 (µs)",
        ],
    );
    for p in PATHS {
        let i = idx(p);
        let is_direct = p == Path::Direct;
        let add_med = added(p, &slice_med);
        let add_p99 = added(p, &slice_p99);
        paths_json.insert(
            p.id().to_owned(),
            json!({
                "bytes_per_s": median(&tput[i]),
                "bytes_per_s_rounds": tput[i],
                "host_cpu_ns_per_kib": median(&cpu_per_kib[i]),
                "host_cpu_ns_per_kib_rounds": cpu_per_kib[i],
                "rtt_median_us": median(&pooled[i]),
                "rtt_p99_us": percentile(&pooled[i], 0.99),
                "slice_median_us": slice_med[i],
                "slice_p99_us": slice_p99[i],
            }),
        );
        if !is_direct {
            added_json.insert(
                p.id().to_owned(),
                json!({ "median": median(&add_med), "p99": median(&add_p99), "slices": add_med }),
            );
        }
        let dash = |v: &[f64]| {
            if is_direct {
                "—".to_owned()
            } else {
                f(median(v), 1)
            }
        };
        table.row(vec![
            p.label().to_owned(),
            f(median(&tput[i]) * 8e-9, 2),
            f(median(&ratio(p, Path::Direct)), 3),
            f(median(&cpu_per_kib[i]), 0),
            if is_direct {
                "—".to_owned()
            } else {
                signed(median(&added(p, &cpu_per_kib)))
            },
            f(median(&pooled[i]), 1),
            f(percentile(&pooled[i], 0.99), 1),
            dash(&add_med),
            dash(&add_p99),
        ]);
    }
    section.tables.push(table);

    let sane = during_chaos > 0 && during_other == 0;
    let chaos_over_proxy = ratio(Path::Chaos, Path::Proxy);
    let cpu_ratio = median(&cpu_per_kib[idx(Path::Proxy)]) / median(&cpu_per_kib[idx(Path::Chaos)]);
    // Host CPU per byte added over the direct path, round by round; the A/A difference is its
    // noise.
    let cpu_aa: Vec<f64> = (0..bulk_rounds)
        .map(|r| cpu_per_kib[idx(Path::DirectAgain)][r] - cpu_per_kib[idx(Path::Direct)][r])
        .collect();
    let cpu_noise = median(&cpu_aa.iter().map(|d| d.abs()).collect::<Vec<_>>());
    let (chaos_cpu, proxy_cpu) = (
        added(Path::Chaos, &cpu_per_kib),
        added(Path::Proxy, &cpu_per_kib),
    );
    let (chaos_cpu_med, proxy_cpu_med) = (median(&chaos_cpu), median(&proxy_cpu));
    let (chaos_cpu_lo, chaos_cpu_hi) = median_ci(&chaos_cpu);
    let (proxy_cpu_lo, proxy_cpu_hi) = median_ci(&proxy_cpu);
    let added_ratio = chaos_cpu_med / proxy_cpu_med;
    let cpu_within_noise = chaos_cpu_med.abs() <= cpu_noise;
    // How small a cost this run can tell from nothing, against the proxy's added cost.
    let noise_share = cpu_noise / proxy_cpu_med;
    let resolution = if noise_share <= CPU_SHARE_GOAL {
        format!(
            "the noise is {} of socat's added cost, finer than the goal",
            f(noise_share, 3)
        )
    } else {
        format!(
            "the noise is {} of socat's added cost, coarser than the goal: this run cannot \
             tell a cost of 1/10 from none",
            f(noise_share, 3)
        )
    };
    section.target(
        "vs proxy added host CPU",
        "chaos's host CPU per byte added over the direct path ≤ 1/10 of the proxy's",
        format!(
            "chaos {} ns/KiB [{}–{}]{}, socat {} ns/KiB [{}–{}]: chaos/socat {} (goal ≤ {}; \
             A/A noise {} ns/KiB; {resolution}; direct path {} ns/KiB)",
            signed(chaos_cpu_med),
            signed(chaos_cpu_lo),
            signed(chaos_cpu_hi),
            if cpu_within_noise {
                " (within noise)"
            } else {
                ""
            },
            signed(proxy_cpu_med),
            signed(proxy_cpu_lo),
            signed(proxy_cpu_hi),
            f(added_ratio, 3),
            f(CPU_SHARE_GOAL, 2),
            f(cpu_noise, 0),
            f(median(&cpu_per_kib[idx(Path::Direct)]), 0),
        ),
        sane && proxy_cpu_med > 0.0 && chaos_cpu_med <= proxy_cpu_med * CPU_SHARE_GOAL,
    );
    let chaos_added = median(&added(Path::Chaos, &slice_med));
    let proxy_added = median(&added(Path::Proxy, &slice_med));
    let within_noise = chaos_added <= noise;
    section.target(
        "vs proxy added latency",
        "chaos's added RTT < 1/3 of the proxy's",
        format!(
            "chaos {} µs{}, socat {} µs (median RTT; A/A noise {} µs, range {}–{} µs)",
            f(chaos_added, 2),
            if within_noise { " (within noise)" } else { "" },
            f(proxy_added, 2),
            f(noise, 2),
            f(aa_lo, 2),
            f(aa_hi, 2)
        ),
        sane && chaos_added < proxy_added / 3.0,
    );

    section.note(format!(
        "Throughput: per round, one bulk transfer of {} MiB per path (bytes/s from the first \
         write until the sink, having read everything, closed), the paths' order rotating from \
         round to round. Latency: one {MESSAGE}-byte request/response connection per path with \
         TCP_NODELAY (100 untimed round trips first), held through {slices} slices of \
         {per_slice} round trips per path, the order rotating from slice to slice.",
        bulk_bytes >> 20
    ));
    section.note(format!(
        "chaos path: the real program attached by TCX to a's veth0 egress only while that path \
         runs, rule `{rule_text}` (matches the flow, does nothing). Its rule counted \
         {during_chaos} packets during the chaos runs and {during_other} during the others \
         (must be 0)."
    ));
    section.note(format!(
        "proxy path: `{}` ({}) in namespace a: `-b {SOCAT_BUFFER} \
         TCP-LISTEN:{PROXY_SINK_PORT},bind={CLIENT_V4},reuseaddr,fork,nodelay \
         TCP:{SERVER_V4}:{SINK_PORT},nodelay` and the same for the echo port; the client reaches \
         it over loopback, as a sidecar. socat copies with read/write through a {} KiB buffer \
         (its default is 8 KiB) and forks per connection: a floor for a proxy-based injector, \
         which does at least this much. On 2 cores the proxy also competes for CPU with the \
         client and the servers, which is part of what it costs.",
        socat.display(),
        socat_version(&socat),
        SOCAT_BUFFER >> 10
    ));
    section.note(format!(
        "Host CPU per KiB is the busy time of all CPUs (/proc/stat: user, nice, system, irq, \
         softirq) over a bulk transfer, per KiB moved; /proc/stat counts in ticks, so one tick \
         is {} ns/KiB here. What a path adds is, within each round, its figure minus the mean \
         of the two direct runs'; the target compares the medians over rounds (95 % intervals \
         of the median in brackets, the whole range with few rounds). Its noise is the median \
         over rounds of |direct-again − direct|: an added cost at or below it is within noise. \
         Throughput is context, not a target: on 2 cores the direct path leaves one core \
         partly idle, which the proxy's extra copies and TCP hops fill, so its throughput \
         falls far less than its cost grows (socat's throughput is {}× direct here, chaos's \
         {}×).",
        f(tick_ns as f64 / (bulk_bytes >> 10) as f64, 1),
        f(median(&ratio(Path::Proxy, Path::Direct)), 3),
        f(median(&ratio(Path::Chaos, Path::Direct)), 3),
    ));
    section.note(format!(
        "Noise floor: the median over slices of |direct-again − direct| (slice median RTTs); \
         chaos's added RTT at or below it is reported as within noise. The measurements took \
         {:.0} s.",
        elapsed.as_secs_f64()
    ));
    section.data = json!({
        "bulk_rounds": bulk_rounds,
        "bulk_bytes": bulk_bytes,
        "slices": slices,
        "round_trips_per_slice": per_slice,
        "message_bytes": MESSAGE,
        "socat": {
            "path": socat.display().to_string(),
            "version": socat_version(&socat),
            "buffer_bytes": SOCAT_BUFFER,
        },
        "rule": rule_text,
        "chaos_matched": { "during_chaos": during_chaos, "during_other_paths": during_other },
        "paths": paths_json,
        "added_us": added_json,
        "noise_us": noise,
        "aa_us": [aa_lo, aa_hi],
        "throughput_ratio": {
            "chaos_over_proxy": summary(&chaos_over_proxy),
            "chaos_over_direct": summary(&ratio(Path::Chaos, Path::Direct)),
            "proxy_over_direct": summary(&ratio(Path::Proxy, Path::Direct)),
        },
        "host_cpu_ratio_proxy_over_chaos": cpu_ratio,
        "added_host_cpu_ns_per_kib": {
            "chaos": { "median": chaos_cpu_med, "ci95": [chaos_cpu_lo, chaos_cpu_hi], "rounds": chaos_cpu },
            "proxy": { "median": proxy_cpu_med, "ci95": [proxy_cpu_lo, proxy_cpu_hi], "rounds": proxy_cpu },
            "direct-again": { "median": median(&cpu_aa), "rounds": cpu_aa },
        },
        "host_cpu_noise_ns_per_kib": cpu_noise,
        "host_cpu_tick_ns_per_kib": tick_ns as f64 / (bulk_bytes >> 10) as f64,
        "added_host_cpu_chaos_over_proxy": added_ratio,
    });
    section
}
