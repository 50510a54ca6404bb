//! The rule language of `chaos run`: space-separated `key=value` pairs.
//!
//! ```text
//! dir=egress|ingress  proto=tcp|udp|any  dport=N|N-M  sport=N|N-M  dst=CIDR  src=CIDR  drop=P
//! ```

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use thiserror::Error;

/// Why a rule string was refused. Each names the key and the offending text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("empty rule: give at least one key=value, e.g. 'proto=udp dport=9000 drop=30%'")]
    Empty,
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    #[error("unknown key '{0}' (known: dir, proto, dport, sport, dst, src, drop)")]
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
    #[error("src={src} and dst={dst} are of different IP families: no packet can match")]
    MixedFamilies { src: IpNet, dst: IpNet },
    #[error("drop={0}: expected a probability from 0 to 1, or a percentage from 0% to 100%")]
    Probability(String),
}

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

    pub fn new(p: f64) -> Option<Self> {
        (0.0..=1.0).contains(&p).then_some(Self(p))
    }

    pub const fn get(self) -> f64 {
        self.0
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
    pub dst: Option<IpNet>,
    pub src: Option<IpNet>,
    pub drop: Probability,
}

impl Rule {
    pub fn has_ports(&self) -> bool {
        self.dport.is_some() || self.sport.is_some()
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
                "dst" => set(&mut dst, "dst", parse_cidr("dst", value)?)?,
                "src" => set(&mut src, "src", parse_cidr("src", value)?)?,
                "drop" => set(&mut drop, "drop", parse_probability(value)?)?,
                other => return Err(RuleError::UnknownKey(other.to_owned())),
            }
        }
        if !any {
            return Err(RuleError::Empty);
        }
        if let (Some(src), Some(dst)) = (src, dst)
            && matches!(src, IpNet::V4(_)) != matches!(dst, IpNet::V4(_))
        {
            return Err(RuleError::MixedFamilies { src, dst });
        }
        Ok(Self {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            direction: direction.unwrap_or(Direction::Egress),
            protocol: protocol.unwrap_or(Protocol::Any),
            dport,
            sport,
            dst,
            src,
            drop: drop.unwrap_or(Probability::ZERO),
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

fn parse_probability(value: &str) -> Result<Probability, RuleError> {
    let err = || RuleError::Probability(value.to_owned());
    let p = match value.strip_suffix('%') {
        Some(percent) => percent.parse::<f64>().map_err(|_| err())? / 100.0,
        None => value.parse::<f64>().map_err(|_| err())?,
    };
    // `new` also refuses NaN: it is not inside any range.
    Probability::new(p).ok_or_else(err)
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
        assert_eq!(r.dst, Some("198.18.0.2/32".parse().unwrap()));
        assert_eq!(r.src, Some("198.18.0.0/15".parse().unwrap()));
        assert!((r.drop.get() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn defaults() {
        let r = parse("drop=0.5").unwrap();
        assert_eq!(r.direction, Direction::Egress);
        assert_eq!(r.protocol, Protocol::Any);
        assert_eq!((r.dport, r.sport, r.dst, r.src), (None, None, None, None));
    }

    #[test]
    fn bare_address_is_a_host_prefix() {
        let r = parse("dst=2001:db8::1").unwrap();
        assert_eq!(r.dst, Some("2001:db8::1/128".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_problem() {
        let cases: &[(&str, RuleError)] = &[
            ("", RuleError::Empty),
            ("drop", RuleError::NotKeyValue("drop".into())),
            ("color=red", RuleError::UnknownKey("color".into())),
            ("drop=1 drop=0", RuleError::Duplicate("drop")),
            ("dir=sideways", RuleError::Direction("sideways".into())),
            ("proto=icmp", RuleError::Protocol("icmp".into())),
            (
                "dport=0",
                RuleError::Port {
                    key: "dport",
                    value: "0".into(),
                },
            ),
            (
                "dport=65536",
                RuleError::Port {
                    key: "dport",
                    value: "65536".into(),
                },
            ),
            (
                "sport=-5",
                RuleError::Port {
                    key: "sport",
                    value: "-5".into(),
                },
            ),
            (
                "dport=9001-9000",
                RuleError::InvertedRange {
                    key: "dport",
                    value: "9001-9000".into(),
                },
            ),
            (
                "dst=198.18.0.0/33",
                RuleError::Cidr {
                    key: "dst",
                    value: "198.18.0.0/33".into(),
                },
            ),
            (
                "src=nonsense",
                RuleError::Cidr {
                    key: "src",
                    value: "nonsense".into(),
                },
            ),
            ("drop=1.5", RuleError::Probability("1.5".into())),
            ("drop=-1%", RuleError::Probability("-1%".into())),
            ("drop=101%", RuleError::Probability("101%".into())),
            ("drop=NaN", RuleError::Probability("NaN".into())),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).as_ref().unwrap_err(), want, "rule {text:?}");
        }
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
    }
}
