//! The rule language of `chaos run`: space-separated `key=value` pairs.
//!
//! ```text
//! match:  dir=egress|ingress  proto=tcp|udp|any  dport=N|N-M  sport=N|N-M  dst=CIDR[,CIDR..]
//!         src=CIDR[,CIDR..]
//! faults: drop=P  delay=DURATION  jitter=DURATION  dist=uniform|normal|pareto|paretonormal
//!         delay-p=P  rate=RATE  reorder=yes|no  duplicate=P  corrupt=P  loss=ge:P/R[/H[/K]]
//! conns:  conn-p=P  refuse=yes  hang=yes  reset=yes  after=DURATION  after-bytes=N
//!         connect-delay=DURATION  max-conns=N
//! replay: seed=N
//! ```

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use chaos_common::rules::DIST_MAX_SIGMA;
use ipnet::IpNet;
use thiserror::Error;

use crate::duration::{self, Bounds, DurationError};

mod conn;

pub use conn::{ConnFaults, GilbertElliott, Trigger};

/// Why a rule string was refused. Each names the key and the offending text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("empty rule: give at least one key=value, e.g. 'proto=udp dport=9000 drop=30%'")]
    Empty,
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    #[error("unknown key '{0}' (known: {known})", known = KEYS.join(", "))]
    UnknownKey(String),
    #[error("key '{0}' given twice")]
    Duplicate(&'static str),
    #[error("dir={0}: expected egress or ingress")]
    Direction(String),
    #[error("proto={0}: expected tcp, udp or any")]
    Protocol(String),
    #[error("{key}={value}: ports are 1-65535")]
    Port { key: &'static str, value: String },
    #[error("{key}={value}: range start is above its end")]
    InvertedRange { key: &'static str, value: String },
    #[error("{key}={value}: not a CIDR such as 198.18.0.0/15 or 2001:db8::/32")]
    Cidr { key: &'static str, value: String },
    #[error("{key}={value}: host bits set; did you mean {key}={network}?")]
    HostBits {
        key: &'static str,
        value: String,
        network: IpNet,
    },
    #[error("{key}: {count} prefixes; at most {MAX_LIST} per field")]
    TooManyPrefixes { key: &'static str, count: usize },
    #[error("src={src} and dst={dst} are of different IP families: no packet can match")]
    MixedFamilies { src: IpNet, dst: IpNet },
    #[error("{key}={value}: expected a probability from 0 to 1, or a percentage from 0% to 100%")]
    Probability { key: &'static str, value: String },
    #[error("{key}={value}: {reason}")]
    Duration {
        key: &'static str,
        value: String,
        reason: DurationError,
    },
    #[error("dist={0}: expected uniform, normal, pareto or paretonormal")]
    Distribution(String),
    #[error("rate={0}: expected a positive rate such as 500kbit, 10mbit or 2gbit")]
    Rate(String),
    #[error("{key}={value}: expected yes or no")]
    YesNo { key: &'static str, value: String },
    #[error("{0} needs delay=...")]
    NeedsDelay(&'static str),
    #[error("dist needs jitter=...")]
    DistNeedsJitter,
    #[error("{0}=yes needs proto=tcp: only TCP connections can be refused or reset")]
    NeedsTcp(&'static str),
    #[error("{0} needs proto=tcp or proto=udp: a connection is a TCP connection or a UDP flow")]
    NeedsConnProtocol(&'static str),
    #[error("{0} needs hang=yes or reset=yes: it says when they begin")]
    NeedsHangOrReset(&'static str),
    #[error("{a} and {b} cannot be combined: {why}")]
    Conflict {
        a: &'static str,
        b: &'static str,
        why: &'static str,
    },
    #[error("seed={0}: expected a whole number from 0 to {max}", max = u64::MAX)]
    Seed(String),
    #[error("{key}={value}: expected a whole number from 1 to {max}")]
    Count {
        key: &'static str,
        value: String,
        max: u64,
    },
    #[error(
        "loss={0}: expected ge:P/R[/H[/K]] (Gilbert-Elliott: P good to bad, R bad to good, H delivered when bad (default 0), K delivered when good (default 1))"
    )]
    LossModel(String),
    #[error(
        "delay {delay:?} + {DIST_MAX_SIGMA} x jitter {jitter:?} exceeds fq's horizon limit of {limit_s} s (a 32-bit microsecond count)"
    )]
    Horizon {
        delay: Duration,
        jitter: Duration,
        limit_s: u64,
    },
}

/// Every key of the language, in the order `--help` lists them: the parser's one list.
pub const KEYS: [&str; 26] = [
    "dir",
    "proto",
    "dport",
    "sport",
    "dst",
    "src",
    "drop",
    "delay",
    "jitter",
    "dist",
    "delay-p",
    "rate",
    "reorder",
    "duplicate",
    "corrupt",
    "loss",
    "conn-p",
    "refuse",
    "hang",
    "reset",
    "after",
    "after-bytes",
    "connect-delay",
    "max-conns",
    "seed",
    "force",
];

/// The longest time fq can hold a packet: its horizon is a u32 of microseconds, and iproute2
/// silently wraps larger values, so chaos refuses delays past it.
pub const MAX_HORIZON: Duration = Duration::from_micros(u32::MAX as u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    /// TCP, UDP, and (for rules without ports) every other IP protocol.
    Any,
}

/// An inclusive port range; a single port is `start == end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// A probability in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probability(f64);

impl Probability {
    pub const ZERO: Self = Self(0.0);
    pub const ONE: Self = Self(1.0);

    pub fn new(p: f64) -> Option<Self> {
        (0.0..=1.0).contains(&p).then_some(Self(p))
    }

    pub const fn get(self) -> f64 {
        self.0
    }
}

/// Shape of the delay spread around `delay`, as netem's `distribution`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Distribution {
    /// Evenly within delay ± jitter.
    #[default]
    Uniform,
    /// Normal with standard deviation `jitter`.
    Normal,
    /// Pareto (heavy tail), scaled to standard deviation `jitter`.
    Pareto,
    /// A mix of normal and Pareto, as netem's paretonormal.
    ParetoNormal,
}

/// Added latency: every delayed packet departs `delay` (± the spread) later.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delay {
    pub delay: Duration,
    pub jitter: Duration,
    pub dist: Distribution,
    /// Share of matched packets that are delayed.
    pub probability: Probability,
}

/// A rate in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub u64);

impl Rate {
    pub const fn bytes_per_second(self) -> u64 {
        self.0 / 8
    }
}

/// One parsed rule. The original text is kept for reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub text: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub dport: Option<PortRange>,
    pub sport: Option<PortRange>,
    /// Destination prefixes, any of which matches (empty: any address).
    pub dst: Vec<IpNet>,
    /// Source prefixes, any of which matches (empty: any address).
    pub src: Vec<IpNet>,
    pub drop: Probability,
    pub delay: Option<Delay>,
    pub rate: Option<Rate>,
    /// Let delayed packets be overtaken by later ones of the same flow (default: keep order).
    pub reorder: bool,
    /// Allow matching ports the guard rails exclude (see `guard`).
    pub force: bool,
    /// Connection faults: what happens to the flows the rule chooses.
    pub conn: Option<ConnFaults>,
    /// Share of packets sent twice.
    pub duplicate: Probability,
    /// Share of packets with one payload bit flipped (checksum kept valid).
    pub corrupt: Probability,
    /// Burst loss instead of `drop`.
    pub loss: Option<GilbertElliott>,
    /// Every random draw of the rule derives from this, the packet's flow and its index in the
    /// flow, instead of the kernel's generator: the same traffic meets the same faults.
    pub seed: Option<u64>,
}

impl Rule {
    pub fn has_ports(&self) -> bool {
        self.dport.is_some() || self.sport.is_some()
    }

    /// Whether the rule sets departure times, and so needs fq on its interface.
    pub fn needs_fq(&self) -> bool {
        self.delay.is_some()
            || self.rate.is_some()
            || self.conn.is_some_and(|c| c.connect_delay.is_some())
    }

    /// Whether any fault of the rule is left to chance: only such a rule has draws to seed.
    pub fn has_randomness(&self) -> bool {
        let chance = |p: Probability| p.get() > 0.0 && p.get() < 1.0;
        chance(self.drop)
            || self
                .delay
                .is_some_and(|d| chance(d.probability) || !d.jitter.is_zero())
            || self.conn.is_some_and(|c| chance(c.probability))
            || chance(self.duplicate)
            || chance(self.corrupt)
            || self.loss.is_some()
    }

    /// The rule with `seed` if it has none of its own and draws at all, its text saying so, so
    /// that what is printed replays; otherwise the rule as it is.
    pub fn seeded_with(mut self, seed: u64) -> Self {
        if self.seed.is_none() && self.has_randomness() {
            self.seed = Some(seed);
            self.text = format!("{} seed={seed}", self.text);
        }
        self
    }

    /// The longest a packet of this rule waits in fq from its delay alone: delay plus the
    /// distribution tables' widest entry.
    pub fn max_delay(&self) -> Duration {
        let connect = self
            .conn
            .and_then(|c| c.connect_delay)
            .unwrap_or(Duration::ZERO);
        connect
            + self
                .delay
                .map_or(Duration::ZERO, |d| d.delay + d.jitter * DIST_MAX_SIGMA)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut direction = None;
        let mut protocol = None;
        let mut dport = None;
        let mut sport = None;
        let mut dst = None;
        let mut src = None;
        let mut drop = None;
        let mut delay = None;
        let mut jitter = None;
        let mut dist = None;
        let mut delay_p = None;
        let mut rate = None;
        let mut reorder = None;
        let mut force = None;
        let mut seed = None;
        let mut faults = conn::FaultKeys::default();
        let mut any = false;
        for pair in text.split_whitespace() {
            any = true;
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| RuleError::NotKeyValue(pair.to_owned()))?;
            match key {
                "dir" => set(&mut direction, "dir", parse_direction(value)?)?,
                "proto" => set(&mut protocol, "proto", parse_protocol(value)?)?,
                "dport" => set(&mut dport, "dport", parse_ports("dport", value)?)?,
                "sport" => set(&mut sport, "sport", parse_ports("sport", value)?)?,
                "dst" => set(&mut dst, "dst", parse_cidrs("dst", value)?)?,
                "src" => set(&mut src, "src", parse_cidrs("src", value)?)?,
                "drop" => set(&mut drop, "drop", parse_probability("drop", value)?)?,
                "delay" => set(&mut delay, "delay", parse_duration("delay", value)?)?,
                "jitter" => set(&mut jitter, "jitter", parse_duration("jitter", value)?)?,
                "dist" => set(&mut dist, "dist", parse_distribution(value)?)?,
                "delay-p" => set(
                    &mut delay_p,
                    "delay-p",
                    parse_probability("delay-p", value)?,
                )?,
                "rate" => set(&mut rate, "rate", parse_rate(value)?)?,
                "reorder" => set(&mut reorder, "reorder", parse_yes_no("reorder", value)?)?,
                "force" => set(&mut force, "force", parse_yes_no("force", value)?)?,
                "seed" => set(&mut seed, "seed", parse_seed(value)?)?,
                other => {
                    if !faults.take(other, value)? {
                        return Err(RuleError::UnknownKey(other.to_owned()));
                    }
                }
            }
        }
        if !any {
            return Err(RuleError::Empty);
        }
        let (src, dst): (Vec<IpNet>, Vec<IpNet>) =
            (src.unwrap_or_default(), dst.unwrap_or_default());
        // A family only one side names can never match: refuse a rule where no family is
        // on both sides, since no packet could match it.
        let has = |nets: &[IpNet], v4: bool| nets.iter().any(|n| matches!(n, IpNet::V4(_)) == v4);
        let shared = |v4: bool| has(&src, v4) && has(&dst, v4);
        if !src.is_empty() && !dst.is_empty() && !shared(true) && !shared(false) {
            return Err(RuleError::MixedFamilies {
                src: src[0],
                dst: dst[0],
            });
        }
        let delay = match delay {
            Some(delay) => Some(Delay {
                delay,
                jitter: jitter.unwrap_or(Duration::ZERO),
                dist: match (dist, jitter) {
                    (Some(_), None) => return Err(RuleError::DistNeedsJitter),
                    (dist, _) => dist.unwrap_or_default(),
                },
                probability: delay_p.unwrap_or(Probability::ONE),
            }),
            None if jitter.is_some() => return Err(RuleError::NeedsDelay("jitter")),
            None if delay_p.is_some() => return Err(RuleError::NeedsDelay("delay-p")),
            None if dist.is_some() => return Err(RuleError::NeedsDelay("dist")),
            None if reorder.is_some() => return Err(RuleError::NeedsDelay("reorder")),
            None => None,
        };
        if let Some(d) = delay
            && d.delay + d.jitter * DIST_MAX_SIGMA > MAX_HORIZON
        {
            return Err(RuleError::Horizon {
                delay: d.delay,
                jitter: d.jitter,
                limit_s: MAX_HORIZON.as_secs(),
            });
        }
        let protocol = protocol.unwrap_or(Protocol::Any);
        let faults = faults.finish(protocol, drop)?;
        if let Some(delay) = faults.conn.and_then(|c| c.connect_delay)
            && delay > MAX_HORIZON
        {
            return Err(RuleError::Horizon {
                delay,
                jitter: Duration::ZERO,
                limit_s: MAX_HORIZON.as_secs(),
            });
        }
        Ok(Self {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            direction: direction.unwrap_or(Direction::Egress),
            protocol,
            dport,
            sport,
            dst,
            src,
            drop: drop.unwrap_or(Probability::ZERO),
            delay,
            rate,
            reorder: reorder.unwrap_or(false),
            force: force.unwrap_or(false),
            conn: faults.conn,
            duplicate: faults.duplicate,
            corrupt: faults.corrupt,
            loss: faults.loss,
            seed,
        })
    }
}

fn set<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), RuleError> {
    if slot.replace(value).is_some() {
        return Err(RuleError::Duplicate(key));
    }
    Ok(())
}

fn parse_direction(value: &str) -> Result<Direction, RuleError> {
    match value {
        "egress" => Ok(Direction::Egress),
        "ingress" => Ok(Direction::Ingress),
        _ => Err(RuleError::Direction(value.to_owned())),
    }
}

fn parse_protocol(value: &str) -> Result<Protocol, RuleError> {
    match value {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "any" => Ok(Protocol::Any),
        _ => Err(RuleError::Protocol(value.to_owned())),
    }
}

fn parse_ports(key: &'static str, value: &str) -> Result<PortRange, RuleError> {
    let port = |s: &str| match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(RuleError::Port {
            key,
            value: value.to_owned(),
        }),
    };
    let (start, end) = match value.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(value)?;
            (p, p)
        }
    };
    if start > end {
        return Err(RuleError::InvertedRange {
            key,
            value: value.to_owned(),
        });
    }
    Ok(PortRange { start, end })
}

