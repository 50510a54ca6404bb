//! Turns parsed rules into the map entries of one generation (see `chaos_common::rules`).
//!
//! Pure data in, pure data out: everything here is unit-testable without a kernel. Nothing
//! outside this crate calls it: `crate::ruleset::RuleSetBuilder` is the one way from rules to a
//! rule set the kernel takes, and it adds slots, expiry, dry runs and the guard rails.

use std::collections::{BTreeMap, HashMap};

use chaos_common::{
    GenSettings, RuleAction,
    rules::{
        ACTION_F_CONN, ACTION_F_CORRUPT, ACTION_F_DELAY, ACTION_F_DUPLICATE, ACTION_F_GE,
        ACTION_F_RATE, ACTION_F_REORDER, ACTION_F_SEEDED, AddrLookup, CONN_F_AFTER_BYTES,
        CONN_F_AFTER_TIME, CONN_F_CONNECT_DELAY, CONN_F_HANG, CONN_F_REFUSE, CONN_F_RESET,
        DIR_EGRESS, DIR_INGRESS, DIST_NORMAL, DIST_PARETO, DIST_PARETONORMAL, DIST_UNIFORM,
        FAMILY_V4, FAMILY_V6, GE_LOSS_BAD, GE_LOSS_GOOD, GE_P, GE_R, GENERATIONS, MAX_HASHED_LENS,
        MAX_PREFIXES, MAX_RULES, PORT_CLASSES, PORT_DST, PORT_SRC, PROB_ONE, PROTO_OTHER,
        PROTO_TCP, PROTO_UDP, PortClasses, RuleMask, TABLES, table,
    },
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::rule::{Direction, Distribution, PortRange, Protocol, Rule, Trigger};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("{0} rules given; at most {MAX_RULES} fit in one rule set")]
    TooManyRules(usize),
    #[error("{0} prefixes in one address field of a rule set; at most {MAX_PREFIXES_PER_SET} fit")]
    TooManyPrefixes(usize),
    #[error("counter slot {0} given twice or out of range (0-{max})", max = MAX_RULES - 1)]
    Slot(u32),
}

/// A rule set as map entries, before the guard rails, expiry and dry runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Compiled {
    pub settings: GenSettings,
    /// The port-class blocks with a class set, by `PORT_DST`/`PORT_SRC`, in block order.
    pub ports: [Vec<(u32, PortClasses)>; 2],
    /// Prefix entries by address table (`TABLE_*`), each carrying every rule it takes part in.
    pub prefixes: [Vec<(IpNet, RuleMask)>; TABLES],
    pub actions: Vec<RuleAction>,
}

