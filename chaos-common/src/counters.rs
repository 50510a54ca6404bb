//! Per-rule counters, kept per CPU by the kernel and summed by the loader.

/// Counts for one rule slot. A GSO packet is one `*_pkts` but `gso_segs` `*_segs`: the segments are
/// what goes on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub matched_pkts: u64,
    pub matched_segs: u64,
    pub matched_bytes: u64,
    pub dropped_pkts: u64,
    pub dropped_segs: u64,
    pub dropped_bytes: u64,
}

impl RuleCounters {
    /// Adds another CPU's counts to these.
    pub fn accumulate(&mut self, other: &Self) {
        self.matched_pkts += other.matched_pkts;
        self.matched_segs += other.matched_segs;
        self.matched_bytes += other.matched_bytes;
        self.dropped_pkts += other.dropped_pkts;
        self.dropped_segs += other.dropped_segs;
        self.dropped_bytes += other.dropped_bytes;
    }
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` u64s; every bit pattern is valid.
unsafe impl aya::Pod for RuleCounters {}

const _: () = assert!(core::mem::size_of::<RuleCounters>() == 48);
