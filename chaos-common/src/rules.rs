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

/// Port numbers: 0 to 65535.
pub const PORTS: u32 = 1 << 16;

/// Ports per [`PortClasses`] block.
pub const PORT_BLOCK: usize = 64;

/// Blocks per generation in a port-class array.
pub const PORT_BLOCKS: u32 = PORTS / PORT_BLOCK as u32;

/// Distinct port classes a field can have: the class is a byte. A rule set of 64 rules cuts the
/// port space into at most 129 ranges, so a byte is always enough.
pub const PORT_CLASSES: usize = 256;

/// Index into the port fields of [`GenSettings`] and the port-class maps.
pub const PORT_DST: usize = 0;
/// Index into the port fields of [`GenSettings`] and the port-class maps.
pub const PORT_SRC: usize = 1;

/// The class of each of 64 consecutive ports, `gen * PORT_BLOCKS + port / PORT_BLOCK`.
///
/// A port array of masks costs 8 bytes a port (1 MiB per field for two generations); a class
/// byte costs one, and the masks of the few classes a rule set has sit in [`GenSettings`].
/// Class 0 is "no rule that constrains this field accepts the port".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortClasses {
    pub class: [u8; PORT_BLOCK],
}

impl Default for PortClasses {
    fn default() -> Self {
        Self {
            class: [0; PORT_BLOCK],
        }
    }
}

impl PortClasses {
    /// Index of the block holding `port` in `generation`.
    #[inline(always)]
    pub const fn index(generation: u32, port: u16) -> u32 {
        generation * PORT_BLOCKS + port as u32 / PORT_BLOCK as u32
    }

    /// Position of `port` within its block.
    #[inline(always)]
    pub const fn slot(port: u16) -> usize {
        port as usize % PORT_BLOCK
    }
}

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
    /// The ifb device that holds packets delayed on ingress (0: none).
    pub ifb_ifindex: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// The controller's lease: past this CLOCK_MONOTONIC time (ns) the program passes every
    /// packet, so faults never outlive a controller that died or froze. 0: no lease.
    pub lease_until_ns: u64,
}

/// Some rule makes packets (duplicates, RSTs): packets with [`CHAOS_SKB_MARK`] are its own.
pub const CONFIG_F_CLONES: u32 = 1 << 1;

/// Delay of locally sent TCP is applied to the connection's returning packets, on ingress.
///
/// fq holding a local socket's own packets stalls TCP: they stay charged to the socket, and
/// TCP small queues then allow about a millisecond of data in flight (measured: 0.9 Mbit/s
/// through 50 ms, against 95 Mbit/s with netem, which orphans its packets). Delaying the
/// returning packets by the same amount gives the connection the same round trip, with
/// nothing held locally.
pub const CONFIG_F_REVERSE_TCP_DELAY: u32 = 1 << 0;

/// Per-generation masks that are not keyed by a packet field value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Guard rails: TCP ports some rules must never fault (SSH, the Kubernetes API, the
    /// daemon's own API), whatever else they match. Entries past `guard_count` are unused.
    pub guard_ports: [u16; MAX_GUARD_PORTS],
    /// How each address table is looked up, by `TABLE_*`.
    pub addr: [AddrLookup; TABLES],
    /// By `DIR_*`: non-zero when rules of the other direction hang or reset connections, so
    /// packets this way look their connection up reversed.
    pub conn_reverse: [u8; 2],
    pub _pad2: [u8; 6],
    /// Number of `guard_ports` in use.
    pub guard_count: u32,
    pub _pad: u32,
    /// For each of `guard_ports`, the rules that may not match a TCP packet from or to it.
    pub guard_rules: [RuleMask; MAX_GUARD_PORTS],
    /// The rules each port class accepts, by `PORT_DST`/`PORT_SRC` (see [`PortClasses`]).
    pub port_masks: [[RuleMask; PORT_CLASSES]; 2],
}

