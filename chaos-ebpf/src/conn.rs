//! Connection faults: a per-connection entry decides once whether a flow is chosen, and when
//! it hangs or is reset. Only rules with `ACTION_F_CONN` come here, and packets the other way
//! only while some rule hangs or resets (`GenSettings::conn_reverse`).

use aya_ebpf::programs::TcContext;
use chaos_common::{
    RuleAction, RuleCounters,
    rules::{
        CONN_F_AFTER_BYTES, CONN_F_AFTER_TIME, CONN_F_HANG, CONN_F_REFUSE, CONN_F_RESET, CONN_HUNG,
        CONN_OPEN, CONN_RESET, ConnEntry, FlowKey, MAX_RULES, PROTO_TCP,
    },
};

use crate::{
    craft::{self, CUT_MAX, TCP_FIN, Tcp},
    dice::Dice,
    maps::{CHAOS_ACTIONS, CHAOS_CONN_QUOTA, CHAOS_CONNS},
    parse::Flow,
    verdict::silent_drop,
};

/// What a connection rule does with a packet.
pub enum Conn {
    /// The flow was not chosen: the rule leaves it alone.
    Pass,
    /// The packet is dealt with (refused, reset, lost to a hang): return this verdict.
    Done(i32),
    /// A chosen, open connection: the rule's packet faults apply. `first`: its first packet.
    Faults { first: bool },
}

/// Transport facts of one packet.
struct Segment {
    tcp: Option<Tcp>,
    header: u32,
    payload: u32,
}

impl Segment {
    #[inline(always)]
    fn read(ctx: &TcContext, flow: &Flow) -> Option<Self> {
        if flow.proto == PROTO_TCP {
            let tcp = Tcp::read(ctx, flow)?;
            Some(Self {
                header: tcp.doff,
                payload: craft::payload_len(ctx, flow, tcp.doff),
                tcp: Some(tcp),
            })
        } else {
            let header = craft::udp_header();
            Some(Self {
                tcp: None,
                header,
                payload: craft::payload_len(ctx, flow, header),
            })
        }
    }

    /// Carries data or closes: the handshake is over.
    #[inline(always)]
    fn beyond_handshake(&self) -> bool {
        match self.tcp {
            Some(t) => self.payload > 0 || t.flags & TCP_FIN != 0,
            None => true,
        }
    }
}

/// A packet of a flow that connection rule `action` (at `index`) matched, the rule's way.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    flow: &Flow,
    key: &FlowKey,
    (action, index): (&RuleAction, u32),
    dir: usize,
    now: u64,
    c: &mut RuleCounters,
) -> Conn {
    let Some(seg) = Segment::read(ctx, flow) else {
        return Conn::Pass;
    };
    let mut first = false;
    // A SYN with another initial sequence number opens a new connection on the same 5-tuple
    // (a port reused); a retransmitted SYN does not.
    let syn_seq = match seg.tcp {
        Some(t) if t.is_syn() => Some(t.seq.wrapping_add(1)),
        _ => None,
    };
    let entry = match CHAOS_CONNS.get_ptr_mut(key) {
        // SAFETY: a valid map value; racing CPUs may interleave their writes, as with every
        // LRU entry the kernel hands out.
        Some(e)
            if unsafe { (*e).epoch } == action.epoch
                && syn_seq.is_none_or(|s| s == unsafe { (*e).base_seq }) =>
        {
            e
        }
        _ => {
            first = true;
            let chosen = choose(flow, action);
            c.conns_seen += 1;
            c.conns_chosen += u64::from(chosen);
            let base_seq = match seg.tcp {
                Some(t) if t.is_syn() => t.seq.wrapping_add(1),
                Some(t) => t.seq,
                None => 0,
            };
            let fresh = ConnEntry {
                first_ns: now,
                bytes: 0,
                epoch: action.epoch,
                index,
                base_seq,
                state: CONN_OPEN,
                chosen: u8::from(chosen),
                _pad: [0; 2],
            };
            // A full table forgets its least recently used flow; failing that, the packet
            // passes as if unchosen.
            if CHAOS_CONNS.insert(key, fresh, 0).is_err() {
                return Conn::Pass;
            }
            match CHAOS_CONNS.get_ptr_mut(key) {
                Some(e) => e,
                None => return Conn::Pass,
            }
        }
    };
    // SAFETY: a valid map value (see above).
    let e = unsafe { &mut *entry };
    if e.chosen == 0 {
        return Conn::Pass;
    }
    e.index = index;
    if e.state != CONN_OPEN {
        c.conn_dropped_pkts += 1;
        return Conn::Done(silent_drop());
    }
    let flags = action.conn_flags;
    if flags & CONN_F_REFUSE != 0 {
        if let Some(t) = seg.tcp
            && t.is_syn()
        {
            let ack = t.seq.wrapping_add(1).wrapping_add(seg.payload);
            if craft::into_rst(ctx, flow, (&t, seg.header + seg.payload), 0, ack, true).is_some() {
                c.conns_refused += 1;
                return Conn::Done(craft::send_back(ctx, dir));
            }
        }
        return Conn::Faults { first };
    }
    if flags & (CONN_F_HANG | CONN_F_RESET) == 0 {
        return Conn::Faults { first };
    }
    // How much of this packet's payload still passes before the fault: None, all of it.
    let keep = if flags & CONN_F_AFTER_BYTES != 0 {
        match after_bytes(ctx, flow, &seg, e, action) {
            Bytes::Pass => None,
            Bytes::Lost => {
                c.conn_dropped_pkts += 1;
                return Conn::Done(silent_drop());
            }
            Bytes::Done(verdict) => return Conn::Done(verdict),
            Bytes::Trigger(keep) => Some(keep),
        }
    } else if flags & CONN_F_AFTER_TIME != 0 {
        (now.wrapping_sub(e.first_ns) >= action.after_ns).then_some(0)
    } else {
        seg.beyond_handshake().then_some(0)
    };
    let Some(keep) = keep else {
        return Conn::Faults { first };
    };
    trigger(ctx, flow, &seg, (e, action), dir, keep, c)
}

