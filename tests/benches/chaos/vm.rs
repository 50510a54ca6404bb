//! The `vm` section: what only a kernel with `sch_netem` and `sch_fq` can show, on Debian's 6.12
//! under qemu/TCG (the host kernel has neither). [`run`] boots the VM once through
//! `tests/vm/run-in-vm.sh` and runs this bench binary inside with `--vm-part FILE`; [`inside`]
//! measures there and writes FILE, which the host gets back on the guest's stdout: the guest
//! sees the host's `/tmp` through an overlay whose writes stay in the guest's memory, so FILE
//! lives in the script's io share (`/run/vm/io`) instead, and is printed after a marker line
//! (the script deletes its run directory on exit).
//!
//! Three parts, each in its own labs (`netlab::Lab`, two namespaces and a veth pair), real
//! traffic, every loop bounded in count and time:
//! - **cost**: many short fixed-count floods of 64-byte UDP datagrams through each egress
//!   set-up, in interleaved rounds (the order rotates every round), measuring the sender's
//!   thread CPU time per datagram; each set-up's fastest flood against that of no qdisc, and
//!   the median of the per-round ratios beside it. Set-ups: no qdisc; netem at the root;
//!   a prio qdisc with 1, 100 and 1000 u32 port filters sending one band to netem (the filter
//!   that matches the flood is the last one); chaos with 1 and 64 rules (the matching one last).
//!   netem and chaos have nothing to do (`netem` without impairments, rules with `drop=0`): what
//!   is measured is the cost of classifying and passing a packet through each.
//! - **delay**: delay=50ms on one UDP port, and delay 50 ms with normal jitter σ = 10 ms on
//!   another, a third port clean, by chaos and by netem (prio + u32, so both leave the clean port
//!   alone), in interleaved rounds; one-way latency at the receiver (CLOCK_MONOTONIC is one clock
//!   in the VM).
//! - **rate**: a TCP bulk transfer through rate 10 and 100 Mbit/s, chaos against netem
//!   (`netem rate`), interleaved; the rate on the wire (estimated from the application's bytes and
//!   the segment counts) and the goodput.
//!
//! `data` (each part is replaced by `{"error": "..."}` if it failed inside the VM):
//! ```text
//! {
//!   "kernel": "6.12.…", "vm_cpus": 2, "inside_s": f64, "vm_wall_s": f64,
//!   "cost": {
//!     "datagrams": u64, "payload_bytes": 64, "rounds": u64,
//!     "configs": [{
//!       "id": "none" | "netem-root" | "netem-u32-1" | "netem-u32-100" | "netem-u32-1000"
//!             | "chaos-1" | "chaos-64",
//!       "label": str, "filters": u64, "rules": u64,
//!       "cpu_ns_fastest": f64,               // sender CPU ns per datagram: the fastest round
//!       "cpu_ns_median": f64,                // the median round
//!       "cpu_ns_rounds": [f64],              // each round's flood (its median 32-datagram batch)
//!       "ratio_fastest": f64,                // cpu_ns_fastest / that of "none"
//!       "ratio_median": f64,                 // median of the per-round ratios to "none"
//!       "ratio_rounds": [f64],
//!       "sent": u64, "delivered": u64,       // over all rounds
//!       "delivered_pps": f64                 // median: delivered / (last arrival - first send)
//!     }]
//!   },
//!   "delay": {
//!     "configured_ms": 50.0, "jitter_ms": 10.0, "interval_ms": f64, "rounds": u64,
//!     "per_round": u64,                      // datagrams to each port per round
//!     "chaos" | "netem": {
//!       "fixed":  {"n", "lost", "min_ms", "p50_ms", "p99_ms", "max_ms", "mean_ms", "sd_ms"},
//!       "jitter": {… same …, "added_sd_ms"}, // sd with the clean port's removed in quadrature
//!       "clean":  {… same …},
//!       "p50_error_ms": f64                  // fixed p50 - 50
//!     }
//!   },
//!   "rate": {
//!     "rounds": u64,
//!     "chaos" | "netem": [{
//!       "configured_mbit": f64, "bytes": u64,
//!       "goodput_mbit": f64, "goodput_mbit_rounds": [f64],
//!       "frames_mbit_est": f64,              // on the wire: payload + 66 B per segment sent
//!                                            // (OutSegs) + 1514 B per RetransSegs; median
//!       "error_pct": f64,                    // goodput_mbit against configured_mbit, %
//!       "frames_error_pct": f64,             // frames_mbit_est against configured_mbit, %
//!       "retrans_segs": [u64]
//!     }]
//!   }
//! }
//! ```