/// Compiles `rules` in priority order: rule `i` gets bit `i` and counter slot `slots[i]`, so a
/// rule keeps its counters while the rules around it come and go. An address table hashes at
/// most `hashed[table]` prefixes (what its map was sized for); the rest go to the trie.
pub(crate) fn compile(
    rules: &[Rule],
    slots: &[u32],
    hashed: &[usize; TABLES],
) -> Result<Compiled, CompileError> {
    if rules.len() > MAX_RULES as usize {
        return Err(CompileError::TooManyRules(rules.len()));
    }
    assert_eq!(rules.len(), slots.len(), "one counter slot per rule");
    let mut seen = 0u64;
    for slot in slots {
        if *slot >= MAX_RULES || seen & (1 << slot) != 0 {
            return Err(CompileError::Slot(*slot));
        }
        seen |= 1 << slot;
    }
    let mut settings = GenSettings::default();
    for (i, rule) in rules.iter().enumerate() {
        let bit: RuleMask = 1 << i;
        let dir = match rule.direction {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
        };
        settings.dir_rules[dir] |= bit;
        match rule.protocol {
            Protocol::Tcp => settings.proto_rules[PROTO_TCP] |= bit,
            Protocol::Udp => settings.proto_rules[PROTO_UDP] |= bit,
            Protocol::Any => {
                settings.proto_rules[PROTO_TCP] |= bit;
                settings.proto_rules[PROTO_UDP] |= bit;
                // Only TCP and UDP have ports: a rule with ports cannot match ICMP and friends.
                if !rule.has_ports() {
                    settings.proto_rules[PROTO_OTHER] |= bit;
                }
            }
        }
        if !rule.has_ports() {
            settings.portless_rules |= bit;
        }
        if rule.dport.is_none() {
            settings.dport_any |= bit;
        }
        if rule.sport.is_none() {
            settings.sport_any |= bit;
        }
        if rule.conn.is_some_and(|c| c.both_ways()) {
            // The connection's packets the other way are looked up reversed there.
            settings.conn_reverse[1 - dir] = 1;
        }
        // A rule without a prefix accepts every address of both families; a rule with a prefix
        // of one family is absent from the other family's masks, so it never matches there.
        for (field, any) in [
            (&rule.src, &mut settings.src_any),
            (&rule.dst, &mut settings.dst_any),
        ] {
            if field.is_empty() {
                any[FAMILY_V4] |= bit;
                any[FAMILY_V6] |= bit;
            }
        }
    }
    let actions = rules
        .iter()
        .zip(slots)
        .map(|(rule, slot)| action(rule, *slot))
        .collect();
    let mut prefixes: [Vec<(IpNet, RuleMask)>; TABLES] = Default::default();
    for destination in [false, true] {
        let any = |family: usize| {
            if destination {
                settings.dst_any[family]
            } else {
                settings.src_any[family]
            }
        };
        let (t4, t6) = (table(destination, FAMILY_V4), table(destination, FAMILY_V6));
        prefixes[t4] = widen(family_prefixes(rules, destination, v4, any(FAMILY_V4))?);
        prefixes[t6] = widen(family_prefixes(rules, destination, v6, any(FAMILY_V6))?);
    }
    for (t, entries) in prefixes.iter().enumerate() {
        settings.addr[t] = addr_lookup(entries, hashed[t]);
    }
    let ports = [PORT_DST, PORT_SRC].map(|field| {
        let ranges = port_ranges(rules, |r| if field == PORT_DST { r.dport } else { r.sport });
        port_classes(&ranges, &mut settings.port_masks[field])
    });
    Ok(Compiled {
        settings,
        ports,
        prefixes,
        actions,
    })
}

fn widen<N: Into<IpNet>>(entries: Vec<(N, RuleMask)>) -> Vec<(IpNet, RuleMask)> {
    entries.into_iter().map(|(n, m)| (n.into(), m)).collect()
}

fn action(rule: &Rule, counter_slot: u32) -> RuleAction {
    let mut a = RuleAction {
        drop_prob: scale_probability(rule.drop.get()),
        counter_slot,
        ..RuleAction::default()
    };
    if let Some(d) = rule.delay {
        a.flags |= ACTION_F_DELAY;
        a.delay_prob = scale_probability(d.probability.get());
        a.delay_ns = d.delay.as_nanos() as u64;
        a.jitter_ns = d.jitter.as_nanos() as u64;
        a.dist = match d.dist {
            Distribution::Uniform => DIST_UNIFORM,
            Distribution::Normal => DIST_NORMAL,
            Distribution::Pareto => DIST_PARETO,
            Distribution::ParetoNormal => DIST_PARETONORMAL,
        };
    }
    if let Some(rate) = rule.rate {
        a.flags |= ACTION_F_RATE;
        a.rate_bytes_per_sec = rate.bytes_per_second().max(1);
        a.rate_queue_ns = RATE_QUEUE.as_nanos() as u64;
    }
    if rule.reorder {
        a.flags |= ACTION_F_REORDER;
    }
    if rule.duplicate.get() > 0.0 {
        a.flags |= ACTION_F_DUPLICATE;
        a.duplicate_prob = scale_probability(rule.duplicate.get());
    }
    if rule.corrupt.get() > 0.0 {
        a.flags |= ACTION_F_CORRUPT;
        a.corrupt_prob = scale_probability(rule.corrupt.get());
    }
    if let Some(ge) = rule.loss {
        a.flags |= ACTION_F_GE;
        a.ge[GE_P] = scale_probability(ge.p.get());
        a.ge[GE_R] = scale_probability(ge.r.get());
        a.ge[GE_LOSS_BAD] = scale_probability(1.0 - ge.h.get());
        a.ge[GE_LOSS_GOOD] = scale_probability(1.0 - ge.k.get());
    }
    if let Some(c) = rule.conn {
        a.flags |= ACTION_F_CONN;
        a.conn_prob = scale_probability(c.probability.get());
        for (set, flag) in [
            (c.refuse, CONN_F_REFUSE),
            (c.hang, CONN_F_HANG),
            (c.reset, CONN_F_RESET),
        ] {
            if set {
                a.conn_flags |= flag;
            }
        }
        match c.after {
            Some(Trigger::Time(t)) => {
                a.conn_flags |= CONN_F_AFTER_TIME;
                a.after_ns = t.as_nanos() as u64;
            }
            Some(Trigger::Bytes(n)) => {
                a.conn_flags |= CONN_F_AFTER_BYTES;
                a.after_bytes = n;
            }
            None => {}
        }
        if let Some(d) = c.connect_delay {
            a.conn_flags |= CONN_F_CONNECT_DELAY;
            a.connect_delay_ns = d.as_nanos() as u64;
        }
        a.max_conns = c.max_conns.unwrap_or(0);
    }
    // A rule that leaves nothing to chance has nothing to seed: its packets then skip counting
    // themselves in their flow.
    if let Some(seed) = rule.seed
        && rule.has_randomness()
    {
        a.flags |= ACTION_F_SEEDED;
        a.seed = seed;
    }
    a
}

