//! The `fq` root qdisc that holds packets until the departure time the program stamps.
//!
//! chaos only replaces a root qdisc the kernel made by default (handle 0: noqueue on veth,
//! pfifo_fast, fq_codel, mq ...): deleting its own fq later makes the kernel put that default
//! back, exactly as it was. A root qdisc someone configured is refused, never replaced.

use std::{io, time::Duration};

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    tc::{TcAttribute, TcHandle, TcMessage, TcOption},
};
use thiserror::Error;

use crate::{netns, rtnl::Rtnl};

/// Handle of chaos's fq, `ca05:`, so it can be told from anyone else's.
pub const CHAOS_FQ_HANDLE: u32 = 0xca05_0000;

// fq's options (linux/pkt_sched.h). netlink-packet-route has no type for fq, so they go in as
// raw attributes.
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;

/// Packets fq may hold in all and per flow. fq's defaults (10,000 and 100) drop bursts of
/// delayed traffic: 500 datagrams sent at once lost 400 under a 100-packet flow limit.
pub const FQ_LIMIT_PACKETS: u32 = 1_000_000;
pub const FQ_FLOW_LIMIT_PACKETS: u32 = 1_000_000;

#[derive(Debug, Error)]
pub enum QdiscError {
    #[error("this kernel has no fq qdisc (sch_fq, CONFIG_NET_SCH_FQ), which delay= and rate= need")]
    NoFq,
    #[error(
        "{iface} already has a configured root qdisc ({kind} {handle:x}:); chaos will not replace it (delay= and rate= need fq at the root)"
    )]
    CustomRoot {
        iface: String,
        kind: String,
        handle: u32,
    },
    #[error(
        "this kernel has no ifb device (CONFIG_IFB), which ingress delay=/rate= and delay= on local TCP need"
    )]
    NoIfb,
    #[error("installing fq on {iface}: {source}")]
    Io {
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// chaos's fq on one interface; [`InstalledFq::restore`] removes it.
#[derive(Debug)]
pub struct InstalledFq {
    pub iface: String,
    ifindex: u32,
}

/// Replaces the default root qdisc of `iface` with fq whose horizon covers `horizon`.
pub fn install_fq(iface: &str, ifindex: u32, horizon: Duration) -> Result<InstalledFq, QdiscError> {
    let io_err = |source| QdiscError::Io {
        iface: iface.to_owned(),
        source,
    };
    let mut rtnl = Rtnl::open().map_err(io_err)?;
    if let Some(root) = root_qdisc(&mut rtnl, ifindex).map_err(io_err)?
        && root.handle != 0
        && root.handle != CHAOS_FQ_HANDLE
    {
        return Err(QdiscError::CustomRoot {
            iface: iface.to_owned(),
            kind: root.kind,
            handle: root.handle >> 16,
        });
    }
    let fq = RouteNetlinkMessage::NewQueueDiscipline(fq_message(ifindex, horizon));
    match rtnl.request(fq, NLM_F_CREATE | NLM_F_REPLACE) {
        Ok(_) => Ok(InstalledFq {
            iface: iface.to_owned(),
            ifindex,
        }),
        // The kernel's "Specified qdisc kind is unknown".
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(QdiscError::NoFq),
        Err(source) => Err(io_err(source)),
    }
}

/// The request for chaos's fq at the root of `ifindex`, its horizon covering `horizon`.
fn fq_message(ifindex: u32, horizon: Duration) -> TcMessage {
    let u32_option =
        |kind, value: u32| TcOption::Other(DefaultNla::new(kind, value.to_ne_bytes().to_vec()));
    let horizon_us = horizon.as_micros().min(u128::from(u32::MAX)) as u32;
    let mut message = qdisc_message(ifindex, TcHandle::ROOT, CHAOS_FQ_HANDLE);
    message.attributes = vec![
        TcAttribute::Kind("fq".to_owned()),
        TcAttribute::Options(vec![
            u32_option(TCA_FQ_PLIMIT, FQ_LIMIT_PACKETS),
            u32_option(TCA_FQ_FLOW_PLIMIT, FQ_FLOW_LIMIT_PACKETS),
            u32_option(TCA_FQ_HORIZON, horizon_us),
            // Past the horizon, cap the departure time rather than drop: chaos sizes the
            // horizon to its rules, so anything beyond it is a rounding edge, not loss anyone
            // asked for.
            TcOption::Other(DefaultNla::new(TCA_FQ_HORIZON_DROP, vec![0])),
        ]),
    ];
    message
}

fn qdisc_message(ifindex: u32, parent: TcHandle, handle: u32) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = parent;
    message.header.handle = handle.into();
    message
}