use std::{
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use netlab::{
    ChaosProcess, IFACE, Lab, SERVER_V4, UdpCounter, in_netns, monotonic_ns, spawn_in_netns,
    tcp_bulk, thread_cpu_ns, udp_send_to, vm,
};
use serde_json::{Value, json};

use crate::{
    Ctx,
    report::{Section, Table},
    stats::{f, mean, median, percentile, std_dev},
};

const ID: &str = "vm";
const TITLE: &str = "netem and chaos on a kernel that has both (6.12 under qemu/TCG)";
/// Line before the JSON on the guest's stdout.
const MARKER: &str = "=== chaos-bench vm-part json ===";
/// Where the guest writes its JSON: the script's io share (`$RUN/io` on the host).
const GUEST_OUT: &str = "/run/vm/io/bench-vm.json";

const PAYLOAD: usize = 64;
/// The port the flood and the delayed flows go to.
const HIT_PORT: u16 = 9000;
const CLEAN_PORT: u16 = 9001;
const JITTER_PORT: u16 = 9002;
const DELAY_MS: f64 = 50.0;
const JITTER_MS: f64 = 10.0;
/// Ethernet, IPv4 and TCP with timestamps: the headers of every segment on the wire.
const HEADERS: u64 = 14 + 20 + 32;
/// A full segment's payload on veth (MTU 1500).
const MSS: u64 = 1448;
/// How far chaos's rate on the wire may be from the configured rate, in % (the rate target).
const RATE_TOLERANCE_PCT: f64 = 1.0;
/// TCP ports for the two rates.
const RATE_PORTS: [(u16, f64); 2] = [(5001, 10.0), (5003, 100.0)];

// ---------------------------------------------------------------------------------- host side

/// Boots the VM once, runs [`inside`] there, and turns its JSON into the section.
pub fn run(ctx: &Ctx) -> Section {
    if std::env::var_os(vm::IN_VM_VAR).is_some() {
        return Section::skipped(ID, TITLE, "already inside the VM".to_owned());
    }
    let chaos = match catch_unwind(netlab::chaos_bin) {
        Ok(p) => p,
        Err(e) => return Section::skipped(ID, TITLE, panic_text(&e)),
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Section::skipped(ID, TITLE, format!("no path to this binary: {e}")),
    };
    let mut env = format!("{}=1 CHAOS_BIN={}", vm::IN_VM_VAR, shell_quote(&chaos));
    if let Ok(p) = std::env::var(netlab::NETNS_PREFIX_VAR) {
        env.push_str(&format!(
            " {}={}",
            netlab::NETNS_PREFIX_VAR,
            shell_quote(p.as_ref())
        ));
    }
    // --quick must come before --vm-part: main.rs reads arguments in order.
    let command = format!(
        "{env} {} {} --vm-part {GUEST_OUT}; rc=$?; echo '{MARKER}'; cat {GUEST_OUT}; exit $rc",
        shell_quote(&exe),
        if ctx.quick { "--quick" } else { "" },
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(vm::script())
        .arg(&command)
        .env("VM_CACHE", vm::cache_dir())
        // The whole VM part is bounded: qemu is killed after this.
        .env("VM_TIMEOUT", ctx.scale("480", "300"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let wall = started.elapsed().as_secs_f64();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Section::skipped(ID, TITLE, format!("running run-in-vm.sh: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .split_once(MARKER)
        .and_then(|(_, rest)| serde_json::from_str::<Value>(rest.trim()).ok());
    let Some(mut data) = json else {
        return Section::skipped(
            ID,
            TITLE,
            format!(
                "the VM part gave no results ({}, after {wall:.0} s; its output is above)",
                out.status
            ),
        );
    };
    data["vm_wall_s"] = json!(wall);
    eprintln!("bench:   vm: the VM part took {wall:.0} s");
    section(data)
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Builds the section from the guest's JSON.
fn section(data: Value) -> Section {
    let mut s = Section::new(ID, TITLE);
    s.note(format!(
        "Measured inside Debian's {} kernel under qemu with TCG (no KVM), {} vCPUs, booted \
         once (the VM part took {:.0} s, {:.0} s of it in the guest's bench). Emulation makes \
         every absolute time slow and noisy: read the ratios, and the delays as what an \
         application would see on such a machine.",
        data["kernel"].as_str().unwrap_or("?"),
        data["vm_cpus"],
        num(&data["vm_wall_s"]),
        num(&data["inside_s"]),
    ));
    cost_tables(&mut s, &data["cost"]);
    delay_tables(&mut s, &data["delay"]);
    rate_tables(&mut s, &data["rate"]);
    s.data = data;
    s
}

fn failed(s: &mut Section, part: &str, v: &Value) -> bool {
    if let Some(e) = v.get("error") {
        s.note(format!(
            "Not measured: the {part} part failed in the VM: {}",
            e.as_str().unwrap_or("?")
        ));
        return true;
    }
    if v.is_null() {
        s.note(format!("Not measured: the {part} part gave no data."));
        return true;
    }
    false
}

fn cost_tables(s: &mut Section, cost: &Value) {
    if failed(s, "cost", cost) {
        return;
    }
    let mut t = Table::new(
        &format!(
            "Sender CPU per {}-byte UDP datagram: {} datagrams per set-up and round, {} \
             interleaved rounds",
            cost["payload_bytes"], cost["datagrams"], cost["rounds"]
        ),
        &[
            "egress set-up",
            "CPU ns / datagram (fastest round)",
            "added ns",
            "× no qdisc",
            "median round ns",
            "× no qdisc (median of rounds)",
            "delivered kpkt/s",
            "delivered",
        ],
    );
    let configs = cost["configs"].as_array().cloned().unwrap_or_default();
    let base = configs
        .iter()
        .find(|c| c["id"] == "none")
        .map_or(f64::NAN, |c| num(&c["cpu_ns_fastest"]));
    for c in &configs {
        let sent = c["sent"].as_u64().unwrap_or(0);
        let delivered = c["delivered"].as_u64().unwrap_or(0);
        t.row(vec![
            c["label"].as_str().unwrap_or("?").to_owned(),
            f(num(&c["cpu_ns_fastest"]), 0),
            format!("{:+.0}", num(&c["cpu_ns_fastest"]) - base),
            format!("{}×", f(num(&c["ratio_fastest"]), 2)),
            f(num(&c["cpu_ns_median"]), 0),
            format!("{}×", f(num(&c["ratio_median"]), 2)),
            f(num(&c["delivered_pps"]) / 1e3, 1),
            format!("{} %", f(100.0 * delivered as f64 / sent.max(1) as f64, 1)),
        ]);
    }
    s.tables.push(t);
    let get = |id: &str, key: &str| {
        configs
            .iter()
            .find(|c| c["id"] == id)
            .map_or(f64::NAN, |c| num(&c[key]))
    };
    let (c1, c64) = (
        get("chaos-1", "cpu_ns_fastest"),
        get("chaos-64", "cpu_ns_fastest"),
    );
    let (n1, n1000) = (
        get("netem-u32-1", "cpu_ns_fastest"),
        get("netem-u32-1000", "cpu_ns_fastest"),
    );
    let growth = c64 / c1;
    s.target(
        "chaos: 64 rules cost as 1",
        "sender CPU per datagram with 64 rules ≤ 1.10 × with 1 rule",
        format!(
            "{}× ({} and {} ns, {}× and {}× no qdisc); netem behind u32: 1000 filters {}× 1 \
             filter, {} ns per extra filter",
            f(growth, 2),
            f(c1, 0),
            f(c64, 0),
            f(get("chaos-1", "ratio_fastest"), 2),
            f(get("chaos-64", "ratio_fastest"), 2),
            f(n1000 / n1, 2),
            f((n1000 - n1) / 999.0, 0),
        ),
        growth <= 1.10,
    );
    let spread = configs
        .iter()
        .find(|c| c["id"] == "none")
        .and_then(|c| c["cpu_ns_rounds"].as_array())
        .map_or((f64::NAN, f64::NAN), |r| {
            let v: Vec<f64> = r.iter().map(num).collect();
            (percentile(&v, 0.0), percentile(&v, 1.0))
        });
    s.note(format!(
        "Cost: each set-up has its own lab, set up once; every round floods each of them once, \
         in an order that rotates by one every round. The figure is the sending thread's CPU \
         time (CLOCK_THREAD_CPUTIME_ID) per datagram sent on a connected socket, read every 32 \
         datagrams: a flood's cost is its median batch, and a set-up's is its fastest flood \
         (the median flood is shown beside it). Under TCG the time the host takes a vCPU away \
         (this 2-core host runs other work) is charged to whatever guest thread was running, \
         so the same flood without a qdisc measured {} to {} ns per datagram from one round \
         to the next here; \
         interference only ever adds, and the fastest of many short interleaved floods is the \
         closest to each set-up's own cost. Sender and receiver are pinned to vCPUs 0 and 1. \
         The guest kernel has no IRQ time accounting, so the receive path the veth peer runs \
         in softirq on the sender's vCPU is charged to the sender too: the baseline is the \
         whole path, \"added ns\" the egress hook's share.",
        f(spread.0, 0),
        f(spread.1, 0),
    ));
    s.note(
        "netem set-ups: `netem limit 100000` without impairments, at the root, or as band 3 of a \
         `prio` root whose u32 filters each match `ip protocol 17` and one `ip dport`; the \
         flood's port is matched by the last filter added (u32 walks its knodes in handle \
         order), so every other filter is tried first. chaos set-ups: `chaos run` with \
         `proto=udp dport=P drop=0` rules, the flood's port in the last rule; TCX, no qdisc. \
         Every datagram was checked to have gone through netem (its qdisc counters) or \
         chaos's last rule (its matched counter).",
    );
}

fn delay_tables(s: &mut Section, delay: &Value) {
    if failed(s, "delay", delay) {
        return;
    }
    let mut t = Table::new(
        &format!(
            "delay 50 ms on one UDP port: one-way latency at the receiver, ms ({} rounds of {} \
             datagrams per port, one every {} ms)",
            delay["rounds"], delay["per_round"], delay["interval_ms"]
        ),
        &[
            "tool",
            "port",
            "n",
            "lost",
            "min",
            "p50",
            "p99",
            "max",
            "p50 − 50",
        ],
    );
    let mut j = Table::new(
        "delay 50 ms, normal jitter σ = 10 ms: observed spread",
        &[
            "tool",
            "n",
            "mean ms",
            "p50 ms",
            "p99 ms",
            "σ ms",
            "σ added ms",
            "σ error",
        ],
    );
    for tool in ["chaos", "netem"] {
        let d = &delay[tool];
        if failed(s, &format!("delay ({tool})"), d) {
            continue;
        }
        for (port, key) in [("delayed", "fixed"), ("clean", "clean")] {
            let v = &d[key];
            t.row(vec![
                tool.to_owned(),
                port.to_owned(),
                v["n"].to_string(),
                v["lost"].to_string(),
                f(num(&v["min_ms"]), 1),
                f(num(&v["p50_ms"]), 2),
                f(num(&v["p99_ms"]), 2),
                f(num(&v["max_ms"]), 1),
                if key == "fixed" {
                    format!("{:+.2}", num(&d["p50_error_ms"]))
                } else {
                    "".to_owned()
                },
            ]);
        }
        let v = &d["jitter"];
        j.row(vec![
            tool.to_owned(),
            v["n"].to_string(),
            f(num(&v["mean_ms"]), 2),
            f(num(&v["p50_ms"]), 2),
            f(num(&v["p99_ms"]), 2),
            f(num(&v["sd_ms"]), 2),
            f(num(&v["added_sd_ms"]), 2),
            format!(
                "{:+.1} %",
                100.0 * (num(&v["added_sd_ms"]) - JITTER_MS) / JITTER_MS
            ),
        ]);
    }
    s.tables.push(t);
    s.tables.push(j);
    let (c, n) = (&delay["chaos"], &delay["netem"]);
    let err = num(&c["p50_error_ms"]);
    s.target(
        "delay p50 error",
        "|p50 − 50 ms| ≤ 5 ms (a tolerance for TCG)",
        format!(
            "chaos p50 {} ms ({:+.2}); netem p50 {} ms ({:+.2})",
            f(num(&c["fixed"]["p50_ms"]), 2),
            err,
            f(num(&n["fixed"]["p50_ms"]), 2),
            num(&n["p50_error_ms"]),
        ),
        err.abs() <= 5.0,
    );
    s.note(
        "Delay: chaos (`proto=udp dport=9000 delay=50ms`, and `dport=9002 delay=50ms jitter=10ms \
         dist=normal reorder=yes`) and netem (`prio bands 4`, u32 filters on the same ports to \
         `netem delay 50ms` and `netem delay 50ms 10ms distribution normal`) each in their own \
         lab, on the sender's egress; one socket sends to the three ports in turn, the rounds \
         alternate between the tools. netem reorders jittered packets, so chaos's jitter rule \
         says `reorder=yes` to be comparable. σ added is the jittered port's σ less the clean \
         port's, in quadrature.",
    );
}

fn rate_tables(s: &mut Section, rate: &Value) {
    if failed(s, "rate", rate) {
        return;
    }
    let mut t = Table::new(
        &format!(
            "TCP bulk transfer through a rate limit ({} interleaved rounds, median)",
            rate["rounds"]
        ),
        &[
            "tool",
            "configured Mbit/s",
            "bytes",
            "goodput Mbit/s",
            "error",
            "on the wire Mbit/s (est.)",
            "error",
            "retransmitted segments",
        ],
    );
    let mut chaos_errors = Vec::new();
    // Per tool: "R: on the wire (error), goodput (error)" for the target's text.
    let mut measured = Vec::new();
    for tool in ["chaos", "netem"] {
        let runs = &rate[tool];
        if failed(s, &format!("rate ({tool})"), runs) {
            continue;
        }
        let mut parts = Vec::new();
        for r in runs.as_array().cloned().unwrap_or_default() {
            let conf = num(&r["configured_mbit"]);
            let (err, wire_err) = (num(&r["error_pct"]), num(&r["frames_error_pct"]));
            t.row(vec![
                tool.to_owned(),
                f(conf, 0),
                r["bytes"].to_string(),
                f(num(&r["goodput_mbit"]), 2),
                format!("{err:+.1} %"),
                f(num(&r["frames_mbit_est"]), 2),
                format!("{wire_err:+.1} %"),
                r["retrans_segs"].to_string(),
            ]);
            parts.push(format!(
                "{}: on the wire {} ({wire_err:+.1} %), goodput {} ({err:+.1} %)",
                f(conf, 0),
                f(num(&r["frames_mbit_est"]), 2),
                f(num(&r["goodput_mbit"]), 2),
            ));
            if tool == "chaos" {
                chaos_errors.push((err, wire_err));
            }
        }
        measured.push(format!("{tool} {}", parts.join(", ")));
    }
    s.tables.push(t);
    // The wire figure is what a link would carry, so it is what a rate limit is judged by.
    let met = chaos_errors.len() == RATE_PORTS.len()
        && chaos_errors
            .iter()
            .all(|(_, wire)| wire.abs() <= RATE_TOLERANCE_PCT);
    s.target(
        "rate accuracy",
        &format!(
            "chaos's rate on the wire within ±{RATE_TOLERANCE_PCT:.0} % of the configured rate, \
             at 10 and 100 Mbit/s"
        ),
        format!("Mbit/s: {}", measured.join("; ")),
        met,
    );
    s.note(
        "Rate: chaos `proto=tcp dport=P rate=R` against `netem rate R` behind a prio + u32 \
         filter on the same port, each in its own lab, a local TCP sender, the transfers \
         interleaved, each timed from connect to the sink's close. Goodput is the \
         application's bytes over that time. \"On the wire\" estimates the frames a link \
         would carry: the application's bytes, plus 66 bytes of Ethernet, IPv4 and TCP headers \
         for every segment sent (OutSegs), plus 1514 bytes for every retransmitted one \
         (RetransSegs). The target is judged on the wire, as a link's rate is; goodput and \
         netem are context.",
    );
    if let Some((g, w)) = chaos_errors.first() {
        s.note(format!(
            "A limiter that charges every segment's frame, like a link (netem does), leaves \
             goodput below the rate by the header share: at most 1448/1514 = 95.6 % of a full \
             frame is TCP payload, so goodput near −4.4 % and the wire near 0 % is that \
             behaviour. One that charges a GSO super-packet's length at TC egress (one set of \
             headers for several segments) shows the reverse: goodput near 0 % and the wire \
             above the rate. Measured for chaos at {} Mbit/s: goodput {g:+.1} %, on the wire \
             {w:+.1} %.",
            f(num(&rate["chaos"][0]["configured_mbit"]), 0),
        ));
    }
}

// --------------------------------------------------------------------------------- guest side

/// Runs inside the VM: measures all three parts and writes their JSON to `out`.
pub fn inside(ctx: &Ctx, out: &Path) {
    assert!(
        std::env::var_os(vm::IN_VM_VAR).is_some(),
        "--vm-part runs inside the VM only"
    );
    let started = Instant::now();
    let part = |name: &str, f: &dyn Fn(&Ctx) -> Value| {
        let t = Instant::now();
        eprintln!(
            "bench-vm: {name} ({:.0} s in)",
            started.elapsed().as_secs_f64()
        );
        let v = catch_unwind(AssertUnwindSafe(|| f(ctx)))
            .unwrap_or_else(|e| json!({ "error": panic_text(&e) }));
        eprintln!("bench-vm: {name} took {:.0} s", t.elapsed().as_secs_f64());
        v
    };
    let cost = part("cost", &cost);
    let delay = part("delay", &delay);
    let rate = part("rate", &rate);
    let data = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default().trim(),
        "vm_cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "inside_s": started.elapsed().as_secs_f64(),
        "cost": cost,
        "delay": delay,
        "rate": rate,
    });
    std::fs::write(out, serde_json::to_string(&data).unwrap() + "\n")
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// Runs `tc -n ns ARGS`, panicking with its stderr on failure.
fn tc(ns: &str, args: &str) {
    let out = Command::new("tc")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("tc: {e}"));
    assert!(
        out.status.success(),
        "tc {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs many tc commands at once (`tc -batch`): one process, not a thousand.
fn tc_batch(ns: &str, lines: &[String]) {
    let mut child = Command::new("tc")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("tc -batch: {e}"));
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tc -batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A u32 filter sending UDP or TCP to `port` to class `flowid` of the prio root `1:`.
fn u32_filter(proto: u8, port: u16, flowid: &str) -> String {
    format!(
        "filter add dev {IFACE} parent 1: protocol ip prio 1 u32 \
         match ip protocol {proto} 0xff match ip dport {port} 0xffff flowid {flowid}"
    )
}

/// `chaos run` on the client's veth with `rules`, once they are live.
fn start_chaos(lab: &Lab, rules: &[String]) -> ChaosProcess {
    let mut args = vec![
        "--netns",
        lab.a.as_str(),
        "--iface",
        IFACE,
        "--output",
        "json",
    ];
    for r in rules {
        args.extend(["--rule", r.as_str()]);
    }
    ChaosProcess::start(&args)
}

/// Stops chaos and returns the last rule's matched packets.
fn stop_chaos(c: ChaosProcess) -> u64 {
    let exit = c.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "chaos run: {}", exit.stderr);
    exit.json()
        .last()
        .and_then(|r| r["matched_packets"].as_u64())
        .unwrap_or(0)
}

/// Packets the qdisc with `handle` (e.g. `30:`) on IFACE in `ns` has sent.
fn qdisc_packets(ns: &str, handle: &str) -> u64 {
    let out = Command::new("tc")
        .args(["-n", ns, "-s", "-j", "qdisc", "show", "dev", IFACE])
        .output()
        .unwrap_or_else(|e| panic!("tc: {e}"));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tc -j: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    v.as_array()
        .and_then(|qs| qs.iter().find(|q| q["handle"] == handle))
        .and_then(|q| q["packets"].as_u64())
        .unwrap_or_else(|| panic!("no qdisc {handle} in {v}"))
}

/// Keeps the calling thread on `cpu`, so sender and receiver always sit the same way.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity on this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "bench-vm: pinning to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

// ------------------------------------------------------------------------------------- cost

/// Datagrams between two readings of the sender's CPU clock.
const BATCH: u64 = 32;

/// One flood: what the sender did.
struct Flood {
    sent: u64,
    /// Sender CPU ns per datagram: the median over batches of [`BATCH`] datagrams.
    cpu_ns: f64,
    /// CLOCK_MONOTONIC at the first send.
    start_ns: u64,
}

/// Sends `count` datagrams as fast as it can from `ns` to `dst`, for at most `limit`.
///
/// The CPU clock is read every [`BATCH`] datagrams and the median batch is kept: under TCG,
/// time the host takes the vCPU away is charged to whichever guest thread was running, and
/// the median leaves out the batches that met such a gap.
fn flood(ns: &str, dst: SocketAddr, count: u64, limit: Duration) -> Flood {
    in_netns(ns, move || {
        pin_to(0);
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        sock.connect(dst).unwrap();
        let buf = [0u8; PAYLOAD];
        let deadline = Instant::now() + limit;
        let mut batches = Vec::with_capacity((count / BATCH) as usize);
        let start_ns = monotonic_ns();
        let mut sent = 0;
        while sent + BATCH <= count && Instant::now() < deadline {
            let cpu0 = thread_cpu_ns();
            for _ in 0..BATCH {
                // A full queue is not an error for UDP without IP_RECVERR; the sink counts loss.
                let _ = sock.send(&buf);
            }
            batches.push((thread_cpu_ns() - cpu0) as f64 / BATCH as f64);
            sent += BATCH;
        }
        Flood {
            sent,
            cpu_ns: median(&batches),
            start_ns,
        }
    })
}

/// Counts datagrams on a socket, and when the last one came, until dropped.
struct Sink {
    stop: Arc<AtomicBool>,
    /// Datagrams received so far, and CLOCK_MONOTONIC at the last one.
    seen: Arc<(AtomicU64, AtomicU64)>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sink {
    /// Binds `addr` in `ns`; the receiving thread ends when dropped, or after `limit`.
    fn start(ns: &str, addr: SocketAddr, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = spawn_in_netns(ns, move || {
            pin_to(1);
            let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            netlab::set_rcvbuf(&sock, 64 << 20);
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            tx.send(()).unwrap();
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 2048];
            loop {
                match sock.recv(&mut buf) {
                    Ok(_) => {
                        seen2.1.store(monotonic_ns(), Ordering::Relaxed);
                        seen2.0.fetch_add(1, Ordering::Release);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("recv: {e}"),
                }
                if stop2.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("sink did not start");
        Self {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// Waits until no datagram has come for 30 ms (at most 2 s), then returns
    /// (datagrams so far, last arrival).
    fn settle(&self) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut n = self.seen.0.load(Ordering::Acquire);
        loop {
            thread::sleep(Duration::from_millis(30));
            let now = self.seen.0.load(Ordering::Acquire);
            if now == n || Instant::now() > deadline {
                return (now, self.seen.1.load(Ordering::Relaxed));
            }
            n = now;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take()
            && h.join().is_err()
        {
            eprintln!("bench-vm: a sink panicked");
        }
    }
}

struct CostConfig {
    id: &'static str,
    label: String,
    filters: u64,
    rules: u64,
    lab: Lab,
    chaos: Option<ChaosProcess>,
    sink: Option<Sink>,
    cpu: Vec<f64>,
    ratio: Vec<f64>,
    sent: u64,
    delivered: u64,
    pps: Vec<f64>,
}

impl CostConfig {
    fn new(id: &'static str, label: String, filters: u64, rules: u64) -> Self {
        Self {
            id,
            label,
            filters,
            rules,
            lab: Lab::new(&format!("bvm{}", id.replace('-', ""))),
            chaos: None,
            sink: None,
            cpu: Vec::new(),
            ratio: Vec::new(),
            sent: 0,
            delivered: 0,
            pps: Vec::new(),
        }
    }
}

/// prio root with `filters` u32 filters, band 3 to netem; the one for `HIT_PORT` last.
fn netem_behind_u32(ns: &str, filters: u64) {
    tc(
        ns,
        &format!("qdisc add dev {IFACE} root handle 1: prio bands 3"),
    );
    tc(
        ns,
        &format!("qdisc add dev {IFACE} parent 1:3 handle 30: netem limit 100000"),
    );
    let mut lines: Vec<String> = (1..filters)
        .map(|i| u32_filter(17, 10_000 + i as u16, "1:3"))
        .collect();
    lines.push(u32_filter(17, HIT_PORT, "1:3"));
    tc_batch(ns, &lines);
}

fn cost(ctx: &Ctx) -> Value {
    // Many short rounds: the host's other work comes and goes in seconds, and TCG charges the
    // time a vCPU waits for the host to whatever guest thread was running.
    let count: u64 = ctx.scale(2_048, 1_024);
    let rounds: usize = ctx.scale(30, 10);
    let limit = Duration::from_secs(5);
    let setup = Instant::now();
    let rule = |port: u64| format!("proto=udp dport={port} drop=0");

    let mut configs = vec![
        CostConfig::new("none", "no qdisc (noqueue)".to_owned(), 0, 0),
        CostConfig::new("netem-root", "netem at the root".to_owned(), 0, 0),
    ];
    for n in [1u64, 100, 1000] {
        let id = match n {
            1 => "netem-u32-1",
            100 => "netem-u32-100",
            _ => "netem-u32-1000",
        };
        let label = format!(
            "prio + {n} u32 filter{} → netem",
            if n == 1 { "" } else { "s" }
        );
        configs.push(CostConfig::new(id, label, n, 0));
    }
    configs.push(CostConfig::new("chaos-1", "chaos, 1 rule".to_owned(), 0, 1));
    configs.push(CostConfig::new(
        "chaos-64",
        "chaos, 64 rules".to_owned(),
        0,
        64,
    ));
    for c in &mut configs {
        let ns = c.lab.a.clone();
        match c.id {
            "none" => {}
            "netem-root" => tc(
                &ns,
                &format!("qdisc add dev {IFACE} root handle 1: netem limit 100000"),
            ),
            _ if c.filters > 0 => netem_behind_u32(&ns, c.filters),
            _ => {
                let mut rules: Vec<String> = (1..c.rules).map(|i| rule(10_000 + i)).collect();
                rules.push(rule(u64::from(HIT_PORT)));
                c.chaos = Some(start_chaos(&c.lab, &rules));
            }
        }
    }
    let dst: SocketAddr = (SERVER_V4, HIT_PORT).into();
    for c in &mut configs {
        c.sink = Some(Sink::start(&c.lab.b, dst, Duration::from_secs(600)));
    }
    eprintln!(
        "bench-vm: cost set-up took {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    for round in 0..rounds {
        let mut cpu_round = vec![f64::NAN; configs.len()];
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            let c = &mut configs[i];
            let sink = c.sink.as_ref().unwrap();
            let (before, _) = sink.settle();
            let fl = flood(&c.lab.a, dst, count, limit);
            let (after, last) = sink.settle();
            cpu_round[i] = fl.cpu_ns;
            c.cpu.push(cpu_round[i]);
            c.sent += fl.sent;
            c.delivered += after - before;
            c.pps.push(
                (after - before) as f64 / (last.saturating_sub(fl.start_ns).max(1) as f64 / 1e9),
            );
        }
        if round % 5 == 4 || round + 1 == rounds {
            eprintln!(
                "bench-vm: cost round {round}: {}",
                configs
                    .iter()
                    .zip(&cpu_round)
                    .map(|(c, ns)| format!("{} {ns:.0} ns", c.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for (c, ns) in configs.iter_mut().zip(&cpu_round) {
            c.ratio.push(ns / cpu_round[0]);
        }
    }
    let base_fastest = percentile(&configs[0].cpu, 0.0);
    let mut out = Vec::new();
    for c in configs {
        // Every datagram went through the fault machinery under test, not around it.
        let total = c.sent;
        let through = match (c.chaos, c.id) {
            (Some(p), _) => stop_chaos(p),
            (None, "none") => total,
            (None, _) => qdisc_packets(&c.lab.a, if c.filters > 0 { "30:" } else { "1:" }),
        };
        assert!(
            through >= total,
            "{}: only {through} of {total} datagrams went through netem or chaos's rule",
            c.id
        );
        out.push(json!({
            "id": c.id,
            "label": c.label,
            "filters": c.filters,
            "rules": c.rules,
            "cpu_ns_fastest": percentile(&c.cpu, 0.0),
            "cpu_ns_median": median(&c.cpu),
            "cpu_ns_rounds": c.cpu,
            "ratio_fastest": percentile(&c.cpu, 0.0) / base_fastest,
            "ratio_median": median(&c.ratio),
            "ratio_rounds": c.ratio,
            "sent": c.sent,
            "delivered": c.delivered,
            "delivered_pps": median(&c.pps),
        }));
    }
    json!({
        "datagrams": count,
        "payload_bytes": PAYLOAD,
        "rounds": rounds,
        "configs": out,
    })
}

// ------------------------------------------------------------------------------------ delay

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(lat: &[f64], sent: u64) -> Value {
    json!({
        "n": lat.len(),
        "lost": sent.saturating_sub(lat.len() as u64),
        "min_ms": percentile(lat, 0.0),
        "p50_ms": percentile(lat, 0.5),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": percentile(lat, 1.0),
        "mean_ms": mean(lat),
        "sd_ms": std_dev(lat),
    })
}

fn delay(ctx: &Ctx) -> Value {
    let rounds: usize = ctx.scale(3, 2);
    let per_round: u64 = ctx.scale(400, 150);
    let interval = Duration::from_millis(5);
    let ports = [HIT_PORT, CLEAN_PORT, JITTER_PORT];
    let dsts: Vec<SocketAddr> = ports.iter().map(|p| (SERVER_V4, *p).into()).collect();

    let chaos_lab = Lab::new("bvmdc");
    let chaos = start_chaos(
        &chaos_lab,
        &[
            format!("proto=udp dport={HIT_PORT} delay=50ms"),
            format!("proto=udp dport={JITTER_PORT} delay=50ms jitter=10ms dist=normal reorder=yes"),
        ],
    );
    let netem_lab = Lab::new("bvmdn");
    let ns = &netem_lab.a;
    tc(
        ns,
        &format!("qdisc add dev {IFACE} root handle 1: prio bands 4"),
    );
    tc(
        ns,
        &format!("qdisc add dev {IFACE} parent 1:3 handle 30: netem delay 50ms"),
    );
    tc(
        ns,
        &format!(
            "qdisc add dev {IFACE} parent 1:4 handle 40: netem delay 50ms 10ms distribution normal"
        ),
    );
    tc_batch(
        ns,
        &[
            u32_filter(17, HIT_PORT, "1:3"),
            u32_filter(17, JITTER_PORT, "1:4"),
        ],
    );

    // Latencies per tool, per port.
    let mut lat = [
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
    ];
    for round in 0..rounds {
        for k in 0..2 {
            let tool = (k + round) % 2;
            let lab = if tool == 0 { &chaos_lab } else { &netem_lab };
            let rxs: Vec<_> = dsts.iter().map(|d| UdpCounter::start(&lab.b, *d)).collect();
            let errors = udp_send_to(&lab.a, &dsts, per_round, PAYLOAD, Some(interval));
            assert_eq!(errors, 0, "send errors");
            for (p, rx) in rxs.into_iter().enumerate() {
                let r = rx.finish_after(Duration::from_millis(if p == 0 { 300 } else { 0 }));
                lat[tool][p].extend(r.arrivals.iter().map(|a| ms(a.latency)));
            }
        }
        eprintln!("bench-vm: delay round {round} done");
    }
    stop_chaos(chaos);
    let sent = per_round * rounds as u64;
    let tool_json = |l: &[Vec<f64>; 3]| {
        let clean_sd = std_dev(&l[1]);
        let mut jitter = summary(&l[2], sent);
        let sd = std_dev(&l[2]);
        jitter["added_sd_ms"] = json!((sd * sd - clean_sd * clean_sd).max(0.0).sqrt());
        json!({
            "fixed": summary(&l[0], sent),
            "clean": summary(&l[1], sent),
            "jitter": jitter,
            "p50_error_ms": percentile(&l[0], 0.5) - DELAY_MS,
        })
    };
    json!({
        "configured_ms": DELAY_MS,
        "jitter_ms": JITTER_MS,
        "interval_ms": ms(interval),
        "rounds": rounds,
        "per_round": per_round,
        "chaos": tool_json(&lat[0]),
        "netem": tool_json(&lat[1]),
    })
}

// ------------------------------------------------------------------------------------- rate

fn rate(ctx: &Ctx) -> Value {
    let rounds: usize = ctx.scale(2, 1);
    // About 4 s at 10 Mbit/s (2 s quick), and as long at 100 Mbit/s: start-up is a small share.
    let secs: f64 = ctx.scale(4.0, 2.0);
    let bytes = |mbit: f64| (mbit * 1e6 / 8.0 * secs) as u64;

    let chaos_lab = Lab::new("bvmrc");
    let rules: Vec<String> = RATE_PORTS
        .iter()
        .map(|(p, mbit)| format!("proto=tcp dport={p} rate={mbit}mbit"))
        .collect();
    let chaos = start_chaos(&chaos_lab, &rules);
    let netem_lab = Lab::new("bvmrn");
    let ns = &netem_lab.a;
    tc(
        ns,
        &format!("qdisc add dev {IFACE} root handle 1: prio bands 5"),
    );
    let mut filters = Vec::new();
    for (band, (port, mbit)) in (4..).zip(RATE_PORTS) {
        tc(
            ns,
            &format!("qdisc add dev {IFACE} parent 1:{band} handle {band}0: netem rate {mbit}mbit"),
        );
        filters.push(u32_filter(6, port, &format!("1:{band}")));
    }
    tc_batch(ns, &filters);

    // [tool][rate] → per-round (goodput Mbit/s, frames Mbit/s est., retransmitted segments)
    let mut runs = vec![vec![Vec::new(); RATE_PORTS.len()]; 2];
    for round in 0..rounds {
        for (r, (port, mbit)) in RATE_PORTS.iter().enumerate() {
            for k in 0..2 {
                let tool = (k + round) % 2;
                let lab = if tool == 0 { &chaos_lab } else { &netem_lab };
                let t = tcp_bulk(
                    &lab.a,
                    &lab.b,
                    (SERVER_V4, *port).into(),
                    bytes(*mbit),
                    Duration::from_secs(60),
                );
                let s = t.elapsed.as_secs_f64();
                let goodput = t.bytes as f64 * 8.0 / s / 1e6;
                let wire = t.bytes + t.out_segs * HEADERS + t.retrans_segs * (MSS + HEADERS);
                let frames = wire as f64 * 8.0 / s / 1e6;
                eprintln!(
                    "bench-vm: rate {mbit} Mbit/s by {}: {goodput:.2} Mbit/s",
                    ["chaos", "netem"][tool]
                );
                runs[tool][r].push((goodput, frames, t.retrans_segs));
            }
        }
    }
    stop_chaos(chaos);
    let tool_json = |tool: usize| {
        RATE_PORTS
            .iter()
            .enumerate()
            .map(|(r, (_, mbit))| {
                let g: Vec<f64> = runs[tool][r].iter().map(|x| x.0).collect();
                let fr: Vec<f64> = runs[tool][r].iter().map(|x| x.1).collect();
                let re: Vec<u64> = runs[tool][r].iter().map(|x| x.2).collect();
                json!({
                    "configured_mbit": mbit,
                    "bytes": bytes(*mbit),
                    "goodput_mbit": median(&g),
                    "goodput_mbit_rounds": g,
                    "error_pct": 100.0 * (median(&g) - mbit) / mbit,
                    "frames_error_pct": 100.0 * (median(&fr) - mbit) / mbit,
                    "frames_mbit_est": median(&fr),
                    "retrans_segs": re,
                })
            })
            .collect::<Vec<_>>()
    };
    json!({
        "rounds": rounds,
        "chaos": tool_json(0),
        "netem": tool_json(1),
    })
}
