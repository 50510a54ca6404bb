//! A minimal rtnetlink client for the qdiscs chaos manages: requests acknowledged one by one,
//! and a dump of an interface's qdiscs. aya covers program attachment; this covers the rest.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `TC_H_ROOT`: the parent id of a root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// `TC_H_CLSACT`: the parent id of the clsact qdisc.
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
/// `TCA_KIND`: the qdisc's name.
const TCA_KIND: u16 = 1;
/// `TCA_OPTIONS`: the qdisc's nested options.
pub const TCA_OPTIONS: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;
const NLMSG_HDR: usize = size_of::<libc::nlmsghdr>();
const DONE: u16 = libc::NLMSG_DONE as u16;
const ERROR: u16 = libc::NLMSG_ERROR as u16;

/// `struct tcmsg` from linux/rtnetlink.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct TcMsg {
    family: u8,
    pad1: u8,
    pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

const TCMSG_LEN: usize = size_of::<TcMsg>();

/// Netlink attributes, appended in order; [`Attrs::nested`] wraps a group.
#[derive(Default)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    pub fn bytes(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.bytes(kind, &value.to_ne_bytes())
    }

    pub fn u8(&mut self, kind: u16, value: u8) -> &mut Self {
        self.bytes(kind, &[value])
    }

    pub fn nested(&mut self, kind: u16, inner: &Attrs) -> &mut Self {
        self.bytes(kind | NLA_F_NESTED, &inner.0)
    }
}

/// A qdisc as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
}

pub struct Rtnl {
    sock: OwnedFd,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
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
        Ok(Self { sock, seq: 0 })
    }

    /// Creates or replaces a qdisc of `kind` at `parent` with `handle` on `ifindex`.
    pub fn replace_qdisc(
        &mut self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        kind: &str,
        options: &Attrs,
    ) -> io::Result<()> {
        let mut attrs = Attrs::default();
        let mut name = kind.as_bytes().to_vec();
        name.push(0);
        attrs.bytes(TCA_KIND, &name).nested(TCA_OPTIONS, options);
        let flags = libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
        self.acked(
            libc::RTM_NEWQDISC,
            flags,
            tcmsg(ifindex, parent, handle),
            &attrs,
        )
    }

    /// Deletes the qdisc at `parent` with `handle` on `ifindex`.
    pub fn delete_qdisc(&mut self, ifindex: u32, parent: u32, handle: u32) -> io::Result<()> {
        self.acked(
            libc::RTM_DELQDISC,
            0,
            tcmsg(ifindex, parent, handle),
            &Attrs::default(),
        )
    }

    /// The qdiscs of `ifindex`.
    pub fn qdiscs(&mut self, ifindex: u32) -> io::Result<Vec<Qdisc>> {
        let seq = self.send(
            libc::RTM_GETQDISC,
            libc::NLM_F_DUMP,
            tcmsg(ifindex, 0, 0),
            &Attrs::default(),
        )?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let got = self.recv(&mut buf)?;
            let mut rest = &buf[..got];
            while rest.len() >= NLMSG_HDR {
                let (len, kind, msg_seq) = header(rest);
                let len = len.min(rest.len());
                let body = &rest[NLMSG_HDR.min(len)..len];
                if msg_seq == seq {
                    match kind {
                        DONE => return Ok(found),
                        ERROR => error_code(body)?,
                        libc::RTM_NEWQDISC => {
                            if let Some(q) = parse_qdisc(body).filter(|q| q.0 == ifindex) {
                                found.push(q.1);
                            }
                        }
                        _ => {}
                    }
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if len == 0 {
                    break;
                }
            }
        }
    }

    /// Creates an `ifb` device called `name`, up, and returns its index.
    pub fn create_ifb(&mut self, name: &str) -> io::Result<u32> {
        const IFLA_IFNAME: u16 = 3;
        const IFLA_LINKINFO: u16 = 18;
        const IFLA_INFO_KIND: u16 = 1;
        let mut ifname = name.as_bytes().to_vec();
        ifname.push(0);
        let mut info = Attrs::default();
        info.bytes(IFLA_INFO_KIND, b"ifb\0");
        let mut attrs = Attrs::default();
        attrs
            .bytes(IFLA_IFNAME, &ifname)
            .nested(IFLA_LINKINFO, &info);
        // struct ifinfomsg with IFF_UP set and changed.
        let mut ifinfo = [0u8; 16];
        ifinfo[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        ifinfo[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        let seq = self.send_raw(libc::RTM_NEWLINK, flags, &ifinfo, &attrs)?;
        self.wait_ack(seq)?;
        let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated string.
        match unsafe { libc::if_nametoindex(c.as_ptr()) } {
            0 => Err(io::Error::last_os_error()),
            index => Ok(index),
        }
    }

    /// Deletes the link `ifindex`.
    pub fn delete_link(&mut self, ifindex: u32) -> io::Result<()> {
        let mut ifinfo = [0u8; 16];
        ifinfo[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let seq = self.send_raw(libc::RTM_DELLINK, 0, &ifinfo, &Attrs::default())?;
        self.wait_ack(seq)
    }

    /// Every link of the namespace: (index, name).
    pub fn links(&mut self) -> io::Result<Vec<(u32, String)>> {
        const IFLA_IFNAME: u16 = 3;
        let ifinfo = [0u8; 16];
        let seq = self.send_raw(
            libc::RTM_GETLINK,
            libc::NLM_F_DUMP,
            &ifinfo,
            &Attrs::default(),
        )?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let got = self.recv(&mut buf)?;
            let mut rest = &buf[..got];
            while rest.len() >= NLMSG_HDR {
                let (len, kind, msg_seq) = header(rest);
                let len = len.min(rest.len());
                if len < NLMSG_HDR {
                    break;
                }
                let body = &rest[NLMSG_HDR..len];
                if msg_seq == seq {
                    match kind {
                        DONE => return Ok(found),
                        ERROR => error_code(body)?,
                        libc::RTM_NEWLINK if body.len() >= 16 => {
                            let index = u32::from_ne_bytes([body[4], body[5], body[6], body[7]]);
                            let mut attrs = &body[16..];
                            while attrs.len() >= 4 {
                                let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
                                let atype = u16::from_ne_bytes([attrs[2], attrs[3]]);
                                if alen < 4 || alen > attrs.len() {
                                    break;
                                }
                                if atype == IFLA_IFNAME {
                                    let name = String::from_utf8_lossy(&attrs[4..alen]);
                                    found.push((index, name.trim_end_matches('\0').to_owned()));
                                }
                                attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
                            }
                        }
                        _ => {}
                    }
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
    }

    /// The link type (`ARPHRD_*`) of `ifindex`.
    pub fn link_type(&mut self, ifindex: u32) -> io::Result<u16> {
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let mut ifinfo = [0u8; 16];
        ifinfo[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let seq = self.send_raw(libc::RTM_GETLINK, 0, &ifinfo, &Attrs::default())?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let got = self.recv(&mut buf)?;
            if got < NLMSG_HDR + 16 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short netlink reply",
                ));
            }
            let (len, kind, msg_seq) = header(&buf[..got]);
            if msg_seq != seq {
                continue;
            }
            if kind == ERROR {
                error_code(&buf[NLMSG_HDR..len.min(got)])?;
                continue;
            }
            if kind == libc::RTM_NEWLINK {
                return Ok(u16::from_ne_bytes([buf[NLMSG_HDR + 2], buf[NLMSG_HDR + 3]]));
            }
        }
    }

    fn send(
        &mut self,
        msg_type: u16,
        flags: libc::c_int,
        tc: TcMsg,
        attrs: &Attrs,
    ) -> io::Result<u32> {
        // SAFETY: TcMsg is plain repr(C) integers with explicit padding fields.
        let tc = unsafe { std::slice::from_raw_parts((&raw const tc).cast::<u8>(), TCMSG_LEN) };
        self.send_raw(msg_type, flags, tc, attrs)
    }

    /// Sends one request: header, the family's fixed header, attributes.
    fn send_raw(
        &mut self,
        msg_type: u16,
        flags: libc::c_int,
        family_header: &[u8],
        attrs: &Attrs,
    ) -> io::Result<u32> {
        self.seq += 1;
        let len = NLMSG_HDR + family_header.len() + attrs.0.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(
            &((libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16).to_ne_bytes(),
        );
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(family_header);
        msg.extend_from_slice(&attrs.0);
        // SAFETY: sending a buffer we own, of its own length.
        let sent = unsafe { libc::send(self.sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let got =
            unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(got as usize)
    }

    /// Sends a request and waits for its acknowledgement.
    fn acked(
        &mut self,
        msg_type: u16,
        flags: libc::c_int,
        tc: TcMsg,
        attrs: &Attrs,
    ) -> io::Result<()> {
        let seq = self.send(msg_type, flags, tc, attrs)?;
        self.wait_ack(seq)
    }

    /// Waits for the acknowledgement of request `seq`.
    fn wait_ack(&mut self, seq: u32) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let got = self.recv(&mut buf)?;
            if got < NLMSG_HDR {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short netlink reply",
                ));
            }
            let (len, kind, msg_seq) = header(&buf[..got]);
            if msg_seq == seq && kind == ERROR {
                return error_code(&buf[NLMSG_HDR..len.min(got)]);
            }
        }
    }
}

