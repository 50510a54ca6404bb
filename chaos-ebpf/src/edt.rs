//! Delay and rate limits the Earliest Departure Time way (Cilium's `bpf/lib/edt.h`): the program
//! only stamps `skb->tstamp`; the `fq` qdisc on the interface holds each packet until then.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_set_tstamp},
    programs::TcContext,
};
use chaos_common::{
    RuleAction,
    rules::{
        ACTION_F_DELAY, ACTION_F_RATE, ACTION_F_REORDER, DIST_SCALE_SHIFT, DIST_TABLE_SIZE,
        DIST_UNIFORM, FlowKey,
    },
};

use crate::{
    dice::Dice,
    maps::{CHAOS_DIST_TABLES, CHAOS_FLOW_DEPARTURE, CHAOS_RATE},
    parse::Flow,
};

/// `BPF_SKB_TSTAMP_DELIVERY_MONO`: the stamp is a CLOCK_MONOTONIC departure time, as fq wants
/// (aya-ebpf-bindings 0.2 leaves the enum unnamed).
const TSTAMP_DELIVERY_MONO: u32 = 1;

/// What the rule decided about when the packet leaves.
pub struct Departure {
    /// Picked for delay by `delay-p`.
    pub delayed: bool,
    /// How long the packet is held from now, in ns (0: leaves at once).
    pub held_ns: u64,
    /// The rate's queue is full: drop the packet.
    pub overlimit: bool,
}

/// Computes and stamps the departure time of a packet under `action`, applying only the faults
/// in `faults` (`ACTION_F_DELAY`, `ACTION_F_RATE`), with `dice` for `delay-p` and the spread.
#[inline(always)]
pub fn schedule(
    ctx: &TcContext,
    flow: &Flow,
    action: &RuleAction,
    faults: u32,
    dice: &mut Dice,
) -> Departure {
    let faults = faults & action.flags;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // A local TCP socket may already have paced the packet (its own EDT): start from there.
    // SAFETY: reading fields of the context the kernel handed us.
    let (stamp, stamp_type) = unsafe { ((*ctx.skb.skb).tstamp, (*ctx.skb.skb).tstamp_type) };
    let mut at = if u32::from(stamp_type) == TSTAMP_DELIVERY_MONO && stamp > now {
        stamp
    } else {
        now
    };
    if faults & ACTION_F_RATE != 0 {
        match pace(action, at, now, wire_len(ctx)) {
            Some(t) => at = t,
            None => {
                return Departure {
                    delayed: false,
                    held_ns: 0,
                    overlimit: true,
                };
            }
        }
    }
    let delayed = faults & ACTION_F_DELAY != 0 && dice.roll(action.delay_prob);
    if delayed {
        at += sample_delay(action, dice);
    }
    if action.flags & ACTION_F_REORDER == 0 {
        at = keep_order(flow, at);
    }
    if at > now {
        // SAFETY: the context's own skb; a failure leaves the packet unstamped, i.e. not held.
        unsafe { bpf_skb_set_tstamp(ctx.skb.skb, at, TSTAMP_DELIVERY_MONO) };
    }
    Departure {
        delayed,
        held_ns: at.saturating_sub(now),
        overlimit: false,
    }
}

/// The bytes the packet takes on the wire: a GSO super-packet's segments each carry their own
/// headers, which `skb->len` counts once (a bulk TCP flow then ran 4-5 % over its rate). The
/// stack's own figure (`qdisc_pkt_len`, set before the egress hook) counts them all, as
/// Cilium's `edt.h` charges. It is 0 where nothing set it (BPF_PROG_TEST_RUN without a context).
#[inline(always)]
fn wire_len(ctx: &TcContext) -> u64 {
    // SAFETY: reading a field of the context the kernel handed us.
    let wire = unsafe { (*ctx.skb.skb).wire_len };
    u64::from(if wire == 0 { ctx.len() } else { wire })
}

/// The rule's virtual link: a packet ready at `ready` leaves when the link is free, and keeps it
/// busy for its transmission time. `None` when it would wait past the rule's queue limit.
#[inline(always)]
fn pace(action: &RuleAction, ready: u64, now: u64, bytes: u64) -> Option<u64> {
    let state = CHAOS_RATE.get_ptr_mut(action.counter_slot)?;
    // SAFETY: a valid map value; concurrent CPUs may race on it (see CHAOS_RATE).
    let state = unsafe { &mut *state };
    let start = ready.max(state.next_free_ns);
    if start - now > action.rate_queue_ns {
        return None;
    }
    // rate_bytes_per_sec is never 0 with ACTION_F_RATE (the loader checks).
    let tx_ns = bytes * 1_000_000_000 / action.rate_bytes_per_sec.max(1);
    state.next_free_ns = start + tx_ns;
    Some(start)
}

/// `delay ± jitter` drawn from the rule's distribution, never negative.
#[inline(always)]
fn sample_delay(action: &RuleAction, dice: &mut Dice) -> u64 {
    let delay = action.delay_ns as i64;
    let jitter = action.jitter_ns as i64;
    if jitter == 0 {
        return action.delay_ns;
    }
    let random = dice.draw();
    // Arithmetic shifts, not division: signed division needs BPF ISA v4.
    let offset = if action.dist == DIST_UNIFORM {
        // 16 random bits spread over [-jitter, +jitter).
        (jitter * (i64::from(random >> 16) * 2 - 65536)) >> 16
    } else {
        let entry = match CHAOS_DIST_TABLES.get(action.dist.saturating_sub(1)) {
            Some(table) => table.entries[(random % DIST_TABLE_SIZE) as usize],
            None => 0,
        };
        (jitter * i64::from(entry)) >> DIST_SCALE_SHIFT
    };
    (delay + offset).max(0) as u64
}

/// Never lets a flow's packet leave before the flow's previous one: returns the later of `at`
/// and that flow's last departure, and remembers it.
#[inline(always)]
fn keep_order(flow: &Flow, at: u64) -> u64 {
    let (sport, dport) = flow.ports.unwrap_or((0, 0));
    let key = FlowKey {
        src: flow.src,
        dst: flow.dst,
        sport,
        dport,
        proto: flow.proto as u8,
        family: flow.family as u8,
        _pad: [0; 2],
    };
    if let Some(last) = CHAOS_FLOW_DEPARTURE.get_ptr_mut(key) {
        // SAFETY: a valid map value; the LRU map may evict it, which only forgets an order.
        let last = unsafe { &mut *last };
        let at = at.max(*last);
        *last = at;
        return at;
    }
    match CHAOS_FLOW_DEPARTURE.insert(key, at, 0) {
        // A failed insert only forgets this flow's order: the packet still leaves at `at`.
        Ok(()) | Err(_) => at,
    }
}

/// Holds the packet `ns` from now (after any departure time it already has): the held time.
#[inline(always)]
pub fn hold_for(ctx: &TcContext, ns: u64) -> u64 {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: reading fields of the context the kernel handed us.
    let (stamp, stamp_type) = unsafe { ((*ctx.skb.skb).tstamp, (*ctx.skb.skb).tstamp_type) };
    let from = if u32::from(stamp_type) == TSTAMP_DELIVERY_MONO && stamp > now {
        stamp
    } else {
        now
    };
    // SAFETY: the context's own skb; a failure leaves the packet unstamped, i.e. not held.
    if unsafe { bpf_skb_set_tstamp(ctx.skb.skb, from + ns, TSTAMP_DELIVERY_MONO) } != 0 {
        return 0;
    }
    from + ns - now
}
