//! rtnetlink for the links and qdiscs chaos manages. `netlink-packet-route` builds and parses
//! the messages, `netlink-sys` carries them; this is only the exchange: a request answered by
//! an acknowledgement, and a dump. aya covers program attachment.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ALIGNTO, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A route netlink socket, used by one thread at a time.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `message` with `flags` (`NLM_F_CREATE`, ...) and waits for its acknowledgement;
    /// returns what the kernel answered before it (the link of an `RTM_GETLINK`, say). A
    /// refusal comes back as the kernel's errno.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Everything a dump request (`RTM_GETLINK`, `RTM_GETQDISC`, ...) lists.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP)
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let request = serialize(message, flags, self.seq);
        self.socket.send(&request, 0)?;
        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            if read_replies(&datagram, self.seq, &mut replies)? {
                return Ok(replies);
            }
        }
    }
}

/// The request as sent: netlink header, then the message.
fn serialize(message: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// Adds the replies to request `seq` in one datagram to `replies`; true once the exchange is
/// over (acknowledged, or the dump done). Messages of other requests are skipped.
fn read_replies(
    mut datagram: &[u8],
    seq: u32,
    replies: &mut Vec<RouteNetlinkMessage>,
) -> io::Result<bool> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {e}"));
    while !datagram.is_empty() {
        let len = NetlinkBuffer::new_checked(datagram)
            .map_err(invalid)?
            .length() as usize;
        let message =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(datagram).map_err(invalid)?;
        datagram = datagram
            .get(len.next_multiple_of(usize::from(NLMSG_ALIGNTO))..)
            .unwrap_or_default();
        if message.header.sequence_number != seq {
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(reply) => replies.push(reply),
            NetlinkPayload::Done(_) => return Ok(true),
            // An acknowledgement is an error message without an error.
            NetlinkPayload::Error(e) if e.code.is_none() => return Ok(true),
            NetlinkPayload::Error(e) => return Err(e.to_io()),
            NetlinkPayload::Overrun(_) => {
                return Err(io::Error::other("netlink reply overran the socket buffer"));
            }
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};

    use super::*;

    fn qdisc(index: i32, kind: &str) -> RouteNetlinkMessage {
        let mut tc = TcMessage::with_index(index);
        tc.header.parent = TcHandle::ROOT;
        tc.attributes.push(TcAttribute::Kind(kind.to_owned()));
        RouteNetlinkMessage::NewQueueDiscipline(tc)
    }

    fn packet(payload: NetlinkPayload<RouteNetlinkMessage>, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_MULTIPART;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, payload);
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        bytes
    }

    fn error(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(code);
        NetlinkPayload::Error(e)
    }

    #[test]
    fn request_header() {
        let bytes = serialize(qdisc(3, "fq"), NLM_F_REQUEST | NLM_F_ACK, 7);
        let header = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(header.length() as usize, bytes.len());
        assert_eq!(header.message_type(), libc::RTM_NEWQDISC);
        assert_eq!(
            header.flags(),
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16
        );
        assert_eq!(header.sequence_number(), 7);
    }

    #[test]
    fn dump_reads_every_message_until_done() {
        // One datagram with two qdiscs, one of another request, then a second with the end.
        let mut first = packet(NetlinkPayload::InnerMessage(qdisc(1, "noqueue")), 4);
        first.extend(packet(NetlinkPayload::InnerMessage(qdisc(9, "other")), 3));
        first.extend(packet(NetlinkPayload::InnerMessage(qdisc(2, "fq")), 4));
        let mut replies = Vec::new();
        assert!(!read_replies(&first, 4, &mut replies).unwrap());
        let done = packet(NetlinkPayload::Done(DoneMessage::default()), 4);
        assert!(read_replies(&done, 4, &mut replies).unwrap());
        assert_eq!(replies, vec![qdisc(1, "noqueue"), qdisc(2, "fq")]);
    }

    #[test]
    fn acknowledgement_and_refusal() {
        let mut replies = Vec::new();
        assert!(read_replies(&packet(error(0), 5), 5, &mut replies).unwrap());
        assert!(replies.is_empty());
        // "Specified qdisc kind is unknown" comes back as -ENOENT.
        let e = read_replies(&packet(error(-libc::ENOENT), 5), 5, &mut replies).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // Another request's refusal is not this one's.
        assert!(!read_replies(&packet(error(-libc::EPERM), 4), 5, &mut replies).unwrap());
    }

    #[test]
    fn truncated_reply_is_an_error() {
        let bytes = packet(NetlinkPayload::InnerMessage(qdisc(1, "fq")), 1);
        let e = read_replies(&bytes[..bytes.len() - 4], 1, &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
