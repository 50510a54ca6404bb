//! The daemon's bookkeeping without a kernel: a fake [`Ports`] records every rule set the
//! state hands an interface, and refuses those that carry a rule for port 666.

use std::sync::{Arc, Mutex as StdMutex};

use chaos_common::RuleCounters;

use super::*;
use crate::{
    daemon::worker::BoxFuture,
    datapath::Capacity,
    guard::{DEFAULT_EXCLUDED_PORTS, Guard},
    rule::PortRange,
    ruleset::RuleSet,
};

/// One rule set as an interface received it: (rule text, counter slot) in order, and the
/// slots it was told to zero.
type Applied = (Vec<(String, u32)>, Vec<u32>);

#[derive(Clone, Default)]
struct Log {
    applied: Arc<StdMutex<BTreeMap<Target, Vec<Applied>>>>,
    started: Arc<StdMutex<Vec<Target>>>,
}

impl Log {
    fn last(&self, iface: &str) -> Applied {
        let applied = self.applied.lock().unwrap();
        applied[&target(iface)].last().cloned().expect("a rule set")
    }

    fn count(&self, iface: &str) -> usize {
        self.applied
            .lock()
            .unwrap()
            .get(&target(iface))
            .map_or(0, Vec::len)
    }
}

struct FakePorts(Log);
struct FakePort(Target, Log);

const REFUSED_PORT: u16 = 666;

impl Ports for FakePorts {
    fn start(&self, target: Target) -> BoxFuture<'_, Result<Box<dyn Port>, ExperimentError>> {
        self.0.started.lock().unwrap().push(target.clone());
        let log = self.0.clone();
        Box::pin(async move { Ok(Box::new(FakePort(target, log)) as Box<dyn Port>) })
    }

    fn capacity(&self) -> Capacity {
        Capacity::DAEMON
    }
}

impl Port for FakePort {
    fn apply(&self, set: RuleSet, fresh: Vec<u32>) -> BoxFuture<'_, Result<(), String>> {
        let refused = set.rules().iter().any(|r| {
            r.dport
                == Some(PortRange {
                    start: REFUSED_PORT,
                    end: REFUSED_PORT,
                })
        });
        if !refused {
            let rules = set
                .rules()
                .iter()
                .map(|r| r.to_string())
                .zip(set.slots().iter().copied())
                .collect();
            let mut applied = self.1.applied.lock().unwrap();
            applied
                .entry(self.0.clone())
                .or_default()
                .push((rules, fresh));
        }
        Box::pin(async move {
            if refused {
                Err("no fq qdisc".to_owned())
            } else {
                Ok(())
            }
        })
    }

    fn counters(&self, slots: Vec<u32>) -> BoxFuture<'_, Result<Vec<RuleCounters>, String>> {
        Box::pin(async move { Ok(vec![RuleCounters::default(); slots.len()]) })
    }
}

fn target(iface: &str) -> Target {
    Target {
        netns: None,
        workload: None,
        namespace: None,
        force: false,
        iface: iface.to_owned(),
    }
}

fn manager() -> (Arc<Manager>, Log) {
    let log = Log::default();
    let policy = Policy {
        lease: Duration::from_secs(3),
        guard: Guard::new(&DEFAULT_EXCLUDED_PORTS, &[]).unwrap(),
        max_duration: Duration::from_secs(3600),
    };
    (
        Manager::with_ports(policy, Box::new(FakePorts(log.clone()))),
        log,
    )
}

fn spec(name: &str, iface: &str, rules: &[&str], priority: i32) -> ExperimentSpec {
    ExperimentSpec {
        name: name.to_owned(),
        iface: iface.to_owned(),
        netns: None,
        target: None,
        namespace: None,
        rules: rules.iter().map(|r| (*r).to_owned()).collect(),
        duration: None,
        start_delay: None,
        priority,
        dry_run: false,
        stop_conditions: Vec::new(),
    }
}

fn texts(applied: &Applied) -> Vec<&str> {
    applied.0.iter().map(|(t, _)| t.as_str()).collect()
}

#[tokio::test]
async fn precedence_is_priority_then_age_then_rule_order() {
    let (m, log) = manager();
    let put = |s| m.put(s, Source::Api, false, "uid 0");
    put(spec("a", "eth0", &["dport=1", "dport=2"], 0))
        .await
        .unwrap();
    put(spec("b", "eth0", &["dport=3"], 5)).await.unwrap();
    put(spec("c", "eth0", &["dport=4"], 0)).await.unwrap();
    put(spec("d", "eth1", &["dport=5"], 9)).await.unwrap();
    assert_eq!(
        texts(&log.last("eth0")),
        ["dport=3", "dport=1", "dport=2", "dport=4"],
        "b (priority 5) first, then a before c (older), a's rules in order"
    );
    assert_eq!(texts(&log.last("eth1")), ["dport=5"]);
    // Replacing keeps an experiment's age: a stays ahead of c.
    m.put(
        spec("a", "eth0", &["dport=7"], 0),
        Source::Api,
        true,
        "uid 0",
    )
    .await
    .unwrap();
    assert_eq!(texts(&log.last("eth0")), ["dport=3", "dport=7", "dport=4"]);
}

