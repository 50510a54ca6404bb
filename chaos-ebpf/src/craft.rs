//! Packet surgery: cutting a segment's payload, turning a packet into a TCP RST, flipping a bit.
//!
//! Every checksum change goes through `bpf_l3_csum_replace`/`bpf_l4_csum_replace`, which know
//! the skb's checksum state: a packet whose transport checksum the device or the receiver will
//! fill in (CHECKSUM_PARTIAL, as every locally sent TCP segment on veth) only gets its
//! pseudo-header part updated, and any other gets the full sum updated. Writing a freshly
//! computed checksum instead would be wrong for one of the two.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use chaos_common::rules::{CHAOS_SKB_MARK, DIR_INGRESS, FAMILY_V4, PROTO_TCP};

use crate::{maps::CHAOS_SCRATCH, parse::Flow};

/// Bytes summed per step when a stretch of payload is taken out of a checksum.
const CHUNK: usize = 512;
/// The scratch buffer those steps read into: room for what the verifier can prove of them.
pub const SCRATCH: usize = 1024;
/// Steps of `CHUNK`: a header and [`CUT_MAX`] bytes of payload.
const MAX_CHUNKS: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const TCP_SEQ: usize = 4;
const TCP_ACK_SEQ: usize = 8;
const TCP_DOFF_FLAGS: usize = 12;
const TCP_CHECK: usize = 16;
const TCP_HDR_LEN: u32 = 20;
const UDP_LEN: usize = 4;
const UDP_CHECK: usize = 6;
const UDP_HDR_LEN: u32 = 8;
const IPV4_TOT_LEN: usize = 2;
const IPV4_CHECK: usize = 10;
const IPV4_ADDRS: usize = 12;
const IPV4_HDR_LEN: usize = 20;
const IPV6_PAYLOAD_LEN: usize = 4;
const IPV6_ADDRS: usize = 8;
const IPV6_HDR_LEN: usize = 40;
const ETH_ALEN: usize = 6;

/// The TCP fields a connection fault reads.
#[derive(Clone, Copy)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Header length in bytes, options included.
    pub doff: u32,
}

impl Tcp {
    #[inline(always)]
    pub fn read(ctx: &TcContext, flow: &Flow) -> Option<Self> {
        let h: [u8; 10] = ctx.load(flow.l4 + TCP_SEQ).ok()?;
        Some(Self {
            seq: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            ack: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            flags: h[9],
            doff: u32::from(h[8] >> 4) * 4,
        })
    }

