//! The daemon's experiments and what they put on each interface.
//!
//! Every change runs under one lock and is applied whole: the new rule set of each interface it
//! touches is compiled and written (a generation flip, so the kernel never sees half of it)
//! before the change is recorded. If the kernel refuses, nothing changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use chaos_common::rules::MAX_RULES;
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{
    audit::Audit,
    worker::{Port, Ports, Target, TargetView, Workers},
};
use crate::{
    experiment::{Experiment, ExperimentError, ExperimentSpec, MAX_EXPERIMENTS},
    guard::Guard,
    report::RuleReport,
    ruleset::{RuleOptions, RuleSetBuilder},
};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request names a field that is wrong: 422.
    Invalid(ExperimentError),
    /// No such experiment: 404.
    NotFound(String),
    /// An experiment of that name exists (create only): 409.
    Conflict(String),
    /// Something went wrong on the daemon's side: 500.
    Internal(String),
    /// The daemon is halted (`chaos halt`): no experiment until `chaos unhalt`: 409.
    Halted(String),
    /// No such campaign: 404.
    NoCampaign(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "{e}"),
            Self::NotFound(n) => write!(f, "no experiment named '{n}'"),
            Self::NoCampaign(n) => write!(f, "no campaign named '{n}'"),
            Self::Conflict(n) => write!(f, "'{n}' is already an API experiment"),
            Self::Internal(m) => f.write_str(m),
            Self::Halted(why) => write!(
                f,
                "the daemon is halted ({why}): no experiment is accepted until `chaos unhalt`"
            ),
        }
    }
}

/// Where an experiment came from: the config file owns its own, and a reload replaces them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Api,
    Config,
    /// The node agent's, from `NetworkFault` resources (`chaos daemon --kubernetes`).
    Kubernetes,
    /// A campaign's (`chaos campaign`): it ends them itself.
    Campaign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Waiting for its start delay.
    Pending,
    /// Its faults are live.
    Active,
    /// Started, but the daemon is paused.
    Paused,
    /// Its deferred start was refused (the reason is in the view): it holds no rules and
    /// blocks nothing until it is replaced or deleted.
    Failed,
}

struct Entry {
    experiment: Experiment,
    source: Source,
    /// Creation order, for precedence; kept when the experiment is replaced.
    seq: u64,
    created: SystemTime,
    started: bool,
    expires_at: Option<Instant>,
    /// Bumped on every replace, so timers of an earlier version do nothing.
    epoch: u64,
    /// Why its deferred start was refused.
    failure: Option<String>,
}

impl Entry {
    /// Whether its rules are in its interface's rule set (unless the daemon is paused).
    fn live(&self) -> bool {
        self.started && self.failure.is_none()
    }

    fn target(&self) -> Target {
        target_of(&self.experiment)
    }
}

/// Where an experiment's rules go.
fn target_of(experiment: &Experiment) -> Target {
    let spec = &experiment.spec;
    Target {
        netns: spec.netns.clone(),
        workload: spec.target.clone(),
        namespace: spec.namespace.clone(),
        // Only a workload target needs it: other targets' keys stay as they were.
        force: spec.target.is_some() && experiment.rules.iter().any(|r| r.force),
        iface: spec.iface.clone(),
    }
}

struct TargetState {
    worker: Box<dyn Port>,
    /// Counter slot of each (experiment, rule index): kept while the experiment exists.
    slots: BTreeMap<(String, usize), u32>,
}

#[derive(Default)]
struct State {
    experiments: BTreeMap<String, Entry>,
    targets: BTreeMap<Target, TargetState>,
    paused: bool,
    /// Why everything was halted (`chaos halt`), until unhalted.
    halted: Option<String>,
    next_seq: u64,
    next_epoch: u64,
}

/// An experiment as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentView {
    #[serde(flatten)]
    pub spec: ExperimentSpec,
    pub source: Source,
    pub phase: Phase,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Seconds left until it reverts by itself, if it has a duration and has started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<f64>,
    /// Why it failed (phase `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The workloads a `target` resolved to, now (empty for an interface target).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetView>,
    /// One entry per rule, in order.
    pub counters: Vec<RuleReport>,
}

