//! Campaigns: random experiments over time, safe to leave running.
//!
//! A campaign's schedule and every draw in it (gap, length, target, fault) are a pure function
//! of its seed, its window's occurrences and the slot's place in its occurrence: whoever
//! computes it gets the same plan, so the node agents of a cluster agree without talking, and a
//! seed replays a schedule exactly. The daemon (`daemon::campaigns`) turns slots into
//! experiments.

pub mod window;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{
    daemon::probe::StopCondition,
    duration::{self, Bounds},
    experiment::{ExperimentError, ExperimentSpec},
    rule::Rule,
};
pub use window::{Occurrence, Window};

/// Longest campaign name: its experiments are named `NAME-UNIXSECONDS`, and those are DNS
/// labels (63).
pub const MAX_NAME_LEN: usize = 40;

/// A campaign as written by users (TOML `[[campaign]]`, the API's JSON, a `NetworkFault`'s
/// `campaign:`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    pub name: String,
    /// When experiments may run: `Mon-Fri 10:00-16:00 Europe/Berlin`; always when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Gap from one experiment's start to the next: `15m..45m`, drawn uniformly, or `30m`.
    pub every: String,
    /// Length of each experiment: `1m..5m` or `2m`.
    pub duration: String,
    /// Most experiments of this campaign at once (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub max_concurrent: u32,
    /// Each experiment picks one, by weight: `"container=cart-*"` or
    /// `{ weight = 2, target = "pods=app=payments" }`.
    pub targets: Vec<Weighted>,
    /// The Kubernetes namespace of `pods=` targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Interface in the target; its default-route interface when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iface: String,
    /// Each experiment picks one, by weight: `{ weight = 3, rule = "proto=tcp delay=200ms" }`.
    pub faults: Vec<Fault>,
    /// The same seed gives the same schedule; the daemon draws one when absent, and shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Probes that stop the whole campaign when one trips: its experiments end at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_conditions: Vec<StopCondition>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// A target, alone (weight 1) or weighted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Weighted {
    Plain(String),
    Weighted { weight: u32, target: String },
}

impl Weighted {
    pub fn target(&self) -> &str {
        match self {
            Self::Plain(t) | Self::Weighted { target: t, .. } => t,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            Self::Plain(_) => 1,
            Self::Weighted { weight, .. } => *weight,
        }
    }
}

/// One entry of the fault menu: a rule in `chaos run`'s language and its weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// How often it is drawn against the others (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub weight: u32,
    /// A rule in chaos's rule language.
    pub rule: String,
}

/// A range `lo..hi` (inclusive, millisecond steps) or one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub lo: Duration,
    pub hi: Duration,
}

impl Span {
    fn parse(text: &str, bounds: Bounds) -> Result<Self, String> {
        let (lo, hi) = text.split_once("..").unwrap_or((text, text));
        let lo = duration::parse(lo.trim(), bounds).map_err(|e| e.to_string())?;
        let hi = duration::parse(hi.trim(), bounds).map_err(|e| e.to_string())?;
        if hi < lo {
            return Err(format!("'{text}': the upper end is below the lower"));
        }
        Ok(Self { lo, hi })
    }

    /// A uniform draw, from 64 random bits.
    fn draw(self, bits: u64) -> Duration {
        let (lo, hi) = (self.lo.as_millis() as u64, self.hi.as_millis() as u64);
        Duration::from_millis(lo + bits % (hi - lo + 1))
    }
}

/// A campaign that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Campaign {
    pub spec: CampaignSpec,
    /// The spec's or a drawn one: always set once admitted.
    pub seed: u64,
    /// `None`: always open, occurrences are UTC days and experiments may cross them.
    pub window: Option<Window>,
    pub every: Span,
    pub duration: Span,
    pub rules: Vec<Rule>,
}

/// Gaps and lengths below a second are not what campaigns are for, and a second keeps the
/// experiments' names (`NAME-UNIXSECONDS`) unique.
const CAMPAIGN_SPAN: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(7 * 24 * 3600),
    why_min: "a campaign's experiments are at least a second apart and long",
};

/// Most targets or faults in a menu.
const MAX_MENU: usize = 64;

