//! Capability checks, so a missing privilege is named before the kernel answers a bare EPERM.

use std::{fs, io};

/// A Linux capability chaos may need, with why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    bit: u32,
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    why: "to attach TC programs to an interface",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "to enter another network namespace (--netns)",
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    why: "to load BPF programs and create maps",
};

pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    why: "for the verifier to accept the program's packet and map pointer use",
};

/// The process's effective capability set, from /proc/self/status.
pub fn effective() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Capabilities `chaos run` needs that `effective` lacks. CAP_SYS_ADMIN stands in for CAP_BPF
/// and CAP_PERFMON, as the kernel allows (and requires, before 5.8).
pub fn missing_for_run(effective: u64, enters_netns: bool) -> Vec<Capability> {
    let has = |c: Capability| effective & (1 << c.bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push(CAP_NET_ADMIN);
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push(CAP_BPF);
    }
    // Measured: with CAP_BPF alone the kernel refuses the program with EACCES.
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push(CAP_PERFMON);
    }
    if enters_netns && !has(CAP_SYS_ADMIN) {
        missing.push(CAP_SYS_ADMIN);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\tchaos\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn names_what_is_missing() {
        assert!(missing_for_run(u64::MAX, true).is_empty());
        assert_eq!(
            missing_for_run(0, false),
            vec![CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON]
        );
        assert_eq!(
            missing_for_run(1 << 12 | 1 << 39 | 1 << 38, true),
            vec![CAP_SYS_ADMIN]
        );
        assert_eq!(missing_for_run(1 << 12 | 1 << 39, false), vec![CAP_PERFMON]);
        assert!(missing_for_run(1 << 12 | 1 << 21, true).is_empty());
    }
}