/// The daemon's overall state.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    pub paused: bool,
    /// Why the daemon is halted (absent when it is not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    pub experiments: usize,
    pub interfaces: Vec<String>,
}

/// What the daemon allows.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The program's lease on each interface (see `RuntimeConfig::lease_until_ns`).
    pub lease: Duration,
    /// Guarded TCP ports: the excluded ones, and the daemon's own API.
    pub guard: Guard,
    /// Longest experiment; one without a duration ends after this.
    pub max_duration: Duration,
}

pub struct Manager {
    state: Mutex<State>,
    /// Held while a put loads a new target's program outside `state`, until it is in
    /// `state.targets`: one worker per target, as dropping a second would restore the
    /// interface under the first.
    loading: Mutex<()>,
    policy: Policy,
    ports: Box<dyn Ports>,
    audit: Audit,
    campaigns: super::campaigns::Campaigns,
}

impl Manager {
    /// A manager whose interfaces are real: a worker thread each.
    pub fn new(policy: Policy) -> Arc<Self> {
        Self::with_audit(policy, Audit::default())
    }

    /// As [`Manager::new`], recording every change in `audit`.
    pub fn with_audit(policy: Policy, audit: Audit) -> Arc<Self> {
        let ports = Workers {
            lease: policy.lease,
        };
        Self::build(policy, Box::new(ports), audit)
    }

    /// A manager whose interfaces are `ports`.
    pub fn with_ports(policy: Policy, ports: Box<dyn Ports>) -> Arc<Self> {
        Self::build(policy, ports, Audit::default())
    }

