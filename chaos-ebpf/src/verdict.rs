//! Matching a parsed packet against the live rule set, and the drop decision.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_ktime_get_coarse_ns, bpf_redirect},
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use chaos_common::{
    GenSettings, RuleAction, RuleCounters, RuntimeConfig,
    rules::{
        ACTION_F_CORRUPT, ACTION_F_DELAY, ACTION_F_DUPLICATE, ACTION_F_GE, ACTION_F_RATE,
        AddrLookup, CHAOS_SKB_MARK, CONFIG_F_CLONES, CONFIG_F_REVERSE_TCP_DELAY,
        CONN_F_CONNECT_DELAY, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FlowKey, Ipv4PrefixKey,
        Ipv4TrieKey, Ipv6PrefixKey, Ipv6TrieKey, MAX_GUARD_PORTS, MAX_HASHED_LENS, MAX_RULES,
        PORT_CLASSES, PORT_DST, PORT_SRC, PROTO_TCP, PortClasses, RuleMask, TABLE_DST4, TABLE_DST6,
        TABLE_SRC4, TABLE_SRC6, trie_prefix_len,
    },
};

use crate::{
    conn::{self, Reverse},
    dice::Dice,
    edt::{Departure, hold_for, schedule},
    faults,
    maps::{
        CHAOS_ACTIONS, CHAOS_CONFIG, CHAOS_COUNTERS, CHAOS_DPORT_CLASSES, CHAOS_DST4_HASHED,
        CHAOS_DST4_RULES, CHAOS_DST6_HASHED, CHAOS_DST6_RULES, CHAOS_REVERSE_DELAY, CHAOS_SETTINGS,
        CHAOS_SPORT_CLASSES, CHAOS_SRC4_HASHED, CHAOS_SRC4_RULES, CHAOS_SRC6_HASHED,
        CHAOS_SRC6_RULES,
    },
    parse::{Flow, parse},
    stages::{self, STAGE_COUNTED, STAGE_FIRST},
};

/// "No decision": under TCX the next program runs (TCX_NEXT), under netlink cls_bpf the next
/// filter. TC_ACT_OK would end the chain and silently bypass everyone else's programs and
/// filters on the interface while chaos runs.
pub const TC_ACT_UNSPEC: i32 = -1;

/// Packets whose headers we need in the linear part of the skb: Ethernet, two VLAN tags, IPv6
/// with a few extension headers, the ports.
const HEADERS_MAX: u32 = 128;

