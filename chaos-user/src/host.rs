//! Checks of the host that decide whether chaos can work on an interface at all.

use std::io;

use netlink_packet_route::{RouteNetlinkMessage, link::LinkMessage};

use crate::rtnl::Rtnl;

/// `ARPHRD_ETHER` and `ARPHRD_LOOPBACK`: the link types whose frames start with an Ethernet
/// header, which is what the program parses.
const ETHERNET_LINK_TYPES: [u16; 2] = [1, 772];

/// Refuses interfaces whose frames are not Ethernet (wireguard, tun, ipip ...).
pub fn check_link_type(iface: &str, ifindex: u32) -> Result<(), String> {
    let link_type =
        link_type(ifindex).map_err(|e| format!("reading the link type of {iface}: {e}"))?;
    if !ETHERNET_LINK_TYPES.contains(&link_type) {
        return Err(format!(
            "{iface} is not an Ethernet interface (link type {link_type}); chaos parses Ethernet frames"
        ));
    }
    Ok(())
}

/// The link type (`ARPHRD_*`) of `ifindex`.
fn link_type(ifindex: u32) -> io::Result<u16> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    Rtnl::open()?
        .request(RouteNetlinkMessage::GetLink(link), 0)?
        .into_iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link.header.link_layer_type.into()),
            _ => None,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no link in the reply"))
}

/// Holding ingress packets in an ifb's fq needs the mono delivery timestamp to survive the
/// redirect, which kernels before 6.4 do not keep: they drop the packets in the ifb instead.
pub fn check_ingress_hold_kernel() -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("reading the kernel version: {e}"))?;
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 4) {
        return Err(format!(
            "ingress delay=/rate= and delay= on local TCP need Linux 6.4 or newer (this is {})",
            release.trim()
        ));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, for leases and expiry times the
/// program compares against.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monotonic time `after` from now, in ns.
pub fn monotonic_after(after: std::time::Duration) -> u64 {
    monotonic_ns() + after.as_nanos() as u64
}
