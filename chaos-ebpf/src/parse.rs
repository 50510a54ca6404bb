//! Header parsing: only what matching needs, every access bounds-checked against `data_end`.
//!
//! Anything we cannot parse (truncated, unknown EtherType, too many extension headers) yields
//! `None` and the packet passes untouched.

use core::mem;

use aya_ebpf::programs::TcContext;
use chaos_common::rules::{FAMILY_V4, FAMILY_V6, PROTO_OTHER, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Stacked VLAN tags we look through (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers we walk before giving up; real traffic rarely has more than two.
const MAX_IPV6_EXT: usize = 6;

const VLAN_HDR_LEN: usize = 4;
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
const IPV6_FRAG_OFFSET_MASK: u16 = 0xfff8;

/// The fields of a packet that rules look at. Addresses stay in network byte order, as the LPM
/// keys want them; ports are host-order numbers, as the port arrays are indexed.
pub struct Flow {
    pub family: usize,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: usize,
    /// `None` for protocols without ports and for non-first fragments.
    pub ports: Option<(u16, u16)>,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// Bytes from the transport header to the end of the IP packet, by the IP header's own
    /// length (a short frame's Ethernet padding is not payload); 0 when that length is 0 (a
    /// BIG TCP packet), where the skb's length is the only measure.
    pub l4_len: u32,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read_u8(ctx: &TcContext, offset: usize) -> Option<u8> {
    // SAFETY: ptr_at checked that the byte lies inside the packet.
    ptr_at::<u8>(ctx, offset).map(|p| unsafe { *p })
}

#[inline(always)]
fn read_be16(ctx: &TcContext, offset: usize) -> Option<u16> {
    // SAFETY: bounds checked by ptr_at; packet data has no alignment guarantee.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// Parses Ethernet (with up to two VLAN tags), IPv4 or IPv6, and TCP/UDP ports.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Flow> {
    let mut offset = mem::size_of::<EthHdr>();
    let mut ether_type = read_be16(ctx, offset - 2)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        ether_type = read_be16(ctx, offset + 2)?;
        offset += VLAN_HDR_LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        _ => None,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, offset: usize) -> Option<Flow> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset)?;
    // SAFETY: the whole fixed header is inside the packet (ptr_at).
    let (vihl, tot_len, frags, proto, saddr, daddr) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
            read_u8(ctx, offset + mem::offset_of!(Ipv4Hdr, proto))?,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    // IHL counts 32-bit words; options make the header longer than 20 bytes.
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&saddr);
    dst[..4].copy_from_slice(&daddr);
    let first_fragment = frags & IPV4_FRAG_OFFSET_MASK == 0;
    let l4_len = u32::from(tot_len).saturating_sub(ihl as u32);
    l4(
        ctx,
        FAMILY_V4,
        (src, dst),
        proto,
        (offset, offset + ihl, l4_len),
        first_fragment,
    )
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, offset: usize) -> Option<Flow> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset)?;
    // SAFETY: the fixed header is inside the packet (ptr_at).
    let (src, dst, payload_len) = unsafe {
        (
            (*ip).src_addr,
            (*ip).dst_addr,
            u16::from_be_bytes((*ip).payload_len),
        )
    };
    let l3 = offset;
    let mut next = read_u8(ctx, offset + mem::offset_of!(Ipv6Hdr, next_hdr))?;
    let mut offset = offset + Ipv6Hdr::LEN;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXT {
        if !matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        ) {
            break;
        }
        // Every extension header starts with (next header, length); one checked read of both
        // keeps the verifier's bound on the variable offset.
        let ext: *const [u8; 4] = ptr_at(ctx, offset)?;
        // SAFETY: ptr_at checked the 4 bytes are inside the packet.
        let [ext_next, ext_len, frag_hi, frag_lo] = unsafe { *ext };
        offset += match next {
            // AH counts 4-octet units, minus 2.
            IPPROTO_AH => (usize::from(ext_len) + 2) * 4,
            IPPROTO_FRAGMENT => {
                first_fragment =
                    u16::from_be_bytes([frag_hi, frag_lo]) & IPV6_FRAG_OFFSET_MASK == 0;
                8
            }
            // Length in 8-octet units, not counting the first 8.
            _ => (usize::from(ext_len) + 1) * 8,
        };
        next = ext_next;
    }
    if matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    ) {
        return None;
    }
    let l4_len = u32::from(payload_len).saturating_sub((offset - l3 - Ipv6Hdr::LEN) as u32);
    l4(
        ctx,
        FAMILY_V6,
        (src, dst),
        next,
        (l3, offset, l4_len),
        first_fragment,
    )
}

/// Reads the ports of TCP and UDP; both keep source and destination port in their first 4 bytes.
/// A TCP or UDP packet that should carry ports but is cut short is not parsed at all.
#[inline(always)]
fn l4(
    ctx: &TcContext,
    family: usize,
    (src, dst): ([u8; 16], [u8; 16]),
    ip_proto: u8,
    (l3, offset, l4_len): (usize, usize, u32),
    first_fragment: bool,
) -> Option<Flow> {
    let proto = match ip_proto {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => PROTO_OTHER,
    };
    let ports = if proto != PROTO_OTHER && first_fragment {
        let ports: *const [u8; 4] = ptr_at(ctx, offset)?;
        // SAFETY: ptr_at checked the 4 bytes are inside the packet.
        let [s0, s1, d0, d1] = unsafe { *ports };
        Some((u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1])))
    } else {
        None
    };
    Some(Flow {
        family,
        src,
        dst,
        proto,
        ports,
        l3,
        l4: offset,
        l4_len,
    })
}