impl Default for GenSettings {
    fn default() -> Self {
        Self {
            dir_rules: [0; 2],
            proto_rules: [0; 3],
            portless_rules: 0,
            dport_any: 0,
            sport_any: 0,
            src_any: [0; 2],
            dst_any: [0; 2],
            guard_ports: [0; MAX_GUARD_PORTS],
            addr: [AddrLookup::default(); TABLES],
            conn_reverse: [0; 2],
            _pad2: [0; 6],
            guard_count: 0,
            _pad: 0,
            guard_rules: [0; MAX_GUARD_PORTS],
            port_masks: [[0; PORT_CLASSES]; 2],
        }
    }
}

/// Address tables, one per field and family: indexes of `GenSettings::addr`.
pub const TABLE_SRC4: usize = 0;
pub const TABLE_DST4: usize = 1;
pub const TABLE_SRC6: usize = 2;
pub const TABLE_DST6: usize = 3;
/// Number of address tables.
pub const TABLES: usize = 4;

/// The address table of a field (`PORT_SRC`-style: 0 source, 1 destination) and family.
#[inline(always)]
pub const fn table(destination: bool, family: usize) -> usize {
    family * 2 + destination as usize
}

/// Where one address table of a generation keeps its prefixes.
///
/// An LPM trie walk grows with the prefixes beside the address (measured in the bench: 10,000
/// /30 networks cost 2.6 times one), while a hash lookup does not. So the prefixes of the
/// `MAX_HASHED_LENS` longest lengths a rule set uses go to the table's hash map, keyed by
/// length and address cut to it, and are tried longest first, as Cilium's ipcache did before
/// LPM maps; only shorter lengths than all of those are left to the trie, looked up last.
/// Each entry, hashed or not, carries every rule whose prefix contains it, so the first hit
/// is the whole answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrLookup {
    /// The hashed prefix lengths, longest first; entries past `hashed_count` are unused.
    pub hashed_lens: [u8; MAX_HASHED_LENS],
    pub hashed_count: u8,
    /// Non-zero when the trie holds prefixes of this generation.
    pub in_trie: u8,
}

/// Most prefix lengths an address table hashes: a packet looks each up, so this bounds the
/// lookups an address costs before the trie.
pub const MAX_HASHED_LENS: usize = 6;

/// Most guarded TCP ports per rule set.
pub const MAX_GUARD_PORTS: usize = 16;

/// What a matched rule does, indexed by `generation * MAX_RULES + rule`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleAction {
    /// Probability that a packet is lost, scaled by [`PROB_ONE`].
    pub drop_prob: u32,
    /// Index into the counters and rate-state arrays: stays with the rule when it moves between
    /// generations.
    pub counter_slot: u32,
    /// `ACTION_F_*` bits.
    pub flags: u32,
    /// Share of matched packets that are delayed, scaled by [`PROB_ONE`].
    pub delay_prob: u32,
    /// Added latency of a delayed packet, before the spread.
    pub delay_ns: u64,
    /// Spread around `delay_ns`: the half-width for `DIST_UNIFORM`, one standard deviation for
    /// the table distributions.
    pub jitter_ns: u64,
    /// `DIST_*`: the shape of the spread.
    pub dist: u32,
    pub _pad: u32,
    /// Pacing rate of the rule's traffic in bytes per second (with `ACTION_F_RATE`).
    pub rate_bytes_per_sec: u64,
    /// A packet that would wait longer than this for the rate is dropped, as by a full queue.
    pub rate_queue_ns: u64,
    /// Past this CLOCK_MONOTONIC time (ns) the rule is ignored: an experiment's end, enforced
    /// by the program itself. 0: no end.
    pub expires_ns: u64,
    /// Share of connections (TCP connections, UDP 5-tuples) the rule's faults apply to, decided
    /// at a flow's first packet; scaled by [`PROB_ONE`]. Used with `ACTION_F_CONN`.
    pub conn_prob: u32,
    /// `CONN_F_*` bits: what happens to a chosen connection.
    pub conn_flags: u32,
    /// `hang` or `reset` begins this long after the connection's first packet (`CONN_F_AFTER_TIME`).
    pub after_ns: u64,
    /// `hang` or `reset` begins once this many payload bytes passed (`CONN_F_AFTER_BYTES`).
    pub after_bytes: u64,
    /// Added latency of a connection's first packet (`CONN_F_CONNECT_DELAY`).
    pub connect_delay_ns: u64,
    /// Only this many connections are chosen, then the rule passes (0: no limit).
    pub max_conns: u32,
    /// Tells this rule's per-flow entries (connections, seeded packet counts) from those of an
    /// earlier rule in the same slot.
    pub epoch: u32,
    /// Share of packets sent twice (`ACTION_F_DUPLICATE`), scaled by [`PROB_ONE`].
    pub duplicate_prob: u32,
    /// Share of packets with one payload bit flipped (`ACTION_F_CORRUPT`).
    pub corrupt_prob: u32,
    /// Gilbert-Elliott loss (`ACTION_F_GE`), by `GE_*`, each scaled by [`PROB_ONE`].
    pub ge: [u32; 4],
    /// With `ACTION_F_SEEDED`, what every random draw of the rule derives from (see `seed`).
    pub seed: u64,
}

