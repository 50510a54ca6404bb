//! Where a packet's random draws come from: the kernel's generator, or, for a rule with
//! `seed=N`, the stream `chaos_common::seed` derives from the seed, the packet's flow and its
//! index in that flow, so that a run can be replayed.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use chaos_common::{
    RuleAction,
    rules::ACTION_F_SEEDED,
    seed::{CONN_INDEX, Draws, SeedEntry, SeedKey, flow_state, lands, packet_state},
};

use crate::{maps::CHAOS_SEED_INDEX, parse::Flow, verdict::flow_key};

/// One packet's source of random draws. Unseeded rules never touch the packet count map: their
/// dice cost one branch per draw over the helper call.
///
/// Not an `Option<Draws>`: LLVM leaves a `None`'s payload undefined and may still spill it,
/// which the verifier refuses as a read of an uninitialised register.
pub struct Dice {
    seeded: bool,
    draws: Draws,
}

impl Dice {
    const UNSEEDED: Self = Self {
        seeded: false,
        draws: Draws::new(0),
    };

    #[inline(always)]
    const fn seeded(state: u64) -> Self {
        Self {
            seeded: true,
            draws: Draws::new(state),
        }
    }

    /// The draws of a packet of `flow` under `action`: a seeded rule counts the packet in its
    /// flow first (one lookup in an LRU hash).
    #[inline(always)]
    pub fn for_packet(flow: &Flow, action: &RuleAction) -> Self {
        if action.flags & ACTION_F_SEEDED == 0 {
            return Self::UNSEEDED;
        }
        let key = SeedKey {
            slot: action.counter_slot,
            flow: flow_key(flow, false),
        };
        Self::seeded(next_packet(&key, action))
    }

    /// The draws of a decision made once for a whole flow (`conn-p`): seeded, a function of the
    /// seed and the flow alone, so the same 5-tuple is chosen or left alike in every run.
    #[inline(always)]
    pub fn for_flow(flow: &Flow, action: &RuleAction) -> Self {
        if action.flags & ACTION_F_SEEDED == 0 {
            return Self::UNSEEDED;
        }
        let state = flow_state(action.seed, &flow_key(flow, false));
        Self::seeded(packet_state(state, CONN_INDEX))
    }

    /// 32 random bits.
    #[inline(always)]
    pub fn draw(&mut self) -> u32 {
        if self.seeded {
            self.draws.next_u32()
        } else {
            // SAFETY: plain helper call.
            unsafe { bpf_get_prandom_u32() }
        }
    }

    /// True with probability `p` (scaled by `PROB_ONE`). A zero `p` takes no draw, so the
    /// draws a seeded packet makes depend on its rule only, not on what earlier draws said.
    #[inline(always)]
    pub fn roll(&mut self, p: u32) -> bool {
        p != 0 && lands(self.draw(), p)
    }
}

/// The state of this packet of the key's flow under `action`, counting the packet. CPUs racing
/// on one flow's entry (the BPF target has no atomic fetch-add in core) may hand out an index
/// twice: replay is exact for a flow whose packets one CPU at a time sees, as one socket's.
#[inline(always)]
fn next_packet(key: &SeedKey, action: &RuleAction) -> u64 {
    if let Some(entry) = CHAOS_SEED_INDEX.get_ptr_mut(key) {
        // SAFETY: a valid map value; the LRU map may evict it, which restarts the count.
        let entry = unsafe { &mut *entry };
        if entry.epoch == action.epoch {
            let index = entry.next;
            entry.next = index + 1;
            return packet_state(entry.flow_state, index);
        }
        // Left by an earlier rule in the same slot: this rule starts its own count.
        let state = flow_state(action.seed, &key.flow);
        *entry = SeedEntry {
            next: 1,
            flow_state: state,
            epoch: action.epoch,
            _pad: 0,
        };
        return packet_state(state, 0);
    }
    let state = flow_state(action.seed, &key.flow);
    let fresh = SeedEntry {
        next: 1,
        flow_state: state,
        epoch: action.epoch,
        _pad: 0,
    };
    match CHAOS_SEED_INDEX.insert(key, fresh, 0) {
        // A failed insert leaves the flow uncounted: this packet draws as the first one.
        Ok(()) | Err(_) => packet_state(state, 0),
    }
}
