//! The one way from rules to what the kernel takes: [`RuleSetBuilder`] takes each rule with its
//! counter slot, its end and its dry-run flag, adds the guard rails, and returns a sealed
//! [`RuleSet`] that nothing edits afterwards. `chaos run` and the daemon both build here.

use std::time::{Duration, Instant};

use chaos_common::{
    GenSettings, RuleAction,
    rules::{
        ACTION_F_CONN, ACTION_F_CORRUPT, ACTION_F_DUPLICATE, ACTION_F_GE, ACTION_F_SEEDED,
        MAX_GUARD_PORTS, PortClasses, RuleMask, TABLES,
    },
};
use ipnet::IpNet;

use crate::{
    compile::{self, CompileError, Compiled, MAX_PREFIXES_PER_SET, RATE_QUEUE},
    guard::Guard,
    host,
    rule::{Direction, MAX_HORIZON, Protocol, Rule},
};

/// How one rule goes into a rule set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Its counter slot; by default its position in the set.
    pub slot: Option<u32>,
    /// When the program stops applying it, whatever its controller does (an experiment's end).
    pub expires_at: Option<Instant>,
    /// Count what it matches, fault nothing, hold nothing.
    pub dry_run: bool,
}

/// Collects rules in priority order (the first that matches a packet decides).
#[derive(Clone, Debug)]
pub struct RuleSetBuilder {
    guard: Guard,
    hashed: [usize; TABLES],
    rules: Vec<(Rule, RuleOptions)>,
}

impl RuleSetBuilder {
    /// A builder whose rules the `guard` keeps off its ports.
    pub fn new(guard: &Guard) -> Self {
        Self {
            guard: guard.clone(),
            hashed: [MAX_PREFIXES_PER_SET; TABLES],
            rules: Vec::new(),
        }
    }

    /// How many prefixes each address table's hash map holds per generation (what the
    /// datapath was loaded with); prefixes past that are looked up in the trie.
    pub fn hashed_capacity(mut self, hashed: [usize; TABLES]) -> Self {
        self.hashed = hashed;
        self
    }

    /// Adds a rule after those already given.
    pub fn rule(mut self, rule: Rule, options: RuleOptions) -> Self {
        self.rules.push((rule, options));
        self
    }

    /// Adds rules with default options: slot = position, no end, faults on.
    pub fn rules(mut self, rules: impl IntoIterator<Item = Rule>) -> Self {
        for rule in rules {
            self = self.rule(rule, RuleOptions::default());
        }
        self
    }

    /// Compiles the rules into the map entries of a generation, sealed.
    pub fn build(self) -> Result<RuleSet, CompileError> {
        let slots: Vec<u32> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, (_, o))| o.slot.unwrap_or(i as u32))
            .collect();
        let rules: Vec<Rule> = self.rules.iter().map(|(r, _)| r.clone()).collect();
        let Compiled {
            mut settings,
            ports,
            prefixes,
            mut actions,
        } = compile::compile(&rules, &slots, &self.hashed)?;
        guard_rails(&self.guard, &rules, &mut settings);
        let now = Instant::now();
        for (action, (_, options)) in actions.iter_mut().zip(&self.rules) {
            if let Some(at) = options.expires_at {
                // At least 1 ns: 0 means "no end" to the program.
                action.expires_ns = host::monotonic_after(at.saturating_duration_since(now)).max(1);
            }
            if options.dry_run {
                action.drop_prob = 0;
                action.flags = 0;
            }
            action.epoch = epoch(action.counter_slot, &options.expires_at, action);
        }
        let faulting: Vec<Rule> = self
            .rules
            .iter()
            .filter(|(_, o)| !o.dry_run)
            .map(|(r, _)| r.clone())
            .collect();
        Ok(RuleSet {
            holds: holds(&faulting),
            rules,
            slots,
            settings,
            ports,
            prefixes,
            actions,
        })
    }
}