    /// The opening SYN of a connection (not the SYN-ACK).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// Bytes of the transport segment (header and payload), from the IP header's length when it
/// has one.
#[inline(always)]
pub fn l4_len(ctx: &TcContext, flow: &Flow) -> u32 {
    if flow.l4_len != 0 {
        flow.l4_len
    } else {
        ctx.len().saturating_sub(flow.l4 as u32)
    }
}

/// Bytes of payload after the transport header (`doff` for TCP, 8 for UDP).
#[inline(always)]
pub fn payload_len(ctx: &TcContext, flow: &Flow, header: u32) -> u32 {
    l4_len(ctx, flow).saturating_sub(header)
}

/// A 16-bit field as the checksum helpers take it: its bytes as they lie in the packet.
#[inline(always)]
fn raw16(v: u16) -> u64 {
    u64::from(u16::from_ne_bytes(v.to_be_bytes()))
}

#[inline(always)]
fn raw32(v: u32) -> u64 {
    u64::from(u32::from_ne_bytes(v.to_be_bytes()))
}

/// Where the transport checksum is and how the helpers must treat it.
#[inline(always)]
fn l4_check(flow: &Flow) -> (usize, u64) {
    if flow.proto == PROTO_TCP {
        (flow.l4 + TCP_CHECK, 0)
    } else {
        // A UDP checksum of 0 means "none" over IPv4: the helper leaves it so.
        (flow.l4 + UDP_CHECK, u64::from(BPF_F_MARK_MANGLED_0))
    }
}

/// Writes a big-endian 16-bit field of the transport header and updates its checksum;
/// `pseudo`: the value is also part of the pseudo-header (UDP's length).
#[inline(always)]
fn set_l4_16(ctx: &TcContext, flow: &Flow, offset: usize, old: u16, new: u16) -> Option<()> {
    let (check, flags) = l4_check(flow);
    ctx.store(flow.l4 + offset, &new.to_be_bytes(), 0).ok()?;
    ctx.l4_csum_replace(check, raw16(old), raw16(new), flags | 2)
        .ok()
}

#[inline(always)]
fn set_l4_32(ctx: &TcContext, flow: &Flow, offset: usize, old: u32, new: u32) -> Option<()> {
    let (check, flags) = l4_check(flow);
    ctx.store(flow.l4 + offset, &new.to_be_bytes(), 0).ok()?;
    ctx.l4_csum_replace(check, raw32(old), raw32(new), flags | 4)
        .ok()
}

/// The transport length changed from `old` to `new` bytes: the pseudo-header's length field
/// and the IP header's own length follow.
#[inline(always)]
fn set_lengths(ctx: &TcContext, flow: &Flow, old: u32, new: u32) -> Option<()> {
    let (check, flags) = l4_check(flow);
    ctx.l4_csum_replace(
        check,
        raw32(old),
        raw32(new),
        flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
    )
    .ok()?;
    if flow.family == FAMILY_V4 {
        let ihl = (flow.l4 - flow.l3) as u32;
        let (old, new) = ((old + ihl) as u16, (new + ihl) as u16);
        ctx.store(flow.l3 + IPV4_TOT_LEN, &new.to_be_bytes(), 0)
            .ok()?;
        ctx.l3_csum_replace(flow.l3 + IPV4_CHECK, raw16(old), raw16(new), 2)
            .ok()
    } else {
        let ext = (flow.l4 - flow.l3 - IPV6_HDR_LEN) as u32;
        ctx.store(
            flow.l3 + IPV6_PAYLOAD_LEN,
            &((new + ext) as u16).to_be_bytes(),
            0,
        )
        .ok()
    }
}

/// Ones'-complement sum of `len` packet bytes from `offset` (anywhere in the skb, linear or
/// not), as `bpf_csum_diff` gives it; `None` past 2 KiB or on a failed read.
#[inline(never)]
fn sum_bytes(ctx: &TcContext, offset: u32, len: u32) -> Option<u32> {
    let buf = CHAOS_SCRATCH.get_ptr_mut(0)?;
    let mut sum: u32 = 0;
    let mut done: u32 = 0;
    for _ in 0..MAX_CHUNKS {
        if done >= len {
            break;
        }
        let left = len - done;
        // Hidden from the optimiser so the masks below stay: they are the verifier's bounds
        // on what is read and summed (1..=512 bytes, 4..=512 in whole words).
        let n = core::hint::black_box(if left < CHUNK as u32 {
            left
        } else {
            CHUNK as u32
        });
        let n = ((n.wrapping_sub(1)) & 0x1ff) + 1;
        // SAFETY: the scratch buffer is this CPU's and SCRATCH long; the masks bound the
        // lengths within it.
        unsafe {
            if bpf_skb_load_bytes(ctx.skb.skb.cast(), offset + done, buf.cast(), n) != 0 {
                return None;
            }
            // The sum takes whole words: the 1-3 bytes after the last one read count as zeros.
            let tail = (*buf).as_mut_ptr().add(n as usize);
            *tail = 0;
            *tail.add(1) = 0;
            *tail.add(2) = 0;
            let words = (n + 3) & 0x3fc;
            let s = bpf_csum_diff(core::ptr::null_mut(), 0, buf.cast(), words, sum);
            if s < 0 {
                return None;
            }
            sum = s as u32;
        }
        done += n;
    }
    (done >= len).then_some(sum)
}

/// `bpf_csum_diff` over a stack buffer, added to `seed`.
#[inline(always)]
fn csum_diff<const N: usize>(bytes: &[u8; N], seed: u32) -> Option<u32> {
    // SAFETY: a stack buffer of N bytes, N a multiple of 4 (every caller's).
    let s = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            bytes.as_ptr().cast_mut().cast(),
            N as u32,
            seed,
        )
    };
    (s >= 0).then_some(s as u32)
}