/// What `after-bytes` makes of a packet.
enum Bytes {
    /// Wholly before the limit: it passes, with the rule's packet faults.
    Pass,
    /// Wholly past the limit while bytes before it are still missing at the peer: lost, so
    /// that the sender sends those again and the peer gets exactly the limit.
    Lost,
    /// A piece of it went on (see `cut_step`): this verdict, nothing else yet.
    Done(i32),
    /// The peer has (or with this packet's first `keep` bytes gets) exactly the limit: the
    /// fault begins.
    Trigger(u32),
}

/// Counts payload against `after-bytes`. TCP counts by sequence number from the first byte,
/// so retransmissions count once; `e.bytes` is how far the peer has been sent everything.
#[inline(always)]
fn after_bytes(
    ctx: &TcContext,
    flow: &Flow,
    seg: &Segment,
    e: &mut ConnEntry,
    action: &RuleAction,
) -> Bytes {
    let limit = action.after_bytes;
    if seg.payload == 0 {
        return Bytes::Pass;
    }
    // A segment from before the first counted byte (a retransmission) counts from 0.
    let start = match seg.tcp {
        Some(t) => (t.seq.wrapping_sub(e.base_seq) as i32).max(0) as u64,
        None => e.bytes,
    };
    let end = start + u64::from(seg.payload);
    if start >= limit {
        return if e.bytes >= limit {
            Bytes::Trigger(0)
        } else {
            Bytes::Lost
        };
    }
    if end <= limit {
        if start <= e.bytes {
            e.bytes = e.bytes.max(end);
        }
        return Bytes::Pass;
    }
    let keep = (limit - start) as u32;
    // A GSO packet cut stops being one and could not leave whole, and a cut reads what it
    // keeps: keep one segment (at most CUT_MAX bytes) now, and let TCP send the rest again.
    // SAFETY: reading a field of the context the kernel handed us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let step = if gso_size != 0 && gso_size < CUT_MAX {
        gso_size
    } else {
        CUT_MAX
    };
    if keep <= step {
        if start <= e.bytes {
            e.bytes = limit;
        }
        return Bytes::Trigger(keep);
    }
    if craft::cut(ctx, flow, seg.header + seg.payload, seg.header, step).is_none() {
        return Bytes::Lost;
    }
    if start <= e.bytes {
        e.bytes = e.bytes.max(start + u64::from(step));
    }
    Bytes::Done(crate::verdict::TC_ACT_UNSPEC)
}

/// Starts the hang or the reset at this packet, after passing its first `keep` payload bytes.
#[inline(always)]
fn trigger(
    ctx: &TcContext,
    flow: &Flow,
    seg: &Segment,
    (e, action): (&mut ConnEntry, &RuleAction),
    dir: usize,
    keep: u32,
    c: &mut RuleCounters,
) -> Conn {
    if keep > 0 && craft::cut(ctx, flow, seg.header + seg.payload, seg.header, keep).is_none() {
        return Conn::Done(crate::verdict::TC_ACT_UNSPEC);
    }
    if action.conn_flags & CONN_F_RESET != 0
        && let Some(t) = seg.tcp
    {
        e.state = CONN_RESET;
        c.conns_reset += 1;
        let len = if keep > 0 {
            seg.header + keep
        } else {
            seg.header + seg.payload
        };
        // The peer expects the byte after the last it got: past `after-bytes`, the limit's.
        let expected = if action.conn_flags & CONN_F_AFTER_BYTES != 0 && keep == 0 {
            e.base_seq.wrapping_add(action.after_bytes as u32)
        } else {
            t.seq.wrapping_add(keep)
        };
        return Conn::Done(reset(ctx, flow, (&t, len), dir, (keep, expected)));
    }
    e.state = CONN_HUNG;
    c.conns_hung += 1;
    if keep > 0 {
        return Conn::Done(crate::verdict::TC_ACT_UNSPEC);
    }
    c.conn_dropped_pkts += 1;
    Conn::Done(silent_drop())
}

