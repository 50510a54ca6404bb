//! Rule sets of a given size for the scale runs, compiled from rule text as users write it.
//!
//! A rule set holds at most 64 rules (one bit each in a `RuleMask`), so the larger counts are
//! prefixes: the rules' `dst=` lists. They sit in the test networks right beside the addresses
//! the bench looks up (198.18.0.0/16, 2001:db8::/112): dense, the worst case for an LPM trie,
//! whatever a table keeps them in.

use chaos_user::{
    guard::Guard,
    rule::Rule,
    ruleset::{RuleSet, RuleSetBuilder},
};
use ipnet::{Ipv4Net, Ipv6Net};

/// Destination port of the rule the bench's packets hit.
pub const HIT_PORT: u16 = 9000;
/// Destination port no rule matches.
pub const MISS_PORT: u16 = 7000;

/// Addresses of the rule the bench's packets hit, and of the sender.
pub const SERVER_V4: [u8; 4] = [198, 18, 0, 2];
pub const CLIENT_V4: [u8; 4] = [198, 18, 0, 1];
pub const SERVER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// What the first rule (the one the bench's packets hit) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// drop=0: the whole match path runs, the packet passes.
    Pass,
    /// drop=100%.
    Drop,
    /// drop=30%: one draw from the kernel's generator per packet.
    Chance,
    /// drop=30% seed=7: one draw from the seed, after counting the packet in its flow.
    SeededChance,
    /// delay=10ms: the departure-time path runs (EDT stamp, flow order).
    Delay,
    /// hang=yes after=1h: a connection rule (TCP or UDP only). Its packets go through the fault
    /// program and the connection table; within the hour an open connection's packets pass.
    Conn,
}

/// The faults of [`Fault::Conn`].
pub const CONN_FAULT: &str = "hang=yes after=1h";

/// What the destination prefixes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// /32 and /128 hosts.
    Hosts,
    /// /30 and /126 networks, rule 0's the one holding the server.
    Nets,
}

/// `rules` rules (1..=64) whose tables hold `prefixes` destination hosts of each family in all.
/// Rule 0 matches UDP to `HIT_PORT` at `SERVER_V4` or `SERVER_V6` (`v6`); the others match
/// other ports and hosts.
pub fn rule_set(rules: usize, prefixes: usize, fault: Fault, v6: bool) -> RuleSet {
    rule_set_shaped(rules, prefixes, fault, v6, Shape::Hosts)
}

/// [`rule_set`] with destination prefixes of `shape`.
pub fn rule_set_shaped(
    rules: usize,
    prefixes: usize,
    fault: Fault,
    v6: bool,
    shape: Shape,
) -> RuleSet {
    build(rules, prefixes, fault, v6, shape, "udp")
}

/// [`rule_set`] with rule 0 matching TCP (to `HIT_PORT`) instead of UDP.
pub fn rule_set_tcp(rules: usize, prefixes: usize, fault: Fault, v6: bool) -> RuleSet {
    build(rules, prefixes, fault, v6, Shape::Hosts, "tcp")
}

/// [`rule_set`] (IPv4 hosts, drop=0) with rule 0 taking TCP as well as UDP.
pub fn rule_set_tcp_and_udp(rules: usize, prefixes: usize) -> RuleSet {
    build(rules, prefixes, Fault::Pass, false, Shape::Hosts, "any")
}

/// Rule 0 matches `proto` (with its port, both TCP and UDP for `any`).
fn build(
    rules: usize,
    prefixes: usize,
    fault: Fault,
    v6: bool,
    shape: Shape,
    proto: &str,
) -> RuleSet {
    assert!((1..=64).contains(&rules), "1..=64 rules");
    let server = match (v6, shape) {
        (true, Shape::Hosts) => "2001:db8::2/128",
        (false, Shape::Hosts) => "198.18.0.2/32",
        (true, Shape::Nets) => "2001:db8::/126",
        (false, Shape::Nets) => "198.18.0.0/30",
    };
    let fault = match fault {
        Fault::Pass => "drop=0",
        Fault::Drop => "drop=100%",
        Fault::Chance => "drop=30%",
        Fault::SeededChance => "drop=30% seed=7",
        Fault::Delay => "delay=10ms",
        Fault::Conn => CONN_FAULT,
    };
    // The rules' own prefixes count towards the total; the rest are spread over the rules'
    // lists (rule 0's only when it is alone). Hosts from .17 (clear of the client and server);
    // networks from the second /30 or /126.
    let extra = prefixes.saturating_sub(rules);
    let (step, len4, len6, mut at) = match shape {
        Shape::Hosts => (1u32, 32, 128, 16u32),
        Shape::Nets => (4, 30, 126, 0),
    };
    let mut lists: Vec<Vec<String>> = vec![Vec::new(); rules];
    for k in 0..extra {
        at += step;
        let [_, _, a, b] = at.to_be_bytes();
        let net = if v6 {
            let mut addr = SERVER_V6;
            addr[12] = (at >> 24) as u8;
            addr[13] = (at >> 16) as u8;
            addr[14] = a;
            addr[15] = b;
            Ipv6Net::new(addr.into(), len6).unwrap().trunc().to_string()
        } else {
            assert!(
                at < 1 << 16,
                "at most 65,000 IPv4 prefixes beside the server"
            );
            Ipv4Net::new([198, 18, a, b].into(), len4)
                .unwrap()
                .trunc()
                .to_string()
        };
        let owner = if rules == 1 { 0 } else { 1 + k % (rules - 1) };
        lists[owner].push(net);
    }
    let with = |own: String, list: &[String]| {
        std::iter::once(own)
            .chain(list.iter().cloned())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut texts = vec![format!(
        "proto={proto} dport={HIT_PORT} dst={} {fault}",
        with(server.to_owned(), &lists[0])
    )];
    for (i, list) in lists.iter().enumerate().skip(1) {
        let own = if v6 {
            format!("2001:db8:1::{i:x}/128")
        } else {
            format!("198.19.0.{i}/32")
        };
        texts.push(format!(
            "proto=udp dport={} dst={} drop=1",
            10000 + i,
            with(own, list)
        ));
    }
    let parsed: Vec<Rule> = texts.iter().map(|t| t.parse().unwrap()).collect();
    RuleSetBuilder::new(&Guard::default())
        .rules(parsed)
        .build()
        .expect("the rule set compiles")
}
