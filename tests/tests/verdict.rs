//! Verdicts of the real program on crafted packets, through BPF_PROG_TEST_RUN (as root).

use aya::programs::{TestRun as _, TestRunOptions};
use chaos_common::RuleCounters;
use chaos_user::{
    datapath::Datapath,
    guard::{DEFAULT_EXCLUDED_PORTS, Guard},
    rule::{Direction, Rule},
    ruleset::RuleSetBuilder,
};
use netlab::{assert_binomial, monotonic_ns};

/// TC_ACT_UNSPEC: no decision, the next program or filter runs.
const PASS: u32 = u32::MAX;
/// TC_ACT_REDIRECT: the drop path (redirect to ifindex 0).
const DROP: u32 = 7;

const V4_CLIENT: [u8; 4] = [198, 18, 0, 1];
const V4_SERVER: [u8; 4] = [198, 18, 0, 2];
const V4_OTHER: [u8; 4] = [198, 18, 0, 3];
const V6_CLIENT: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_SERVER: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

struct Harness {
    datapath: Datapath,
    rules: u32,
}

impl Harness {
    fn new(rules: &[&str]) -> Self {
        let datapath = Datapath::load().expect("load the program (run as root)");
        let mut me = Self { datapath, rules: 0 };
        me.apply(rules);
        me
    }

    fn apply(&mut self, rules: &[&str]) {
        let rules: Vec<Rule> = rules.iter().map(|r| r.parse().unwrap()).collect();
        self.rules = rules.len() as u32;
        let set = RuleSetBuilder::new(&Guard::default())
            .rules(rules)
            .build()
            .unwrap();
        self.datapath.apply(&set).unwrap();
    }

    fn run(&mut self, dir: Direction, packet: &[u8], ctx: Option<&[u8]>, repeat: u32) -> u32 {
        let prog = self.datapath.program(dir).unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = ctx;
        opts.repeat = repeat;
        prog.test_run(opts)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {packet:02x?}: {e}"))
            .return_value
    }

    /// Runs the egress program once: the verdict, the monotonic time just before the run, and
    /// the departure time the program stamped (None: not held, leaves at once).
    fn departure(&mut self, packet: &[u8]) -> (u32, u64, Option<u64>) {
        self.departure_in(packet, &skb_ctx(1))
    }

    /// As `departure`, with the skb fields of `ctx_in`.
    fn departure_in(&mut self, packet: &[u8], ctx_in: &[u8]) -> (u32, u64, Option<u64>) {
        let mut ctx_out = vec![0u8; ctx_in.len()];
        let prog = self.datapath.program(Direction::Egress).unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = Some(ctx_in);
        opts.ctx_out = Some(&mut ctx_out);
        let before = monotonic_ns();
        let verdict = prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value;
        let stamp = u64::from_ne_bytes(ctx_out[152..160].try_into().unwrap());
        (verdict, before, (stamp != 0).then_some(stamp))
    }

    fn egress(&mut self, packet: &[u8]) -> u32 {
        self.run(Direction::Egress, packet, None, 1)
    }

    fn counters(&self) -> Vec<RuleCounters> {
        self.datapath.counters(self.rules).unwrap()
    }
}

fn eth(ether_type: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    p.extend_from_slice(&ether_type.to_be_bytes());
    p
}

/// 802.1Q/802.1ad tags, outermost first, in front of `inner`.
fn vlan(tags: &[u16], inner: u16) -> Vec<u8> {
    let mut p = eth(tags[0]);
    for (i, _) in tags.iter().enumerate() {
        p.extend_from_slice(&100u16.to_be_bytes());
        let next = tags.get(i + 1).copied().unwrap_or(inner);
        p.extend_from_slice(&next.to_be_bytes());
    }
    p
}

fn l4(sport: u16, dport: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 16, 0, 0, 0, 0, 0, 0]);
    p
}