/// The rule keeps per-connection state (`conn-p`, `refuse`, `hang`, `reset`, `max-conns`,
/// `connect-delay`): its packets look up the connection table.
pub const ACTION_F_CONN: u32 = 1 << 3;
/// The rule sends a share of its packets twice.
pub const ACTION_F_DUPLICATE: u32 = 1 << 4;
/// The rule flips a payload bit of a share of its packets.
pub const ACTION_F_CORRUPT: u32 = 1 << 5;
/// The rule loses packets by the Gilbert-Elliott model instead of `drop_prob`.
pub const ACTION_F_GE: u32 = 1 << 6;
/// The rule's random draws come from `seed`, its packets' flows and their indexes in them, not
/// from the kernel's generator (`seed=N`): its packets count themselves in `CHAOS_SEED_INDEX`.
pub const ACTION_F_SEEDED: u32 = 1 << 7;

/// A TCP connection attempt is answered with a RST.
pub const CONN_F_REFUSE: u32 = 1 << 0;
/// After the handshake (or the trigger), every packet of the connection is lost, both ways.
pub const CONN_F_HANG: u32 = 1 << 1;
/// After the handshake (or the trigger), both ends receive a RST.
pub const CONN_F_RESET: u32 = 1 << 2;
/// `hang`/`reset` waits `after_ns` from the connection's first packet.
pub const CONN_F_AFTER_TIME: u32 = 1 << 3;
/// `hang`/`reset` waits for `after_bytes` of payload.
pub const CONN_F_AFTER_BYTES: u32 = 1 << 4;
/// The connection's first packet is delayed by `connect_delay_ns`.
pub const CONN_F_CONNECT_DELAY: u32 = 1 << 5;

/// Index into [`RuleAction::ge`]: chance to move from the good state to the bad one.
pub const GE_P: usize = 0;
/// Chance to move from the bad state back to the good one.
pub const GE_R: usize = 1;
/// Chance a packet is lost in the bad state (netem's `1-h`).
pub const GE_LOSS_BAD: usize = 2;
/// Chance a packet is lost in the good state (netem's `1-k`).
pub const GE_LOSS_GOOD: usize = 3;

/// `skb->mark` of a packet chaos made (a duplicate, a RST, the kept part of a cut segment): the
/// program lets it pass once, unfaulted, and clears the mark. Checked only while
/// `CONFIG_F_CLONES` is set, so other users of marks see no difference otherwise.
pub const CHAOS_SKB_MARK: u32 = 0x6368_6173;