#[tokio::test]
async fn counter_slots_stay_with_their_rules_and_freed_ones_are_reused_zeroed() {
    let (m, log) = manager();
    m.put(
        spec("a", "eth0", &["dport=1", "dport=2"], 0),
        Source::Api,
        false,
        "uid 0",
    )
    .await
    .unwrap();
    let (rules, fresh) = log.last("eth0");
    assert_eq!(rules, [("dport=1".into(), 0), ("dport=2".into(), 1)]);
    assert_eq!(fresh, [0, 1], "new rules' slots are zeroed");
    m.put(
        spec("b", "eth0", &["dport=3"], 9),
        Source::Api,
        false,
        "uid 0",
    )
    .await
    .unwrap();
    let (rules, fresh) = log.last("eth0");
    assert_eq!(
        rules,
        [
            ("dport=3".into(), 2),
            ("dport=1".into(), 0),
            ("dport=2".into(), 1)
        ],
        "a's rules moved down a place and kept their slots"
    );
    assert_eq!(fresh, [2]);
    m.delete("a", "uid 0").await.unwrap();
    m.put(
        spec("c", "eth0", &["dport=4"], 0),
        Source::Api,
        false,
        "uid 0",
    )
    .await
    .unwrap();
    let (rules, fresh) = log.last("eth0");
    assert_eq!(rules, [("dport=3".into(), 2), ("dport=4".into(), 0)]);
    assert_eq!(fresh, [0], "a freed slot is reused, and zeroed first");
}

#[tokio::test]
async fn a_refused_change_rolls_back_whole() {
    let (m, log) = manager();
    m.put(
        spec("a", "eth0", &["dport=1"], 0),
        Source::Api,
        false,
        "uid 0",
    )
    .await
    .unwrap();
    let before = log.count("eth0");
    let refused = m
        .put(
            spec("a", "eth0", &["dport=2", "dport=666"], 0),
            Source::Api,
            true,
            "uid 0",
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        ApiError::Invalid(ExperimentError::new("rules", "no fq qdisc"))
    );
    // The old version was put back and applied again, and is what the API shows.
    assert_eq!(log.count("eth0"), before + 1);
    assert_eq!(texts(&log.last("eth0")), ["dport=1"]);
    assert_eq!(m.get("a").await.unwrap().spec.rules, ["dport=1"]);
    // A refused create leaves nothing behind, not even its interface.
    let err = m
        .put(
            spec("z", "eth9", &["dport=666"], 0),
            Source::Api,
            false,
            "uid 0",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Invalid(_)));
    assert_eq!(
        m.get("z").await.unwrap_err(),
        ApiError::NotFound("z".into())
    );
    assert_eq!(m.status().await.interfaces, ["eth0"]);
}

#[tokio::test]
async fn pause_empties_every_rule_set_and_resume_restores_it() {
    let (m, log) = manager();
    m.put(
        spec("a", "eth0", &["dport=1"], 0),
        Source::Api,
        false,
        "uid 0",
    )
    .await
    .unwrap();
    m.set_paused(true, "uid 0").await.unwrap();
    assert!(texts(&log.last("eth0")).is_empty());
    m.set_paused(false, "uid 0").await.unwrap();
    assert_eq!(texts(&log.last("eth0")), ["dport=1"]);
}

#[tokio::test]
async fn the_interface_rule_cap_names_the_interface() {
    let (m, _) = manager();
    let many: Vec<String> = (1000..1040).map(|p| format!("dport={p}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    m.put(spec("a", "eth0", &many, 0), Source::Api, false, "uid 0")
        .await
        .unwrap();
    let err = m
        .put(spec("b", "eth0", &many, 0), Source::Api, false, "uid 0")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ApiError::Invalid(ExperimentError::new(
            "rules",
            "eth0 would carry 80 rules; at most 64 fit"
        ))
    );
}

#[tokio::test]
async fn a_deferred_start_that_fails_is_shown_failed_and_blocks_nothing() {
    let (m, log) = manager();
    m.put(
        spec("a1", "eth0", &["dport=9"], 0),
        Source::Api,
        false,
        "uid 0",
    )
    .await
    .unwrap();
    let mut a2 = spec("a2", "eth0", &["dport=666"], 0);
    a2.start_delay = Some("50ms".into());
    let (created, view) = m.put(a2, Source::Api, false, "uid 0").await.unwrap();
    assert!(created);
    assert_eq!(view.phase, Phase::Pending);
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let v = m.get("a2").await.unwrap();
        if v.phase != Phase::Pending || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(failed.phase, Phase::Failed);
    assert_eq!(failed.reason.as_deref(), Some("rules: no fq qdisc"));
    // The interface goes on with a1 alone, and a1 can still be changed and deleted.
    assert_eq!(texts(&log.last("eth0")), ["dport=9"]);
    m.put(
        spec("a1", "eth0", &["dport=10"], 0),
        Source::Api,
        true,
        "uid 0",
    )
    .await
    .unwrap();
    assert_eq!(texts(&log.last("eth0")), ["dport=10"]);
    m.delete("a1", "uid 0").await.unwrap();
    assert_eq!(
        m.get("a1").await.unwrap_err(),
        ApiError::NotFound("a1".into())
    );
    // Only the failed a2 is left there: it holds no rules, so the interface is let go.
    assert!(m.status().await.interfaces.is_empty());
    // Replacing the failed experiment gives it a fresh start.
    let (_, view) = m
        .put(
            spec("a2", "eth0", &["dport=7"], 0),
            Source::Api,
            true,
            "uid 0",
        )
        .await
        .unwrap();
    assert_eq!((view.phase, view.reason), (Phase::Active, None));
    assert_eq!(texts(&log.last("eth0")), ["dport=7"]);
}