/// IPv4 header with `options` (a multiple of 4 bytes) and the raw flags+offset field.
fn ipv4(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = (20 + options.len()) / 4;
    let total = (20 + options.len() + payload.len()) as u16;
    let mut p = vec![0x40 | ihl as u8, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

/// IPv6 header; `ext` is a list of (header type, body) chained in order before `payload`.
fn ipv6(proto: u8, src: [u8; 16], dst: [u8; 16], ext: &[(u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
    let first = ext.first().map_or(proto, |(t, _)| *t);
    let mut body = Vec::new();
    for (i, (_, h)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |(t, _)| *t);
        body.push(next);
        body.extend_from_slice(&h[1..]);
    }
    body.extend_from_slice(payload);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&body);
    p
}

/// An 8-byte options header (hop-by-hop or destination options): length field 0, PadN.
fn opts_ext() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A fragment header with offset in 8-byte units and the more-fragments flag.
fn frag_ext(offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![0, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1]);
    h
}

fn udp4(dst: [u8; 4], dport: u16) -> Vec<u8> {
    [
        eth(0x0800),
        ipv4(IPPROTO_UDP, V4_CLIENT, dst, &[], 0, &l4(40000, dport)),
    ]
    .concat()
}

const V4_RULE: &str = "proto=udp dport=9000 dst=198.18.0.2/32 drop=1";

#[test]
fn ipv4_matches_port_protocol_and_prefix() {
    let mut h = Harness::new(&[V4_RULE]);
    assert_eq!(h.egress(&udp4(V4_SERVER, 9000)), DROP);
    assert_eq!(h.egress(&udp4(V4_SERVER, 9001)), PASS, "other port");
    assert_eq!(h.egress(&udp4(V4_OTHER, 9000)), PASS, "other host");
    let tcp = [
        eth(0x0800),
        ipv4(IPPROTO_TCP, V4_CLIENT, V4_SERVER, &[], 0, &l4(40000, 9000)),
    ]
    .concat();
    assert_eq!(h.egress(&tcp), PASS, "other protocol");
    assert_eq!(
        h.run(Direction::Ingress, &udp4(V4_SERVER, 9000), None, 1),
        PASS,
        "other direction"
    );
    let c = h.counters()[0];
    assert_eq!((c.matched_pkts, c.dropped_pkts, c.matched_segs), (1, 1, 1));
}

#[test]
fn ipv4_options_move_the_ports() {
    let mut h = Harness::new(&[V4_RULE]);
    // Options whose first bytes read as ports 40000 -> 9000: a parser ignoring IHL would drop
    // the packet below, whose real destination port is 9001.
    let mut options = l4(40000, 9000)[..4].to_vec();
    options.extend_from_slice(&[1, 1, 1, 1]);
    let decoy = [
        eth(0x0800),
        ipv4(
            IPPROTO_UDP,
            V4_CLIENT,
            V4_SERVER,
            &options,
            0,
            &l4(40000, 9001),
        ),
    ]
    .concat();
    assert_eq!(h.egress(&decoy), PASS);
    let real = [
        eth(0x0800),
        ipv4(
            IPPROTO_UDP,
            V4_CLIENT,
            V4_SERVER,
            &[1; 8],
            0,
            &l4(40000, 9000),
        ),
    ]
    .concat();
    assert_eq!(h.egress(&real), DROP);
}

#[test]
fn vlan_tags_are_looked_through() {
    let mut h = Harness::new(&[V4_RULE]);
    let payload = ipv4(IPPROTO_UDP, V4_CLIENT, V4_SERVER, &[], 0, &l4(40000, 9000));
    assert_eq!(
        h.egress(&[vlan(&[0x8100], 0x0800), payload.clone()].concat()),
        DROP,
        "802.1Q"
    );
    assert_eq!(
        h.egress(&[vlan(&[0x88a8, 0x8100], 0x0800), payload].concat()),
        DROP,
        "802.1ad + 802.1Q"
    );
}

#[test]
fn truncated_and_non_ip_packets_pass() {
    // A catch-all rule: anything parsed as IP would be dropped. (BPF_PROG_TEST_RUN itself
    // refuses packets shorter than their IP header, so truncation is tested past it.)
    let mut h = Harness::new(&["drop=1"]);
    let full = udp4(V4_SERVER, 9000);
    assert_eq!(h.egress(&full), DROP, "the catch-all rule is live");
    assert_eq!(
        h.egress(&full[..14 + 20 + 2]),
        PASS,
        "UDP header cut before the destination port"
    );
    let mut long_ihl = full.clone();
    long_ihl[14] = 0x4f;
    assert_eq!(h.egress(&long_ihl), PASS, "IHL pointing past the end");
    let v6 = [
        eth(0x86dd),
        ipv6(
            IPPROTO_UDP,
            V6_CLIENT,
            V6_SERVER,
            &[(0, opts_ext())],
            &l4(1, 2),
        ),
    ]
    .concat();
    assert_eq!(h.egress(&v6), DROP);
    assert_eq!(
        h.egress(&v6[..14 + 40 + 4]),
        PASS,
        "IPv6 extension header cut short"
    );
    let arp = [eth(0x0806), vec![0; 28]].concat();
    assert_eq!(h.egress(&arp), PASS, "ARP is not IP");
}

#[test]
fn later_fragments_match_only_portless_rules() {
    // Payload of a later fragment whose bytes happen to read as ports 40000 -> 9000.
    let later = [
        eth(0x0800),
        ipv4(
            IPPROTO_UDP,
            V4_CLIENT,
            V4_SERVER,
            &[],
            185,
            &l4(40000, 9000),
        ),
    ]
    .concat();
    let first = [
        eth(0x0800),
        ipv4(
            IPPROTO_UDP,
            V4_CLIENT,
            V4_SERVER,
            &[],
            0x2000,
            &l4(40000, 9000),
        ),
    ]
    .concat();
    let mut h = Harness::new(&[V4_RULE]);
    assert_eq!(h.egress(&later), PASS, "no ports in a later fragment");
    assert_eq!(h.egress(&first), DROP, "the first fragment has the ports");
    let mut h = Harness::new(&["dst=198.18.0.2/32 drop=1"]);
    assert_eq!(
        h.egress(&later),
        DROP,
        "a port-less rule covers every fragment"
    );
}

#[test]
fn ipv6_with_extension_headers_and_fragments() {
    let mut h = Harness::new(&["proto=udp dport=9000 dst=2001:db8::2/128 drop=1"]);
    let udp = l4(40000, 9000);
    let plain = [
        eth(0x86dd),
        ipv6(IPPROTO_UDP, V6_CLIENT, V6_SERVER, &[], &udp),
    ]
    .concat();
    assert_eq!(h.egress(&plain), DROP);
    let ext = [
        eth(0x86dd),
        ipv6(
            IPPROTO_UDP,
            V6_CLIENT,
            V6_SERVER,
            &[(0, opts_ext()), (60, opts_ext())],
            &udp,
        ),
    ]
    .concat();
    assert_eq!(h.egress(&ext), DROP, "hop-by-hop + destination options");
    let first = [
        eth(0x86dd),
        ipv6(
            IPPROTO_UDP,
            V6_CLIENT,
            V6_SERVER,
            &[(44, frag_ext(0, true))],
            &udp,
        ),
    ]
    .concat();
    assert_eq!(h.egress(&first), DROP, "first fragment");
    let later = [
        eth(0x86dd),
        ipv6(
            IPPROTO_UDP,
            V6_CLIENT,
            V6_SERVER,
            &[(44, frag_ext(10, false))],
            &udp,
        ),
    ]
    .concat();
    assert_eq!(h.egress(&later), PASS, "later fragment");
    let other_port = [
        eth(0x86dd),
        ipv6(IPPROTO_UDP, V6_CLIENT, V6_SERVER, &[], &l4(40000, 9001)),
    ]
    .concat();
    assert_eq!(h.egress(&other_port), PASS);
    let mut h = Harness::new(&[V4_RULE]);
    assert_eq!(h.egress(&plain), PASS, "an IPv4 prefix never matches IPv6");
}

#[test]
fn icmp_matches_only_portless_rules() {
    let icmp = [
        eth(0x0800),
        ipv4(
            IPPROTO_ICMP,
            V4_CLIENT,
            V4_SERVER,
            &[],
            0,
            &[8, 0, 0, 0, 0, 1, 0, 1],
        ),
    ]
    .concat();
    let mut h = Harness::new(&["proto=any dport=9000 drop=1"]);
    assert_eq!(h.egress(&icmp), PASS);
    let mut h = Harness::new(&["proto=any dst=198.18.0.2/32 drop=1"]);
    assert_eq!(h.egress(&icmp), DROP);
}

fn tcp4(sport: u16, dport: u16) -> Vec<u8> {
    [
        eth(0x0800),
        ipv4(IPPROTO_TCP, V4_CLIENT, V4_SERVER, &[], 0, &l4(sport, dport)),
    ]
    .concat()
}

#[test]
fn guarded_ports_are_kept_out_of_rules_without_force() {
    let texts = [
        "proto=tcp dport=22 drop=1 force=yes",
        "dst=198.18.0.2/32 drop=1",
    ];
    let rules: Vec<Rule> = texts.iter().map(|r| r.parse().unwrap()).collect();
    let guard = Guard::new(&DEFAULT_EXCLUDED_PORTS, &[7070]).unwrap();
    let set = RuleSetBuilder::new(&guard).rules(rules).build().unwrap();
    let mut h = Harness::new(&[]);
    h.datapath.apply(&set).unwrap();
    h.rules = 2;
    // Rule 0 may fault SSH (force=yes); rule 1, for everything to the host, leaves the
    // excluded and the protected ports alone, either way round, and only on TCP.
    assert_eq!(h.egress(&tcp4(40000, 22)), DROP);
    assert_eq!(h.egress(&tcp4(6443, 40000)), PASS);
    assert_eq!(h.egress(&tcp4(40000, 10250)), PASS);
    assert_eq!(h.egress(&tcp4(7070, 40000)), PASS);
    assert_eq!(h.egress(&tcp4(40000, 8080)), DROP);
    assert_eq!(h.egress(&udp4(V4_SERVER, 6443)), DROP);
    let c = h.counters();
    assert_eq!((c[0].matched_pkts, c[1].matched_pkts), (1, 2));
}

#[test]
fn first_matching_rule_decides() {
    let mut h = Harness::new(&[
        "dport=9000 drop=0",
        "dst=198.18.0.2/32 drop=1",
        "dport=9000-9010 drop=1",
    ]);
    assert_eq!(
        h.egress(&udp4(V4_SERVER, 9000)),
        PASS,
        "rule 0 wins and keeps the packet"
    );
    assert_eq!(h.egress(&udp4(V4_SERVER, 9001)), DROP, "rule 1");
    assert_eq!(h.egress(&udp4(V4_OTHER, 9005)), DROP, "rule 2");
    assert_eq!(h.egress(&udp4(V4_OTHER, 9011)), PASS, "past the range");
    let matched: Vec<u64> = h.counters().iter().map(|c| c.matched_pkts).collect();
    assert_eq!(matched, vec![1, 1, 1]);
}

#[test]
fn shorter_prefix_rule_matches_inside_a_longer_one() {
    // The trie answers with the /32 entry; it must carry the /15 rule too.
    let mut h = Harness::new(&[
        "dst=198.18.0.2/32 dport=1 drop=1",
        "dst=198.18.0.0/15 drop=1",
    ]);
    assert_eq!(h.egress(&udp4(V4_SERVER, 9000)), DROP);
    assert_eq!(h.counters()[1].matched_pkts, 1);
}

#[test]
fn new_rule_sets_replace_old_ones_whole() {
    let first = "dport=9000 dst=198.18.0.2/32 drop=1";
    let mut h = Harness::new(&[first]);
    assert_eq!(h.egress(&udp4(V4_SERVER, 9000)), DROP);
    h.apply(&["dport=9001 drop=1"]);
    assert_eq!(
        h.egress(&udp4(V4_SERVER, 9000)),
        PASS,
        "old port entry gone"
    );
    assert_eq!(h.egress(&udp4(V4_SERVER, 9001)), DROP);
}

/// Writes `first`, then a filler set, then `third` into the first set's generation again, and
/// sends 198.18.0.2:9000, which only a stale entry of `first` would drop.
fn stale_entry_case(third: &str) {
    let mut h = Harness::new(&["dport=9000 dst=198.18.0.2/32 drop=1"]);
    h.apply(&["dport=1 drop=0"]);
    h.apply(&[third]);
    assert_eq!(
        h.egress(&udp4(V4_SERVER, 9000)),
        PASS,
        "stale entry under {third:?}"
    );
}

#[test]
fn stale_prefix_entries_are_cleared() {
    // Port 9000 matches; the trie must miss for 198.18.0.2 (a stale /32 would hit).
    stale_entry_case("dst=10.0.0.0/8 dport=9000 drop=1");
}

#[test]
fn stale_port_entries_are_cleared() {
    // 198.18.0.2 is inside the /15; port 9000 must not match (a stale entry would).
    stale_entry_case("dport=9005 dst=198.18.0.0/15 drop=1");
}

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it: 192 bytes, `gso_segs` at offset 164.
fn skb_ctx(gso_segs: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx
}

/// `struct __sk_buff` of a GSO packet that takes `wire_len` bytes on the wire (`wire_len`
/// is the stack's `qdisc_pkt_len`: every segment with its own headers).
fn gso_ctx(gso_segs: u32, wire_len: u32) -> Vec<u8> {
    let mut ctx = skb_ctx(gso_segs);
    ctx[160..164].copy_from_slice(&wire_len.to_ne_bytes());
    ctx
}

#[test]
fn drop_probability_per_packet_and_per_gso_packet() {
    const RUNS: u32 = 20_000;
    let mut h = Harness::new(&["proto=udp drop=30%"]);
    h.run(Direction::Egress, &udp4(V4_SERVER, 9000), None, RUNS);
    let c = h.counters()[0];
    assert_eq!(c.matched_pkts, u64::from(RUNS));
    assert_binomial("test_run drop=30%", c.dropped_pkts, c.matched_pkts, 0.3);

    // A GSO packet of 40 segments is lost whole with p: 40 segments counted per packet.
    let mut h = Harness::new(&["proto=udp drop=30%"]);
    h.run(
        Direction::Egress,
        &udp4(V4_SERVER, 9000),
        Some(&skb_ctx(40)),
        RUNS,
    );
    let c = h.counters()[0];
    assert_eq!(
        c.matched_segs,
        40 * c.matched_pkts,
        "gso_segs read from the skb"
    );
    assert_binomial("test_run GSO drop=30%", c.dropped_pkts, c.matched_pkts, 0.3);
    assert_eq!(c.dropped_segs, 40 * c.dropped_pkts);
}

const MS: i64 = 1_000_000;

#[test]
fn delay_stamps_the_departure_time() {
    let mut h = Harness::new(&["proto=udp dport=9000 delay=50ms"]);
    let (verdict, before, stamp) = h.departure(&udp4(V4_SERVER, 9000));
    assert_eq!(verdict, PASS);
    let held = stamp.expect("a departure time") as i64 - before as i64;
    // The stamp is taken inside the run, a few microseconds after `before`.
    assert!((50 * MS..51 * MS).contains(&held), "held {held} ns");
    let (_, _, other) = h.departure(&udp4(V4_SERVER, 9001));
    assert_eq!(other, None, "other ports are not held");
    let c = h.counters()[0];
    assert_eq!((c.matched_pkts, c.delayed_pkts), (1, 1));
}

/// Samples of the added delay, one run each (reorder=yes: raw draws, no order clamp).
fn delay_samples(rule: &str, n: usize) -> Vec<f64> {
    let mut h = Harness::new(&[rule]);
    (0..n)
        .map(|_| {
            let (_, before, stamp) = h.departure(&udp4(V4_SERVER, 9000));
            stamp.map_or(0.0, |s| (s as i64 - before as i64) as f64 / MS as f64)
        })
        .collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (
        mean,
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt(),
    )
}

#[test]
fn jitter_follows_the_distribution() {
    const N: usize = 4000;
    // Uniform on 100 ± 40 ms: σ = 40/√3.
    let uniform = delay_samples("delay=100ms jitter=40ms reorder=yes", N);
    let (m, s) = mean_sd(&uniform);
    let want = 40.0 / 3f64.sqrt();
    assert!(
        (m - 100.0).abs() < 1.5 && (s - want).abs() < 0.1 * want,
        "uniform: mean {m} sd {s}"
    );
    assert!(
        uniform.iter().all(|d| (60.0..=140.1).contains(d)),
        "uniform stays within ± jitter"
    );
    // Normal: σ = jitter.
    let (m, s) = mean_sd(&delay_samples(
        "delay=100ms jitter=20ms dist=normal reorder=yes",
        N,
    ));
    assert!(
        (m - 100.0).abs() < 1.5 && (s - 20.0).abs() < 2.0,
        "normal: mean {m} sd {s}"
    );
    // Pareto: σ = jitter too, with most draws below the mean.
    let pareto = delay_samples("delay=100ms jitter=20ms dist=pareto reorder=yes", N);
    let (m, s) = mean_sd(&pareto);
    let below = pareto.iter().filter(|d| **d < 100.0).count();
    assert!(
        (m - 100.0).abs() < 3.0 && (s - 20.0).abs() < 4.0,
        "pareto: mean {m} sd {s}"
    );
    assert!(
        below > N / 2,
        "pareto is skewed: {below} of {N} below the mean"
    );
}

#[test]
fn delay_share_and_flow_order() {
    const N: u32 = 20_000;
    let mut h = Harness::new(&["delay=10ms delay-p=30% reorder=yes"]);
    h.run(
        Direction::Egress,
        &udp4(V4_SERVER, 9000),
        Some(&skb_ctx(1)),
        N,
    );
    assert_binomial(
        "delay-p=30%",
        h.counters()[0].delayed_pkts,
        u64::from(N),
        0.3,
    );

    // Without reorder=yes a flow's departures never go backwards, whatever the draws.
    let mut h = Harness::new(&["delay=50ms jitter=40ms delay-p=50%"]);
    let mut last = 0i64;
    let mut held_count = 0;
    for _ in 0..500 {
        let (_, _, stamp) = h.departure(&udp4(V4_SERVER, 9000));
        // Unstamped means "leaves at once": some time before the run returned.
        let departure = stamp.unwrap_or_else(monotonic_ns) as i64;
        assert!(
            departure >= last,
            "departure went back by {} ns",
            last - departure
        );
        last = departure;
        held_count += usize::from(stamp.is_some());
    }
    // Half the packets are delayed; most of the rest are held behind them.
    assert!(held_count > 250, "only {held_count} of 500 held");
}

#[test]
fn rate_paces_and_bounds_its_queue() {
    // 80 kbit/s = 100 µs a byte: each packet takes ~50 times longer to send than a test run,
    // so they queue and leave exactly one transmission time apart.
    let mut h = Harness::new(&["proto=udp rate=80kbit"]);
    let packet = udp4(V4_SERVER, 9000);
    let tx_ns = packet.len() as i64 * 100_000;
    let departures: Vec<i64> = (0..50)
        .map(|_| h.departure(&packet).2.unwrap_or(0) as i64)
        .collect();
    // The first leaves at once (unstamped); the rest queue behind it.
    for w in departures[1..].windows(2) {
        let gap = w[1] - w[0];
        assert!((gap - tx_ns).abs() <= 1, "gap {gap} ns, want {tx_ns}");
    }
    // 8 kbit/s: 46 ms a packet. Of a burst of 20, packets 0-10 start within the 500 ms queue
    // limit (10 x 46 = 460 ms); the rest would wait longer and are dropped.
    let mut h = Harness::new(&["proto=udp rate=8kbit"]);
    let verdicts: Vec<u32> = (0..20).map(|_| h.departure(&packet).0).collect();
    assert_eq!(verdicts, [[PASS; 11].as_slice(), &[DROP; 9]].concat());
    let c = h.counters()[0];
    assert_eq!((c.rate_dropped_pkts, c.dropped_pkts), (9, 0));
}

#[test]
fn rate_charges_the_wire_length_of_gso_packets() {
    // A super-packet of 3 segments whose wire bytes (3 sets of headers) exceed skb->len: the
    // link is busy for the wire bytes, as netem and Cilium's EDT charge (skb->len ran a bulk
    // TCP flow 4-5 % over its rate).
    let mut h = Harness::new(&["proto=udp rate=80kbit"]);
    let packet = udp4(V4_SERVER, 9000);
    let wire = 3 * packet.len() as u32;
    let ctx = gso_ctx(3, wire);
    let departures: Vec<i64> = (0..20)
        .map(|_| h.departure_in(&packet, &ctx).2.unwrap_or(0) as i64)
        .collect();
    let tx_ns = i64::from(wire) * 100_000;
    for w in departures[1..].windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (gap - tx_ns).abs() <= 1,
            "gap {gap} ns, want {tx_ns} ({wire} wire bytes, not {} skb bytes)",
            packet.len()
        );
    }
    // The counters still count the packet's own bytes.
    assert_eq!(h.counters()[0].matched_bytes, 20 * packet.len() as u64);
}

