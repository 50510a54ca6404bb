//! Plain data shared by the kernel program (`chaos-ebpf`) and the loader (`chaos-user`).
//!
//! Everything here is `#[repr(C)]`, fixed-width and padding-explicit so both sides agree on the
//! layout byte for byte; the `user` feature adds `aya::Pod` so the loader can put these in maps.
//! The few functions here are those both sides must compute alike (prefix keys, seeded draws).
#![no_std]

pub mod counters;
pub mod rules;
pub mod seed;

pub use counters::RuleCounters;
pub use rules::{GenSettings, RuleAction, RuntimeConfig};