/// How long a packet may wait for its rule's `rate=` before it is dropped, as by a full queue.
pub const RATE_QUEUE: std::time::Duration = std::time::Duration::from_millis(500);

/// Probability in the kernel's fixed point, rounded to nearest.
pub fn scale_probability(p: f64) -> u32 {
    (p * f64::from(PROB_ONE)).round() as u32
}

/// The port ranges of one field where the set of rules accepting a port is the same, with
/// that set, in port order, leaving out ranges no constrained rule accepts. Swept over the
/// ranges' boundaries, so the work follows the ports the rules name rather than all 65,536
/// (the daemon compiles on every change).
fn port_ranges(
    rules: &[Rule],
    field: impl Fn(&Rule) -> Option<PortRange>,
) -> Vec<(u32, u32, RuleMask)> {
    let ranges: Vec<(u32, u32, RuleMask)> = rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| field(r).map(|p| (u32::from(p.start), u32::from(p.end), 1 << i)))
        .collect();
    let mut bounds: Vec<u32> = ranges.iter().flat_map(|(s, e, _)| [*s, e + 1]).collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds
        .windows(2)
        .filter_map(|pair| {
            let (from, to) = (pair[0], pair[1]);
            let mask = ranges
                .iter()
                .filter(|(s, e, _)| *s <= from && from <= *e)
                .fold(0, |m, (_, _, bit)| m | bit);
            (mask != 0).then_some((from, to, mask))
        })
        .collect()
}

/// Gives each distinct mask of `ranges` a class (from 1; 0 is "none"), writes the masks into
/// `masks` and returns the blocks of classes. 64 rules cut the ports into at most 129 ranges,
/// so the classes always fit in a byte.
fn port_classes(
    ranges: &[(u32, u32, RuleMask)],
    masks: &mut [RuleMask; PORT_CLASSES],
) -> Vec<(u32, PortClasses)> {
    let mut class_of: HashMap<RuleMask, u8> = HashMap::new();
    let mut blocks: BTreeMap<u32, PortClasses> = BTreeMap::new();
    for (from, to, mask) in ranges {
        let next = class_of.len() + 1;
        let class = *class_of.entry(*mask).or_insert_with(|| {
            let class = u8::try_from(next).expect("at most 129 port ranges");
            masks[usize::from(class)] = *mask;
            class
        });
        for port in *from..*to {
            let port = port as u16;
            let block = blocks.entry(PortClasses::index(0, port)).or_default();
            block.class[PortClasses::slot(port)] = class;
        }
    }
    blocks.into_iter().collect()
}

fn v4(net: IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(net) => Some(net),
        IpNet::V6(_) => None,
    }
}

fn v6(net: IpNet) -> Option<Ipv6Net> {
    match net {
        IpNet::V6(net) => Some(net),
        IpNet::V4(_) => None,
    }
}