/// Tells a rule's per-flow entries (connections, seeded packet counts) from those of whatever
/// held its slot before: the same rule (slot, end, action, seed) keeps its connections and
/// counts across rule set changes, any other starts anew. Never 0, so a zeroed entry is never
/// taken for one of the rule's.
fn epoch(slot: u32, expires_at: &Option<Instant>, action: &RuleAction) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    slot.hash(&mut h);
    expires_at.hash(&mut h);
    let a = RuleAction {
        expires_ns: 0,
        epoch: 0,
        ..*action
    };
    format!("{a:?}").hash(&mut h);
    (h.finish() as u32).max(1)
}

/// A compiled rule set: what one generation of the maps holds, and what it needs around the
/// program. Only [`RuleSetBuilder`] makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    slots: Vec<u32>,
    settings: GenSettings,
    ports: [Vec<(u32, PortClasses)>; 2],
    prefixes: [Vec<(IpNet, RuleMask)>; TABLES],
    actions: Vec<RuleAction>,
    holds: Holds,
}

impl RuleSet {
    /// The rules in priority order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The counter slot of each rule.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    pub fn settings(&self) -> &GenSettings {
        &self.settings
    }

    /// The port-class blocks of a field (`PORT_DST`, `PORT_SRC`) that have a class set,
    /// indexed as in generation 0.
    pub fn port_blocks(&self, field: usize) -> &[(u32, PortClasses)] {
        &self.ports[field]
    }

    /// Every port a constrained rule accepts in `field`, with the rules that accept it.
    pub fn port_masks(&self, field: usize) -> Vec<(u16, RuleMask)> {
        let ports = self.ports[field].iter().flat_map(|(block, classes)| {
            classes
                .class
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != 0)
                .map(move |(i, c)| (*block as usize * classes.class.len() + i, *c))
        });
        ports
            .map(|(port, c)| (port as u16, self.settings.port_masks[field][usize::from(c)]))
            .collect()
    }

    /// The entries of an address table (`TABLE_*`).
    pub fn prefixes(&self, table: usize) -> &[(IpNet, RuleMask)] {
        &self.prefixes[table]
    }

    pub fn actions(&self) -> &[RuleAction] {
        &self.actions
    }

    /// What the set needs around the program to hold packets (dry-run rules need nothing).
    pub fn holds(&self) -> Holds {
        self.holds
    }

    /// The directions the program must watch: those of the rules, plus ingress when local TCP's
    /// delay moves to the returning packets.
    pub fn directions(&self) -> Vec<Direction> {
        let mut directions: Vec<Direction> = Vec::new();
        for rule in &self.rules {
            if !directions.contains(&rule.direction) {
                directions.push(rule.direction);
            }
        }
        if self.holds.reverse_tcp_delay && !directions.contains(&Direction::Ingress) {
            directions.push(Direction::Ingress);
        }
        // A hang or reset acts on the connection's packets both ways; a refusal's RST goes back
        // the other way, where the program must see it to clear its mark.
        for rule in &self.rules {
            let other = match rule.direction {
                Direction::Ingress => Direction::Egress,
                Direction::Egress => Direction::Ingress,
            };
            let other_way = rule.conn.is_some_and(|c| c.both_ways() || c.refuse);
            if other_way && !directions.contains(&other) {
                directions.push(other);
            }
        }
        directions
    }

    /// Whether some rule sends packets of its own (duplicates, RSTs), which the program must
    /// know to let pass (`CONFIG_F_CLONES`).
    pub fn makes_packets(&self) -> bool {
        self.actions
            .iter()
            .any(|a| a.flags & (ACTION_F_CONN | ACTION_F_DUPLICATE) != 0)
    }

    /// Whether some rule's faults run in the fault programs (connection faults, duplicates,
    /// corruption, burst loss), which the datapath then loads.
    pub fn needs_fault_programs(&self) -> bool {
        self.actions.iter().any(|a| {
            a.flags & (ACTION_F_CONN | ACTION_F_DUPLICATE | ACTION_F_CORRUPT | ACTION_F_GE) != 0
        })
    }

    /// Whether some rule keeps connection state (to size the connection table).
    pub fn tracks_connections(&self) -> bool {
        self.actions.iter().any(|a| a.flags & ACTION_F_CONN != 0)
    }

    /// Whether some rule draws from its seed, counting its flows' packets (to size that count).
    pub fn seeded(&self) -> bool {
        self.actions.iter().any(|a| a.flags & ACTION_F_SEEDED != 0)
    }

    /// How many prefixes each address table hashes (to size the datapath's maps).
    pub fn hashed_counts(&self) -> [usize; TABLES] {
        std::array::from_fn(|t| {
            let plan = &self.settings.addr[t];
            self.prefixes[t]
                .iter()
                .filter(|(net, _)| compile::is_hashed(plan, net.prefix_len()))
                .count()
        })
    }
}

