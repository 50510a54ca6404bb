//! The packet faults beyond loss and time: Gilbert-Elliott loss, duplicates, corruption.

use aya_ebpf::programs::TcContext;
use chaos_common::{
    RuleAction,
    rules::{GE_LOSS_BAD, GE_LOSS_GOOD, GE_P, GE_R, PROTO_OTHER, PROTO_TCP},
};

use crate::{
    craft::{self, Tcp},
    dice::Dice,
    maps::CHAOS_GE_STATE,
    parse::Flow,
};

const GOOD: u32 = 0;
const BAD: u32 = 1;

/// Whether the Gilbert-Elliott chain loses this packet: the loss of the state the packet finds,
/// then the step to the next state (netem's `loss_gilb_ell`).
#[inline(always)]
pub fn ge_loses(action: &RuleAction, dice: &mut Dice) -> bool {
    let Some(state) = CHAOS_GE_STATE.get_ptr_mut(action.counter_slot) else {
        return false;
    };
    // SAFETY: a valid map value; CPUs racing on it interleave steps of the one chain.
    let state = unsafe { &mut *state };
    let ge = &action.ge;
    if *state == BAD {
        let lost = dice.roll(ge[GE_LOSS_BAD]);
        if dice.roll(ge[GE_R]) {
            *state = GOOD;
        }
        lost
    } else {
        let lost = dice.roll(ge[GE_LOSS_GOOD]);
        if dice.roll(ge[GE_P]) {
            *state = BAD;
        }
        lost
    }
}

/// Sends a share of packets twice: the copy leaves first on egress, after on ingress, and is
/// never faulted again.
#[inline(always)]
pub fn duplicate(ctx: &TcContext, action: &RuleAction, dir: usize, dice: &mut Dice) -> bool {
    dice.roll(action.duplicate_prob) && craft::send_copy(ctx, dir, true)
}

/// Flips one random bit of the payload of a share of TCP and UDP packets, keeping the
/// checksum valid so the receiver takes the damaged byte. A packet without payload is left be.
#[inline(always)]
pub fn corrupt(ctx: &TcContext, flow: &Flow, action: &RuleAction, dice: &mut Dice) -> bool {
    if flow.proto == PROTO_OTHER || flow.ports.is_none() || !dice.roll(action.corrupt_prob) {
        return false;
    }
    let header = if flow.proto == PROTO_TCP {
        match Tcp::read(ctx, flow) {
            Some(t) => t.doff,
            None => return false,
        }
    } else {
        craft::udp_header()
    };
    let payload = craft::payload_len(ctx, flow, header);
    if payload == 0 {
        return false;
    }
    let (r1, r2) = (dice.draw(), dice.draw());
    let offset = header + ((u64::from(r1) * u64::from(payload)) >> 32) as u32;
    craft::flip_bit(ctx, flow, offset, r2 & 7).is_some()
}
