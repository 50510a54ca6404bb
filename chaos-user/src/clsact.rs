//! The `clsact` qdisc that netlink `cls_bpf` attachments need (kernels before 6.6, or
//! `--attach netlink`). chaos adds it only when missing and then removes it again, so the
//! interface is left as found; a clsact that was already there is never touched.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::programs::tc::{self, TcError};

/// `TC_H_CLSACT`: the clsact qdisc's parent id.
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// clsact's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;

/// A clsact qdisc chaos added, to remove with [`AddedClsact::remove`].
#[derive(Debug)]
pub struct AddedClsact {
    pub iface: String,
    ifindex: i32,
}

/// Adds clsact to `iface` unless it has one. `Some` when chaos added it.
pub fn ensure(iface: &str, ifindex: u32) -> Result<Option<AddedClsact>, TcError> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(Some(AddedClsact {
            iface: iface.to_owned(),
            ifindex: ifindex as i32,
        })),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `struct tcmsg` from linux/rtnetlink.h.
#[repr(C)]
struct TcMsg {
    family: u8,
    pad1: u8,
    pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

#[repr(C)]
struct DelQdiscRequest {
    header: libc::nlmsghdr,
    tc: TcMsg,
}

impl AddedClsact {
    /// Deletes the qdisc (and with it any filter still on it) over rtnetlink.
    pub fn remove(self) -> io::Result<()> {
        // SAFETY: plain socket(2); the fd is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let request = DelQdiscRequest {
            header: libc::nlmsghdr {
                nlmsg_len: size_of::<DelQdiscRequest>() as u32,
                nlmsg_type: libc::RTM_DELQDISC,
                nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                nlmsg_seq: 1,
                nlmsg_pid: 0,
            },
            tc: TcMsg {
                family: libc::AF_UNSPEC as u8,
                pad1: 0,
                pad2: 0,
                ifindex: self.ifindex,
                handle: CLSACT_HANDLE,
                parent: TC_H_CLSACT,
                info: 0,
            },
        };
        // SAFETY: sending a fully initialised `repr(C)` request of the stated length.
        let sent = unsafe {
            libc::send(
                sock.as_raw_fd(),
                (&raw const request).cast(),
                size_of::<DelQdiscRequest>(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 1024];
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let got =
            unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        ack_error(&reply[..got as usize])
    }
}

/// Reads the `nlmsgerr` acknowledging our request: error 0 is success.
fn ack_error(reply: &[u8]) -> io::Result<()> {
    let header = size_of::<libc::nlmsghdr>();
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    let msg_type = u16::from_ne_bytes(reply.get(4..6).ok_or_else(short)?.try_into().unwrap());
    if msg_type != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {msg_type}"),
        ));
    }
    let code = i32::from_ne_bytes(
        reply
            .get(header..header + 4)
            .ok_or_else(short)?
            .try_into()
            .unwrap(),
    );
    match code {
        0 => Ok(()),
        negative => Err(io::Error::from_raw_os_error(-negative)),
    }
}
