//! chaos's TC program: one body, attached on ingress and egress through two thin entry points.
#![no_std]
#![no_main]

mod edt;
mod maps;
mod parse;
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