/// Aborts the connection from packet `t` (its first `keep` payload bytes already cut out): what
/// was kept and a RST go on the packet's way, and the packet itself, as a RST, goes back to
/// its sender. Each RST carries the sequence number its receiver expects next: `end` for the
/// packet's receiver, the packet's acknowledgement for its sender.
#[inline(always)]
fn reset(
    ctx: &TcContext,
    flow: &Flow,
    (t, len): (&Tcp, u32),
    dir: usize,
    (keep, end): (u32, u32),
) -> i32 {
    if keep > 0 && !craft::send_copy(ctx, dir, true) {
        return silent_drop();
    }
    if craft::into_rst(ctx, flow, (t, len), end, t.ack, false).is_none() {
        return silent_drop();
    }
    craft::send_copy(ctx, dir, true);
    let rst = Tcp {
        seq: end,
        ack: t.ack,
        flags: craft::TCP_RST | (t.flags & craft::TCP_ACK),
        doff: 20,
    };
    if craft::into_rst(ctx, flow, (&rst, 20), t.ack, end, true).is_none() {
        return silent_drop();
    }
    craft::send_back(ctx, dir)
}

/// The entry of a connection a packet going against its rule's way belongs to, if its rule
/// (still live, in this generation) chose it.
#[inline(always)]
fn reverse_entry(
    key: &FlowKey,
    generation: u32,
    now: u64,
) -> Option<(&'static mut ConnEntry, &'static RuleAction)> {
    let entry = CHAOS_CONNS.get_ptr_mut(key)?;
    // SAFETY: a valid map value.
    let e = unsafe { &mut *entry };
    if e.chosen == 0 || e.index / MAX_RULES != generation {
        return None;
    }
    let action = CHAOS_ACTIONS.get(e.index)?;
    if action.epoch != e.epoch || (action.expires_ns != 0 && now > action.expires_ns) {
        return None;
    }
    Some((e, action))
}

/// What a packet going against a hanging or resetting rule's way meets.
pub enum Reverse {
    /// Its connection hung or was reset: the verdict (a silent drop), counted.
    Lost(i32),
    /// It starts the hang or the reset: the fault program's work.
    Due,
}

/// The main program's look at a packet going against a hanging or resetting rule's way:
/// cheap, and `None` for every packet of every other connection.
#[inline(always)]
pub fn reverse_peek(
    ctx: &TcContext,
    flow: &Flow,
    key: &FlowKey,
    generation: u32,
    now: u64,
) -> Option<Reverse> {
    let (e, action) = reverse_entry(key, generation, now)?;
    if e.state != CONN_OPEN {
        crate::verdict::counters(action)?.conn_dropped_pkts += 1;
        return Some(Reverse::Lost(silent_drop()));
    }
    reverse_due(ctx, flow, e, action).then_some(Reverse::Due)
}

/// Whether a packet going against the rule's way starts its hang or reset: `after=` elapsed,
/// or (with no trigger given) a reply with data.
#[inline(always)]
fn reverse_due(ctx: &TcContext, flow: &Flow, e: &ConnEntry, action: &RuleAction) -> bool {
    let flags = action.conn_flags;
    if flags & (CONN_F_HANG | CONN_F_RESET) == 0 || flags & CONN_F_AFTER_BYTES != 0 {
        return false;
    }
    if flags & CONN_F_AFTER_TIME != 0 {
        // SAFETY: plain helper call.
        let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
        return now.wrapping_sub(e.first_ns) >= action.after_ns;
    }
    Segment::read(ctx, flow).is_some_and(|seg| seg.beyond_handshake())
}

/// The fault program's side of [`Reverse::Due`]: starts the hang or the reset.
#[inline(always)]
pub fn reverse(
    ctx: &TcContext,
    flow: &Flow,
    key: &FlowKey,
    generation: u32,
    dir: usize,
    now: u64,
) -> Option<i32> {
    let (e, action) = reverse_entry(key, generation, now)?;
    let c = crate::verdict::counters(action)?;
    if e.state != CONN_OPEN {
        c.conn_dropped_pkts += 1;
        return Some(silent_drop());
    }
    if !reverse_due(ctx, flow, e, action) {
        return None;
    }
    let seg = Segment::read(ctx, flow)?;
    match trigger(ctx, flow, &seg, (e, action), dir, 0, c) {
        Conn::Done(verdict) => Some(verdict),
        Conn::Pass | Conn::Faults { .. } => None,
    }
}

/// Whether a new flow is chosen: `conn-p`, then the `max-conns` quota. The count is shared by
/// all CPUs without an atomic add (the BPF target's core has none): connections opening at
/// the same instant on two CPUs may both take the last place.
#[inline(always)]
fn choose(flow: &Flow, action: &RuleAction) -> bool {
    if !Dice::for_flow(flow, action).roll(action.conn_prob) {
        return false;
    }
    if action.max_conns == 0 {
        return true;
    }
    let Some(count) = CHAOS_CONN_QUOTA.get_ptr_mut(action.counter_slot) else {
        return false;
    };
    // SAFETY: a valid map value (see above for the race).
    let count = unsafe { &mut *count };
    if *count >= u64::from(action.max_conns) {
        return false;
    }
    *count += 1;
    true
}