/// A UDP packet of exactly `len` bytes on the wire.
fn udp4_sized(len: usize) -> Vec<u8> {
    let payload = vec![0u8; len - 14 - 20 - 8];
    let mut udp = l4(40000, 9000)[..8].to_vec();
    udp.extend_from_slice(&payload);
    [
        eth(0x0800),
        ipv4(IPPROTO_UDP, V4_CLIENT, V4_SERVER, &[], 0, &udp),
    ]
    .concat()
}

/// `repeat` back-to-back runs queue on the rule's virtual link: the last departure is
/// `repeat - 1` transmission times after the first, which left about when the runs began.
fn paced_span(rule: &str, len: usize, repeat: u32) -> (i64, i64) {
    let mut h = Harness::new(&[rule]);
    let packet = udp4_sized(len);
    let ctx_in = skb_ctx(1);
    let mut ctx_out = vec![0u8; ctx_in.len()];
    let before = monotonic_ns() as i64;
    let prog = h.datapath.program(Direction::Egress).unwrap();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&packet);
    opts.ctx_in = Some(&ctx_in);
    opts.ctx_out = Some(&mut ctx_out);
    opts.repeat = repeat;
    prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    let after = monotonic_ns() as i64;
    let last = u64::from_ne_bytes(ctx_out[152..160].try_into().unwrap()) as i64;
    assert_eq!(
        h.counters()[0].rate_dropped_pkts,
        0,
        "{rule}: nothing over the queue"
    );
    (last - before, last - after)
}

