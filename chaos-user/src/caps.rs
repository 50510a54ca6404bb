//! Capability checks, so a missing privilege is named before the kernel answers a bare EPERM.

use std::io;

use caps::{CapSet, CapsHashSet};

/// A Linux capability chaos may need, with why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    cap: caps::Capability,
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    cap: caps::Capability::CAP_NET_ADMIN,
    why: "to attach TC programs to an interface",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    cap: caps::Capability::CAP_SYS_ADMIN,
    why: "to enter another network namespace (--netns)",
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    cap: caps::Capability::CAP_BPF,
    why: "to load BPF programs and create maps",
};

pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    cap: caps::Capability::CAP_PERFMON,
    why: "for the verifier to accept the program's packet and map pointer use",
};

/// The effective capability set of the calling thread, as a bit mask (`1 << CAP_*`).
pub fn effective() -> io::Result<u64> {
    caps::read(None, CapSet::Effective)
        .map(|set| mask(&set))
        .map_err(|e| io::Error::other(format!("reading the effective capabilities: {e}")))
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |mask, cap| mask | cap.bitmask())
}

/// Capabilities `chaos run` needs that `effective` lacks. CAP_SYS_ADMIN stands in for CAP_BPF
/// and CAP_PERFMON, as the kernel allows (and requires, before 5.8).
pub fn missing_for_run(effective: u64, enters_netns: bool) -> Vec<Capability> {
    let has = |c: Capability| effective & c.cap.bitmask() != 0;
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
    fn masks_the_set() {
        let set = CapsHashSet::from([caps::Capability::CAP_NET_ADMIN, caps::Capability::CAP_BPF]);
        assert_eq!(mask(&set), 1 << 12 | 1 << 39);
        assert_eq!(mask(&CapsHashSet::new()), 0);
        assert_eq!(mask(&caps::all()) & 0x1ff_ffff_ffff, 0x1ff_ffff_ffff);
        for c in [CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON] {
            assert_eq!(c.name, c.cap.to_string());
        }
    }

    #[test]
    fn reads_this_thread() {
        let effective = effective().unwrap();
        let has = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_NET_ADMIN).unwrap();
        assert_eq!(effective & CAP_NET_ADMIN.cap.bitmask() != 0, has);
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
