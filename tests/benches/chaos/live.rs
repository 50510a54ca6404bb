//! Live: the kernel's own run-time statistics of the attached program (BPF_ENABLE_STATS)
//! during fixed-count 64-byte UDP floods in namespaces, net of a no-op program attached the
//! same way on an identical pair in the same run.
//!
//! `data`: `{ "datagrams": N, "rounds": R, "flows": [ { "flow": "hit"|"miss", "chaos_ns":
//! median, "noop_ns": median, "delta_ns": median of per-round differences, "chaos_runs":
//! total runs counted } ] }`.

use std::{net::SocketAddr, time::Duration};

use aya::{
    programs::{ProgramInfo, TcAttachType},
    sys::{Stats, enable_stats},
};
use chaos_user::{
    datapath::{AttachMode, Datapath},
    rule::Direction,
};
use netlab::{IFACE, Lab, SERVER_V4, UdpCounter, in_netns, udp_send};
use serde_json::json;

use crate::{
    Ctx,
    micro::{load_noop, noop},
    report::{Section, Table},
    scale::{self, Fault, HIT_PORT, MISS_PORT},
    stats::{f, median},
};

fn totals(info: &ProgramInfo) -> (f64, u64) {
    (info.run_time().as_nanos() as f64, info.run_count())
}

/// Floods `count` datagrams from `lab`'s client to `port` and returns them delivered.
fn flood(lab: &Lab, port: u16, count: u64) -> u64 {
    let dst: SocketAddr = (SERVER_V4, port).into();
    let rx = UdpCounter::start(&lab.b, dst);
    assert_eq!(udp_send(&lab.a, dst, count, 18), 0, "send errors");
    rx.finish().0
}

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("live", "Live: run time per packet, attached, under a flood");
    let count: u64 = ctx.scale(100_000, 20_000);
    let rounds: usize = ctx.scale(5, 2);
    let _stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (run as root)");
    let chaos_lab = Lab::new("bench-live-c");
    let noop_lab = Lab::new("bench-live-n");
    let mut dp = Datapath::load().expect("load chaos's program");
    dp.apply(&scale::rule_set(1, 1, Fault::Pass, false))
        .expect("write the rule set");
    let dp = in_netns(&chaos_lab.a, move || {
        dp.attach(IFACE, Direction::Egress, AttachMode::Tcx)
            .expect("attach chaos");
        dp
    });
    let mut noop_obj = load_noop();
    let noop_obj = in_netns(&noop_lab.a, move || {
        noop(&mut noop_obj)
            .attach(IFACE, TcAttachType::Egress)
            .expect("attach the no-op");
        noop_obj
    });
    let mut dp = dp;
    let mut noop_obj = noop_obj;
    let mut table = Table::new(
        "ns per packet from the kernel's run-time statistics; Δ is the median of per-round \
         differences.",
        &["flow", "chaos ns", "no-op ns", "Δ ns", "runs counted"],
    );
    let mut flows = Vec::new();
    for (flow, port) in [("hit", HIT_PORT), ("miss", MISS_PORT)] {
        let (mut c_ns, mut n_ns, mut d_ns) = (Vec::new(), Vec::new(), Vec::new());
        let mut runs = 0;
        for round in 0..rounds {
            let mut measure = |chaos: bool| {
                let mut info = || {
                    if chaos {
                        dp.program(Direction::Egress).unwrap().info().unwrap()
                    } else {
                        noop(&mut noop_obj).info().unwrap()
                    }
                };
                let (t0, n0) = totals(&info());
                let lab = if chaos { &chaos_lab } else { &noop_lab };
                let delivered = flood(lab, port, count);
                let (t1, n1) = totals(&info());
                assert!(n1 - n0 >= delivered, "the program ran for every datagram");
                ((t1 - t0) / (n1 - n0) as f64, n1 - n0)
            };
            let ((c, runs_c), (n, _)) = if round % 2 == 0 {
                let c = measure(true);
                (c, measure(false))
            } else {
                let n = measure(false);
                (measure(true), n)
            };
            runs += runs_c;
            c_ns.push(c);
            n_ns.push(n);
            d_ns.push(c - n);
            std::thread::sleep(Duration::from_millis(50));
        }
        let (c, n, d) = (median(&c_ns), median(&n_ns), median(&d_ns));
        table.row(vec![
            flow.to_owned(),
            f(c, 1),
            f(n, 1),
            f(d, 1),
            runs.to_string(),
        ]);
        flows.push(
            json!({"flow": flow, "chaos_ns": c, "noop_ns": n, "delta_ns": d, "chaos_runs": runs}),
        );
    }
    drop(dp);
    drop(noop_obj);
    section.data = json!({ "datagrams": count, "rounds": rounds, "flows": flows });
    section.tables.push(table);
    section.note(format!(
        "{rounds} rounds of {count} datagrams (18-byte payload, 60-byte frames) per flow and \
         program, each on its own veth pair, alternating which goes first. The rule set is one \
         rule (UDP, port {HIT_PORT}, 198.18.0.2/32, drop=0): \"hit\" runs the whole match and \
         pass path, \"miss\" goes to port {MISS_PORT}. Run time includes the kernel's own \
         accounting around each run, the same for both programs."
    ));
    section
}