impl Campaign {
    /// Validates `spec`; a missing seed becomes `default_seed`.
    pub fn new(mut spec: CampaignSpec, default_seed: u64) -> Result<Self, ExperimentError> {
        let bad = |field: &str, message: String| ExperimentError::new(field, message);
        if spec.name.len() > MAX_NAME_LEN {
            return Err(bad(
                "name",
                format!(
                    "longer than {MAX_NAME_LEN} characters (its experiments add the start time)"
                ),
            ));
        }
        crate::experiment::validate_name(&spec.name)?;
        let window = spec
            .window
            .as_deref()
            .map(Window::parse)
            .transpose()
            .map_err(|e| bad("window", e))?;
        let every = Span::parse(&spec.every, CAMPAIGN_SPAN).map_err(|e| bad("every", e))?;
        let duration =
            Span::parse(&spec.duration, CAMPAIGN_SPAN).map_err(|e| bad("duration", e))?;
        if spec.max_concurrent == 0 {
            return Err(bad("max_concurrent", "at least 1".into()));
        }
        for (field, len) in [
            ("targets", spec.targets.len()),
            ("faults", spec.faults.len()),
        ] {
            if !(1..=MAX_MENU).contains(&len) {
                return Err(bad(field, format!("1 to {MAX_MENU} entries, {len} given")));
            }
        }
        for (i, t) in spec.targets.iter().enumerate() {
            if t.weight() == 0 {
                return Err(bad(&format!("targets[{i}].weight"), "at least 1".into()));
            }
        }
        for (i, f) in spec.faults.iter().enumerate() {
            if f.weight == 0 {
                return Err(bad(&format!("faults[{i}].weight"), "at least 1".into()));
            }
        }
        if spec.stop_conditions.len() > 8 {
            return Err(bad("stop_conditions", "at most 8".into()));
        }
        for (i, c) in spec.stop_conditions.iter().enumerate() {
            c.probe(&format!("stop_conditions[{i}]"))?;
        }
        spec.seed.get_or_insert(default_seed);
        let seed = spec.seed.unwrap_or(default_seed);
        let campaign = Self {
            rules: Vec::new(),
            seed,
            window,
            every,
            duration,
            spec,
        };
        // Every experiment it can make must be valid: checked once, with the field named.
        let mut rules = Vec::new();
        for (i, t) in campaign.spec.targets.iter().enumerate() {
            let fault = &campaign.spec.faults[0];
            crate::experiment::Experiment::try_from(campaign.experiment_spec(
                "check-0",
                t.target(),
                &fault.rule,
                duration.lo,
            ))
            .map_err(|e| bad(&format!("targets[{i}]"), e.to_string()))?;
        }
        for (i, f) in campaign.spec.faults.iter().enumerate() {
            let rule: Rule = f.rule.parse().map_err(|e: crate::rule::RuleError| {
                bad(&format!("faults[{i}].rule"), e.to_string())
            })?;
            rules.push(rule);
        }
        Ok(Self { rules, ..campaign })
    }

    /// The experiment a slot becomes.
    pub fn experiment_spec(
        &self,
        name: &str,
        target: &str,
        rule: &str,
        length: Duration,
    ) -> ExperimentSpec {
        ExperimentSpec {
            name: name.to_owned(),
            iface: self.spec.iface.clone(),
            netns: None,
            target: Some(target.to_owned()),
            namespace: self
                .spec
                .namespace
                .clone()
                .filter(|_| target.starts_with("pods=")),
            rules: vec![rule.to_owned()],
            duration: Some(format!("{}ms", length.as_millis())),
            start_delay: None,
            priority: 0,
            dry_run: false,
            stop_conditions: Vec::new(),
        }
    }

    /// The name of the experiment of a slot.
    pub fn experiment_name(&self, slot: &Slot) -> String {
        format!("{}-{}", self.spec.name, slot.start.as_second())
    }

    /// The slots whose experiment runs at `now` (none the schedule skips).
    pub fn live_at(&self, now: Timestamp) -> Vec<Slot> {
        let longest = SignedDuration::try_from(self.duration.hi).unwrap_or_default();
        self.slots_from(now - longest)
            .take_while(|s| s.start <= now)
            .filter(|s| s.skipped.is_none() && s.end() > now)
            .collect()
    }