/// Address-table entries of one field and family. A lookup answers with the longest matching
/// prefix only, so each entry carries every rule with a prefix containing it, plus the rules
/// without a prefix (which a miss also yields, from `GenSettings`). Containing prefixes are
/// found by walking each key's shorter prefixes, so the work grows with the entries, not with
/// their square.
fn family_prefixes<N: Copy + Ord + std::hash::Hash + Prefix>(
    rules: &[Rule],
    destination: bool,
    family: impl Fn(IpNet) -> Option<N>,
    any: RuleMask,
) -> Result<Vec<(N, RuleMask)>, CompileError> {
    let mut masks: HashMap<N, RuleMask> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = if destination { &rule.dst } else { &rule.src };
        for net in field.iter().filter_map(|n| family(*n)) {
            *masks.entry(net).or_default() |= 1 << i;
        }
    }
    if masks.len() > MAX_PREFIXES_PER_SET {
        return Err(CompileError::TooManyPrefixes(masks.len()));
    }
    let mut keys: Vec<N> = masks.keys().copied().collect();
    keys.sort();
    Ok(keys
        .into_iter()
        .map(|key| {
            let mask = (0..=key.length())
                .filter_map(|len| masks.get(&key.shortened(len)))
                .fold(any, |acc, bits| acc | bits);
            (key, mask)
        })
        .collect())
}

/// Where a table's `entries` go: the longest prefix lengths to the hash map, at most
/// `MAX_HASHED_LENS` of them and at most `capacity` entries, any shorter ones to the trie (see
/// `AddrLookup`).
fn addr_lookup(entries: &[(IpNet, RuleMask)], capacity: usize) -> AddrLookup {
    let mut per_len: BTreeMap<u8, usize> = BTreeMap::new();
    for (net, _) in entries {
        *per_len.entry(net.prefix_len()).or_default() += 1;
    }
    let mut plan = AddrLookup::default();
    let mut hashed_entries = 0;
    for (len, count) in per_len.iter().rev() {
        let n = usize::from(plan.hashed_count);
        if n == MAX_HASHED_LENS || hashed_entries + count > capacity {
            break;
        }
        plan.hashed_lens[n] = *len;
        plan.hashed_count += 1;
        hashed_entries += count;
    }
    plan.in_trie = u8::from(usize::from(plan.hashed_count) < per_len.len());
    plan
}

/// Whether `plan` keeps prefixes `len` bits long in the hash map rather than the trie.
pub fn is_hashed(plan: &AddrLookup, len: u8) -> bool {
    plan.hashed_lens[..usize::from(plan.hashed_count)].contains(&len)
}

/// Most entries one address table (field and family) of a rule set may hold: half of what the
/// kernel's tables have room for, since two generations share them.
pub const MAX_PREFIXES_PER_SET: usize = (MAX_PREFIXES / GENERATIONS) as usize;

trait Prefix: Sized {
    fn length(&self) -> u8;
    /// The prefix of `len` bits that contains this one.
    fn shortened(&self, len: u8) -> Self;
}

impl Prefix for Ipv4Net {
    fn length(&self) -> u8 {
        self.prefix_len()
    }

    fn shortened(&self, len: u8) -> Self {
        Ipv4Net::new(self.addr(), len)
            .expect("no longer than the prefix")
            .trunc()
    }
}

impl Prefix for Ipv6Net {
    fn length(&self) -> u8 {
        self.prefix_len()
    }

    fn shortened(&self, len: u8) -> Self {
        Ipv6Net::new(self.addr(), len)
            .expect("no longer than the prefix")
            .trunc()
    }
}

#[cfg(test)]
mod tests {
    use chaos_common::rules::{TABLE_DST4, TABLE_DST6, TABLE_SRC4, TABLE_SRC6};

    use super::*;
    use crate::{
        guard::Guard,
        ruleset::{RuleSet, RuleSetBuilder},
    };

    fn rules(texts: &[&str]) -> Vec<Rule> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn compile(rules: &[Rule]) -> Result<RuleSet, CompileError> {
        RuleSetBuilder::new(&Guard::default())
            .rules(rules.iter().cloned())
            .build()
    }

    fn nets(entries: &[(IpNet, RuleMask)]) -> Vec<(IpNet, RuleMask)> {
        entries.to_vec()
    }