/// Sum of the transport checksum's pseudo-header for a segment of `len` bytes.
#[inline(always)]
fn pseudo_sum(flow: &Flow, len: u32) -> Option<u32> {
    let proto = if flow.proto == PROTO_TCP { 6 } else { 17 };
    if flow.family == FAMILY_V4 {
        let mut p = [0u8; 12];
        p[..4].copy_from_slice(&flow.src[..4]);
        p[4..8].copy_from_slice(&flow.dst[..4]);
        p[9] = proto;
        p[10..].copy_from_slice(&(len as u16).to_be_bytes());
        csum_diff(&p, 0)
    } else {
        let mut p = [0u8; 40];
        p[..16].copy_from_slice(&flow.src);
        p[16..32].copy_from_slice(&flow.dst);
        p[32..36].copy_from_slice(&len.to_be_bytes());
        p[39] = proto;
        csum_diff(&p, 0)
    }
}

/// Ones'-complement addition: the carry comes back in at the bottom.
#[inline(always)]
fn add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u32::from(carry)
}

/// Folds a 32-bit ones'-complement sum to 16 bits.
#[inline(always)]
fn fold(sum: u32) -> u32 {
    let s = (sum & 0xffff) + (sum >> 16);
    (s & 0xffff) + (s >> 16)
}

/// Most payload bytes [`cut`] keeps: what it reads to fix the checksum (a 1500-byte MTU's
/// segment fits). Callers keep longer stretches a piece at a time.
pub const CUT_MAX: u32 = 1536;

/// Cuts the segment (`old` bytes with its header) to its first `keep` payload bytes (TCP or
/// UDP; `keep` at most [`CUT_MAX`]), fixing lengths and checksums. A GSO packet stops being
/// one: the caller keeps `keep` within one segment.
#[inline(always)]
pub fn cut(ctx: &TcContext, flow: &Flow, old: u32, header: u32, keep: u32) -> Option<()> {
    let new = header + keep;
    if new >= old || keep > CUT_MAX {
        return Some(());
    }
    // The bytes cut off are what a valid checksum leaves once the pseudo-header and the bytes
    // kept are taken out (see `into_rst` for the CHECKSUM_PARTIAL case).
    let kept = sum_bytes(ctx, flow.l4 as u32, new)?;
    let removed = !fold(add(kept, pseudo_sum(flow, old)?)) & 0xffff;
    // SAFETY: the context's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb.cast(), (flow.l4 as u32) + new, 0) } != 0 {
        return None;
    }
    let (check, flags) = l4_check(flow);
    // A size of 0 makes `to` a difference to add: the removed bytes' ones'-complement negative.
    ctx.l4_csum_replace(check, 0, u64::from(!removed & 0xffff), flags)
        .ok()?;
    if flow.proto != PROTO_TCP {
        set_l4_16(ctx, flow, UDP_LEN, old as u16, new as u16)?;
    }
    set_lengths(ctx, flow, old, new)
}

/// Turns a TCP packet (`len` bytes of segment now) into a bare RST (no options, no payload)
/// with `seq`/`ack`; `back`: also swaps its addresses and ports so it goes to the packet's
/// sender. Only plain headers (IPv4
/// without options, IPv6 without extension headers) are rewritten; `None` leaves others be.
#[inline(always)]
pub fn into_rst(
    ctx: &TcContext,
    flow: &Flow,
    (tcp, len): (&Tcp, u32),
    seq: u32,
    ack: u32,
    back: bool,
) -> Option<()> {
    let ip_len = if flow.family == FAMILY_V4 {
        IPV4_HDR_LEN
    } else {
        IPV6_HDR_LEN
    };
    if flow.l4 - flow.l3 != ip_len {
        return None;
    }
    // Everything after the fixed 20 header bytes goes: options and payload. Their sum is what
    // a valid checksum leaves once the pseudo-header and those 20 bytes are taken out of it,
    // so nothing past the header is read. (A CHECKSUM_PARTIAL packet's field holds only the
    // pseudo-header sum: the figure is then meaningless, and the helper ignores it there.)
    let fixed: [u8; TCP_HDR_LEN as usize] = ctx.load(flow.l4).ok()?;
    let sum = csum_diff(&fixed, pseudo_sum(flow, len)?)?;
    let removed = !fold(sum) & 0xffff;
    // SAFETY: the context's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb.cast(), flow.l4 as u32 + TCP_HDR_LEN, 0) } != 0 {
        return None;
    }
    ctx.l4_csum_replace(flow.l4 + TCP_CHECK, 0, u64::from(!removed & 0xffff), 0)
        .ok()?;
    set_lengths(ctx, flow, len, TCP_HDR_LEN)?;
    let old_word = (tcp.doff as u16 / 4) << 12 | u16::from(tcp.flags);
    let flags = TCP_RST
        | if back || tcp.flags & TCP_ACK != 0 {
            TCP_ACK
        } else {
            0
        };
    let new_word = (5u16 << 12) | u16::from(flags);
    set_l4_16(ctx, flow, TCP_DOFF_FLAGS, old_word, new_word)?;
    set_l4_32(ctx, flow, TCP_SEQ, tcp.seq, seq)?;
    set_l4_32(ctx, flow, TCP_ACK_SEQ, tcp.ack, ack)?;
    if back {
        turn_back(ctx, flow)?;
    }
    Some(())
}