/// Most prefixes one field of one rule may list.
pub const MAX_LIST: usize = 65536;

/// A comma-separated list of CIDRs or bare addresses, sorted and without repeats.
fn parse_cidrs(key: &'static str, value: &str) -> Result<Vec<IpNet>, RuleError> {
    let mut nets = value
        .split(',')
        .map(|item| parse_cidr(key, item))
        .collect::<Result<Vec<_>, _>>()?;
    nets.sort_unstable();
    nets.dedup();
    if nets.len() > MAX_LIST {
        return Err(RuleError::TooManyPrefixes {
            key,
            count: nets.len(),
        });
    }
    Ok(nets)
}

/// A CIDR, or a bare address meaning that one host.
fn parse_cidr(key: &'static str, value: &str) -> Result<IpNet, RuleError> {
    let net = match value.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => value
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| RuleError::Cidr {
                key,
                value: value.to_owned(),
            })?,
    };
    if net.trunc() != net {
        return Err(RuleError::HostBits {
            key,
            value: value.to_owned(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

fn parse_probability(key: &'static str, value: &str) -> Result<Probability, RuleError> {
    let err = || RuleError::Probability {
        key,
        value: value.to_owned(),
    };
    let p = match value.strip_suffix('%') {
        Some(percent) => percent.parse::<f64>().map_err(|_| err())? / 100.0,
        None => value.parse::<f64>().map_err(|_| err())?,
    };
    // `new` also refuses NaN: it is not inside any range.
    Probability::new(p).ok_or_else(err)
}

/// A duration in chaos's one syntax (see `crate::duration`); zero is allowed.
fn parse_duration(key: &'static str, value: &str) -> Result<Duration, RuleError> {
    duration::parse(value, Bounds::ANY).map_err(|reason| RuleError::Duration {
        key,
        value: value.to_owned(),
        reason,
    })
}

fn parse_distribution(value: &str) -> Result<Distribution, RuleError> {
    match value {
        "uniform" => Ok(Distribution::Uniform),
        "normal" => Ok(Distribution::Normal),
        "pareto" => Ok(Distribution::Pareto),
        "paretonormal" => Ok(Distribution::ParetoNormal),
        _ => Err(RuleError::Distribution(value.to_owned())),
    }
}

/// tc's units: `bit`, `kbit`, `mbit`, `gbit` (bits per second) and `bps`, `kbps`, `mbps`,
/// `gbps` (bytes per second), with decimal multipliers.
fn parse_rate(value: &str) -> Result<Rate, RuleError> {
    let err = || RuleError::Rate(value.to_owned());
    let lower = value.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let bits_per_unit = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(err()),
    };
    let bits = number * bits_per_unit;
    // At least one byte per second; at most what a u64 of bits holds comfortably.
    if !(8.0..=1e15).contains(&bits) {
        return Err(err());
    }
    Ok(Rate(bits.round() as u64))
}

/// Decimal only: the seed is copied from what chaos printed, which is decimal.
fn parse_seed(value: &str) -> Result<u64, RuleError> {
    // `parse` alone would take a leading '+'.
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::Seed(value.to_owned()));
    }
    value.parse().map_err(|_| RuleError::Seed(value.to_owned()))
}

fn parse_yes_no(key: &'static str, value: &str) -> Result<bool, RuleError> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(RuleError::YesNo {
            key,
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Rule, RuleError> {
        s.parse()
    }

    #[test]
    fn full_rule() {
        let r = parse("dir=ingress proto=udp dport=9000 sport=1000-2000 dst=198.18.0.2/32 src=198.18.0.0/15 drop=30%").unwrap();
        assert_eq!(r.direction, Direction::Ingress);
        assert_eq!(r.protocol, Protocol::Udp);
        assert_eq!(
            r.dport,
            Some(PortRange {
                start: 9000,
                end: 9000
            })
        );
        assert_eq!(
            r.sport,
            Some(PortRange {
                start: 1000,
                end: 2000
            })
        );
        assert_eq!(r.dst, vec!["198.18.0.2/32".parse::<IpNet>().unwrap()]);
        assert_eq!(r.src, vec!["198.18.0.0/15".parse::<IpNet>().unwrap()]);
        assert!((r.drop.get() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn defaults() {
        let r = parse("drop=0.5").unwrap();
        assert_eq!(r.direction, Direction::Egress);
        assert_eq!(r.protocol, Protocol::Any);
        assert_eq!((r.dport, r.sport), (None, None));
        assert!(r.dst.is_empty() && r.src.is_empty());
    }

    #[test]
    fn bare_address_is_a_host_prefix() {
        let r = parse("dst=2001:db8::1").unwrap();
        assert_eq!(r.dst, vec!["2001:db8::1/128".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn errors_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "",
                "empty rule: give at least one key=value, e.g. 'proto=udp dport=9000 drop=30%'",
            ),
            ("drop", "'drop' is not key=value"),
            (
                "color=red",
                "unknown key 'color' (known: dir, proto, dport, sport, dst, src, drop, delay, jitter, dist, delay-p, rate, reorder, duplicate, corrupt, loss, conn-p, refuse, hang, reset, after, after-bytes, connect-delay, max-conns, seed, force)",
            ),
            ("drop=1 drop=0", "key 'drop' given twice"),
            ("dir=sideways", "dir=sideways: expected egress or ingress"),
            ("proto=icmp", "proto=icmp: expected tcp, udp or any"),
            ("dport=0", "dport=0: ports are 1-65535"),
            ("dport=65536", "dport=65536: ports are 1-65535"),
            ("sport=-5", "sport=-5: ports are 1-65535"),
            (
                "dport=9001-9000",
                "dport=9001-9000: range start is above its end",
            ),
            (
                "dst=198.18.0.0/33",
                "dst=198.18.0.0/33: not a CIDR such as 198.18.0.0/15 or 2001:db8::/32",
            ),
            (
                "src=nonsense",
                "src=nonsense: not a CIDR such as 198.18.0.0/15 or 2001:db8::/32",
            ),
            (
                "drop=1.5",
                "drop=1.5: expected a probability from 0 to 1, or a percentage from 0% to 100%",
            ),
            (
                "drop=-1%",
                "drop=-1%: expected a probability from 0 to 1, or a percentage from 0% to 100%",
            ),
            (
                "drop=101%",
                "drop=101%: expected a probability from 0 to 1, or a percentage from 0% to 100%",
            ),
            (
                "drop=NaN",
                "drop=NaN: expected a probability from 0 to 1, or a percentage from 0% to 100%",
            ),
            (
                "delay=1 delay-p=2",
                "delay=1: '1' is not a duration (examples: 200us, 50ms, 1.5s, 5m, 1h30m)",
            ),
            (
                "delay=5ms delay-p=2",
                "delay-p=2: expected a probability from 0 to 1, or a percentage from 0% to 100%",
            ),
            (
                "delay=-5ms",
                "delay=-5ms: '-5ms' is not a duration (examples: 200us, 50ms, 1.5s, 5m, 1h30m)",
            ),
            (
                "delay=5h",
                "delay 18000s + 8 x jitter 0ns exceeds fq's horizon limit of 4294 s (a 32-bit microsecond count)",
            ),
            (
                "delay=5ms jitter=x",
                "jitter=x: 'x' is not a duration (examples: 200us, 50ms, 1.5s, 5m, 1h30m)",
            ),
            (
                "delay=5ms jitter=1ms dist=gauss",
                "dist=gauss: expected uniform, normal, pareto or paretonormal",
            ),
            (
                "rate=fast",
                "rate=fast: expected a positive rate such as 500kbit, 10mbit or 2gbit",
            ),
            (
                "rate=0mbit",
                "rate=0mbit: expected a positive rate such as 500kbit, 10mbit or 2gbit",
            ),
            (
                "rate=10mbit/s",
                "rate=10mbit/s: expected a positive rate such as 500kbit, 10mbit or 2gbit",
            ),
            (
                "delay=5ms reorder=maybe",
                "reorder=maybe: expected yes or no",
            ),
            ("force=1", "force=1: expected yes or no"),
            (
                "drop=1% seed=-1",
                "seed=-1: expected a whole number from 0 to 18446744073709551615",
            ),
            (
                "seed=18446744073709551616",
                "seed=18446744073709551616: expected a whole number from 0 to 18446744073709551615",
            ),
            (
                "seed=0x10",
                "seed=0x10: expected a whole number from 0 to 18446744073709551615",
            ),
            (
                "seed=",
                "seed=: expected a whole number from 0 to 18446744073709551615",
            ),
            ("seed=1 seed=1", "key 'seed' given twice"),
            ("jitter=5ms", "jitter needs delay=..."),
            ("delay-p=50%", "delay-p needs delay=..."),
            ("reorder=yes", "reorder needs delay=..."),
            ("delay=5ms dist=normal", "dist needs jitter=..."),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), *want, "rule {text:?}");
        }
    }

    #[test]
    fn the_unknown_key_error_lists_every_key_the_parser_takes() {
        let err = parse("colour=red").unwrap_err().to_string();
        for key in KEYS {
            assert!(err.contains(key), "{err} misses {key}");
            let refused = parse(&format!("{key}=?")).unwrap_err();
            assert!(
                !matches!(refused, RuleError::UnknownKey(_)),
                "{key} is listed but unknown to the parser"
            );
        }
    }

    #[test]
    fn delay_jitter_rate() {
        let r = parse("proto=tcp dport=6379 drop=5% delay=200ms jitter=50ms delay-p=20% dist=normal rate=10mbit reorder=yes").unwrap();
        let d = r.delay.unwrap();
        assert_eq!(d.delay, Duration::from_millis(200));
        assert_eq!(d.jitter, Duration::from_millis(50));
        assert_eq!(d.dist, Distribution::Normal);
        assert!((d.probability.get() - 0.2).abs() < 1e-12);
        assert_eq!(r.rate, Some(Rate(10_000_000)));
        assert!(r.reorder && r.needs_fq());
        let r = parse("delay=1.5s").unwrap();
        assert_eq!(r.delay.unwrap().delay, Duration::from_millis(1500));
        assert_eq!(r.delay.unwrap().probability, Probability::ONE);
        assert_eq!(r.delay.unwrap().dist, Distribution::Uniform);
        assert_eq!(
            parse("delay=200us").unwrap().delay.unwrap().delay,
            Duration::from_micros(200)
        );
        assert_eq!(parse("rate=500kbit").unwrap().rate, Some(Rate(500_000)));
        assert_eq!(parse("rate=2GBIT").unwrap().rate, Some(Rate(2_000_000_000)));
        assert_eq!(parse("rate=1mbps").unwrap().rate, Some(Rate(8_000_000)));
        assert!(!parse("drop=1").unwrap().needs_fq());
    }

    #[test]
    fn delays_beyond_the_fq_horizon_are_refused() {
        assert!(parse("delay=4000s").is_ok());
        assert!(matches!(
            parse("delay=4295s"),
            Err(RuleError::Horizon { .. })
        ));
        assert!(matches!(
            parse("delay=4000s jitter=100s"),
            Err(RuleError::Horizon { .. })
        ));
    }

    #[test]
    fn host_bits_and_mixed_families() {
        assert!(matches!(
            parse("dst=198.18.0.5/24"),
            Err(RuleError::HostBits { .. })
        ));
        assert!(matches!(
            parse("src=198.18.0.0/15 dst=2001:db8::/32"),
            Err(RuleError::MixedFamilies { .. })
        ));
        let msg = parse("dst=198.18.0.5/24").unwrap_err().to_string();
        assert!(msg.contains("dst=198.18.0.0/24"), "{msg}");
        // A family on both sides is enough; the other family's prefixes never match.
        assert!(parse("src=198.18.0.0/15,2001:db8::/32 dst=2001:db8::2").is_ok());
    }

    #[test]
    fn prefix_lists() {
        let r = parse("dst=198.18.0.3,198.18.0.2/32,2001:db8::/64,198.18.0.3").unwrap();
        let want: Vec<IpNet> = ["198.18.0.2/32", "198.18.0.3/32", "2001:db8::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(r.dst, want, "sorted, repeats gone");
        assert!(matches!(
            parse("dst=198.18.0.2,"),
            Err(RuleError::Cidr { value, .. }) if value.is_empty()
        ));
        assert!(matches!(
            parse("src=198.18.0.0/24,198.18.1.5/24"),
            Err(RuleError::HostBits { .. })
        ));
    }

    #[test]
    fn seeds() {
        let r = parse("proto=udp drop=30%  seed=7").unwrap();
        assert_eq!(r.seed, Some(7));
        assert_eq!(
            r.to_string(),
            "proto=udp drop=30% seed=7",
            "shown back as given"
        );
        assert_eq!(
            parse(&format!("drop=1% seed={}", u64::MAX)).unwrap().seed,
            Some(u64::MAX)
        );
        assert_eq!(parse("drop=1%").unwrap().seed, None);
    }

    #[test]
    fn a_run_seed_goes_to_rules_that_draw_and_have_none() {
        let seeded = |text: &str| parse(text).unwrap().seeded_with(42);
        let r = seeded("proto=udp drop=30%");
        assert_eq!(
            (r.seed, r.text.as_str()),
            (Some(42), "proto=udp drop=30% seed=42")
        );
        assert_eq!(
            seeded("drop=30% seed=7").seed,
            Some(7),
            "its own seed stays"
        );
        for draws in [
            "delay=5ms jitter=1ms",
            "delay=5ms delay-p=50%",
            "proto=tcp conn-p=50% hang=yes",
            "duplicate=1%",
            "corrupt=1%",
            "loss=ge:1%/30%",
        ] {
            assert_eq!(seeded(draws).seed, Some(42), "{draws}");
        }
        for certain in [
            "drop=100%",
            "drop=0",
            "delay=5ms",
            "rate=1mbit",
            "proto=tcp refuse=yes",
        ] {
            let r = seeded(certain);
            assert_eq!(
                (r.seed, r.text.as_str()),
                (None, certain),
                "nothing to seed"
            );
        }
    }
}