#[test]
fn rate_is_exact_from_100kbit_to_gigabits() {
    // 2 Gbit/s, 1500-byte packets: 6 µs each; 20,000 runs take far less than 120 ms.
    let (from_start, from_end) = paced_span("proto=udp rate=2gbit", 1500, 20_000);
    let want = 19_999 * 6_000;
    // The first packet left when the runs began (at most a millisecond after `before`), and the
    // link was never idle: it was still busy when the runs ended.
    assert!(from_end > 0, "the runs outpaced the link");
    assert!(
        (want..want + 1_000_000).contains(&from_start),
        "2gbit: last departure {from_start} ns after start, want {want}"
    );
    // 100 kbit/s, 1500-byte packets: 120 ms each; 5 fit in the 500 ms queue (480 ms).
    let (from_start, _) = paced_span("proto=udp rate=100kbit", 1500, 5);
    let want = 4 * 120_000_000;
    assert!(
        (from_start - want).abs() < 1_000_000,
        "100kbit: {from_start} ns, want {want}"
    );
}

#[test]
fn a_prefix_list_matches_any_of_its_hosts_and_networks() {
    let mut h = Harness::new(&["proto=udp dst=198.18.0.3,198.18.1.0/24,2001:db8::2 drop=1"]);
    assert_eq!(
        h.egress(&udp4(V4_SERVER, 9000)),
        PASS,
        "198.18.0.2 is not listed"
    );
    assert_eq!(h.egress(&udp4(V4_OTHER, 9000)), DROP, "a listed host");
    assert_eq!(
        h.egress(&udp4([198, 18, 1, 77], 9000)),
        DROP,
        "a listed network"
    );
    let v6 = |dst: [u8; 16]| {
        [
            eth(0x86dd),
            ipv6(IPPROTO_UDP, V6_CLIENT, dst, &[], &l4(40000, 9000)),
        ]
        .concat()
    };
    assert_eq!(h.egress(&v6(V6_SERVER)), DROP, "the listed IPv6 host");
    assert_eq!(h.egress(&v6(V6_CLIENT)), PASS);
    assert_eq!(h.counters()[0].matched_pkts, 3);
}

