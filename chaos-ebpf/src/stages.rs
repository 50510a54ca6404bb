//! The tail-called stages a packet of a rule with connection or extended faults goes through:
//! `chaos_{ingress,egress}` (matching) → `chaos_conn_*` (the connection's fate) →
//! `chaos_faults_*` (packet faults with burst loss, a slow open, duplicates, corruption).
//!
//! Each stage is its own program, so the verifier checks each apart (the sum of their paths,
//! not the product) and packets of plain rules never leave the first. What a stage hands the
//! next rides in `skb->cb`, BPF's to use: `cb[0]` what to do, `cb[1]` `STAGE_*` flags.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use chaos_common::{
    RuleAction,
    rules::{
        ACTION_F_CONN, ACTION_F_CORRUPT, ACTION_F_DELAY, ACTION_F_DUPLICATE, ACTION_F_GE,
        ACTION_F_RATE, CONN_F_CONNECT_DELAY,
    },
};

use crate::{
    conn::{self, Conn},
    maps::{CHAOS_ACTIONS, CHAOS_CONFIG, CHAOS_JUMP},
    parse::parse,
    verdict::{TC_ACT_UNSPEC, apply, counters, flow_key},
};

/// The packet was counted as matched by an earlier stage.
pub const STAGE_COUNTED: u32 = 1 << 0;
/// The packet is its connection's first (for `connect-delay`).
pub const STAGE_FIRST: u32 = 1 << 1;

/// `cb[0]` for the connection stage: a packet against a hanging or resetting rule's way.
const REVERSE: u32 = u32::MAX;

/// `CHAOS_JUMP` slots: the fault stage by `DIR_*`, then the connection stage by `DIR_*`.
const FAULT_STAGE: u32 = 0;
const CONN_STAGE: u32 = 2;

/// Faults only the fault stage has.
const ACTION_F_EXTENDED: u32 = ACTION_F_DUPLICATE | ACTION_F_CORRUPT | ACTION_F_GE;

/// Jumps to `slot + dir`, handing over `what` and `stage`. Returns only if the jump failed
/// (the stage is not loaded): the caller then does what it can by itself.
#[inline(always)]
fn jump(ctx: &TcContext, slot: u32, dir: usize, what: u32, stage: u32) {
    // SAFETY: the context's own control buffer, BPF's to use; a jump does not return.
    unsafe {
        (*ctx.skb.skb).cb[0] = what;
        (*ctx.skb.skb).cb[1] = stage;
        CHAOS_JUMP.tail_call(ctx, slot + dir as u32);
        (*ctx.skb.skb).cb[0] = 0;
        (*ctx.skb.skb).cb[1] = 0;
    }
}

/// From the matching stage: a rule with connection faults goes to the connection stage, one
/// with extended faults to the fault stage; a plain rule stays.
#[inline(always)]
pub fn hand_over(ctx: &TcContext, action: &RuleAction, index: u32, dir: usize) {
    if action.flags & ACTION_F_CONN != 0 {
        jump(ctx, CONN_STAGE, dir, index + 1, 0);
    } else if action.flags & ACTION_F_EXTENDED != 0 {
        jump(ctx, FAULT_STAGE, dir, index + 1, 0);
    }
}

/// From the matching stage: a packet against a hanging or resetting rule's way starts the
/// fault (`conn::Reverse::Due`).
#[inline(always)]
pub fn reverse(ctx: &TcContext, dir: usize) {
    jump(ctx, CONN_STAGE, dir, REVERSE, 0);
}

/// Takes over what the previous stage handed over, clearing the buffer for whoever looks next.
#[inline(always)]
fn take(ctx: &TcContext) -> (u32, u32) {
    // SAFETY: the context's own control buffer, set by `jump`.
    unsafe {
        let handed = ((*ctx.skb.skb).cb[0], (*ctx.skb.skb).cb[1]);
        (*ctx.skb.skb).cb[0] = 0;
        (*ctx.skb.skb).cb[1] = 0;
        handed
    }
}

/// The connection stage's program body, for a packet seen in `dir`.
#[inline(always)]
pub fn conn_stage(ctx: &TcContext, dir: usize) -> i32 {
    let (what, _) = take(ctx);
    try_conn_stage(ctx, dir, what).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn try_conn_stage(ctx: &TcContext, dir: usize, what: u32) -> Option<i32> {
    let config = CHAOS_CONFIG.get(0)?;
    let flow = parse(ctx)?;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if what == REVERSE {
        return conn::reverse(
            ctx,
            &flow,
            &flow_key(&flow, true),
            config.active_gen,
            dir,
            now,
        );
    }
    let index = what.checked_sub(1)?;
    let action = CHAOS_ACTIONS.get(index)?;
    let c = counters(action)?;
    c.matched_pkts += 1;
    // SAFETY: reading a field of the context the kernel handed us.
    c.matched_segs += u64::from(unsafe { (*ctx.skb.skb).gso_segs }.max(1));
    c.matched_bytes += u64::from(ctx.len());
    let first = match conn::forward(
        ctx,
        &flow,
        &flow_key(&flow, false),
        (action, index),
        dir,
        now,
        c,
    ) {
        Conn::Pass => return Some(TC_ACT_UNSPEC),
        Conn::Done(verdict) => return Some(verdict),
        Conn::Faults { first } => first,
    };
    let slow_open = first && action.conn_flags & CONN_F_CONNECT_DELAY != 0;
    let packet_faults = action.drop_prob != 0
        || action.flags & (ACTION_F_EXTENDED | ACTION_F_DELAY | ACTION_F_RATE) != 0;
    if !slow_open && !packet_faults {
        return Some(TC_ACT_UNSPEC);
    }
    let stage = STAGE_COUNTED | if first { STAGE_FIRST } else { 0 };
    jump(ctx, FAULT_STAGE, dir, what, stage);
    Some(TC_ACT_UNSPEC)
}

/// The fault stage's program body, for a packet seen in `dir`.
#[inline(always)]
pub fn fault_stage(ctx: &TcContext, dir: usize) -> i32 {
    let (what, stage) = take(ctx);
    try_fault_stage(ctx, dir, what, stage).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn try_fault_stage(ctx: &TcContext, dir: usize, what: u32, stage: u32) -> Option<i32> {
    let config = CHAOS_CONFIG.get(0)?;
    let flow = parse(ctx)?;
    let index = what.checked_sub(1)?;
    let action = CHAOS_ACTIONS.get(index)?;
    Some(apply::<true>(
        ctx,
        &flow,
        (action, index),
        dir,
        config,
        stage,
    ))
}
