//! Fidelity on this kernel: the loss an application sees against the loss configured.
//! (Delay and rate need fq, which this kernel lacks: the `vm` section measures them.)
//!
//! `data`: `{ "udp": [ { "p", "sent", "received", "lost_share", "band": [lo, hi],
//! "within_4_sigma", "counter_dropped" } ], "tcp": { "p", "bytes", "seconds",
//! "matched_packets", "dropped_packets", "matched_segments", "dropped_segments",
//! "segment_loss", "retrans_segs", "out_segs" } }`.

use std::{net::SocketAddr, time::Duration};

use chaos_user::{
    datapath::{AttachMode, Datapath},
    guard::Guard,
    rule::{Direction, Rule},
    ruleset::RuleSetBuilder,
};
use netlab::{IFACE, Lab, SERVER_V4, UdpCounter, heavy_traffic, in_netns, tcp_bulk, udp_send};
use serde_json::json;

use crate::{
    Ctx,
    report::{Section, Table},
    stats::binomial_band,
};

fn attached(lab: &Lab) -> Datapath {
    let mut dp = Datapath::load().expect("load chaos's program");
    in_netns(&lab.a, move || {
        dp.attach(IFACE, Direction::Egress, AttachMode::Tcx)
            .expect("attach");
        dp
    })
}

fn apply(dp: &mut Datapath, rule: &str) {
    let rule: Rule = rule.parse().unwrap();
    let set = RuleSetBuilder::new(&Guard::default())
        .rules([rule])
        .build()
        .unwrap();
    dp.apply(&set).expect("apply");
}

pub fn run(ctx: &Ctx) -> Section {
    let _serial = heavy_traffic();
    let mut section = Section::new("fidelity", "Fidelity: loss seen by the application");
    let lab = Lab::new("bench-fid");
    let mut dp = attached(&lab);
    let n: u64 = ctx.scale(20_000, 5_000);
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let mut udp = Table::new(
        "UDP datagrams to one port, counted at the receiver; 4σ is the binomial band.",
        &[
            "configured",
            "sent",
            "received",
            "lost",
            "4σ band",
            "within",
            "counter",
        ],
    );
    let mut udp_json = Vec::new();
    let mut all_within = true;
    for p in [0.01, 0.1, 0.3, 0.5] {
        apply(&mut dp, &format!("proto=udp dport=9000 drop={p}"));
        let before = dp.counters(1).expect("counters")[0];
        let rx = UdpCounter::start(&lab.b, dst);
        assert_eq!(udp_send(&lab.a, dst, n, 32), 0, "loss is silent");
        let (received, errors) = rx.finish();
        assert_eq!(errors, 0, "the receiver dropped datagrams itself");
        let after = dp.counters(1).expect("counters")[0];
        let lost = n - received;
        let (lo, hi) = binomial_band(n, p);
        let within = (lo..=hi).contains(&(lost as f64));
        all_within &= within;
        let counted = after.dropped_pkts - before.dropped_pkts;
        udp.row(vec![
            format!("{:.0} %", p * 100.0),
            n.to_string(),
            received.to_string(),
            format!("{:.2} %", 100.0 * lost as f64 / n as f64),
            format!("{lo:.0}..{hi:.0}"),
            if within { "yes" } else { "**no**" }.into(),
            counted.to_string(),
        ]);
        udp_json.push(json!({
            "p": p, "sent": n, "received": received, "lost_share": lost as f64 / n as f64,
            "band": [lo, hi], "within_4_sigma": within, "counter_dropped": counted,
        }));
    }
    section.target(
        "UDP loss fidelity",
        "loss at the receiver within 4σ of 1, 10, 30 and 50 %",
        format!(
            "{} of 4 within",
            udp_json
                .iter()
                .filter(|u| u["within_4_sigma"] == true)
                .count()
        ),
        all_within,
    );
    // TCP: whole GSO packets are dropped with p, so segments are lost in bursts; the share of
    // segments lost is p in expectation.
    let p = 0.01;
    let bytes: u64 = ctx.scale(256 << 20, 32 << 20);
    apply(&mut dp, &format!("proto=tcp dport=5201 drop={p}"));
    let before = dp.counters(1).expect("counters")[0];
    let t = tcp_bulk(
        &lab.a,
        &lab.b,
        (SERVER_V4, 5201).into(),
        bytes,
        Duration::from_secs(120),
    );
    let c = dp.counters(1).expect("counters")[0];
    let (m_pkts, d_pkts) = (
        c.matched_pkts - before.matched_pkts,
        c.dropped_pkts - before.dropped_pkts,
    );
    let (m_segs, d_segs) = (
        c.matched_segs - before.matched_segs,
        c.dropped_segs - before.dropped_segs,
    );
    let seg_loss = d_segs as f64 / m_segs as f64;
    let pkt_loss = d_pkts as f64 / m_pkts as f64;
    let (lo, hi) = binomial_band(m_pkts, p);
    let mut tcp = Table::new(
        &format!(
            "A {} MiB TCP transfer through drop={}; packets are GSO super-packets of many \
             segments.",
            bytes >> 20,
            p
        ),
        &["measure", "value"],
    );
    for (k, v) in [
        ("completed in", format!("{:.2} s", t.elapsed.as_secs_f64())),
        (
            "packets lost / matched",
            format!(
                "{d_pkts} / {m_pkts} ({:.2} %, 4σ band {lo:.0}..{hi:.0})",
                pkt_loss * 100.0
            ),
        ),
        (
            "segments lost / matched",
            format!("{d_segs} / {m_segs} ({:.2} %)", seg_loss * 100.0),
        ),
        (
            "kernel RetransSegs / OutSegs",
            format!("{} / {}", t.retrans_segs, t.out_segs),
        ),
    ] {
        tcp.row(vec![k.into(), v]);
    }
    section.target(
        "TCP packet loss fidelity",
        "lost packets within 4σ of 1 %",
        format!("{:.2} % of {m_pkts} packets", pkt_loss * 100.0),
        (lo..=hi).contains(&(d_pkts as f64)),
    );
    section.data = json!({
        "udp": udp_json,
        "tcp": {
            "p": p, "bytes": bytes, "seconds": t.elapsed.as_secs_f64(),
            "matched_packets": m_pkts, "dropped_packets": d_pkts,
            "matched_segments": m_segs, "dropped_segments": d_segs,
            "segment_loss": seg_loss, "retrans_segs": t.retrans_segs, "out_segs": t.out_segs,
        },
    });
    section.tables.push(udp);
    section.tables.push(tcp);
    section.note(
        "TCP: a super-packet is dropped whole with p, so the share of segments lost is p in \
         expectation but comes in bursts of one super-packet; its spread is wider than a \
         binomial over segments, so the segment share is reported, not judged.",
    );
    drop(dp);
    section
}
