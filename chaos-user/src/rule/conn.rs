//! The keys of connection faults (`conn-p`, `refuse`, `hang`, `reset`, `after`, `after-bytes`,
//! `connect-delay`, `max-conns`) and of the packet faults beyond loss and delay (`duplicate`,
//! `corrupt`, `loss=ge:...`), and the combinations that cannot mean anything.

use std::time::Duration;

use super::{
    Probability, Protocol, RuleError, parse_duration, parse_probability, parse_yes_no, set,
};

/// What happens to the connections a rule chooses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnFaults {
    /// Share of connections chosen, at their first packet, for their whole life.
    pub probability: Probability,
    /// The opening SYN is answered with a RST: `connect()` fails with ECONNREFUSED.
    pub refuse: bool,
    /// After the handshake (or `after`), every packet of the connection is lost, both ways.
    pub hang: bool,
    /// After the handshake (or `after`), both ends receive a RST.
    pub reset: bool,
    /// When `hang` or `reset` begins, if not at the first data.
    pub after: Option<Trigger>,
    /// Only the first packet of the connection is delayed this long.
    pub connect_delay: Option<Duration>,
    /// Only the first this many matching connections are chosen.
    pub max_conns: Option<u32>,
}

impl ConnFaults {
    /// Whether packets going against the rule's way must look their connection up.
    pub fn both_ways(&self) -> bool {
        self.hang || self.reset
    }
}

/// When a connection's `hang` or `reset` begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// This long after the connection's first packet.
    Time(Duration),
    /// Once this many payload bytes passed the rule's way; exactly these reach the peer.
    Bytes(u64),
}

/// Gilbert-Elliott loss, as netem's `gemodel p r 1-h 1-k`: a good and a bad state, moving
/// between them with `p` and `r`; a packet is delivered with `h` in the bad state and `k` in
/// the good one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    pub p: Probability,
    pub r: Probability,
    pub h: Probability,
    pub k: Probability,
}

impl GilbertElliott {
    /// The long-run share of packets lost.
    pub fn mean_loss(&self) -> f64 {
        let (p, r) = (self.p.get(), self.r.get());
        if p + r == 0.0 {
            return 1.0 - self.k.get();
        }
        let bad = p / (p + r);
        bad * (1.0 - self.h.get()) + (1.0 - bad) * (1.0 - self.k.get())
    }

    /// The mean number of packets a stay in the bad state lasts: its losses come in bursts this
    /// long when `h` is 0.
    pub fn mean_bad_run(&self) -> f64 {
        1.0 / self.r.get()
    }
}

/// The fault keys of this module as parsed, before the checks between them.
#[derive(Default)]
pub(super) struct FaultKeys {
    conn_p: Option<Probability>,
    refuse: Option<bool>,
    hang: Option<bool>,
    reset: Option<bool>,
    after: Option<Duration>,
    after_bytes: Option<u64>,
    connect_delay: Option<Duration>,
    max_conns: Option<u32>,
    duplicate: Option<Probability>,
    corrupt: Option<Probability>,
    loss: Option<GilbertElliott>,
}

/// What [`FaultKeys::finish`] hands back to the rule.
pub(super) struct Faults {
    pub conn: Option<ConnFaults>,
    pub duplicate: Probability,
    pub corrupt: Probability,
    pub loss: Option<GilbertElliott>,
}