    #[test]
    fn prefix_lists_carry_every_containing_rule() {
        let r = rules(&[
            "dst=198.18.0.2,198.18.1.0/24,2001:db8::2 drop=1",
            "dst=198.18.0.0/16 drop=1",
            "drop=1",
        ]);
        let c = compile(&r).unwrap();
        let net = |t: &str| t.parse::<IpNet>().unwrap();
        assert_eq!(
            nets(c.prefixes(TABLE_DST4)),
            vec![
                (net("198.18.0.0/16"), 0b110),
                (net("198.18.0.2/32"), 0b111),
                (net("198.18.1.0/24"), 0b111),
            ]
        );
        assert_eq!(
            nets(c.prefixes(TABLE_DST6)),
            vec![("2001:db8::2/128".parse().unwrap(), 0b101)],
            "rule 1 has no IPv6 prefix: it never matches IPv6"
        );
        assert_eq!(c.settings().dst_any, [0b100, 0b100]);
        let plan = c.settings().addr[TABLE_DST4];
        assert_eq!(
            plan.hashed_lens[..usize::from(plan.hashed_count)],
            [32, 24, 16]
        );
        assert_eq!(plan.in_trie, 0);
        assert_eq!(c.settings().addr[TABLE_SRC4], AddrLookup::default());
    }

    #[test]
    fn the_longest_prefix_lengths_are_hashed_the_rest_go_to_the_trie() {
        let list: Vec<String> = (8..=32u8)
            .map(|len| {
                format!(
                    "{}",
                    Ipv4Net::new([198, 18, 0, 0].into(), len).unwrap().trunc()
                )
            })
            .collect();
        let c = compile(&rules(&[&format!("dst={} drop=1", list.join(","))])).unwrap();
        let plan = c.settings().addr[TABLE_DST4];
        assert_eq!(plan.hashed_lens, [32, 31, 30, 29, 28, 27]);
        assert_eq!(usize::from(plan.hashed_count), MAX_HASHED_LENS);
        assert_eq!(plan.in_trie, 1);
        assert!(is_hashed(&plan, 27) && !is_hashed(&plan, 26));
    }

