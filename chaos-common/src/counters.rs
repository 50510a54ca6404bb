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
    /// Packets picked for delay (`delay-p`).
    pub delayed_pkts: u64,
    /// Sum over matched packets of the time they were held (delay, rate, order), in ns.
    pub held_ns: u64,
    /// Packets dropped because the rate's queue was full (not counted in `dropped_*`).
    pub rate_dropped_pkts: u64,
    /// Connections (TCP connections, UDP flows) a connection rule saw begin.
    pub conns_seen: u64,
    /// Of those, the ones chosen for the rule's faults (`conn-p`, `max-conns`).
    pub conns_chosen: u64,
    /// Connection attempts answered with a RST (`refuse`).
    pub conns_refused: u64,
    /// Connections aborted with a RST to both ends (`reset`).
    pub conns_reset: u64,
    /// Connections whose packets are lost from then on (`hang`).
    pub conns_hung: u64,
    /// Packets lost because their connection hung or was reset (not counted in `dropped_*`).
    pub conn_dropped_pkts: u64,
    /// Packets sent twice (`duplicate`).
    pub duplicated_pkts: u64,
    /// Packets with a payload bit flipped (`corrupt`).
    pub corrupted_pkts: u64,
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
        self.delayed_pkts += other.delayed_pkts;
        self.held_ns += other.held_ns;
        self.rate_dropped_pkts += other.rate_dropped_pkts;
        self.conns_seen += other.conns_seen;
        self.conns_chosen += other.conns_chosen;
        self.conns_refused += other.conns_refused;
        self.conns_reset += other.conns_reset;
        self.conns_hung += other.conns_hung;
        self.conn_dropped_pkts += other.conn_dropped_pkts;
        self.duplicated_pkts += other.duplicated_pkts;
        self.corrupted_pkts += other.corrupted_pkts;
    }
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` u64s; every bit pattern is valid.
unsafe impl aya::Pod for RuleCounters {}

const _: () = assert!(core::mem::size_of::<RuleCounters>() == 136);
