//! Counter reports: the live table, the final table, and JSON lines.

use chaos_common::RuleCounters;
use serde::Serialize;

use crate::rule::Rule;

/// One rule's counters as reported to users and scripts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleReport {
    /// Position of the rule on the command line, from 0; earlier rules win.
    pub rule: usize,
    pub spec: String,
    pub matched_packets: u64,
    pub matched_segments: u64,
    pub matched_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_segments: u64,
    pub dropped_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    /// Packets picked for delay by `delay-p`.
    pub delayed_packets: u64,
    /// Mean time a matched packet was held (delay, rate, order), in milliseconds.
    pub mean_held_ms: f64,
    /// Packets dropped because the rule's rate queue was full.
    pub rate_dropped_packets: u64,
    /// Connections (TCP connections, UDP flows) a connection rule saw begin.
    pub conns_seen: u64,
    /// Of those, the ones its faults apply to (`conn-p`, `max-conns`).
    pub conns_chosen: u64,
    /// Connection attempts answered with a RST (`refuse`).
    pub conns_refused: u64,
    /// Connections aborted with a RST to both ends (`reset`).
    pub conns_reset: u64,
    /// Connections whose packets are lost from then on (`hang`).
    pub conns_hung: u64,
    /// Packets lost because their connection hung or was reset.
    pub conn_dropped_packets: u64,
    /// Packets sent twice (`duplicate`).
    pub duplicated_packets: u64,
    /// Packets with a payload bit flipped (`corrupt`).
    pub corrupted_packets: u64,
}

impl RuleReport {
    pub fn new(index: usize, rule: &Rule, c: &RuleCounters) -> Self {
        Self {
            rule: index,
            spec: rule.text.clone(),
            matched_packets: c.matched_pkts,
            matched_segments: c.matched_segs,
            matched_bytes: c.matched_bytes,
            dropped_packets: c.dropped_pkts,
            dropped_segments: c.dropped_segs,
            dropped_bytes: c.dropped_bytes,
            passed_packets: c.matched_pkts.saturating_sub(
                c.dropped_pkts + c.rate_dropped_pkts + c.conn_dropped_pkts + c.conns_refused,
            ),
            passed_bytes: c.matched_bytes.saturating_sub(c.dropped_bytes),
            delayed_packets: c.delayed_pkts,
            mean_held_ms: if c.matched_pkts == 0 {
                0.0
            } else {
                c.held_ns as f64 / c.matched_pkts as f64 / 1e6
            },
            rate_dropped_packets: c.rate_dropped_pkts,
            conns_seen: c.conns_seen,
            conns_chosen: c.conns_chosen,
            conns_refused: c.conns_refused,
            conns_reset: c.conns_reset,
            conns_hung: c.conns_hung,
            conn_dropped_packets: c.conn_dropped_pkts,
            duplicated_packets: c.duplicated_pkts,
            corrupted_packets: c.corrupted_pkts,
        }
    }
}

/// A fixed-width table, one line per rule, newline-terminated.
pub fn table(reports: &[RuleReport]) -> String {
    let mut out = format!(
        "{:>4}  {:>10}  {:>10}  {:>10}  {:>7}  {:>10}  {:>9}  {:>12}  {:>13}  {:>8}  {:>8}  {}\n",
        "RULE",
        "MATCHED",
        "DROPPED",
        "PASSED",
        "LOSS",
        "DELAYED",
        "HELD",
        "BYTES",
        "CONNS",
        "ABORTED",
        "DUP/COR",
        "SPEC"
    );
    for r in reports {
        let loss = if r.matched_segments == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.1}%",
                100.0 * r.dropped_segments as f64 / r.matched_segments as f64
            )
        };
        // Chosen of seen connections; aborted: refused, reset or hung.
        let conns = if r.conns_seen == 0 {
            "-".to_owned()
        } else {
            format!("{}/{}", r.conns_chosen, r.conns_seen)
        };
        out.push_str(&format!(
            "{:>4}  {:>10}  {:>10}  {:>10}  {:>7}  {:>10}  {:>7.1}ms  {:>12}  {:>13}  {:>8}  {:>8}  {}\n",
            r.rule,
            r.matched_packets,
            r.dropped_packets + r.rate_dropped_packets + r.conn_dropped_packets,
            r.passed_packets,
            loss,
            r.delayed_packets,
            r.mean_held_ms,
            r.matched_bytes,
            conns,
            r.conns_refused + r.conns_reset + r.conns_hung,
            format!("{}/{}", r.duplicated_packets, r.corrupted_packets),
            r.spec
        ));
    }
    out
}

/// One JSON object per rule, one per line.
pub fn json_lines(reports: &[RuleReport]) -> serde_json::Result<String> {
    let mut out = String::new();
    for r in reports {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    Ok(out)
}