/// Writes the guarded ports of `rules` (in the set's bit order) into `settings`: the program
/// drops those rules' bits for TCP packets from or to each port.
fn guard_rails(guard: &Guard, rules: &[Rule], settings: &mut GenSettings) {
    settings.guard_count = 0;
    for port in guard.ports() {
        let mask: RuleMask = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| guard.guards(r, port))
            .fold(0, |m, (i, _)| m | 1 << i);
        let i = settings.guard_count as usize;
        if mask == 0 || i == MAX_GUARD_PORTS {
            continue;
        }
        settings.guard_ports[i] = port;
        settings.guard_rules[i] = mask;
        settings.guard_count += 1;
    }
}

/// What a rule set needs around the program for the packets it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holds {
    /// fq's horizon: the longest hold any rule can cause, with a margin. `None`: nothing is held.
    pub horizon: Option<Duration>,
    /// Egress rules hold packets: fq at the interface's root.
    pub egress_fq: bool,
    /// Ingress rules hold packets, or local TCP's delay moves to the returning packets: an ifb.
    pub ifb: bool,
    /// Egress delay rules that TCP can match: delay local TCP on its returning packets (this
    /// needs the ingress program attached).
    pub reverse_tcp_delay: bool,
}

impl Holds {
    /// Whether anything is held at all (flow order and departure state are then needed).
    pub fn any(&self) -> bool {
        self.horizon.is_some()
    }
}

/// Slack on top of the longest hold a rule can cause, so fq never caps a departure time.
pub const HORIZON_MARGIN: Duration = Duration::from_secs(1);

fn holds(rules: &[Rule]) -> Holds {
    let egress = |r: &&Rule| r.direction == Direction::Egress;
    let reverse_tcp_delay = rules
        .iter()
        .filter(egress)
        .any(|r| r.delay.is_some() && r.protocol != Protocol::Udp);
    let ingress_fq = rules
        .iter()
        .any(|r| r.needs_fq() && r.direction == Direction::Ingress);
    Holds {
        horizon: rules
            .iter()
            .filter(|r| r.needs_fq())
            .map(|r| r.max_delay() + r.rate.map_or(Duration::ZERO, |_| RATE_QUEUE) + HORIZON_MARGIN)
            .max()
            .map(|h| h.min(MAX_HORIZON)),
        egress_fq: rules.iter().filter(egress).any(Rule::needs_fq),
        ifb: ingress_fq || reverse_tcp_delay,
        reverse_tcp_delay,
    }
}

#[cfg(test)]
mod tests {
    use chaos_common::rules::{PORT_DST, PROB_ONE};

    use super::*;
    use crate::guard::DEFAULT_EXCLUDED_PORTS;

    fn rules(texts: &[&str]) -> Vec<Rule> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn plain(texts: &[&str]) -> RuleSet {
        RuleSetBuilder::new(&Guard::default())
            .rules(rules(texts))
            .build()
            .unwrap()
    }

    #[test]
    fn holds_follow_the_rules() {
        assert_eq!(plain(&["drop=1"]).holds(), Holds::default());
        let h = plain(&["proto=udp delay=100ms jitter=10ms"]).holds();
        assert!(h.egress_fq && !h.ifb && !h.reverse_tcp_delay);
        assert_eq!(h.horizon, Some(Duration::from_millis(100 + 8 * 10 + 1000)));
        let h = plain(&["proto=tcp delay=5ms"]).holds();
        assert!(h.egress_fq && h.ifb && h.reverse_tcp_delay);
        let h = plain(&["dir=ingress rate=1mbit"]).holds();
        assert!(!h.egress_fq && h.ifb && !h.reverse_tcp_delay);
        assert_eq!(h.horizon, Some(RATE_QUEUE + HORIZON_MARGIN));
    }

