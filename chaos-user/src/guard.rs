//! Guard rails: traffic chaos must not fault by accident.
//!
//! Some TCP ports are kept out of every rule's reach by the program itself: the excluded ports
//! (by default SSH, the Kubernetes API and the kubelet) unless a rule says `force=yes`, and the
//! ports the daemon's own API listens on, always. A rule for "everything to 10.0.0.5" therefore
//! still leaves an SSH session to that host alone. The list can be changed (`--exclude-ports`),
//! which is itself explicit. A rule whose ports are all guarded could never match anything, so
//! it is refused with a message saying how to override.

use chaos_common::rules::MAX_GUARD_PORTS;

use crate::rule::{PortRange, Protocol, Rule};

/// TCP ports excluded unless a rule says `force=yes`: SSH, the Kubernetes API, the kubelet.
pub const DEFAULT_EXCLUDED_PORTS: [u16; 3] = [22, 6443, 10250];

/// Which TCP ports are guarded, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    /// Faulted only by rules that say `force=yes`.
    pub excluded: Vec<u16>,
    /// Never faulted: the daemon's API.
    pub protected: Vec<u16>,
}

fn name(port: u16) -> &'static str {
    match port {
        22 => " (SSH)",
        6443 => " (Kubernetes API)",
        10250 => " (kubelet)",
        _ => "",
    }
}

impl Guard {
    pub fn new(excluded: &[u16], protected: &[u16]) -> Result<Self, String> {
        let mut all: Vec<u16> = excluded.iter().chain(protected).copied().collect();
        all.sort_unstable();
        all.dedup();
        if all.len() > MAX_GUARD_PORTS {
            return Err(format!(
                "{} guarded ports given; at most {MAX_GUARD_PORTS} fit (--exclude-ports)",
                all.len()
            ));
        }
        if all.contains(&0) {
            return Err("--exclude-ports: port 0 is not a port".to_owned());
        }
        Ok(Self {
            excluded: excluded.to_vec(),
            protected: protected.to_vec(),
        })
    }

    /// The guarded ports `rule` may not fault.
    fn ports_for(&self, rule: &Rule) -> Vec<u16> {
        if rule.protocol == Protocol::Udp {
            return Vec::new();
        }
        let mut ports = self.protected.clone();
        if !rule.force {
            ports.extend(&self.excluded);
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Refuses a rule that could match nothing but guarded ports (`dport=22`, say): it would
    /// silently never fire, so say how to override instead.
    pub fn check(&self, rule: &Rule) -> Result<(), String> {
        let guarded = self.ports_for(rule);
        for (key, range) in [("dport", rule.dport), ("sport", rule.sport)] {
            let Some(PortRange { start, end }) = range else {
                continue;
            };
            if (start..=end).all(|p| guarded.contains(&p)) {
                let port = start;
                return Err(if self.protected.contains(&port) {
                    format!(
                        "{key}={port}: TCP port {port} is where the chaos daemon's API listens and is never faulted"
                    )
                } else {
                    format!(
                        "{key}={port}: TCP port {port}{} is excluded from faults; add force=yes to the rule or change --exclude-ports",
                        name(port)
                    )
                });
            }
        }
        Ok(())
    }

    /// Every guarded port, sorted.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .excluded
            .iter()
            .chain(&self.protected)
            .copied()
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Whether the program must keep `rule` off TCP from or to `port`.
    pub fn guards(&self, rule: &Rule, port: u16) -> bool {
        self.ports_for(rule).contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(&DEFAULT_EXCLUDED_PORTS, &[7070]).unwrap()
    }

    fn check(rule: &str) -> Result<(), String> {
        guard().check(&rule.parse().unwrap())
    }

    #[test]
    fn refuses_rules_that_only_name_guarded_ports() {
        assert!(check("drop=10%").is_ok(), "portless rules are carved out");
        assert!(check("proto=tcp dport=6000-7000 drop=1").is_ok());
        assert!(
            check("proto=udp dport=22 drop=1").is_ok(),
            "UDP is not guarded"
        );
        let err = check("proto=tcp dport=22 drop=1").unwrap_err();
        assert!(err.contains("port 22 (SSH) is excluded"), "{err}");
        assert!(err.contains("force=yes"), "{err}");
        assert!(check("sport=10250 drop=1").unwrap_err().contains("kubelet"));
        assert!(check("proto=tcp dport=22 drop=1 force=yes").is_ok());
        let err = check("dport=7070 drop=1 force=yes").unwrap_err();
        assert!(err.contains("daemon's API"), "{err}");
    }

    #[test]
    fn too_many_ports() {
        let many: Vec<u16> = (1..=17).collect();
        assert!(Guard::new(&many, &[]).unwrap_err().contains("at most 16"));
        assert!(Guard::new(&[0], &[]).is_err());
    }
}