/// One connection (or UDP flow) a connection rule has seen, keyed by its [`FlowKey`] in the
/// direction the rule matched; packets the other way look it up reversed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    /// CLOCK_MONOTONIC time of the flow's first packet the rule saw.
    pub first_ns: u64,
    /// UDP: payload bytes that passed the rule's way.
    pub bytes: u64,
    /// The rule's `epoch` when the entry was made: another rule in the slot starts anew.
    pub epoch: u32,
    /// `generation * MAX_RULES + rule` of the rule, for packets the other way.
    pub index: u32,
    /// TCP: sequence number of the first payload byte (`after-bytes` counts from it).
    pub base_seq: u32,
    /// `CONN_*` state.
    pub state: u8,
    /// Non-zero: the flow was chosen (`conn-p`, `max-conns`); otherwise the rule passes it.
    pub chosen: u8,
    pub _pad: [u8; 2],
}

/// The connection passes (not yet triggered).
pub const CONN_OPEN: u8 = 0;
/// Every packet of the connection is lost, both ways.
pub const CONN_HUNG: u8 = 1;
/// Both ends were sent a RST; whatever still comes is lost.
pub const CONN_RESET: u8 = 2;

/// Connections a `chaos run` with connection rules tracks (least recently used ones are
/// forgotten, and then start anew as connections seen for the first time).
pub const MAX_CONNS: u32 = 65536;

/// The rule delays a share of its packets.
pub const ACTION_F_DELAY: u32 = 1 << 0;
/// The rule paces its packets to `rate_bytes_per_sec`.
pub const ACTION_F_RATE: u32 = 1 << 1;
/// Delayed packets may be overtaken by later packets of their flow.
pub const ACTION_F_REORDER: u32 = 1 << 2;

/// Spread evenly within ± jitter.
pub const DIST_UNIFORM: u32 = 0;
/// Spread from table 0 of `CHAOS_DIST_TABLES`.
pub const DIST_NORMAL: u32 = 1;
/// Spread from table 1.
pub const DIST_PARETO: u32 = 2;
/// Spread from table 2.
pub const DIST_PARETONORMAL: u32 = 3;
/// Distributions with a table (all but uniform).
pub const DIST_TABLES: u32 = 3;
/// Entries per distribution table, as netem's.
pub const DIST_TABLE_SIZE: u32 = 4096;
/// One standard deviation in table units: `offset = jitter * entry >> DIST_SCALE_SHIFT`.
pub const DIST_SCALE_SHIFT: u32 = 12;
/// Table entries are i16, so they span ±8 standard deviations.
pub const DIST_MAX_SIGMA: u32 = 8;

/// One delay distribution, in units of 1/4096 standard deviation. One array entry per table:
/// an array of single i16s would round every entry up to 8 bytes in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistTable {
    pub entries: [i16; DIST_TABLE_SIZE as usize],
}

/// Per-rule pacing state for `rate=`: when the rule's virtual link is next free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub next_free_ns: u64,
}

/// Identifies a flow for keeping its packets in order under delay: addresses and ports as on
/// the wire, zero-padded IPv4 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Flows whose last departure time is remembered (least recently used ones are forgotten).
pub const MAX_FLOWS: u32 = 65536;

/// Local TCP connections whose returning packets carry a rule's delay.
pub const MAX_REVERSE_FLOWS: u32 = 16384;

/// Key of the IPv4 hashed prefix tables (see `AddrLookup`): the generation, the prefix length,
/// then the address cut to the length, in network order. 8 bytes, a multiple of four, which
/// the kernel hashes a word at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv4PrefixKey {
    pub generation: u8,
    pub len: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 4],
}