/// A qdisc as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Qdisc {
    pub kind: String,
    pub handle: u32,
}

/// The root qdisc of `ifindex`, if it has one.
pub(crate) fn root_qdisc(rtnl: &mut Rtnl, ifindex: u32) -> io::Result<Option<Qdisc>> {
    let dump = rtnl.dump(RouteNetlinkMessage::GetQueueDiscipline(
        TcMessage::with_index(ifindex as i32),
    ))?;
    Ok(dump.into_iter().find_map(|reply| match reply {
        RouteNetlinkMessage::NewQueueDiscipline(tc)
            if tc.header.index == ifindex as i32 && tc.header.parent == TcHandle::ROOT =>
        {
            let kind = tc.attributes.into_iter().find_map(|a| match a {
                TcAttribute::Kind(kind) => Some(kind),
                _ => None,
            });
            Some(Qdisc {
                kind: kind.unwrap_or_default(),
                handle: tc.header.handle.into(),
            })
        }
        _ => None,
    }))
}

/// Deletes the qdisc at `parent` with `handle` on `ifindex`.
pub(crate) fn delete_qdisc(
    rtnl: &mut Rtnl,
    ifindex: u32,
    parent: TcHandle,
    handle: u32,
) -> io::Result<()> {
    let message = qdisc_message(ifindex, parent, handle);
    rtnl.request(RouteNetlinkMessage::DelQueueDiscipline(message), 0)
        .map(drop)
}

impl InstalledFq {
    /// Deletes chaos's fq; the kernel attaches the interface's default root qdisc again.
    pub fn restore(self) -> io::Result<()> {
        delete_qdisc(
            &mut Rtnl::open()?,
            self.ifindex,
            TcHandle::ROOT,
            CHAOS_FQ_HANDLE,
        )
    }
}

/// chaos's ifb for one interface: packets held on ingress wait in its root fq.
#[derive(Debug)]
pub struct Ifb {
    pub name: String,
    pub ifindex: u32,
}

/// Creates `chaos-ifb<ifindex>` (up) with fq at its root; with `index`, as that interface
/// index (indexes are per namespace: one program shared by several workloads' namespaces
/// redirects to the same index in each).
pub fn create_ifb(
    for_ifindex: u32,
    horizon: Duration,
    index: Option<u32>,
) -> Result<Ifb, QdiscError> {
    let name = format!("chaos-ifb{for_ifindex}");
    let io_err = |source| QdiscError::Io {
        iface: name.clone(),
        source,
    };
    let create = Rtnl::open().and_then(|mut rtnl| {
        let mut message = ifb_message(&name);
        message.header.index = index.unwrap_or(0);
        let ifb = RouteNetlinkMessage::NewLink(message);
        rtnl.request(ifb, NLM_F_CREATE | NLM_F_EXCL)
    });
    match create {
        Ok(_) => {}
        // The kernel's "Unknown device type".
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Err(QdiscError::NoIfb),
        Err(e) => return Err(io_err(e)),
    }
    let ifindex = netns::if_index(&name).ok_or_else(|| {
        io_err(io::Error::new(
            io::ErrorKind::NotFound,
            "the new device has no index",
        ))
    })?;
    let ifb = Ifb { name, ifindex };
    if let Err(e) = install_fq(&ifb.name, ifindex, horizon) {
        // Do not leave a half-made device behind; the fq error is the one to report.
        if let Err(del) = ifb.delete() {
            tracing::warn!("deleting the ifb after a failed fq: {del}");
        }
        return Err(e);
    }
    Ok(ifb)
}