    #[test]
    fn too_many_prefixes_for_one_table() {
        let list = |base: u32| {
            (0..40_000u32)
                .map(|i| std::net::Ipv4Addr::from(base + i).to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let texts = [
            format!("dst={} drop=1", list(0xc612_0000)),
            format!("dst={} drop=1", list(0xc613_0000)),
        ];
        let r: Vec<Rule> = texts.iter().map(|t| t.parse().unwrap()).collect();
        assert_eq!(compile(&r), Err(CompileError::TooManyPrefixes(80_000)));
    }

    #[test]
    fn overlapping_port_ranges_sweep_like_a_full_table() {
        let r = rules(&[
            "dport=10-20 drop=1",
            "dport=15-30 drop=1",
            "dport=15 drop=1",
            "sport=1-3 dport=65535 drop=1",
        ]);
        let c = compile(&r).unwrap();
        let mut want = vec![0u64; 1 << 16];
        for (i, rule) in r.iter().enumerate() {
            if let Some(p) = rule.dport {
                for port in p.start..=p.end {
                    want[usize::from(port)] |= 1 << i;
                }
            }
        }
        let want: Vec<(u16, u64)> = want
            .iter()
            .enumerate()
            .filter(|(_, m)| **m != 0)
            .map(|(p, m)| (p as u16, *m))
            .collect();
        assert_eq!(c.port_masks(PORT_DST), want);
        assert_eq!(
            c.port_masks(PORT_SRC),
            vec![(1, 0b1000), (2, 0b1000), (3, 0b1000)]
        );
        assert_eq!(c.settings().dport_any, 0);
        assert_eq!(c.settings().sport_any, 0b0111);
    }

    #[test]
    fn direction_protocol_and_portless_masks() {
        let c = compile(&rules(&[
            "proto=udp dport=9000 drop=1",
            "dir=ingress proto=any drop=0.5",
            "proto=any sport=53",
        ]))
        .unwrap();
        let s = c.settings();
        assert_eq!(s.dir_rules, [0b010, 0b101]);
        assert_eq!(s.proto_rules[PROTO_TCP], 0b110);
        assert_eq!(s.proto_rules[PROTO_UDP], 0b111);
        // Rule 2 has ports, so ICMP can only hit rule 1.
        assert_eq!(s.proto_rules[PROTO_OTHER], 0b010);
        assert_eq!(s.portless_rules, 0b010);
        assert_eq!(s.dport_any, 0b110);
        assert_eq!(s.sport_any, 0b011);
        assert_eq!(c.port_masks(PORT_DST), vec![(9000, 0b001)]);
        assert_eq!(c.port_masks(PORT_SRC), vec![(53, 0b100)]);
    }

    #[test]
    fn ranges_expand_to_every_port() {
        let c = compile(&rules(&["dport=10-12", "dport=12-13"])).unwrap();
        assert_eq!(
            c.port_masks(PORT_DST),
            vec![(10, 0b01), (11, 0b01), (12, 0b11), (13, 0b10)]
        );
        let full = compile(&rules(&["dport=1-65535"])).unwrap();
        assert_eq!(full.port_masks(PORT_DST).len(), 65535);
        assert_eq!(full.port_blocks(PORT_DST).len(), 1024);
    }

    #[test]
    fn prefixes_inherit_containing_rules_and_wildcards() {
        let c = compile(&rules(&[
            "dst=198.18.0.0/15",
            "dst=198.18.0.2/32",
            "dst=2001:db8::/32",
            "dport=80",
        ]))
        .unwrap();
        // Rule 3 has no prefix: it is in every entry and in both "any" masks.
        assert_eq!(c.settings().dst_any, [0b1000, 0b1000]);
        assert_eq!(
            nets(c.prefixes(TABLE_DST4)),
            vec![
                ("198.18.0.0/15".parse().unwrap(), 0b1001),
                ("198.18.0.2/32".parse().unwrap(), 0b1011),
            ]
        );
        assert_eq!(
            nets(c.prefixes(TABLE_DST6)),
            vec![("2001:db8::/32".parse().unwrap(), 0b1100)]
        );
        assert!(c.prefixes(TABLE_SRC4).is_empty() && c.prefixes(TABLE_SRC6).is_empty());
        assert_eq!(c.settings().src_any, [0b1111, 0b1111]);
    }

    #[test]
    fn probabilities_scale_to_fixed_point() {
        let c = compile(&rules(&["drop=0", "drop=30%", "drop=1"])).unwrap();
        let probs: Vec<u32> = c.actions().iter().map(|a| a.drop_prob).collect();
        assert_eq!(probs, vec![0, 644_245_094, PROB_ONE]);
        let slots: Vec<u32> = c.actions().iter().map(|a| a.counter_slot).collect();
        assert_eq!(slots, vec![0, 1, 2]);
    }

    #[test]
    fn delay_and_rate_actions() {
        let c = compile(&rules(&[
            "drop=5% delay=200ms jitter=50ms delay-p=20% dist=pareto",
            "rate=10mbit",
            "delay=1ms reorder=yes",
        ]))
        .unwrap();
        let [a, b, r] = [c.actions()[0], c.actions()[1], c.actions()[2]];
        assert_eq!(a.flags, ACTION_F_DELAY);
        assert_eq!(
            (a.delay_ns, a.jitter_ns, a.dist),
            (200_000_000, 50_000_000, DIST_PARETO)
        );
        assert_eq!(a.delay_prob, scale_probability(0.2));
        assert_eq!(a.drop_prob, scale_probability(0.05));
        assert_eq!(b.flags, ACTION_F_RATE);
        assert_eq!(b.rate_bytes_per_sec, 1_250_000);
        assert_eq!(b.rate_queue_ns, RATE_QUEUE.as_nanos() as u64);
        assert_eq!(r.flags, ACTION_F_DELAY | ACTION_F_REORDER);
        assert_eq!(r.delay_prob, PROB_ONE);
    }

    #[test]
    fn connection_and_extended_fault_actions() {
        let c = compile(&rules(&[
            "dir=ingress proto=tcp dport=80 conn-p=30% reset=yes after-bytes=1000 max-conns=5",
            "proto=udp hang=yes after=2s connect-delay=100ms",
            "proto=tcp refuse=yes",
            "duplicate=1% corrupt=2% loss=ge:1%/25%/10%",
        ]))
        .unwrap();
        let [a, h, f, p] = [0, 1, 2, 3].map(|i| c.actions()[i]);
        assert_eq!(a.flags, ACTION_F_CONN);
        assert_eq!(a.conn_flags, CONN_F_RESET | CONN_F_AFTER_BYTES);
        assert_eq!(
            (a.conn_prob, a.after_bytes, a.max_conns),
            (scale_probability(0.3), 1000, 5)
        );
        assert_eq!(
            h.conn_flags,
            CONN_F_HANG | CONN_F_AFTER_TIME | CONN_F_CONNECT_DELAY
        );
        assert_eq!(
            (h.after_ns, h.connect_delay_ns),
            (2_000_000_000, 100_000_000)
        );
        assert_eq!((h.conn_prob, h.max_conns), (PROB_ONE, 0));
        assert_eq!(f.conn_flags, CONN_F_REFUSE);
        assert_eq!(p.flags, ACTION_F_DUPLICATE | ACTION_F_CORRUPT | ACTION_F_GE);
        assert_eq!(
            p.ge,
            [
                scale_probability(0.01),
                scale_probability(0.25),
                scale_probability(0.9),
                0
            ]
        );
        // Hang and reset look connections up the other way too: an ingress rule on egress.
        let s = c.settings();
        assert_eq!(s.conn_reverse[DIR_EGRESS], 1);
        assert_eq!(s.conn_reverse[DIR_INGRESS], 1, "the egress hang rule");
    }

    #[test]
    fn seeded_actions() {
        let c = compile(&rules(&[
            "drop=30% seed=7",
            "drop=100% seed=7",
            "drop=30%",
            "delay=5ms jitter=1ms seed=18446744073709551615",
        ]))
        .unwrap();
        let [s, certain, plain, jitter] = [0, 1, 2, 3].map(|i| c.actions()[i]);
        assert_eq!((s.flags, s.seed), (ACTION_F_SEEDED, 7));
        assert_eq!(
            (certain.flags, certain.seed),
            (0, 0),
            "nothing left to chance: no count to keep"
        );
        assert_eq!((plain.flags, plain.seed), (0, 0));
        assert_eq!(jitter.flags, ACTION_F_DELAY | ACTION_F_SEEDED);
        assert_eq!(jitter.seed, u64::MAX);
        assert!(c.seeded());
        assert!(!compile(&rules(&["drop=30%"])).unwrap().seeded());
    }

    #[test]
    fn the_hash_map_takes_the_longest_lengths_that_fit_its_capacity() {
        let list: Vec<String> = (0..10u32)
            .map(|i| format!("198.18.0.{i}"))
            .chain((0..4u32).map(|i| format!("198.18.{}.0/24", i + 1)))
            .chain(["198.19.0.0/16".to_owned()])
            .collect();
        let r = rules(&[&format!("dst={} drop=1", list.join(","))]);
        let plan = |capacity: usize| {
            let mut hashed = [MAX_PREFIXES_PER_SET; TABLES];
            hashed[TABLE_DST4] = capacity;
            let c = RuleSetBuilder::new(&Guard::default())
                .hashed_capacity(hashed)
                .rules(r.clone())
                .build()
                .unwrap();
            let p = c.settings().addr[TABLE_DST4];
            (
                p.hashed_lens[..usize::from(p.hashed_count)].to_vec(),
                p.in_trie,
                c.hashed_counts()[TABLE_DST4],
            )
        };
        assert_eq!(plan(100), (vec![32, 24, 16], 0, 15));
        assert_eq!(plan(14), (vec![32, 24], 1, 14));
        assert_eq!(plan(10), (vec![32], 1, 10));
        assert_eq!(
            plan(9),
            (vec![], 1, 0),
            "the longest length alone does not fit"
        );
    }

    #[test]
    fn too_many_rules() {
        let many = vec!["drop=1"; MAX_RULES as usize + 1];
        assert_eq!(compile(&rules(&many)), Err(CompileError::TooManyRules(65)));
        assert!(compile(&rules(&many[1..])).is_ok());
    }
}
