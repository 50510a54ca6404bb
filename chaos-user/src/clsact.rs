//! The `clsact` qdisc that netlink `cls_bpf` attachments need (kernels before 6.6, or
//! `--attach netlink`). chaos adds it only when missing and then removes it again, so the
//! interface is left as found; a clsact that was already there is never touched.

use std::io;

use aya::programs::tc::{self, TcError};
use netlink_packet_route::tc::TcHandle;

use crate::{qdisc, rtnl::Rtnl};

/// clsact's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;

/// A clsact qdisc chaos added, to remove with [`AddedClsact::remove`].
#[derive(Debug)]
pub struct AddedClsact {
    pub iface: String,
    ifindex: u32,
}

/// Adds clsact to `iface` unless it has one. `Some` when chaos added it.
pub fn ensure(iface: &str, ifindex: u32) -> Result<Option<AddedClsact>, TcError> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(Some(AddedClsact {
            iface: iface.to_owned(),
            ifindex,
        })),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(None),
        Err(e) => Err(e),
    }
}

impl AddedClsact {
    /// Deletes the qdisc (and with it any filter still on it).
    pub fn remove(self) -> io::Result<()> {
        qdisc::delete_qdisc(
            &mut Rtnl::open()?,
            self.ifindex,
            TcHandle::CLSACT,
            CLSACT_HANDLE,
        )
    }
}