/// Decides one packet seen in direction `dir` (`DIR_INGRESS` or `DIR_EGRESS`).
#[inline(always)]
pub fn classify(ctx: &TcContext, dir: usize) -> i32 {
    match try_classify(ctx, dir) {
        Some(verdict) => verdict,
        None => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn try_classify(ctx: &TcContext, dir: usize) -> Option<i32> {
    let config = CHAOS_CONFIG.get(0)?;
    // A packet chaos made itself (a duplicate, a RST) passes once, unfaulted.
    // SAFETY: reading a field of the context the kernel handed us.
    if config.flags & CONFIG_F_CLONES != 0 && unsafe { (*ctx.skb.skb).mark } == CHAOS_SKB_MARK {
        ctx.set_mark(0);
        return None;
    }
    let generation = config.active_gen;
    let settings = CHAOS_SETTINGS.get(generation)?;
    // Direction alone rules out every rule on an interface watched one way only: test it before
    // touching the packet.
    let mut rules = *settings.dir_rules.get(dir)?;
    let reverse = dir == DIR_INGRESS && config.flags & CONFIG_F_REVERSE_TCP_DELAY != 0;
    let conn_reverse = *settings.conn_reverse.get(dir)? != 0;
    if rules == 0 && !reverse && !conn_reverse {
        return None;
    }
    pull_headers(ctx);
    let flow = parse(ctx)?;
    if conn_reverse && flow.ports.is_some() {
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if !lease_expired(config, now) {
            match conn::reverse_peek(ctx, &flow, &flow_key(&flow, true), generation, now) {
                Some(Reverse::Lost(verdict)) => return Some(verdict),
                Some(Reverse::Due) => stages::reverse(ctx, dir),
                None => {}
            }
        }
    }
    if reverse && flow.proto == PROTO_TCP {
        let key = flow_key(&flow, false);
        if let Some(index) = CHAOS_REVERSE_DELAY.get_ptr(key) {
            // SAFETY: a valid map value.
            let index = unsafe { *index };
            // An entry from an earlier rule set is stale: the loader clears those after a flip.
            if index / MAX_RULES == generation {
                let action = CHAOS_ACTIONS.get(index)?;
                // SAFETY: plain helper call.
                if lease_expired(config, unsafe { bpf_ktime_get_coarse_ns() }) {
                    return None;
                }
                return Some(delay_returning(ctx, &flow, action, config));
            }
        }
    }
    rules &= *settings.proto_rules.get(flow.proto)?;
    // Ports before prefixes: an array index is cheaper than a trie walk and usually more selective.
    match flow.ports {
        Some((sport, dport)) => {
            rules = narrow(rules, settings.dport_any, || {
                port_rules(
                    &CHAOS_DPORT_CLASSES,
                    &settings.port_masks[PORT_DST],
                    generation,
                    dport,
                )
            });
            rules = narrow(rules, settings.sport_any, || {
                port_rules(
                    &CHAOS_SPORT_CLASSES,
                    &settings.port_masks[PORT_SRC],
                    generation,
                    sport,
                )
            });
            if flow.proto == PROTO_TCP {
                rules &= !guarded_rules(settings, sport, dport);
            }
        }
        None => rules &= settings.portless_rules,
    }
    // The generation is the first byte of every prefix key, so a lookup never sees the other
    // generation's prefixes; a miss leaves the rules that take any address of this family.
    let key_gen = generation as u8;
    let family = flow.family;
    let (src_any, dst_any) = (settings.src_any[family & 1], settings.dst_any[family & 1]);
    if family == FAMILY_V4 {
        rules = narrow(rules, src_any, || {
            let addr = v4_addr(&flow.src);
            addr_rules::<_, _, 32>(
                (&CHAOS_SRC4_HASHED, &CHAOS_SRC4_RULES),
                &settings.addr[TABLE_SRC4],
                |len| Ipv4PrefixKey::new(key_gen, len, addr),
                || Ipv4TrieKey::new(key_gen, v4_octets(&flow.src)),
                src_any,
            )
        });
        rules = narrow(rules, dst_any, || {
            let addr = v4_addr(&flow.dst);
            addr_rules::<_, _, 32>(
                (&CHAOS_DST4_HASHED, &CHAOS_DST4_RULES),
                &settings.addr[TABLE_DST4],
                |len| Ipv4PrefixKey::new(key_gen, len, addr),
                || Ipv4TrieKey::new(key_gen, v4_octets(&flow.dst)),
                dst_any,
            )
        });
    } else {
        rules = narrow(rules, src_any, || {
            let addr = v6_addr(&flow.src);
            addr_rules::<_, _, 128>(
                (&CHAOS_SRC6_HASHED, &CHAOS_SRC6_RULES),
                &settings.addr[TABLE_SRC6],
                |len| Ipv6PrefixKey::new(key_gen, len, addr),
                || Ipv6TrieKey::new(key_gen, flow.src),
                src_any,
            )
        });
        rules = narrow(rules, dst_any, || {
            let addr = v6_addr(&flow.dst);
            addr_rules::<_, _, 128>(
                (&CHAOS_DST6_HASHED, &CHAOS_DST6_RULES),
                &settings.addr[TABLE_DST6],
                |len| Ipv6PrefixKey::new(key_gen, len, addr),
                || Ipv6TrieKey::new(key_gen, flow.dst),
                dst_any,
            )
        });
    }
    if rules == 0 {
        return None;
    }
    // The clock is read only once a rule matched: traffic no rule wants pays nothing for it.
    // Leases and experiment ends are seconds long, so the coarse clock (CLOCK_MONOTONIC at
    // tick resolution, no clock-source read) serves; departure times use the precise one.
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if lease_expired(config, now) {
        return None;
    }
    let index = generation * MAX_RULES + lowest_bit(rules);
    let action = CHAOS_ACTIONS.get(index)?;
    // The rule's experiment is over, whatever its controller does.
    if action.expires_ns != 0 && now > action.expires_ns {
        return None;
    }
    stages::hand_over(ctx, action, index, dir);
    Some(apply::<false>(ctx, &flow, (action, index), dir, config, 0))
}

/// The controller's lease ran out: it died or froze. Pass everything until it is back.
#[inline(always)]
fn lease_expired(config: &RuntimeConfig, now: u64) -> bool {
    config.lease_until_ns != 0 && now > config.lease_until_ns
}

/// Some drivers leave only part of the headers in the linear buffer, where direct packet
/// access can see them: pull them in when the packet is longer than what is linear.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let len = ctx.len();
    if linear < HEADERS_MAX && len > linear {
        // A failed pull leaves the packet as it was; the parser then finds it too short and
        // lets it pass.
        match ctx.pull_data(len.min(HEADERS_MAX)) {
            Ok(()) | Err(_) => {}
        }
    }
}

/// Keeps the `rules` that accept a field. `any` holds the rules that accept every value of it, so
/// the lookup (which returns the rules accepting this value, `any` included) is skipped when no
/// candidate left constrains the field: port-only rules never walk a trie, prefix-only rules never
/// touch a port array.
#[inline(always)]
fn narrow(rules: RuleMask, any: RuleMask, lookup: impl FnOnce() -> RuleMask) -> RuleMask {
    if rules & !any == 0 {
        return rules;
    }
    rules & (lookup() | any)
}

/// Rules the guard rails keep off a TCP packet from or to one of the guarded ports. A short
/// scan of a few ports in the settings entry the program already holds: no map lookup.
#[inline(always)]
fn guarded_rules(settings: &GenSettings, sport: u16, dport: u16) -> RuleMask {
    let mut masked = 0;
    let count = (settings.guard_count as usize).min(MAX_GUARD_PORTS);
    for i in 0..MAX_GUARD_PORTS {
        if i >= count {
            break;
        }
        let port = settings.guard_ports[i];
        if port == sport || port == dport {
            masked |= settings.guard_rules[i];
        }
    }
    masked
}

/// Rules constrained on this port number that accept it: its class, then the class's mask.
#[inline(always)]
fn port_rules(
    classes: &Array<PortClasses>,
    masks: &[RuleMask; PORT_CLASSES],
    generation: u32,
    port: u16,
) -> RuleMask {
    match classes.get(PortClasses::index(generation, port)) {
        Some(block) => masks[usize::from(block.class[PortClasses::slot(port)])],
        None => 0,
    }
}

/// The rules an address takes part in: the hashed prefix lengths of `plan` longest first
/// (`hashed_key` builds the key for a length), then the trie (`trie_key`, `BITS` long) if it
/// holds anything; finding it nowhere leaves the rules that take any address.
#[inline(always)]
fn addr_rules<H, T, const BITS: u8>(
    (hashed, trie): (&HashMap<H, RuleMask>, &LpmTrie<T, RuleMask>),
    plan: &AddrLookup,
    hashed_key: impl Fn(u8) -> H,
    trie_key: impl FnOnce() -> T,
    any: RuleMask,
) -> RuleMask {
    let count = usize::from(plan.hashed_count).min(MAX_HASHED_LENS);
    for i in 0..MAX_HASHED_LENS {
        if i >= count {
            break;
        }
        // SAFETY: the value is copied out at once.
        if let Some(mask) = unsafe { hashed.get(hashed_key(plan.hashed_lens[i])) } {
            return *mask;
        }
    }
    if plan.in_trie != 0
        && let Some(mask) = trie.get(Key::new(trie_prefix_len(BITS), trie_key()))
    {
        return *mask;
    }
    any
}

#[inline(always)]
fn v4_octets(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

#[inline(always)]
fn v4_addr(addr: &[u8; 16]) -> u32 {
    u32::from_be_bytes(v4_octets(addr))
}

/// The address as its (high, low) 64-bit halves.
#[inline(always)]
fn v6_addr(addr: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Index of the lowest set bit of a non-zero mask, by binary search: BPF has no count-trailing-
/// zeros instruction and LLVM would otherwise need a lookup table in .rodata.
#[inline(always)]
fn lowest_bit(mut mask: RuleMask) -> u32 {
    let mut index = 0;
    let mut width = RuleMask::BITS / 2;
    while width > 0 {
        let low = (1u64 << width) - 1;
        if mask & low == 0 {
            mask >>= width;
            index += width;
        }
        width /= 2;
    }
    index
}

/// The counters of a rule's slot. Per CPU: no other program run touches them concurrently.
#[inline(always)]
pub fn counters(action: &RuleAction) -> Option<&'static mut RuleCounters> {
    // SAFETY: a valid per-CPU map value (see above).
    CHAOS_COUNTERS
        .get_ptr_mut(action.counter_slot)
        .map(|c| unsafe { &mut *c })
}

/// Applies the rule's packet faults and counts the packet (unless `STAGE_COUNTED` says the
/// connection stage did): loss, the departure time (rate, delay, order) for what is kept, and
/// (`EXTENDED`, in the fault program) burst loss, a slow open, duplicates and corruption.
#[inline(always)]
pub fn apply<const EXTENDED: bool>(
    ctx: &TcContext,
    flow: &Flow,
    (action, index): (&RuleAction, u32),
    dir: usize,
    config: &RuntimeConfig,
    stage: u32,
) -> i32 {
    let Some(c) = counters(action) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: reading a field of the context the kernel handed us.
    let segs = u64::from(unsafe { (*ctx.skb.skb).gso_segs }.max(1));
    let bytes = u64::from(ctx.len());
    if stage & STAGE_COUNTED == 0 {
        c.matched_pkts += 1;
        c.matched_segs += segs;
        c.matched_bytes += bytes;
    }
    let first = stage & STAGE_FIRST != 0;
    let mut dice = Dice::for_packet(flow, action);
    let drop = if EXTENDED && action.flags & ACTION_F_GE != 0 {
        faults::ge_loses(action, &mut dice)
    } else {
        should_drop(action.drop_prob, &mut dice)
    };
    if drop {
        c.dropped_pkts += 1;
        c.dropped_segs += segs;
        c.dropped_bytes += bytes;
        return silent_drop();
    }
    let mut held_ns = 0;
    if EXTENDED && first && action.conn_flags & CONN_F_CONNECT_DELAY != 0 {
        held_ns = hold_for(ctx, action.connect_delay_ns);
    }
    if action.flags & (ACTION_F_DELAY | ACTION_F_RATE) != 0 {
        let mut faults = ACTION_F_DELAY | ACTION_F_RATE;
        if dir == DIR_EGRESS
            && config.flags & CONFIG_F_REVERSE_TCP_DELAY != 0
            && action.flags & ACTION_F_DELAY != 0
            && is_local_tcp(ctx, flow)
        {
            // The connection's returning packets carry the delay (CONFIG_F_REVERSE_TCP_DELAY).
            // Losing this insert (map full) leaves that connection undelayed, never broken.
            match CHAOS_REVERSE_DELAY.insert(flow_key(flow, true), index, 0) {
                Ok(()) | Err(_) => faults = ACTION_F_RATE,
            }
        }
        match schedule(ctx, flow, action, faults, &mut dice) {
            Departure {
                overlimit: true, ..
            } => {
                c.rate_dropped_pkts += 1;
                return silent_drop();
            }
            Departure {
                delayed,
                held_ns: held,
                ..
            } => {
                c.delayed_pkts += u64::from(delayed);
                held_ns = held_ns.max(held);
            }
        }
    }
    c.held_ns += held_ns;
    // The copy leaves before any corruption of the original, as netem's does.
    if EXTENDED
        && action.flags & ACTION_F_DUPLICATE != 0
        && faults::duplicate(ctx, action, dir, &mut dice)
    {
        c.duplicated_pkts += 1;
    }
    if EXTENDED
        && action.flags & ACTION_F_CORRUPT != 0
        && faults::corrupt(ctx, flow, action, &mut dice)
    {
        c.corrupted_pkts += 1;
    }
    if held_ns > 0 && dir == DIR_INGRESS {
        // On egress the fq at the interface's root holds the packet until its stamp.
        return hold_on_ingress(config);
    }
    TC_ACT_UNSPEC
}

/// Delays a returning packet of a local TCP connection by the rule's delay (see
/// `CONFIG_F_REVERSE_TCP_DELAY`). Counted as delayed, not as matched: the rule matched the
/// connection's outgoing packets.
#[inline(always)]
fn delay_returning(
    ctx: &TcContext,
    flow: &Flow,
    action: &RuleAction,
    config: &RuntimeConfig,
) -> i32 {
    let d = schedule(
        ctx,
        flow,
        action,
        ACTION_F_DELAY,
        &mut Dice::for_packet(flow, action),
    );
    if let Some(c) = counters(action) {
        c.delayed_pkts += u64::from(d.delayed);
    }
    if d.held_ns > 0 {
        hold_on_ingress(config)
    } else {
        TC_ACT_UNSPEC
    }
}

/// EDT works on egress only: a stamped ingress packet goes to chaos's ifb, whose root fq holds
/// it and then hands it back to the stack (ifb marks it so ingress hooks skip it that time).
#[inline(always)]
fn hold_on_ingress(config: &RuntimeConfig) -> i32 {
    if config.ifb_ifindex == 0 {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(config.ifb_ifindex, 0) };
    TC_ACT_REDIRECT
}

/// Whether the packet comes from a socket on this host: only such a sender is held back by
/// its own packets waiting in fq.
#[inline(always)]
fn is_local_tcp(ctx: &TcContext, flow: &Flow) -> bool {
    // SAFETY: reading a field of the context the kernel handed us.
    flow.proto == PROTO_TCP && !unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }.is_null()
}

/// The flow key of a packet, or (`reversed`) of the packets coming back the other way.
#[inline(always)]
pub fn flow_key(flow: &Flow, reversed: bool) -> FlowKey {
    let (sport, dport) = flow.ports.unwrap_or((0, 0));
    let (src, dst, sport, dport) = if reversed {
        (flow.dst, flow.src, dport, sport)
    } else {
        (flow.src, flow.dst, sport, dport)
    };
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: flow.proto as u8,
        family: flow.family as u8,
        _pad: [0; 2],
    }
}

/// Loss must be silent, as on a wire. TC_ACT_SHOT on egress hands the sending socket an error
/// (ping and TCP just resend at once), and TC_ACT_STOLEN means "next program" under TCX.
/// Redirecting to ifindex 0 finds no device, so the kernel frees the skb and still reports
/// success to the sender, under TCX and netlink cls_bpf alike.
#[inline(always)]
pub fn silent_drop() -> i32 {
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(0, 0) };
    TC_ACT_REDIRECT
}

/// Whether this packet is lost: with probability `drop_prob` (scaled by `PROB_ONE`), whatever its
/// number of segments.
///
/// A GSO packet carries `gso_segs` wire segments and can only be dropped whole. Dropping it with
/// probability p loses exactly the share p of wire segments in expectation; the alternative,
/// 1 - (1 - p)^segs ("lost if any segment would be"), was measured to lose 35 % of the segments of
/// a bulk TCP flow at p = 1 % (about 40 segments per packet on veth). What remains bursty: the
/// segments of one GSO packet are lost together, so a TCP flow sees fewer, larger loss events
/// than on a wire with independent losses.
#[inline(always)]
fn should_drop(drop_prob: u32, dice: &mut Dice) -> bool {
    dice.roll(drop_prob)
}