impl Ifb {
    /// Deletes the device and, with it, its qdisc.
    pub fn delete(self) -> io::Result<()> {
        delete_link(&mut Rtnl::open()?, self.ifindex)
    }
}

/// The request for an `ifb` device called `name`, up.
fn ifb_message(name: &str) -> LinkMessage {
    let mut link = LinkMessage::default();
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]),
    ];
    link
}

/// Deletes the link `ifindex` (an ifb chaos made).
pub(crate) fn delete_link(rtnl: &mut Rtnl, ifindex: u32) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    rtnl.request(RouteNetlinkMessage::DelLink(link), 0)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    fn emitted(message: &impl Emitable) -> Vec<u8> {
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        bytes
    }

    #[test]
    fn fq_request_is_what_the_kernel_expects() {
        let message = fq_message(7, Duration::from_millis(2_500));
        let expected = [
            // struct tcmsg: family and padding, ifindex, handle ca05:, parent TC_H_ROOT, info.
            &[0u8, 0, 0, 0][..],
            &7i32.to_ne_bytes(),
            &0xca05_0000u32.to_ne_bytes(),
            &u32::MAX.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            // TCA_KIND "fq", padded to 4 bytes.
            &7u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            b"fq\0\0",
            // TCA_OPTIONS, holding four attributes.
            &36u16.to_ne_bytes(),
            &2u16.to_ne_bytes(),
            // TCA_FQ_PLIMIT, TCA_FQ_FLOW_PLIMIT, TCA_FQ_HORIZON (us): u32 each.
            &8u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            &1_000_000u32.to_ne_bytes(),
            &8u16.to_ne_bytes(),
            &2u16.to_ne_bytes(),
            &1_000_000u32.to_ne_bytes(),
            &8u16.to_ne_bytes(),
            &14u16.to_ne_bytes(),
            &2_500_000u32.to_ne_bytes(),
            // TCA_FQ_HORIZON_DROP: u8 0, padded.
            &5u16.to_ne_bytes(),
            &15u16.to_ne_bytes(),
            &[0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(emitted(&message), expected);
        // The crate reads back what root_qdisc looks at (fq's options it keeps opaque).
        let parsed = TcMessage::parse(&expected[..]).unwrap();
        assert_eq!(parsed.header, message.header);
        assert_eq!(parsed.attributes[0], TcAttribute::Kind("fq".to_owned()));
    }

    #[test]
    fn fq_horizon_saturates() {
        let message = fq_message(1, Duration::from_secs(u64::MAX));
        let horizon = DefaultNla::new(TCA_FQ_HORIZON, u32::MAX.to_ne_bytes().to_vec());
        let TcAttribute::Options(options) = &message.attributes[1] else {
            panic!("no options in {message:?}");
        };
        assert!(options.contains(&TcOption::Other(horizon)));
    }

    #[test]
    fn ifb_request_is_what_the_kernel_expects() {
        let expected = [
            // struct ifinfomsg: family and padding, type, index, flags IFF_UP, change IFF_UP.
            &[0u8, 0][..],
            &0u16.to_ne_bytes(),
            &0i32.to_ne_bytes(),
            &1u32.to_ne_bytes(),
            &1u32.to_ne_bytes(),
            // IFLA_IFNAME, NUL-terminated and padded.
            &15u16.to_ne_bytes(),
            &3u16.to_ne_bytes(),
            b"chaos-ifb7\0\0",
            // IFLA_LINKINFO holding IFLA_INFO_KIND "ifb".
            &12u16.to_ne_bytes(),
            &18u16.to_ne_bytes(),
            &8u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            b"ifb\0",
        ]
        .concat();
        assert_eq!(emitted(&ifb_message("chaos-ifb7")), expected);
    }

    #[test]
    fn qdisc_handles() {
        let message = qdisc_message(3, TcHandle::CLSACT, 0xffff_0000);
        assert_eq!(u32::from(message.header.parent), 0xffff_fff1);
        assert_eq!(
            message.header.handle,
            TcHandle {
                major: 0xffff,
                minor: 0
            }
        );
        assert_eq!(message.header.index, 3);
    }
}