/// Swaps the packet's MAC addresses, IP addresses and ports. No checksum changes: a sum does
/// not depend on the order of its terms.
#[inline(always)]
fn turn_back(ctx: &TcContext, flow: &Flow) -> Option<()> {
    let macs: [u8; 2 * ETH_ALEN] = ctx.load(0).ok()?;
    let mut swapped = [0u8; 2 * ETH_ALEN];
    swapped[..ETH_ALEN].copy_from_slice(&macs[ETH_ALEN..]);
    swapped[ETH_ALEN..].copy_from_slice(&macs[..ETH_ALEN]);
    ctx.store(0, &swapped, 0).ok()?;
    if flow.family == FAMILY_V4 {
        let a: [u8; 8] = ctx.load(flow.l3 + IPV4_ADDRS).ok()?;
        let b = [a[4], a[5], a[6], a[7], a[0], a[1], a[2], a[3]];
        ctx.store(flow.l3 + IPV4_ADDRS, &b, 0).ok()?;
    } else {
        ctx.store(flow.l3 + IPV6_ADDRS, &flow.dst, 0).ok()?;
        ctx.store(flow.l3 + IPV6_ADDRS + 16, &flow.src, 0).ok()?;
    }
    let p: [u8; 4] = ctx.load(flow.l4).ok()?;
    ctx.store(flow.l4, &[p[2], p[3], p[0], p[1]], 0).ok()
}

/// Flips bit `bit` (0-7) of the payload byte at `offset` from the transport header, keeping the
/// checksum valid.
#[inline(always)]
pub fn flip_bit(ctx: &TcContext, flow: &Flow, offset: u32, bit: u32) -> Option<()> {
    // The checksum sees 16-bit words from the transport header: replace the whole word.
    let word_at = flow.l4 + (offset & !1) as usize;
    let old: [u8; 2] = ctx.load(word_at).ok()?;
    let mask = 1u8 << (bit & 7);
    let new = if offset & 1 == 0 {
        [old[0] ^ mask, old[1]]
    } else {
        [old[0], old[1] ^ mask]
    };
    let (check, flags) = l4_check(flow);
    ctx.store(word_at, &new, 0).ok()?;
    ctx.l4_csum_replace(
        check,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
        flags | 2,
    )
    .ok()
}

/// Sends a copy of the packet as it is now, marked so the program lets it pass unfaulted:
/// `forward` the way the packet goes, else back towards its sender.
#[inline(always)]
pub fn send_copy(ctx: &TcContext, dir: usize, forward: bool) -> bool {
    // SAFETY: reading a field of the context the kernel handed us.
    let (mark, ifindex) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ifindex) };
    ctx.set_mark(CHAOS_SKB_MARK);
    let sent = ctx
        .clone_redirect(ifindex, redirect_flags(dir, forward))
        .is_ok();
    ctx.set_mark(mark);
    sent
}

/// Sends the packet itself, marked, back towards its sender: the verdict to return.
#[inline(always)]
pub fn send_back(ctx: &TcContext, dir: usize) -> i32 {
    // SAFETY: reading a field of the context the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ctx.set_mark(CHAOS_SKB_MARK);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, redirect_flags(dir, false)) };
    TC_ACT_REDIRECT
}

/// A packet seen on ingress goes on up the stack by ingress and back out by egress; one seen
/// on egress the other way round.
#[inline(always)]
fn redirect_flags(dir: usize, forward: bool) -> u64 {
    if (dir == DIR_INGRESS) == forward {
        u64::from(BPF_F_INGRESS)
    } else {
        0
    }
}

/// The header length of the flow's transport protocol.
#[inline(always)]
pub fn udp_header() -> u32 {
    UDP_HDR_LEN
}