/// Rule `i` takes UDP port 9000 + i to a prefix of `lens[i]` bits holding `inside`: written as
/// rule text, so prefixes past the hashed lengths go to the trie.
fn nested_prefix_rules(inside: &str, lens: &[u8]) -> Vec<String> {
    let addr: std::net::IpAddr = inside.parse().unwrap();
    lens.iter()
        .enumerate()
        .map(|(i, len)| {
            let net = ipnet::IpNet::new(addr, *len).unwrap().trunc();
            format!("proto=udp dport={} dst={net} drop=1", 9000 + i)
        })
        .collect()
}

#[test]
fn every_prefix_length_matches_whether_hashed_or_in_the_trie() {
    // Eleven lengths: the six longest are hashed, the rest (down to /0) are in the trie, and
    // a packet must see every rule whose prefix holds its address, from either side.
    let lens = [32, 30, 28, 26, 24, 22, 20, 18, 17, 16, 0];
    let rules = nested_prefix_rules("198.18.0.2", &lens);
    let mut h = Harness::new(&rules.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, len) in lens.iter().enumerate() {
        let port = 9000 + i as u16;
        assert_eq!(
            h.egress(&udp4(V4_SERVER, port)),
            DROP,
            "/{len} holds the host"
        );
        // 198.18.64.1 is outside 198.18.0.0/18 and longer, inside /17, /16 and /0.
        let want = if *len <= 17 { DROP } else { PASS };
        assert_eq!(h.egress(&udp4([198, 18, 64, 1], port)), want, "/{len}");
        // 198.19.0.1 is only in 0.0.0.0/0.
        let want = if *len == 0 { DROP } else { PASS };
        assert_eq!(h.egress(&udp4([198, 19, 0, 1], port)), want, "/{len}");
    }

    let lens = [128, 120, 112, 96, 80, 64, 48, 33, 32];
    let rules = nested_prefix_rules("2001:db8::2", &lens);
    h.apply(&rules.iter().map(String::as_str).collect::<Vec<_>>());
    let v6 = |dst: [u8; 16], dport: u16| {
        [
            eth(0x86dd),
            ipv6(IPPROTO_UDP, V6_CLIENT, dst, &[], &l4(40000, dport)),
        ]
        .concat()
    };
    // 2001:db8:0:1::2 differs from the server in bit 63: inside /48 and shorter only.
    let mut near = V6_SERVER;
    near[7] = 1;
    for (i, len) in lens.iter().enumerate() {
        let port = 9000 + i as u16;
        assert_eq!(
            h.egress(&v6(V6_SERVER, port)),
            DROP,
            "/{len} holds the host"
        );
        let want = if *len <= 48 { DROP } else { PASS };
        assert_eq!(h.egress(&v6(near, port)), want, "/{len}");
    }
}

#[test]
fn a_zero_length_prefix_can_be_hashed() {
    let mut h = Harness::new(&[
        "proto=udp dport=9000 dst=198.18.0.2/32 drop=1",
        "proto=udp dport=9001 dst=0.0.0.0/0 drop=1",
    ]);
    assert_eq!(h.egress(&udp4([198, 19, 0, 1], 9001)), DROP);
    assert_eq!(h.egress(&udp4([198, 19, 0, 1], 9000)), PASS);
    assert_eq!(h.egress(&udp4(V4_SERVER, 9001)), DROP);
}