impl Ipv4PrefixKey {
    /// The key of the `len`-bit prefix holding `addr` (host order).
    #[inline(always)]
    pub fn new(generation: u8, len: u8, addr: u32) -> Self {
        let len = if len > 32 { 32 } else { len };
        let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or_default();
        Self {
            generation,
            len,
            _pad: [0; 2],
            addr: (addr & mask).to_be_bytes(),
        }
    }
}

/// Key of the IPv6 hashed prefix tables: as [`Ipv4PrefixKey`], 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv6PrefixKey {
    pub generation: u8,
    pub len: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}

impl Ipv6PrefixKey {
    /// The key of the `len`-bit prefix holding the address `(hi, lo)` (its two 64-bit halves,
    /// host order: BPF has no 128-bit shifts).
    #[inline(always)]
    pub fn new(generation: u8, len: u8, (hi, lo): (u64, u64)) -> Self {
        let len = if len > 128 { 128 } else { len };
        let ones = |bits: u8| u64::MAX.checked_shl(64 - bits as u32).unwrap_or_default();
        let (hi_mask, lo_mask) = if len >= 64 {
            (u64::MAX, ones(len - 64))
        } else {
            (ones(len), 0)
        };
        let mut addr = [0u8; 16];
        let (h, l) = addr.split_at_mut(8);
        h.copy_from_slice(&(hi & hi_mask).to_be_bytes());
        l.copy_from_slice(&(lo & lo_mask).to_be_bytes());
        Self {
            generation,
            len,
            _pad: [0; 2],
            addr,
        }
    }
}

/// Key data of the IPv4 prefix trie: the generation, then the address in network order. The
/// trie's prefix length counts the generation's 8 bits ([`trie_prefix_len`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4TrieKey {
    pub generation: u8,
    pub addr: [u8; 4],
}

impl Ipv4TrieKey {
    #[inline(always)]
    pub const fn new(generation: u8, addr: [u8; 4]) -> Self {
        Self { generation, addr }
    }
}

/// Key data of the IPv6 prefix trie: as [`Ipv4TrieKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6TrieKey {
    pub generation: u8,
    pub addr: [u8; 16],
}

impl Ipv6TrieKey {
    #[inline(always)]
    pub const fn new(generation: u8, addr: [u8; 16]) -> Self {
        Self { generation, addr }
    }
}

/// Bits of the generation byte at the head of every prefix key.
pub const LPM_GEN_BITS: u32 = 8;

/// The trie prefix length of an address prefix `len` bits long: the generation byte first.
#[inline(always)]
pub const fn trie_prefix_len(len: u8) -> u32 {
    LPM_GEN_BITS + len as u32
}

/// Most prefixes each address map (hash or trie) holds, over both generations: room for
/// prefix lists and the bench's scale runs (up to 60,000 prefixes in one generation). Both
/// kinds allocate per entry, so the limit costs nothing until used.
pub const MAX_PREFIXES: u32 = 2 * 65536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::RuntimeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GenSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleAction {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortClasses {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ipv4PrefixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ipv6PrefixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ipv4TrieKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ipv6TrieKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DistTable {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnEntry {}
}

const _: () = assert!(core::mem::size_of::<RuntimeConfig>() == 24);
const _: () = assert!(
    core::mem::size_of::<GenSettings>()
        == 8 * 12
            + 2 * MAX_GUARD_PORTS
            + 4 * 8
            + 8
            + 8
            + 8 * MAX_GUARD_PORTS
            + 2 * 8 * PORT_CLASSES
);
const _: () = assert!(core::mem::size_of::<Ipv4PrefixKey>() == 8);
const _: () = assert!(core::mem::size_of::<Ipv6PrefixKey>() == 20);
const _: () = assert!(core::mem::size_of::<Ipv4TrieKey>() == 5);
const _: () = assert!(core::mem::size_of::<Ipv6TrieKey>() == 17);
const _: () = assert!(core::mem::size_of::<PortClasses>() == PORT_BLOCK);
const _: () = assert!(core::mem::size_of::<RuleAction>() == 136);
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 32);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