    fn build(policy: Policy, ports: Box<dyn Ports>, audit: Audit) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            loading: Mutex::new(()),
            policy,
            ports,
            audit,
            campaigns: Default::default(),
        })
    }

    pub(super) fn campaigns(&self) -> &super::campaigns::Campaigns {
        &self.campaigns
    }

    pub(super) fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(super) fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Every audit record from now on, as it is written (for Kubernetes Events).
    pub fn audit_feed(&self) -> tokio::sync::mpsc::UnboundedReceiver<super::audit::Record> {
        self.audit.feed()
    }

    /// Why the daemon is halted, if it is.
    pub async fn halted(&self) -> Option<String> {
        self.state.lock().await.halted.clone()
    }

    pub fn list_campaigns(&self) -> Vec<super::campaigns::CampaignView> {
        self.campaigns.list()
    }

    pub fn get_campaign(&self, name: &str) -> Result<super::campaigns::CampaignView, ApiError> {
        self.campaigns.get(name)
    }

    pub fn plan_campaign(
        &self,
        name: &str,
        count: usize,
    ) -> Result<Vec<super::campaigns::Planned>, ApiError> {
        self.campaigns.plan(name, count)
    }

    /// The audit trail's records kept in memory, oldest first.
    pub fn history(&self) -> Vec<super::audit::Record> {
        self.audit.recent()
    }

    /// Validates `spec` and applies the daemon's policy: guard rails and the duration cap.
    fn admit(&self, spec: ExperimentSpec) -> Result<Experiment, ExperimentError> {
        let mut experiment = Experiment::try_from(spec)?;
        for (i, rule) in experiment.rules.iter().enumerate() {
            self.policy
                .guard
                .check(rule)
                .map_err(|e| ExperimentError::new(format!("rules[{i}]"), e))?;
        }
        match experiment.duration {
            Some(d) if d > self.policy.max_duration => {
                return Err(ExperimentError::new(
                    "duration",
                    format!(
                        "longer than the daemon allows ({}, --max-duration)",
                        humantime::format_duration(self.policy.max_duration)
                    ),
                ));
            }
            Some(_) => {}
            None => experiment.duration = Some(self.policy.max_duration),
        }
        Ok(experiment)
    }

    /// Creates `spec` (or replaces it, with `replace`). Returns whether it was created, and the
    /// experiment as this change left it (a concurrent delete cannot make that a 404).
    pub async fn put(
        self: &Arc<Self>,
        spec: ExperimentSpec,
        source: Source,
        replace: bool,
        who: &str,
    ) -> Result<(bool, ExperimentView), ApiError> {
        // A start delay counts from the request, not from when the program is ready.
        let asked = Instant::now();
        let experiment = self.admit(spec).map_err(ApiError::Invalid)?;
        // A new target's program is loaded and attached before the lock is taken: that takes
        // 0.5-2 s, in which other experiments' timers must still start and end on time.
        let target = target_of(&experiment);
        let loading = self.loading.lock().await;
        let fresh = if self.state.lock().await.targets.contains_key(&target) {
            None
        } else {
            Some(
                self.ports
                    .start(target.clone())
                    .await
                    .map_err(ApiError::Invalid)?,
            )
        };
        let mut state = self.state.lock().await;
        let name = experiment.spec.name.clone();
        let exists = state.experiments.contains_key(&name);
        let refused = if let Some(why) = &state.halted {
            Some(ApiError::Halted(why.clone()))
        } else if exists && !replace {
            Some(ApiError::Conflict(name.clone()))
        } else if !exists && state.experiments.len() >= MAX_EXPERIMENTS {
            Some(ApiError::Invalid(ExperimentError::new(
                "name",
                format!("the daemon already holds {MAX_EXPERIMENTS} experiments"),
            )))
        } else {
            None
        };
        if let Some(worker) = fresh {
            if refused.is_some() || state.targets.contains_key(&target) {
                // Unused: gone (detached, restored) before another put may load one. Dropping
                // it waits for its thread, off the async threads.
                if let Err(e) = tokio::task::spawn_blocking(move || drop(worker)).await {
                    warn!("stopping an unused worker: {e}");
                }
            } else {
                state.targets.insert(
                    target,
                    TargetState {
                        worker,
                        slots: BTreeMap::new(),
                    },
                );
            }
        }
        drop(loading);
        if let Some(e) = refused {
            return Err(e);
        }
        let old = state.experiments.get(&name);
        let created = old.is_none();
        let mut touched: BTreeSet<Target> = old.iter().map(|e| e.target()).collect();
        let seq = old.map_or(state.next_seq, |e| e.seq);
        let epoch = state.next_epoch;
        let started = experiment.start_delay.is_zero();
        let entry = Entry {
            started,
            // Like a start delay, a duration counts from the request: the program's load
            // (above) comes off it, as it always did.
            expires_at: started
                .then(|| experiment.duration.map(|d| asked + d))
                .flatten(),
            experiment,
            source,
            seq,
            created: old.map_or_else(SystemTime::now, |e| e.created),
            epoch,
            failure: None,
        };
        touched.insert(entry.target());
        let previous = state.experiments.insert(name.clone(), entry);
        if let Err(e) = self.sync(&mut state, &touched).await {
            // Put the old version back (or nothing) and re-apply: the kernel is left as it was.
            match previous {
                Some(p) => state.experiments.insert(name.clone(), p),
                None => state.experiments.remove(&name),
            };
            if let Err(again) = self.sync(&mut state, &touched).await {
                warn!("restoring after a refused change: {again:?}");
            }
            return Err(e);
        }
        state.next_seq += u64::from(created);
        state.next_epoch += 1;
        let entry = &state.experiments[&name];
        if entry.started {
            self.start_clock(&mut state, &name);
        } else {
            let delay = entry.experiment.start_delay.saturating_sub(asked.elapsed());
            self.schedule_start(&name, epoch, delay);
        }
        info!(name, created, "experiment applied");
        let action = if created { "create" } else { "update" };
        self.audit.record(
            who,
            action,
            Some(&name),
            describe(&state.experiments[&name]),
            None,
        );
        self.watch(&name, epoch, &state.experiments[&name].experiment.spec);
        Ok((created, view(&state, &name).await?))
    }

    /// Deletes an experiment: its faults stop at once. If the kernel refuses the rule set
    /// without it, it stays, shown as it still is in the kernel.
    pub async fn delete(&self, name: &str, who: &str) -> Result<(), ApiError> {
        let mut state = self.state.lock().await;
        let entry = state
            .experiments
            .remove(name)
            .ok_or_else(|| ApiError::NotFound(name.to_owned()))?;
        let touched = BTreeSet::from([entry.target()]);
        if let Err(e) = self.sync(&mut state, &touched).await {
            state.experiments.insert(name.to_owned(), entry);
            if let Err(again) = self.sync(&mut state, &touched).await {
                warn!("restoring after a refused delete: {again:?}");
            }
            return Err(e);
        }
        info!(name, "experiment deleted");
        self.audit
            .record(who, "delete", Some(name), describe(&entry), None);
        Ok(())
    }

    /// Replaces every config-file experiment with `experiments`, as one change.
    pub async fn replace_config(
        self: &Arc<Self>,
        experiments: Vec<ExperimentSpec>,
    ) -> Result<(), ApiError> {
        // Validate all before touching anything: a bad file leaves the running set alone.
        let valid = experiments
            .into_iter()
            .map(|spec| self.admit(spec))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::Invalid)?;
        // Its changes start workers under the state lock: not while a put loads one.
        let _loading = self.loading.lock().await;
        let mut state = self.state.lock().await;
        if let Some(why) = &state.halted
            && !valid.is_empty()
        {
            return Err(ApiError::Halted(why.clone()));
        }
        for e in &valid {
            if state
                .experiments
                .get(&e.spec.name)
                .is_some_and(|old| old.source == Source::Api)
            {
                return Err(ApiError::Conflict(e.spec.name.clone()));
            }
        }
        let saved: Vec<(String, Entry)> = {
            let names: Vec<String> = state
                .experiments
                .iter()
                .filter(|(_, e)| e.source == Source::Config)
                .map(|(n, _)| n.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| state.experiments.remove(&n).map(|e| (n, e)))
                .collect()
        };
        let mut touched: BTreeSet<Target> = saved.iter().map(|(_, e)| e.target()).collect();
        let mut fresh = Vec::new();
        for experiment in valid {
            let name = experiment.spec.name.clone();
            let (seq, epoch) = (state.next_seq, state.next_epoch);
            state.next_seq += 1;
            state.next_epoch += 1;
            let started = experiment.start_delay.is_zero();
            let entry = Entry {
                started,
                expires_at: started
                    .then(|| experiment.duration.map(|d| Instant::now() + d))
                    .flatten(),
                experiment,
                source: Source::Config,
                seq,
                created: SystemTime::now(),
                epoch,
                failure: None,
            };
            touched.insert(entry.target());
            fresh.push(name.clone());
            state.experiments.insert(name, entry);
        }
        if let Err(e) = self.sync(&mut state, &touched).await {
            for name in &fresh {
                state.experiments.remove(name);
            }
            for (name, entry) in saved {
                state.experiments.insert(name, entry);
            }
            if let Err(again) = self.sync(&mut state, &touched).await {
                warn!("restoring after a refused reload: {again:?}");
            }
            return Err(e);
        }
        for (name, entry) in &saved {
            self.audit
                .record("config", "delete", Some(name), describe(entry), None);
        }
        for name in fresh {
            self.audit.record(
                "config",
                "create",
                Some(&name),
                describe(&state.experiments[&name]),
                None,
            );
            let entry = &state.experiments[&name];
            self.watch(&name, entry.epoch, &entry.experiment.spec);
            if entry.started {
                self.start_clock(&mut state, &name);
            } else {
                self.schedule_start(&name, entry.epoch, entry.experiment.start_delay);
            }
        }
        Ok(())
    }

    /// Stops (`paused`) or restarts every fault at once.
    pub async fn set_paused(&self, paused: bool, who: &str) -> Result<(), ApiError> {
        let mut state = self.state.lock().await;
        let was = state.paused;
        state.paused = paused;
        let all: BTreeSet<Target> = state.targets.keys().cloned().collect();
        if let Err(e) = self.sync(&mut state, &all).await {
            state.paused = was;
            return Err(e);
        }
        info!(paused, "pause state changed");
        let action = if paused { "pause" } else { "resume" };
        self.audit.record(who, action, None, String::new(), None);
        Ok(())
    }

    /// Ends every experiment at once, whoever owns it, and refuses new ones until
    /// [`Manager::unhalt`]: the big red button.
    pub async fn halt(&self, who: &str, why: &str) -> Result<(), ApiError> {
        let mut state = self.state.lock().await;
        state.halted = Some(why.to_owned());
        let gone = std::mem::take(&mut state.experiments);
        self.campaigns.forget_running();
        let all: BTreeSet<Target> = state.targets.keys().cloned().collect();
        let result = self.sync(&mut state, &all).await;
        let names: Vec<&str> = gone.keys().map(String::as_str).collect();
        warn!(who, why, "halted: every experiment ended");
        self.audit.record(
            who,
            "halt",
            None,
            format!(
                "ended {}",
                if names.is_empty() {
                    "nothing".to_owned()
                } else {
                    names.join(", ")
                }
            ),
            Some(why.to_owned()),
        );
        result
    }

    /// Accepts experiments again after a halt.
    pub async fn unhalt(&self, who: &str) {
        let mut state = self.state.lock().await;
        if state.halted.take().is_some() {
            info!(who, "unhalted");
            self.audit.record(who, "unhalt", None, String::new(), None);
        }
    }

    pub async fn list(&self) -> Result<Vec<ExperimentView>, ApiError> {
        let state = self.state.lock().await;
        let mut views = Vec::new();
        for name in state.experiments.keys() {
            views.push(view(&state, name).await?);
        }
        Ok(views)
    }

    pub async fn get(&self, name: &str) -> Result<ExperimentView, ApiError> {
        let state = self.state.lock().await;
        if !state.experiments.contains_key(name) {
            return Err(ApiError::NotFound(name.to_owned()));
        }
        view(&state, name).await
    }

    pub async fn status(&self) -> StatusView {
        let state = self.state.lock().await;
        StatusView {
            paused: state.paused,
            halted: state.halted.clone(),
            experiments: state.experiments.len(),
            interfaces: state.targets.keys().map(|t| t.to_string()).collect(),
        }
    }

    /// Stops every worker: all interfaces detached and restored.
    pub async fn shutdown(&self) {
        self.campaigns.clear();
        let mut state = self.state.lock().await;
        state.experiments.clear();
        // Dropping a worker waits for its thread to detach and restore; off the async threads.
        let targets = std::mem::take(&mut state.targets);
        if let Err(e) = tokio::task::spawn_blocking(move || drop(targets)).await {
            warn!("stopping workers: {e}");
        }
    }

    /// Recomputes and applies the rule set of each of `targets`, starting workers for new
    /// interfaces and stopping those with no experiments left.
    async fn sync(&self, state: &mut State, targets: &BTreeSet<Target>) -> Result<(), ApiError> {
        for target in targets {
            let mut on_target: Vec<(&String, &Entry)> = state
                .experiments
                .iter()
                .filter(|(_, e)| &e.target() == target)
                .collect();
            // Failed experiments hold no rules: an interface with nothing else needs no worker
            // (and one whose namespace is gone must not be retried on every change).
            if on_target.iter().all(|(_, e)| e.failure.is_some()) {
                if let Some(gone) = state.targets.remove(target) {
                    tokio::task::spawn_blocking(move || drop(gone))
                        .await
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                }
                continue;
            }
            // Precedence: higher priority first, then the earlier experiment.
            on_target.sort_by_key(|(_, e)| (-i64::from(e.experiment.spec.priority), e.seq));
            let wanted: Vec<(String, usize)> = on_target
                .iter()
                .flat_map(|(n, e)| (0..e.experiment.rules.len()).map(move |i| ((*n).clone(), i)))
                .collect();
            if wanted.len() > MAX_RULES as usize {
                return Err(ApiError::Invalid(ExperimentError::new(
                    "rules",
                    format!(
                        "{target} would carry {} rules; at most {MAX_RULES} fit",
                        wanted.len()
                    ),
                )));
            }
            if !state.targets.contains_key(target) {
                let worker = self
                    .ports
                    .start(target.clone())
                    .await
                    .map_err(ApiError::Invalid)?;
                state.targets.insert(
                    target.clone(),
                    TargetState {
                        worker,
                        slots: BTreeMap::new(),
                    },
                );
            }
            let ts = state.targets.get_mut(target).expect("inserted above");
            // Slots follow rules: free those of rules gone, give new rules free ones (zeroed).
            ts.slots.retain(|key, _| wanted.contains(key));
            let mut fresh = Vec::new();
            for key in &wanted {
                if !ts.slots.contains_key(key) {
                    let used: BTreeSet<u32> = ts.slots.values().copied().collect();
                    let slot = (0..MAX_RULES)
                        .find(|s| !used.contains(s))
                        .expect("at most MAX_RULES rules");
                    ts.slots.insert(key.clone(), slot);
                    fresh.push(slot);
                }
            }
            let mut builder = RuleSetBuilder::new(&self.policy.guard)
                .hashed_capacity(self.ports.capacity().hashed);
            let started = on_target.iter().filter(|(_, e)| e.live() && !state.paused);
            for (name, entry) in started {
                for (i, rule) in entry.experiment.rules.iter().enumerate() {
                    // The program ends each experiment itself at its deadline, even if the
                    // daemon froze.
                    let options = RuleOptions {
                        slot: Some(ts.slots[&((*name).clone(), i)]),
                        expires_at: entry.expires_at,
                        dry_run: entry.experiment.spec.dry_run,
                    };
                    builder = builder.rule(rule.clone(), options);
                }
            }
            let set = builder
                .build()
                .map_err(|e| ApiError::Invalid(ExperimentError::new("rules", e.to_string())))?;
            ts.worker
                .apply(set, fresh)
                .await
                .map_err(|e| ApiError::Invalid(ExperimentError::new("rules", e)))?;
        }
        Ok(())
    }

    /// Starts the probes of the experiment's stop conditions; each runs until the experiment
    /// is gone, replaced (another epoch) or failed, or it trips.
    fn watch(self: &Arc<Self>, name: &str, epoch: u64, spec: &ExperimentSpec) {
        for (i, condition) in spec.stop_conditions.iter().enumerate() {
            let field = format!("stop_conditions[{i}]");
            // Checked when the experiment was admitted.
            let Ok(probe) = condition.probe(&field) else {
                continue;
            };
            let (me, name) = (Arc::downgrade(self), name.to_owned());
            tokio::spawn(async move {
                let alive = || {
                    let (me, name) = (me.upgrade(), name.clone());
                    async move {
                        match me {
                            Some(me) => me.watched(&name, epoch).await,
                            None => false,
                        }
                    }
                };
                if let Some(why) = probe.watch(alive).await
                    && let Some(me) = me.upgrade()
                {
                    me.trip(&name, epoch, &format!("{field}: {why}")).await;
                }
            });
        }
    }

    async fn watched(&self, name: &str, epoch: u64) -> bool {
        let state = self.state.lock().await;
        state
            .experiments
            .get(name)
            .is_some_and(|e| e.epoch == epoch && e.failure.is_none())
    }

    /// A stop condition tripped: the experiment's faults go at once, and it stays, failed, with
    /// the reason (in its view, `/metrics` and the audit trail) until it is deleted.
    async fn trip(&self, name: &str, epoch: u64, why: &str) {
        let mut state = self.state.lock().await;
        let Some(entry) = state
            .experiments
            .get_mut(name)
            .filter(|e| e.epoch == epoch && e.failure.is_none())
        else {
            return;
        };
        entry.failure = Some(format!("stop condition tripped: {why}"));
        entry.expires_at = None;
        let what = describe(entry);
        let touched = BTreeSet::from([entry.target()]);
        if let Err(e) = self.sync(&mut state, &touched).await {
            warn!(name, "removing a tripped experiment's faults: {e}");
        }
        warn!(name, why, "stop condition tripped: its faults are gone");
        self.audit
            .record("daemon", "trip", Some(name), what, Some(why.to_owned()));
    }

    /// Arms the timer that deletes the experiment at its end (set when it started).
    fn start_clock(self: &Arc<Self>, state: &mut State, name: &str) {
        let Some(entry) = state.experiments.get_mut(name) else {
            return;
        };
        if let Some(at) = entry.expires_at {
            let (me, name, epoch) = (self.clone(), name.to_owned(), entry.epoch);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                me.expire(&name, epoch).await;
            });
        }
    }

    fn schedule_start(self: &Arc<Self>, name: &str, epoch: u64, delay: Duration) {
        let (me, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.start(&name, epoch).await;
        });
    }

    async fn start(self: &Arc<Self>, name: &str, epoch: u64) {
        let mut state = self.state.lock().await;
        let Some(entry) = state.experiments.get_mut(name).filter(|e| e.epoch == epoch) else {
            return;
        };
        entry.started = true;
        entry.expires_at = entry.experiment.duration.map(|d| Instant::now() + d);
        let touched = BTreeSet::from([entry.target()]);
        match self.sync(&mut state, &touched).await {
            Ok(()) => {
                info!(name, "experiment started");
                let what = describe(&state.experiments[name]);
                self.audit.record("daemon", "start", Some(name), what, None);
                self.start_clock(&mut state, name);
            }
            Err(e) => {
                // It fails alone: out of the rule set again, shown as failed with the reason,
                // and the interface goes on with the others' rules.
                let reason = match e {
                    ApiError::Invalid(ExperimentError { field, message }) => {
                        format!("{field}: {message}")
                    }
                    other => format!("{other:?}"),
                };
                warn!(name, reason, "experiment failed to start");
                self.audit.record(
                    "daemon",
                    "fail",
                    Some(name),
                    String::new(),
                    Some(reason.clone()),
                );
                if let Some(entry) = state.experiments.get_mut(name) {
                    entry.failure = Some(reason);
                    entry.expires_at = None;
                }
                if let Err(again) = self.sync(&mut state, &touched).await {
                    warn!("restoring after a failed start: {again:?}");
                }
            }
        }
    }

    async fn expire(&self, name: &str, epoch: u64) {
        let mut state = self.state.lock().await;
        if state.experiments.get(name).is_none_or(|e| e.epoch != epoch) {
            return;
        }
        let entry = state.experiments.remove(name).expect("checked above");
        let touched = BTreeSet::from([entry.target()]);
        match self.sync(&mut state, &touched).await {
            Ok(()) => {
                info!(name, "experiment ended: its duration is over");
                self.audit.record(
                    "daemon",
                    "end",
                    Some(name),
                    describe(&entry),
                    Some("its duration is over".into()),
                );
            }
            Err(e) => warn!(name, "ending: {e:?}"),
        }
    }
}

