//! Replayable randomness (`seed=N`).
//!
//! Every random draw for a packet of a seeded rule is a function of the rule's seed, the
//! packet's flow and the packet's index in that flow (how many packets of the flow the rule saw
//! before it), never of the kernel's generator: the same traffic under the same seed meets the
//! same faults, run after run. The kernel draws with these functions and a test can predict its
//! draws with the very same code.
//!
//! A packet's draws are successive outputs of splitmix64 (Steele, Lea and Flood) started from
//! its state: two 64-bit multiplies and three shifts each, no table, no loop.

use crate::rules::FlowKey;

/// Flows whose packet count the seeded rules of a `chaos run` keep, all rules together (least
/// recently used ones are forgotten, and their count starts again from 0, so replay is exact
/// while no more flows than this are live). An entry costs 128 bytes of preallocated kernel
/// memory, and `chaos run` seeds every rule that draws unless told otherwise: 512 KiB, not the
/// 8 MiB a table the size of the connection table's would hold.
pub const MAX_SEEDED_FLOWS: u32 = 4096;

/// Key of the per-flow packet count of a seeded rule: the rule's counter slot (which stays with
/// the rule across rule sets) and the flow, as the rule's packets carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedKey {
    pub slot: u32,
    pub flow: FlowKey,
}

/// How far a seeded rule has counted one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedEntry {
    /// Index of the flow's next packet.
    pub next: u64,
    /// [`flow_state`] of the rule's seed and the flow, kept so that a packet pays for one mix,
    /// not the six that hash the flow.
    pub flow_state: u64,
    /// The rule's `RuleAction::epoch`: another rule in the same slot counts anew.
    pub epoch: u32,
    pub _pad: u32,
}

/// splitmix64's increment, 2^64 / φ: consecutive states are as far apart as can be.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The index whose state a flow's connection-level draw (`conn-p`) uses: one no packet has,
/// so the flow's choice is independent of its packets' draws.
pub const CONN_INDEX: u64 = u64::MAX;

/// splitmix64's finaliser: a bijection in which every output bit depends on every input bit.
#[inline(always)]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline(always)]
fn half(addr: &[u8; 16], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&addr[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The state every draw of a flow under `seed` starts from: the seed and each word of the
/// flow's key mixed in turn, so that neither two seeds nor two flows share a stream.
#[inline(always)]
pub fn flow_state(seed: u64, flow: &FlowKey) -> u64 {
    let ports = u64::from(flow.sport)
        | u64::from(flow.dport) << 16
        | u64::from(flow.proto) << 32
        | u64::from(flow.family) << 40;
    let mut h = mix64(seed);
    for word in [
        half(&flow.src, 0),
        half(&flow.src, 8),
        half(&flow.dst, 0),
        half(&flow.dst, 8),
        ports,
    ] {
        h = mix64(h ^ word);
    }
    h
}

/// The state of packet `index` of a flow whose state is `flow`: splitmix64's `index`-th output.
#[inline(always)]
pub const fn packet_state(flow: u64, index: u64) -> u64 {
    mix64(flow.wrapping_add(index.wrapping_mul(GAMMA)))
}

/// A packet's successive draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draws {
    state: u64,
}

impl Draws {
    #[inline(always)]
    pub const fn new(state: u64) -> Self {
        Self { state }
    }

    /// The next 32 random bits: the high half of splitmix64's next output, its best mixed.
    #[inline(always)]
    pub fn next_u32(&mut self) -> u32 {
        self.state = self.state.wrapping_add(GAMMA);
        (mix64(self.state) >> 32) as u32
    }
}

/// Whether 32 random bits land within probability `p` (scaled by `rules::PROB_ONE`, 1 << 31):
/// how the kernel rolls for every probability, seeded or not.
#[inline(always)]
pub const fn lands(draw: u32, p: u32) -> bool {
    (draw >> 1) < p
}

/// The draws of packet `index` of `flow` under `seed`, as the kernel makes them.
#[inline(always)]
pub fn packet_draws(seed: u64, flow: &FlowKey, index: u64) -> Draws {
    Draws::new(packet_state(flow_state(seed, flow), index))
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays; every bit pattern is valid.
    unsafe impl aya::Pod for super::SeedKey {}
    // SAFETY: as above, padding explicit.
    unsafe impl aya::Pod for super::SeedEntry {}
}

const _: () = assert!(core::mem::size_of::<SeedKey>() == 44);
const _: () = assert!(core::mem::size_of::<SeedEntry>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16) -> FlowKey {
        let mut key = FlowKey {
            sport,
            dport: 9000,
            proto: 1,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&[198, 18, 0, 1]);
        key.dst[..4].copy_from_slice(&[198, 18, 0, 2]);
        key
    }

    #[test]
    fn draws_are_splitmix64() {
        // splitmix64 from state 0: first output 0xe220a8397b1dcdaf (the reference sequence).
        assert_eq!(Draws::new(0).next_u32(), 0xe220_a839);
    }

    #[test]
    fn a_draw_depends_on_seed_flow_and_index() {
        let first = |seed, sport, index| packet_draws(seed, &flow(sport), index).next_u32();
        assert_eq!(first(7, 40000, 3), first(7, 40000, 3));
        assert_ne!(first(7, 40000, 3), first(8, 40000, 3));
        assert_ne!(first(7, 40000, 3), first(7, 40001, 3));
        assert_ne!(first(7, 40000, 3), first(7, 40000, 4));
        let mut draws = packet_draws(7, &flow(40000), 3);
        assert_ne!(draws.next_u32(), draws.next_u32());
    }

    #[test]
    fn the_share_that_lands_is_the_probability() {
        // 37.5 % over 100,000 packets of one flow: within 4σ (±0.61 points).
        let p = 3 << 28; // 0.375 of PROB_ONE (1 << 31), exactly
        let n = 100_000u64;
        let hits = (0..n)
            .filter(|i| lands(packet_draws(7, &flow(40000), *i).next_u32(), p))
            .count() as f64;
        let (mean, sigma) = (n as f64 * 0.375, (n as f64 * 0.375 * 0.625).sqrt());
        assert!((hits - mean).abs() <= 4.0 * sigma, "{hits} of {n}");
    }
}
