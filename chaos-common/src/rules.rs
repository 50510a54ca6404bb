//! How a rule set is laid out in maps.
//!
//! Matching is a bitmask intersection: every lookup (direction, protocol, destination port,
//! source port, source prefix, destination prefix) yields a [`RuleMask`] of the rules that accept
//! that field, the masks are ANDed, and the lowest set bit is the first rule that matches. The cost
//! of a packet is therefore a fixed number of lookups whatever the number of rules.
//!
//! Every key carries a generation (0 or 1). The loader writes a whole rule set into the inactive
//! generation and then flips [`RuntimeConfig::active_gen`], so the kernel never sees half a set.

/// Bit `i` set: rule `i` of the generation accepts the field that was looked up.
pub type RuleMask = u64;

/// Most rules one generation can hold: one bit each in a [`RuleMask`].
pub const MAX_RULES: u32 = RuleMask::BITS;

/// Two generations: the one the kernel reads and the one the loader writes.
pub const GENERATIONS: u32 = 2;

/// Entries per generation in the port arrays: one per port number.
pub const PORTS: u32 = 1 << 16;

/// Fixed-point scale of probabilities: 1.0 is `1 << 31`, so two of them multiply in a `u64`.
pub const PROB_ONE: u32 = 1 << 31;

/// Index into [`GenSettings::dir_rules`].
pub const DIR_INGRESS: usize = 0;
/// Index into [`GenSettings::dir_rules`].
pub const DIR_EGRESS: usize = 1;

/// Index into [`GenSettings::proto_rules`].
pub const PROTO_TCP: usize = 0;
/// Index into [`GenSettings::proto_rules`].
pub const PROTO_UDP: usize = 1;
/// Index into [`GenSettings::proto_rules`]: any other IP protocol (ICMP, SCTP, ...).
pub const PROTO_OTHER: usize = 2;

/// Address family index into the `*_any` arrays of [`GenSettings`].
pub const FAMILY_V4: usize = 0;
/// Address family index into the `*_any` arrays of [`GenSettings`].
pub const FAMILY_V6: usize = 1;

/// The single entry of the runtime-config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Generation the kernel matches against (0 or 1).
    pub active_gen: u32,
    pub _pad: u32,
}

/// Per-generation masks that are not keyed by a packet field value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenSettings {
    /// Rules that apply to each direction, by `DIR_*`.
    pub dir_rules: [RuleMask; 2],
    /// Rules that apply to each protocol, by `PROTO_*`. A rule with ports never appears under
    /// `PROTO_OTHER`: only TCP and UDP carry ports.
    pub proto_rules: [RuleMask; 3],
    /// Rules without any port constraint: the only ones a non-first IP fragment can match.
    pub portless_rules: RuleMask,
    /// Rules without a destination-port constraint; ORed with the port array's entry.
    pub dport_any: RuleMask,
    /// Rules without a source-port constraint; ORed with the port array's entry.
    pub sport_any: RuleMask,
    /// Rules without a source prefix, by `FAMILY_*`: the value when the trie has no match.
    pub src_any: [RuleMask; 2],
    /// Rules without a destination prefix, by `FAMILY_*`.
    pub dst_any: [RuleMask; 2],
}

/// What a matched rule does, indexed by `generation * MAX_RULES + rule`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleAction {
    /// Probability that one wire packet (one segment of a GSO packet) is lost, scaled by
    /// [`PROB_ONE`].
    pub drop_prob: u32,
    /// Index into the counters array: stays with the rule when it moves between generations.
    pub counter_slot: u32,
}

/// Key data of the IPv4 prefix trie: the generation byte, then the address in network order.
/// The trie's prefix length counts the generation's 8 bits.
pub type Ipv4LpmData = [u8; 5];

/// Key data of the IPv6 prefix trie: the generation byte, then the address in network order.
pub type Ipv6LpmData = [u8; 17];

/// Bits of the generation byte at the head of every prefix key.
pub const LPM_GEN_BITS: u32 = 8;

/// Most prefixes each trie holds, over both generations.
pub const MAX_PREFIXES: u32 = 4 * MAX_RULES;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::RuntimeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GenSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleAction {}
}

const _: () = assert!(core::mem::size_of::<RuntimeConfig>() == 8);
const _: () = assert!(core::mem::size_of::<GenSettings>() == 8 * 12);
const _: () = assert!(core::mem::size_of::<RuleAction>() == 8);