/// What an experiment does, for the audit trail: its place and its rules.
fn describe(entry: &Entry) -> String {
    let spec = &entry.experiment.spec;
    let place = match (&spec.target, &spec.netns) {
        (Some(t), _) => format!("target {t}"),
        (None, Some(ns)) => format!("{} in netns {ns}", spec.iface),
        (None, None) => spec.iface.clone(),
    };
    format!("{place}: {}", spec.rules.join(" | "))
}

async fn view(state: &State, name: &str) -> Result<ExperimentView, ApiError> {
    let entry = &state.experiments[name];
    let target = entry.target();
    let mut counters = Vec::new();
    let mut gone = None;
    let mut targets = Vec::new();
    if let Some(ts) = state.targets.get(&target) {
        let slots: Vec<u32> = (0..entry.experiment.rules.len())
            .filter_map(|i| ts.slots.get(&(name.to_owned(), i)).copied())
            .collect();
        // A worker whose target is gone (a workload's process ended) has stopped: the
        // experiment is shown failed, the rest of the daemon goes on.
        let values = match ts.worker.counters(slots).await {
            Ok(values) => values,
            Err(e) if e == super::worker::GONE && target.workload.is_some() => {
                gone = Some(format!(
                    "target gone: {} ended",
                    target.workload.as_deref().unwrap_or("the workload")
                ));
                Vec::new()
            }
            Err(e) => return Err(ApiError::Internal(e)),
        };
        if gone.is_none() {
            targets = match ts.worker.targets().await {
                Ok(views) => views,
                Err(e) if e == super::worker::GONE => Vec::new(),
                Err(e) => return Err(ApiError::Internal(e)),
            };
        }
        counters = entry
            .experiment
            .rules
            .iter()
            .zip(&values)
            .enumerate()
            .map(|(i, (rule, c))| RuleReport::new(i, rule, c))
            .collect();
    }
    Ok(ExperimentView {
        spec: entry.experiment.spec.clone(),
        source: entry.source,
        phase: match (entry.started, state.paused) {
            _ if entry.failure.is_some() || gone.is_some() => Phase::Failed,
            (false, _) => Phase::Pending,
            (true, true) => Phase::Paused,
            (true, false) => Phase::Active,
        },
        created: entry
            .created
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        expires_in_seconds: entry
            .expires_at
            .map(|t| t.saturating_duration_since(Instant::now()).as_secs_f64()),
        reason: entry.failure.clone().or(gone),
        targets,
        counters,
    })
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