impl FaultKeys {
    /// Takes `key=value` if the key is one of these: `Ok(false)` if it is not.
    pub(super) fn take(&mut self, key: &str, value: &str) -> Result<bool, RuleError> {
        match key {
            "conn-p" => set(
                &mut self.conn_p,
                "conn-p",
                parse_probability("conn-p", value)?,
            )?,
            "refuse" => set(&mut self.refuse, "refuse", parse_yes_no("refuse", value)?)?,
            "hang" => set(&mut self.hang, "hang", parse_yes_no("hang", value)?)?,
            "reset" => set(&mut self.reset, "reset", parse_yes_no("reset", value)?)?,
            "after" => set(&mut self.after, "after", parse_duration("after", value)?)?,
            "after-bytes" => set(
                &mut self.after_bytes,
                "after-bytes",
                parse_count("after-bytes", value, u64::MAX)?,
            )?,
            "connect-delay" => set(
                &mut self.connect_delay,
                "connect-delay",
                parse_duration("connect-delay", value)?,
            )?,
            "max-conns" => set(
                &mut self.max_conns,
                "max-conns",
                parse_count("max-conns", value, u64::from(u32::MAX))? as u32,
            )?,
            "duplicate" => set(
                &mut self.duplicate,
                "duplicate",
                parse_probability("duplicate", value)?,
            )?,
            "corrupt" => set(
                &mut self.corrupt,
                "corrupt",
                parse_probability("corrupt", value)?,
            )?,
            "loss" => set(&mut self.loss, "loss", parse_loss(value)?)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the keys against each other and the rule's protocol and loss.
    pub(super) fn finish(
        self,
        protocol: Protocol,
        drop: Option<Probability>,
    ) -> Result<Faults, RuleError> {
        let (refuse, hang, reset) = (
            self.refuse.unwrap_or(false),
            self.hang.unwrap_or(false),
            self.reset.unwrap_or(false),
        );
        let conflict = |a, b, why| Err(RuleError::Conflict { a, b, why });
        if refuse && (hang || reset) {
            let b = if hang { "hang" } else { "reset" };
            return conflict("refuse", b, "a refused connection never opens");
        }
        if hang && reset {
            return conflict("hang", "reset", "a connection either hangs or is reset");
        }
        if refuse && self.connect_delay.is_some() {
            return conflict(
                "refuse",
                "connect-delay",
                "a refused connection never opens",
            );
        }
        if self.after.is_some() && self.after_bytes.is_some() {
            return conflict("after", "after-bytes", "give one moment for the fault");
        }
        if drop.is_some() && self.loss.is_some() {
            return conflict("drop", "loss", "they are two models of the same loss");
        }
        for (key, given) in [
            ("after", self.after.is_some()),
            ("after-bytes", self.after_bytes.is_some()),
        ] {
            if given && !hang && !reset {
                return Err(RuleError::NeedsHangOrReset(key));
            }
        }
        for (key, given) in [("refuse", refuse), ("reset", reset)] {
            if given && protocol != Protocol::Tcp {
                return Err(RuleError::NeedsTcp(key));
            }
        }
        let keyed = [
            ("conn-p", self.conn_p.is_some()),
            ("hang", hang),
            ("after", self.after.is_some()),
            ("after-bytes", self.after_bytes.is_some()),
            ("connect-delay", self.connect_delay.is_some()),
            ("max-conns", self.max_conns.is_some()),
        ];
        for (key, given) in keyed {
            if given && protocol == Protocol::Any {
                return Err(RuleError::NeedsConnProtocol(key));
            }
        }
        let any_conn = refuse || reset || keyed.iter().any(|(_, given)| *given);
        let conn = any_conn.then(|| ConnFaults {
            probability: self.conn_p.unwrap_or(Probability::ONE),
            refuse,
            hang,
            reset,
            after: self
                .after
                .map(Trigger::Time)
                .or(self.after_bytes.map(Trigger::Bytes)),
            connect_delay: self.connect_delay,
            max_conns: self.max_conns,
        });
        Ok(Faults {
            conn,
            duplicate: self.duplicate.unwrap_or(Probability::ZERO),
            corrupt: self.corrupt.unwrap_or(Probability::ZERO),
            loss: self.loss,
        })
    }
}

/// A whole number from 1 to `max`.
fn parse_count(key: &'static str, value: &str, max: u64) -> Result<u64, RuleError> {
    match value.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(RuleError::Count {
            key,
            value: value.to_owned(),
            max,
        }),
    }
}

/// `ge:P/R[/H[/K]]`, each a probability; H defaults to 0 and K to 1 (netem's simple Gilbert).
fn parse_loss(value: &str) -> Result<GilbertElliott, RuleError> {
    let err = || RuleError::LossModel(value.to_owned());
    let params = value.strip_prefix("ge:").ok_or_else(err)?;
    let parts: Vec<&str> = params.split('/').collect();
    if !(2..=4).contains(&parts.len()) {
        return Err(err());
    }
    let prob = |i: usize, default: Probability| match parts.get(i) {
        Some(text) => parse_probability("loss", text).map_err(|_| err()),
        None => Ok(default),
    };
    Ok(GilbertElliott {
        p: prob(0, Probability::ZERO)?,
        r: prob(1, Probability::ZERO)?,
        h: prob(2, Probability::ZERO)?,
        k: prob(3, Probability::ONE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Rule;

    fn parse(s: &str) -> Result<Rule, RuleError> {
        s.parse()
    }

    #[test]
    fn connection_faults() {
        let r = parse("proto=tcp dport=8080 conn-p=30% reset=yes after=1s max-conns=5").unwrap();
        let c = r.conn.unwrap();
        assert!((c.probability.get() - 0.3).abs() < 1e-12);
        assert!(c.reset && !c.hang && !c.refuse && c.both_ways());
        assert_eq!(c.after, Some(Trigger::Time(Duration::from_secs(1))));
        assert_eq!(c.max_conns, Some(5));
        let c = parse("proto=udp hang=yes after-bytes=10000")
            .unwrap()
            .conn
            .unwrap();
        assert_eq!((c.hang, c.after), (true, Some(Trigger::Bytes(10_000))));
        assert_eq!(c.probability, Probability::ONE);
        let r = parse("proto=tcp connect-delay=200ms").unwrap();
        assert_eq!(
            r.conn.unwrap().connect_delay,
            Some(Duration::from_millis(200))
        );
        assert!(r.needs_fq());
        assert!(parse("proto=tcp refuse=yes").unwrap().conn.unwrap().refuse);
        assert_eq!(parse("drop=1%").unwrap().conn, None);
    }

    #[test]
    fn packet_faults_and_gilbert_elliott() {
        let r = parse("duplicate=1% corrupt=0.5%").unwrap();
        assert!((r.duplicate.get() - 0.01).abs() < 1e-12);
        assert!((r.corrupt.get() - 0.005).abs() < 1e-12);
        let ge = parse("loss=ge:1%/25%").unwrap().loss.unwrap();
        assert_eq!((ge.h, ge.k), (Probability::ZERO, Probability::ONE));
        // p/(p+r) of the time bad, all of it lost: 0.01/0.26; bursts of 1/r = 4 packets.
        assert!((ge.mean_loss() - 0.01 / 0.26).abs() < 1e-12);
        assert!((ge.mean_bad_run() - 4.0).abs() < 1e-12);
        let ge = parse("loss=ge:0.1/0.5/0.2/0.9").unwrap().loss.unwrap();
        let bad = 0.1 / 0.6;
        assert!((ge.mean_loss() - (bad * 0.8 + (1.0 - bad) * 0.1)).abs() < 1e-12);
    }

    #[test]
    fn combinations_that_mean_nothing_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            (
                "proto=udp refuse=yes",
                "refuse=yes needs proto=tcp: only TCP connections can be refused or reset",
            ),
            (
                "reset=yes",
                "reset=yes needs proto=tcp: only TCP connections can be refused or reset",
            ),
            (
                "proto=tcp after-bytes=100",
                "after-bytes needs hang=yes or reset=yes: it says when they begin",
            ),
            (
                "proto=tcp after=2s",
                "after needs hang=yes or reset=yes: it says when they begin",
            ),
            (
                "proto=tcp refuse=yes hang=yes",
                "refuse and hang cannot be combined: a refused connection never opens",
            ),
            (
                "proto=tcp hang=yes reset=yes",
                "hang and reset cannot be combined: a connection either hangs or is reset",
            ),
            (
                "proto=tcp reset=yes after=1s after-bytes=10",
                "after and after-bytes cannot be combined: give one moment for the fault",
            ),
            (
                "drop=1% loss=ge:1%/10%",
                "drop and loss cannot be combined: they are two models of the same loss",
            ),
            (
                "conn-p=30% drop=100%",
                "conn-p needs proto=tcp or proto=udp: a connection is a TCP connection or a UDP flow",
            ),
            (
                "hang=yes",
                "hang needs proto=tcp or proto=udp: a connection is a TCP connection or a UDP flow",
            ),
            (
                "proto=tcp max-conns=0 reset=yes",
                "max-conns=0: expected a whole number from 1 to 4294967295",
            ),
            (
                "proto=tcp hang=yes after-bytes=1k",
                "after-bytes=1k: expected a whole number from 1 to 18446744073709551615",
            ),
            (
                "loss=ge:1%",
                "loss=ge:1%: expected ge:P/R[/H[/K]] (Gilbert-Elliott: P good to bad, R bad to good, H delivered when bad (default 0), K delivered when good (default 1))",
            ),
            (
                "loss=gemodel:1%/2%",
                "loss=gemodel:1%/2%: expected ge:P/R[/H[/K]] (Gilbert-Elliott: P good to bad, R bad to good, H delivered when bad (default 0), K delivered when good (default 1))",
            ),
            ("proto=tcp hang=maybe", "hang=maybe: expected yes or no"),
            (
                "duplicate=2",
                "duplicate=2: expected a probability from 0 to 1, or a percentage from 0% to 100%",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), *want, "rule {text:?}");
        }
    }
}