    #[test]
    fn options_go_into_the_actions_and_nothing_else_edits_them() {
        let r = rules(&[
            "proto=tcp delay=5ms drop=10%",
            "proto=udp drop=1",
            "rate=1mbit",
        ]);
        let later = Instant::now() + Duration::from_secs(60);
        let set = RuleSetBuilder::new(&Guard::default())
            .rule(
                r[0].clone(),
                RuleOptions {
                    slot: Some(7),
                    dry_run: true,
                    ..RuleOptions::default()
                },
            )
            .rule(
                r[1].clone(),
                RuleOptions {
                    slot: Some(3),
                    expires_at: Some(later),
                    ..RuleOptions::default()
                },
            )
            .rule(r[2].clone(), RuleOptions::default())
            .build()
            .unwrap();
        assert_eq!(set.slots(), &[7, 3, 2]);
        let [a, b, c] = [set.actions()[0], set.actions()[1], set.actions()[2]];
        assert_eq!((a.counter_slot, a.drop_prob, a.flags), (7, 0, 0), "dry run");
        assert_eq!((b.counter_slot, b.drop_prob), (3, PROB_ONE));
        let left = b.expires_ns.saturating_sub(host::monotonic_ns());
        assert!(
            (59_000_000_000..=60_000_000_000).contains(&left),
            "ends in about 60 s: {left} ns"
        );
        assert_eq!((c.counter_slot, c.expires_ns), (2, 0));
        // The dry-run delay holds nothing; the rate still needs fq.
        let h = set.holds();
        assert!(h.egress_fq && !h.ifb && !h.reverse_tcp_delay);
    }

    #[test]
    fn a_slot_given_twice_is_refused() {
        let r = rules(&["drop=1", "drop=1"]);
        let err = RuleSetBuilder::new(&Guard::default())
            .rule(
                r[0].clone(),
                RuleOptions {
                    slot: Some(1),
                    ..RuleOptions::default()
                },
            )
            .rule(r[1].clone(), RuleOptions::default())
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "counter slot 1 given twice or out of range (0-63)"
        );
    }

    #[test]
    fn guard_rails_become_masks_per_port() {
        let guard = Guard::new(&DEFAULT_EXCLUDED_PORTS, &[7070]).unwrap();
        let set = RuleSetBuilder::new(&guard)
            .rules(rules(&[
                "drop=1",
                "proto=udp drop=1",
                "proto=tcp drop=1 force=yes",
            ]))
            .build()
            .unwrap();
        let s = set.settings();
        let got: Vec<(u16, RuleMask)> = (0..s.guard_count as usize)
            .map(|i| (s.guard_ports[i], s.guard_rules[i]))
            .collect();
        // Rule 0 is kept off every guarded port, rule 1 (UDP) off none, rule 2 (force) off the
        // API port only.
        assert_eq!(
            got,
            vec![(22, 0b001), (6443, 0b001), (7070, 0b101), (10250, 0b001)]
        );
    }

    #[test]
    fn directions_add_ingress_for_reverse_tcp_delay() {
        let set = plain(&["dir=ingress drop=1", "drop=1", "dir=ingress dport=1"]);
        assert_eq!(
            set.directions(),
            vec![Direction::Ingress, Direction::Egress]
        );
        let set = plain(&["proto=tcp delay=5ms"]);
        assert_eq!(
            set.directions(),
            vec![Direction::Egress, Direction::Ingress]
        );
    }

    #[test]
    fn port_masks_read_back_from_classes() {
        let set = plain(&["dport=10-12", "dport=12-13", "dport=65535"]);
        assert_eq!(
            set.port_masks(PORT_DST),
            vec![
                (10, 0b001),
                (11, 0b001),
                (12, 0b011),
                (13, 0b010),
                (65535, 0b100)
            ]
        );
        let blocks: Vec<u32> = set.port_blocks(PORT_DST).iter().map(|b| b.0).collect();
        assert_eq!(blocks, vec![0, 1023]);
    }
}
