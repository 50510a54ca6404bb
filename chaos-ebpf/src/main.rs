//! chaos's TC program: one body, attached on ingress and egress through two thin entry points.
#![no_std]
#![no_main]

mod conn;
mod craft;
mod dice;
mod edt;
mod faults;
mod maps;
mod parse;
mod stages;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use chaos_common::rules::{DIR_EGRESS, DIR_INGRESS};

#[classifier]
pub fn chaos_ingress(ctx: TcContext) -> i32 {
    verdict::classify(&ctx, DIR_INGRESS)
}

#[classifier]
pub fn chaos_egress(ctx: TcContext) -> i32 {
    verdict::classify(&ctx, DIR_EGRESS)
}

/// The connection stage for packets seen on ingress (`stages`), reached by a tail call from
/// `chaos_ingress`; never attached.
#[classifier]
pub fn chaos_conn_ingress(ctx: TcContext) -> i32 {
    stages::conn_stage(&ctx, DIR_INGRESS)
}

/// As `chaos_conn_ingress`, for egress.
#[classifier]
pub fn chaos_conn_egress(ctx: TcContext) -> i32 {
    stages::conn_stage(&ctx, DIR_EGRESS)
}

/// The fault stage for packets seen on ingress (`stages`): burst loss, a slow open,
/// duplicates, corruption, with delay and rate; never attached.
#[classifier]
pub fn chaos_faults_ingress(ctx: TcContext) -> i32 {
    stages::fault_stage(&ctx, DIR_INGRESS)
}

/// As `chaos_faults_ingress`, for egress.
#[classifier]
pub fn chaos_faults_egress(ctx: TcContext) -> i32 {
    stages::fault_stage(&ctx, DIR_EGRESS)
}

/// Does nothing: the baseline `cargo xtask bench` measures chaos's cost against, loaded from the
/// same object so both run under the same kernel, JIT and test harness. chaos never attaches it.
#[classifier]
pub fn chaos_noop(_ctx: TcContext) -> i32 {
    // TC_ACT_UNSPEC, as chaos's own "no decision".
    -1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