    /// One of `n` things (a pod among those selected) for `slot`, drawn like its target.
    pub fn pick(&self, slot: &Slot, n: usize) -> usize {
        let o = slot.occurrence.as_second() as u64;
        (mix(self.seed, o, slot.index, 4) % n.max(1) as u64) as usize
    }

    /// Slots starting at or after `from`, in order (skipped ones too, with the reason).
    pub fn slots_from(&self, from: Timestamp) -> impl Iterator<Item = Slot> + '_ {
        let window = self.window.clone().unwrap_or_else(Window::always);
        let mut occurrence = window.at_or_after(from);
        let mut pending = std::collections::VecDeque::new();
        std::iter::from_fn(move || {
            loop {
                if let Some(slot) = pending.pop_front() {
                    return Some(slot);
                }
                let o = occurrence?;
                let carry = window
                    .before(o)
                    .map(|p| self.chain(p, &[]))
                    .unwrap_or_default();
                pending.extend(
                    self.chain(o, &carry)
                        .into_iter()
                        .filter(|s: &Slot| s.start >= from),
                );
                occurrence = window.at_or_after(o.end);
            }
        })
    }

    /// The slots of one occurrence. `before`: the previous occurrence's slots, whose
    /// experiments may still run into this one (only without a window).
    fn chain(&self, o: Occurrence, before: &[Slot]) -> Vec<Slot> {
        let mut running: Vec<Timestamp> = before
            .iter()
            .filter(|s| s.skipped.is_none())
            .map(Slot::end)
            .filter(|end| *end > o.start)
            .collect();
        let mut slots = Vec::new();
        let mut at = o.start;
        for index in 0u64.. {
            let draw = |what: u64| mix(self.seed, o.start.as_second() as u64, index, what);
            let gap = self.every.draw(draw(0));
            at = match at.checked_add(SignedDuration::try_from(gap).unwrap_or_default()) {
                Ok(t) if t < o.end => t,
                _ => break,
            };
            let length = self.duration.draw(draw(1));
            let mut slot = Slot {
                occurrence: o.start,
                index,
                start: at,
                length,
                target: weighted(self.spec.targets.iter().map(Weighted::weight), draw(2)),
                fault: weighted(self.spec.faults.iter().map(|f| f.weight), draw(3)),
                skipped: None,
            };
            running.retain(|end| *end > at);
            if self.window.is_some() && slot.end() > o.end {
                slot.skipped = Some(Skip::OutlastsWindow);
            } else if running.len() >= self.spec.max_concurrent as usize {
                slot.skipped = Some(Skip::MaxConcurrent(self.spec.max_concurrent));
            } else {
                running.push(slot.end());
            }
            slots.push(slot);
        }
        slots
    }
}

/// One planned experiment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// When its occurrence opened, and its place in it.
    pub occurrence: Timestamp,
    pub index: u64,
    pub start: Timestamp,
    pub length: Duration,
    /// Indexes into the campaign's targets and faults.
    pub target: usize,
    pub fault: usize,
    /// Why the schedule itself leaves it out.
    pub skipped: Option<Skip>,
}

impl Slot {
    pub fn end(&self) -> Timestamp {
        self.start + SignedDuration::try_from(self.length).unwrap_or_default()
    }
}

/// Why the schedule leaves a slot out (the daemon adds its own: paused, halted, refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    OutlastsWindow,
    MaxConcurrent(u32),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutlastsWindow => f.write_str("it would outlast the window"),
            Self::MaxConcurrent(n) => write!(f, "max_concurrent ({n}) experiments are running"),
        }
    }
}

/// 64 random bits from the seed, the occurrence, the slot and which draw: SplitMix64's
/// finaliser over each input in turn, so neighbouring inputs give unrelated outputs.
fn mix(seed: u64, occurrence: u64, index: u64, what: u64) -> u64 {
    [occurrence, index, what]
        .into_iter()
        .fold(splitmix(seed), |h, x| splitmix(h ^ splitmix(x)))
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The index drawn from `weights` with 64 random bits.
fn weighted(weights: impl Iterator<Item = u32> + Clone, bits: u64) -> usize {
    let total: u64 = weights.clone().map(u64::from).sum();
    let mut r = bits % total.max(1);
    for (i, w) in weights.enumerate() {
        if r < u64::from(w) {
            return i;
        }
        r -= u64::from(w);
    }
    0
}

#[cfg(test)]
mod tests;
