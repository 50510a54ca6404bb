//! `cargo xtask demo`: two namespaces, a UDP server with two ports, a client sending a steady
//! stream to both, and `chaos run` dropping 30 % of the datagrams to one port of one host.
//! chaos's live table shows on the terminal; the client's own view is printed at the end.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use netlab::{IFACE, Lab, READY, SERVER_V4, UdpCounter, udp_send_to};

use crate::{BuildEnv, require_root, step};

const LOSSY_PORT: u16 = 9000;
const CLEAN_PORT: u16 = 9001;
const RULE: &str = "proto=udp dport=9000 dst=198.18.0.2/32 drop=30%";
const SEND_FOR: Duration = Duration::from_secs(10);
const RATE_PER_PORT: u64 = 500;

pub fn run(env: &BuildEnv) -> Result<()> {
    require_root("the demo creates network namespaces and loads a BPF program")?;
    step(
        "creating the sandbox: namespaces client (198.18.0.1) and server (198.18.0.2), one veth pair",
    );
    let lab = Lab::new("demo");
    let lossy: SocketAddr = (SERVER_V4, LOSSY_PORT).into();
    let clean: SocketAddr = (SERVER_V4, CLEAN_PORT).into();
    let servers = [
        UdpCounter::start(&lab.b, lossy),
        UdpCounter::start(&lab.b, clean),
    ];

    let duration = format!("{}s", SEND_FOR.as_secs() + 2);
    step(&format!(
        "starting: chaos run --netns {} --iface {IFACE} --rule '{RULE}' --duration {duration}",
        lab.a
    ));
    let mut chaos = Command::new(&env.chaos_bin)
        .args(["run", "--netns", &lab.a, "--iface", IFACE, "--rule", RULE])
        .args(["--duration", &duration])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting chaos")?;
    let stderr = chaos.stderr.take().expect("piped");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let forward = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with(READY) {
                // The receiver may be gone if the demo already failed; nothing to do then.
                ready_tx.send(()).ok();
            }
            eprintln!("{line}");
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        // Ours, by PID: end it and report what it said.
        chaos.kill().ok();
        chaos.wait()?;
        forward.join().ok();
        bail!("chaos did not start (see its messages above)");
    }

    step(&format!(
        "client sends {RATE_PER_PORT}/s to each of :{LOSSY_PORT} (rule) and :{CLEAN_PORT} (no rule) for {}s",
        SEND_FOR.as_secs()
    ));
    let sent = RATE_PER_PORT * SEND_FOR.as_secs();
    let interval = Duration::from_secs(1) / RATE_PER_PORT as u32;
    let errors = udp_send_to(&lab.a, &[lossy, clean], sent, 32, Some(interval));
    if errors > 0 {
        eprintln!("client: {errors} send errors");
    }
    let status = chaos.wait().context("waiting for chaos")?;
    forward.join().ok();
    let [lossy_rx, clean_rx] = servers;
    let (got_lossy, _) = lossy_rx.finish();
    let (got_clean, _) = clean_rx.finish();

    println!();
    println!("What the application saw:");
    for (port, got, note) in [
        (LOSSY_PORT, got_lossy, "rule: drop=30%"),
        (CLEAN_PORT, got_clean, "no rule"),
    ] {
        println!(
            "  :{port}  sent {sent:>6}  received {got:>6}  loss {:>5.1}%   ({note})",
            100.0 * (sent - got) as f64 / sent as f64
        );
    }
    if !status.success() {
        bail!("chaos exited with {status}");
    }
    step("removing the sandbox");
    drop(lab);
    Ok(())
}