fn tcmsg(ifindex: u32, parent: u32, handle: u32) -> TcMsg {
    TcMsg {
        family: libc::AF_UNSPEC as u8,
        ifindex: ifindex as i32,
        handle,
        parent,
        ..TcMsg::default()
    }
}

/// (length, type, sequence) of the netlink message at the start of `buf`.
fn header(buf: &[u8]) -> (usize, u16, u32) {
    let u32_at = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
    let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
    (u32_at(0) as usize, kind, u32_at(8))
}

/// The `nlmsgerr` of an acknowledgement: error 0 is success.
fn error_code(body: &[u8]) -> io::Result<()> {
    let code = body
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink error"))?;
    match code {
        0 => Ok(()),
        negative => Err(io::Error::from_raw_os_error(-negative)),
    }
}

/// (ifindex, qdisc) of an RTM_NEWQDISC body.
fn parse_qdisc(body: &[u8]) -> Option<(u32, Qdisc)> {
    let tc = body.get(..TCMSG_LEN)?;
    let u32_at = |at: usize| u32::from_ne_bytes(tc[at..at + 4].try_into().unwrap());
    let (ifindex, handle, parent) = (u32_at(4), u32_at(8), u32_at(12));
    let mut attrs = &body[TCMSG_LEN..];
    let mut kind = String::new();
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes(attrs[0..2].try_into().unwrap()));
        let attr_type = u16::from_ne_bytes(attrs[2..4].try_into().unwrap());
        if len < 4 || len > attrs.len() {
            break;
        }
        if attr_type == TCA_KIND {
            kind = String::from_utf8_lossy(&attrs[4..len])
                .trim_end_matches('\0')
                .to_owned();
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    Some((
        ifindex,
        Qdisc {
            kind,
            handle,
            parent,
        },
    ))
}
