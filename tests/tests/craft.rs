//! The packets the connection faults make, byte for byte, through BPF_PROG_TEST_RUN (as root):
//! a cut segment, a refusal's RST, a reset's RST, a flipped bit, each with lengths and
//! checksums a receiving kernel takes. The runs happen in a throwaway namespace: a copy the
//! program sends (`bpf_clone_redirect`) goes to that namespace's loopback, nowhere else.

use aya::programs::{TestRun as _, TestRunOptions};
use chaos_user::{
    datapath::Datapath,
    guard::Guard,
    rule::{Direction, Rule},
    ruleset::RuleSetBuilder,
};
use netlab::{Lab, in_netns};

/// TC_ACT_UNSPEC: the packet goes on.
const PASS: u32 = u32::MAX;
/// TC_ACT_REDIRECT: sent elsewhere (a RST going back, or a silent drop).
const REDIRECT: u32 = 7;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const V4_A: [u8; 4] = [198, 18, 0, 1];
const V4_B: [u8; 4] = [198, 18, 0, 2];
const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// Ones'-complement sum of `bytes` as 16-bit big-endian words, folded.
fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// A TCP segment and its addresses, as built or as parsed back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    v6: bool,
    src: Vec<u8>,
    dst: Vec<u8>,
    macs: ([u8; 6], [u8; 6]),
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl Segment {
    fn new(v6: bool, seq: u32, ack: u32, flags: u8, options: &[u8], payload: &[u8]) -> Self {
        let (src, dst) = if v6 {
            (V6_A.to_vec(), V6_B.to_vec())
        } else {
            (V4_A.to_vec(), V4_B.to_vec())
        };
        Self {
            v6,
            src,
            dst,
            macs: (MAC_B, MAC_A),
            sport: 40000,
            dport: 8080,
            seq,
            ack,
            flags,
            options: options.to_vec(),
            payload: payload.to_vec(),
        }
    }

    fn pseudo(&self, tcp_len: usize) -> u32 {
        let mut p = [self.src.clone(), self.dst.clone()].concat();
        if self.v6 {
            p.extend_from_slice(&(tcp_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 6]);
        } else {
            p.extend_from_slice(&[0, 6]);
            p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        }
        sum(&p, 0)
    }

    /// The frame, with every checksum right.
    fn build(&self) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push((((20 + self.options.len()) / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(&self.options);
        tcp.extend_from_slice(&self.payload);
        let check = !sum(&tcp, self.pseudo(tcp.len())) as u16;
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
        let mut frame = [self.macs.0, self.macs.1].concat();
        if self.v6 {
            frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            frame.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            frame.extend_from_slice(&[6, 64]);
            frame.extend_from_slice(&self.src);
            frame.extend_from_slice(&self.dst);
        } else {
            frame.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
            ip.extend_from_slice(&self.src);
            ip.extend_from_slice(&self.dst);
            let check = !sum(&ip, 0) as u16;
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        frame.extend_from_slice(&tcp);
        frame
    }

    /// Parses a frame back, checking every length and checksum on the way.
    fn parse(frame: &[u8]) -> Self {
        let macs = (
            frame[..6].try_into().unwrap(),
            frame[6..12].try_into().unwrap(),
        );
        let v6 = frame[12..14] == [0x86, 0xdd];
        let (src, dst, tcp) = if v6 {
            let len = u16::from_be_bytes([frame[18], frame[19]]) as usize;
            assert_eq!(frame.len(), 54 + len, "IPv6 payload length");
            (frame[22..38].to_vec(), frame[38..54].to_vec(), &frame[54..])
        } else {
            let ip = &frame[14..34];
            assert_eq!(ip[0], 0x45, "plain IPv4 header");
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            assert_eq!(frame.len(), 14 + total, "IPv4 total length");
            assert_eq!(sum(ip, 0), 0xffff, "IPv4 header checksum");
            (ip[12..16].to_vec(), ip[16..20].to_vec(), &frame[34..])
        };
        let mut me = Self {
            v6,
            src,
            dst,
            macs,
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
            ack: u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
            flags: tcp[13],
            options: Vec::new(),
            payload: Vec::new(),
        };
        let doff = usize::from(tcp[12] >> 4) * 4;
        me.options = tcp[20..doff].to_vec();
        me.payload = tcp[doff..].to_vec();
        assert_eq!(
            sum(tcp, me.pseudo(tcp.len())),
            0xffff,
            "TCP checksum of {me:?}"
        );
        me
    }

    /// The same segment going the other way.
    fn reversed(&self) -> Self {
        Self {
            src: self.dst.clone(),
            dst: self.src.clone(),
            macs: (self.macs.1, self.macs.0),
            sport: self.dport,
            dport: self.sport,
            ..self.clone()
        }
    }
}

/// Runs the egress program on each of `frames` in turn under `rule`, in a throwaway namespace:
/// the verdict and the frame as the program left it, for each.
fn run(rule: &str, frames: Vec<Vec<u8>>) -> Vec<(u32, Vec<u8>)> {
    let lab = Lab::new("craft");
    let rule = rule.to_owned();
    in_netns(&lab.a, move || {
        let mut datapath = Datapath::load().expect("load the program (run as root)");
        let rules: Vec<Rule> = vec![rule.parse().unwrap()];
        let set = RuleSetBuilder::new(&Guard::default())
            .rules(rules)
            .build()
            .unwrap();
        datapath.apply(&set).unwrap();
        let prog = datapath.program(Direction::Egress).unwrap();
        frames
            .iter()
            .map(|frame| {
                let mut out = vec![0u8; frame.len() + 256];
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(frame);
                opts.data_out = Some(&mut out);
                let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
                out.truncate(r.data_size_out as usize);
                (r.return_value, out)
            })
            .collect()
    })
}

/// A SYN with the usual options is answered with a bare RST+ACK back to its sender that
/// acknowledges it, over IPv4 and IPv6.
#[test]
fn a_refused_syn_becomes_a_rst_back_to_its_sender() {
    let options = [
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    for v6 in [false, true] {
        let syn = Segment::new(v6, 1_000_000, 0, SYN, &options, &[]);
        let out = run("proto=tcp dport=8080 refuse=yes", vec![syn.build()]);
        assert_eq!(out[0].0, REDIRECT, "v6={v6}");
        let rst = Segment::parse(&out[0].1);
        let want = Segment {
            seq: 0,
            ack: 1_000_001,
            flags: RST | ACK,
            options: Vec::new(),
            ..syn.reversed()
        };
        assert_eq!(rst, want, "v6={v6}");
    }
}

/// after-bytes=100: a 300-byte segment past the handshake leaves with its first 100 bytes,
/// lengths and checksum fixed; the next one is lost (hang).
#[test]
fn a_segment_crossing_after_bytes_is_cut_to_the_byte() {
    for v6 in [false, true] {
        let syn = Segment::new(v6, 5000, 0, SYN, &[], &[]);
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let data = Segment::new(
            v6,
            5001,
            777,
            ACK | PSH,
            &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 8],
            &payload,
        );
        let more = Segment::new(v6, 5301, 777, ACK, &[], &payload[..50]);
        let out = run(
            "proto=tcp dport=8080 hang=yes after-bytes=100",
            vec![syn.build(), data.build(), more.build()],
        );
        assert_eq!(out[0].0, PASS, "the SYN passes");
        assert_eq!(out[1].0, PASS, "the cut segment goes on");
        let cut = Segment::parse(&out[1].1);
        assert_eq!(
            cut,
            Segment {
                payload: payload[..100].to_vec(),
                ..data.clone()
            },
            "v6={v6}"
        );
        assert_eq!(
            out[2].0, REDIRECT,
            "then the connection hangs (silent drop)"
        );
    }
}

/// reset: the packet that triggers it goes back to its sender as a RST carrying the sequence
/// number the sender expects next (the packet's acknowledgement).
#[test]
fn a_reset_sends_its_trigger_back_as_a_rst() {
    for v6 in [false, true] {
        let syn = Segment::new(v6, 9000, 0, SYN, &[], &[]);
        let data = Segment::new(v6, 9001, 424_242, ACK | PSH, &[], b"GET / HTTP/1.0\r\n\r\n");
        let out = run(
            "proto=tcp dport=8080 reset=yes",
            vec![syn.build(), data.build()],
        );
        assert_eq!(out[1].0, REDIRECT, "v6={v6}");
        let rst = Segment::parse(&out[1].1);
        let want = Segment {
            seq: 424_242,
            ack: 9001,
            flags: RST | ACK,
            payload: Vec::new(),
            ..data.reversed()
        };
        assert_eq!(rst, want, "v6={v6}");
    }
}
