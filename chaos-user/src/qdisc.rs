//! The `fq` root qdisc that holds packets until the departure time the program stamps.
//!
//! chaos only replaces a root qdisc the kernel made by default (handle 0: noqueue on veth,
//! pfifo_fast, fq_codel, mq ...): deleting its own fq later makes the kernel put that default
//! back, exactly as it was. A root qdisc someone configured is refused, never replaced.

use std::{io, time::Duration};

use thiserror::Error;

use crate::rtnl::{Attrs, Rtnl, TC_H_ROOT};

/// Handle of chaos's fq, `ca05:`, so it can be told from anyone else's.
pub const CHAOS_FQ_HANDLE: u32 = 0xca05_0000;

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
    let root = rtnl
        .qdiscs(ifindex)
        .map_err(io_err)?
        .into_iter()
        .find(|q| q.parent == TC_H_ROOT);
    if let Some(root) = root
        && root.handle != 0
        && root.handle != CHAOS_FQ_HANDLE
    {
        return Err(QdiscError::CustomRoot {
            iface: iface.to_owned(),
            kind: root.kind,
            handle: root.handle >> 16,
        });
    }
    let mut options = Attrs::default();
    options
        .u32(TCA_FQ_PLIMIT, FQ_LIMIT_PACKETS)
        .u32(TCA_FQ_FLOW_PLIMIT, FQ_FLOW_LIMIT_PACKETS)
        .u32(
            TCA_FQ_HORIZON,
            horizon.as_micros().min(u128::from(u32::MAX)) as u32,
        )
        // Past the horizon, cap the departure time rather than drop: chaos sizes the horizon
        // to its rules, so anything beyond it is a rounding edge, not loss anyone asked for.
        .u8(TCA_FQ_HORIZON_DROP, 0);
    match rtnl.replace_qdisc(ifindex, TC_H_ROOT, CHAOS_FQ_HANDLE, "fq", &options) {
        Ok(()) => Ok(InstalledFq {
            iface: iface.to_owned(),
            ifindex,
        }),
        // The kernel's "Specified qdisc kind is unknown".
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(QdiscError::NoFq),
        Err(source) => Err(io_err(source)),
    }
}

impl InstalledFq {
    /// Deletes chaos's fq; the kernel attaches the interface's default root qdisc again.
    pub fn restore(self) -> io::Result<()> {
        Rtnl::open()?.delete_qdisc(self.ifindex, TC_H_ROOT, CHAOS_FQ_HANDLE)
    }
}

/// chaos's ifb for one interface: packets held on ingress wait in its root fq.
#[derive(Debug)]
pub struct Ifb {
    pub name: String,
    pub ifindex: u32,
}

/// Creates `chaos-ifb<ifindex>` (up) with fq at its root.
pub fn create_ifb(for_ifindex: u32, horizon: Duration) -> Result<Ifb, QdiscError> {
    let name = format!("chaos-ifb{for_ifindex}");
    let io_err = |source| QdiscError::Io {
        iface: name.clone(),
        source,
    };
    let ifindex = match Rtnl::open().and_then(|mut r| r.create_ifb(&name)) {
        Ok(index) => index,
        // The kernel's "Unknown device type".
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Err(QdiscError::NoIfb),
        Err(e) => return Err(io_err(e)),
    };
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
        Rtnl::open()?.delete_link(self.ifindex)
    }
}
