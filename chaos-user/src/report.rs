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
            passed_packets: c
                .matched_pkts
                .saturating_sub(c.dropped_pkts + c.rate_dropped_pkts),
            passed_bytes: c.matched_bytes.saturating_sub(c.dropped_bytes),
            delayed_packets: c.delayed_pkts,
            mean_held_ms: if c.matched_pkts == 0 {
                0.0
            } else {
                c.held_ns as f64 / c.matched_pkts as f64 / 1e6
            },
            rate_dropped_packets: c.rate_dropped_pkts,
        }
    }
}

/// A fixed-width table, one line per rule, newline-terminated.
pub fn table(reports: &[RuleReport]) -> String {
    let mut out = format!(
        "{:>4}  {:>10}  {:>10}  {:>10}  {:>7}  {:>10}  {:>9}  {:>12}  {}\n",
        "RULE", "MATCHED", "DROPPED", "PASSED", "LOSS", "DELAYED", "HELD", "BYTES", "SPEC"
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
        out.push_str(&format!(
            "{:>4}  {:>10}  {:>10}  {:>10}  {:>7}  {:>10}  {:>7.1}ms  {:>12}  {}\n",
            r.rule,
            r.matched_packets,
            r.dropped_packets + r.rate_dropped_packets,
            r.passed_packets,
            loss,
            r.delayed_packets,
            r.mean_held_ms,
            r.matched_bytes,
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
