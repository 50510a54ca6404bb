//! The daemon's campaigns: each is a task that sleeps until its next slot and turns it into an
//! experiment through the [`Manager`], as an API client would (so guard rails, halt, the audit
//! trail and `/metrics` apply to it unchanged).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime},
};

use jiff::Timestamp;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::state::{ApiError, Manager, Source};
use crate::{
    campaign::{Campaign, CampaignSpec, Slot},
    duration::Pretty,
    experiment::ExperimentError,
};

/// Most campaigns one daemon holds.
pub const MAX_CAMPAIGNS: usize = 32;
/// Handled slots kept for `chaos campaign get`.
const RECENT: usize = 20;
/// How long before its slot an experiment is created, with a start delay: loading and attaching
/// the program in a workload that has none takes 0.5-2 s, which would otherwise come off the
/// fault's length; at the slot the start is a rule-set write.
const PREPARE: Duration = Duration::from_secs(3);

/// A slot as shown: what it makes, and what became of it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Planned {
    pub experiment: String,
    /// RFC 3339, UTC.
    pub start: String,
    pub duration: String,
    pub target: String,
    pub rule: String,
    /// `started`, or `skipped: WHY`; absent while ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    Active,
    Paused,
    /// A stop condition tripped: no more experiments until it is replaced.
    Stopped,
}

#[derive(Clone, Debug, Serialize)]
pub struct CampaignView {
    /// As given, with the seed in use filled in.
    pub spec: CampaignSpec,
    pub source: Source,
    pub state: CampaignState,
    /// Why it stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<Planned>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Planned>,
    /// Experiments it started.
    pub started: u64,
    /// Slots skipped, by reason: outlasts_window, max_concurrent, paused, halted, refused.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Its experiments running now.
    pub running: Vec<String>,
    /// The last handled slots, newest last.
    pub recent: Vec<Planned>,
}

struct Run {
    campaign: Arc<Campaign>,
    source: Source,
    created: SystemTime,
    /// Bumped on every replace, so a task or probe of an earlier version does nothing.
    epoch: u64,
    paused: bool,
    stopped: Option<String>,
    next: Option<Planned>,
    recent: VecDeque<Planned>,
    started: u64,
    skipped: BTreeMap<&'static str, u64>,
    /// Experiments it started and when they end.
    live: Vec<(String, Timestamp)>,
    tasks: Vec<AbortHandle>,
}

impl Run {
    fn running(&mut self) -> Vec<String> {
        let now = Timestamp::now();
        self.live.retain(|(_, end)| *end > now);
        self.live.iter().map(|(n, _)| n.clone()).collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.tasks.iter().for_each(AbortHandle::abort);
    }
}

/// Every campaign of a daemon, owned by its [`Manager`].
#[derive(Default)]
pub struct Campaigns {
    runs: Mutex<BTreeMap<String, Run>>,
    next_epoch: Mutex<u64>,
}

impl Campaigns {
    fn runs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Run>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot as shown.
    fn planned(campaign: &Campaign, slot: &Slot, outcome: Option<String>) -> Planned {
        Planned {
            experiment: campaign.experiment_name(slot),
            start: slot.start.to_string(),
            duration: Pretty(slot.length).to_string(),
            target: campaign.spec.targets[slot.target].target().to_owned(),
            rule: campaign.spec.faults[slot.fault].rule.clone(),
            outcome,
        }
    }

    fn view(run: &mut Run) -> CampaignView {
        let state = match (&run.stopped, run.paused) {
            (Some(_), _) => CampaignState::Stopped,
            (None, true) => CampaignState::Paused,
            (None, false) => CampaignState::Active,
        };
        CampaignView {
            spec: run.campaign.spec.clone(),
            source: run.source,
            state,
            reason: run.stopped.clone(),
            created: run
                .created
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            next: run.next.clone(),
            last: run.recent.back().cloned(),
            started: run.started,
            skipped: run.skipped.clone(),
            running: run.running(),
            recent: run.recent.iter().cloned().collect(),
        }
    }

    pub fn list(&self) -> Vec<CampaignView> {
        let mut runs = self.runs();
        runs.values_mut().map(Self::view).collect()
    }

    pub fn get(&self, name: &str) -> Result<CampaignView, ApiError> {
        let mut runs = self.runs();
        let run = runs
            .get_mut(name)
            .ok_or_else(|| ApiError::NoCampaign(name.to_owned()))?;
        Ok(Self::view(run))
    }

    /// The next `count` slots from now, as planned (skips the schedule makes included).
    pub fn plan(&self, name: &str, count: usize) -> Result<Vec<Planned>, ApiError> {
        let campaign = self
            .runs()
            .get(name)
            .map(|r| r.campaign.clone())
            .ok_or_else(|| ApiError::NoCampaign(name.to_owned()))?;
        Ok(campaign
            .slots_from(Timestamp::now())
            .take(count)
            .map(|s| {
                let outcome = s.skipped.as_ref().map(|why| format!("skipped: {why}"));
                Self::planned(&campaign, &s, outcome)
            })
            .collect())
    }

    /// Every campaign's experiments were ended by someone else (a halt).
    pub fn forget_running(&self) {
        self.runs().values_mut().for_each(|r| r.live.clear());
    }

    /// Drops every campaign (their tasks stop): the daemon is shutting down.
    pub fn clear(&self) {
        let runs = std::mem::take(&mut *self.runs());
        drop(runs);
    }

    /// Names of the campaigns from `source`.
    pub fn names_from(&self, source: Source) -> Vec<String> {
        self.runs()
            .iter()
            .filter(|(_, r)| r.source == source)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Manager {
    /// Validates `spec` against the daemon's policy; a missing seed is drawn now.
    pub fn admit_campaign(&self, spec: CampaignSpec) -> Result<Campaign, ExperimentError> {
        let campaign = Campaign::new(spec, rand_seed())?;
        for (i, rule) in campaign.rules.iter().enumerate() {
            self.policy()
                .guard
                .check(rule)
                .map_err(|e| ExperimentError::new(format!("faults[{i}].rule"), e))?;
        }
        if campaign.duration.hi > self.policy().max_duration {
            return Err(ExperimentError::new(
                "duration",
                format!(
                    "longer than the daemon allows ({}, --max-duration)",
                    Pretty(self.policy().max_duration)
                ),
            ));
        }
        Ok(campaign)
    }

    /// Creates or replaces a campaign. A replaced one's experiments end first.
    pub async fn put_campaign(
        self: &Arc<Self>,
        spec: CampaignSpec,
        source: Source,
        who: &str,
    ) -> Result<(bool, CampaignView), ApiError> {
        let campaign = Arc::new(self.admit_campaign(spec).map_err(ApiError::Invalid)?);
        if let Some(why) = self.halted().await {
            return Err(ApiError::Halted(why));
        }
        let name = campaign.spec.name.clone();
        let old = {
            let mut runs = self.campaigns().runs();
            if !runs.contains_key(&name) && runs.len() >= MAX_CAMPAIGNS {
                return Err(ApiError::Invalid(ExperimentError::new(
                    "name",
                    format!("the daemon already holds {MAX_CAMPAIGNS} campaigns"),
                )));
            }
            runs.remove(&name)
        };
        let created = old.is_none();
        if let Some(mut old) = old {
            self.end_experiments(old.running(), who).await;
        }
        let epoch = {
            let mut e = self
                .campaigns()
                .next_epoch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *e += 1;
            *e
        };
        let mut run = Run {
            campaign: campaign.clone(),
            source,
            created: SystemTime::now(),
            epoch,
            paused: false,
            stopped: None,
            next: None,
            recent: VecDeque::new(),
            started: 0,
            skipped: BTreeMap::new(),
            live: Vec::new(),
            tasks: Vec::new(),
        };
        run.tasks.push(
            tokio::spawn(drive(
                Arc::downgrade(self),
                name.clone(),
                epoch,
                campaign.clone(),
            ))
            .abort_handle(),
        );
        for (i, condition) in campaign.spec.stop_conditions.iter().enumerate() {
            let field = format!("stop_conditions[{i}]");
            let Ok(probe) = condition.probe(&field) else {
                continue;
            };
            let (me, name) = (Arc::downgrade(self), name.clone());
            run.tasks.push(
                // Aborted with the campaign: it only needs the daemon alive.
                tokio::spawn(async move {
                    if let Some(why) = probe
                        .watch(|| std::future::ready(me.strong_count() > 0))
                        .await
                        && let Some(me) = me.upgrade()
                    {
                        me.stop_campaign(&name, epoch, &format!("{field}: {why}"))
                            .await;
                    }
                })
                .abort_handle(),
            );
        }
        let view = {
            let mut runs = self.campaigns().runs();
            let run = runs.entry(name.clone()).insert_entry(run).into_mut();
            Campaigns::view(run)
        };
        info!(name, created, "campaign applied");
        self.audit().record(
            who,
            if created {
                "campaign-create"
            } else {
                "campaign-update"
            },
            Some(&name),
            describe(&campaign),
            None,
        );
        Ok((created, view))
    }

    /// Deletes a campaign; its running experiments end at once.
    pub async fn delete_campaign(&self, name: &str, who: &str) -> Result<(), ApiError> {
        let mut run = self
            .campaigns()
            .runs()
            .remove(name)
            .ok_or_else(|| ApiError::NoCampaign(name.to_owned()))?;
        self.end_experiments(run.running(), who).await;
        info!(name, "campaign deleted");
        self.audit().record(
            who,
            "campaign-delete",
            Some(name),
            describe(&run.campaign),
            None,
        );
        Ok(())
    }

    /// Pauses (its running experiments end, and slots are skipped) or resumes a campaign.
    pub async fn pause_campaign(
        &self,
        name: &str,
        paused: bool,
        who: &str,
    ) -> Result<CampaignView, ApiError> {
        let running = {
            let mut runs = self.campaigns().runs();
            let run = runs
                .get_mut(name)
                .ok_or_else(|| ApiError::NoCampaign(name.to_owned()))?;
            run.paused = paused;
            if paused {
                let running = run.running();
                run.live.clear();
                running
            } else {
                Vec::new()
            }
        };
        self.end_experiments(running, who).await;
        let action = if paused {
            "campaign-pause"
        } else {
            "campaign-resume"
        };
        self.audit()
            .record(who, action, Some(name), String::new(), None);
        self.campaigns().get(name)
    }

    /// A campaign's stop condition tripped: its experiments end at once and it makes no more.
    async fn stop_campaign(&self, name: &str, epoch: u64, why: &str) {
        let running = {
            let mut runs = self.campaigns().runs();
            let Some(run) = runs
                .get_mut(name)
                .filter(|r| r.epoch == epoch && r.stopped.is_none())
            else {
                return;
            };
            run.stopped = Some(format!("stop condition tripped: {why}"));
            run.next = None;
            // The schedule task stops; this probe task returns by itself.
            if let Some(task) = run.tasks.first() {
                task.abort();
            }
            let running = run.running();
            run.live.clear();
            running
        };
        let who = format!("campaign:{name}");
        self.end_experiments(running, &who).await;
        warn!(
            name,
            why, "campaign stop condition tripped: its experiments ended"
        );
        self.audit().record(
            "daemon",
            "trip",
            Some(name),
            String::new(),
            Some(why.into()),
        );
    }

    async fn end_experiments(&self, names: Vec<String>, who: &str) {
        for n in names {
            match self.delete(&n, who).await {
                Ok(()) | Err(ApiError::NotFound(_)) => {}
                Err(e) => warn!(experiment = n, "ending a campaign's experiment: {e}"),
            }
        }
    }

    /// Makes the experiment of `slot`, or says why not.
    async fn fire(self: &Arc<Self>, name: &str, epoch: u64, campaign: &Campaign, slot: &Slot) {
        let experiment = campaign.experiment_name(slot);
        let paused = {
            let runs = self.campaigns().runs();
            match runs.get(name).filter(|r| r.epoch == epoch) {
                Some(r) => r.paused,
                None => return,
            }
        };
        let outcome: Result<(), (&'static str, String)> = if paused {
            Err(("paused", "the campaign is paused".into()))
        } else if let Some(why) = &slot.skipped {
            Err((
                match why {
                    crate::campaign::Skip::OutlastsWindow => "outlasts_window",
                    crate::campaign::Skip::MaxConcurrent(_) => "max_concurrent",
                },
                why.to_string(),
            ))
        } else {
            let mut spec = campaign.experiment_spec(
                &experiment,
                campaign.spec.targets[slot.target].target(),
                &campaign.spec.faults[slot.fault].rule,
                slot.length,
            );
            let lead =
                Duration::try_from(slot.start.duration_since(Timestamp::now())).unwrap_or_default();
            if !lead.is_zero() {
                spec.start_delay = Some(format!("{}ms", lead.as_millis()));
            }
            match self
                .put(spec, Source::Campaign, false, &format!("campaign:{name}"))
                .await
            {
                Ok(_) => Ok(()),
                Err(ApiError::Halted(why)) => {
                    Err(("halted", format!("the daemon is halted ({why})")))
                }
                Err(e) => Err(("refused", e.to_string())),
            }
        };
        let mut runs = self.campaigns().runs();
        let Some(run) = runs.get_mut(name).filter(|r| r.epoch == epoch) else {
            return;
        };
        let shown = match outcome {
            Ok(()) => {
                run.started += 1;
                run.live.push((experiment.clone(), slot.end()));
                info!(campaign = name, experiment, "campaign experiment started");
                "started".to_owned()
            }
            Err((class, why)) => {
                *run.skipped.entry(class).or_default() += 1;
                info!(campaign = name, experiment, why, "campaign slot skipped");
                format!("skipped: {why}")
            }
        };
        run.recent
            .push_back(Campaigns::planned(campaign, slot, Some(shown)));
        while run.recent.len() > RECENT {
            run.recent.pop_front();
        }
    }

    /// Replaces every config-file campaign with `specs`, validated whole first.
    pub async fn replace_config_campaigns(
        self: &Arc<Self>,
        specs: Vec<CampaignSpec>,
    ) -> Result<(), ApiError> {
        for spec in &specs {
            self.admit_campaign(spec.clone())
                .map_err(ApiError::Invalid)?;
        }
        for name in self.campaigns().names_from(Source::Config) {
            if !specs.iter().any(|s| s.name == name) {
                self.delete_campaign(&name, "config").await?;
            }
        }
        for spec in specs {
            let unchanged =
                self.campaigns().runs().get(&spec.name).is_some_and(|r| {
                    r.source == Source::Config && same_spec(&r.campaign.spec, &spec)
                });
            if !unchanged {
                self.put_campaign(spec, Source::Config, "config").await?;
            }
        }
        Ok(())
    }
}

/// Equal but for a seed the daemon drew.
fn same_spec(running: &CampaignSpec, given: &CampaignSpec) -> bool {
    given.seed.is_none()
        && running
            == &CampaignSpec {
                seed: running.seed,
                ..given.clone()
            }
        || running == given
}

/// The campaign's task: the next slot, a sleep until it starts, its experiment; again.
async fn drive(manager: Weak<Manager>, name: String, epoch: u64, campaign: Arc<Campaign>) {
    // Slots already handled are never handled again, also when the clock steps back.
    let mut after = Timestamp::now();
    loop {
        let next = campaign.slots_from(after).next();
        {
            let Some(me) = manager.upgrade() else { return };
            let mut runs = me.campaigns().runs();
            let Some(run) = runs.get_mut(&name).filter(|r| r.epoch == epoch) else {
                return;
            };
            run.next = next
                .as_ref()
                .map(|s| Campaigns::planned(&campaign, s, None));
        }
        let Some(slot) = next else {
            info!(campaign = name, "its window never opens again");
            return;
        };
        let wait =
            Duration::try_from(slot.start.duration_since(Timestamp::now())).unwrap_or_default();
        tokio::time::sleep(wait.saturating_sub(PREPARE)).await;
        let Some(me) = manager.upgrade() else { return };
        me.fire(&name, epoch, &campaign, &slot).await;
        after = slot.start + jiff::SignedDuration::from_millis(1);
    }
}

fn describe(c: &Campaign) -> String {
    format!(
        "every {} for {}{} over {} target(s), {} fault(s), seed {}",
        c.spec.every,
        c.spec.duration,
        c.spec
            .window
            .as_ref()
            .map(|w| format!(" in {w}"))
            .unwrap_or_default(),
        c.spec.targets.len(),
        c.spec.faults.len(),
        c.seed
    )
}

/// A seed for a campaign given none: shown in its view, so its schedule can be replayed.
fn rand_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom(&mut bytes).is_err() {
        // The clock is a fine seed for a schedule: it is shown either way.
        return SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The campaigns' series for `/metrics`.
pub fn metrics(views: &[CampaignView], registry: &mut Registry) {
    type Labels = Vec<(String, String)>;
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let state = gauge(
        registry,
        "chaos_campaign_state",
        "1 for each campaign's state: active, paused or stopped (with the reason)",
    );
    let next = gauge(
        registry,
        "chaos_campaign_next_start_seconds",
        "Unix time the campaign's next slot starts",
    );
    let last = gauge(
        registry,
        "chaos_campaign_last_start_seconds",
        "Unix time the campaign's last handled slot started",
    );
    let running = gauge(
        registry,
        "chaos_campaign_running_experiments",
        "The campaign's experiments running now",
    );
    let started = Family::<Labels, Counter>::default();
    registry.register(
        "chaos_campaign_started_experiments",
        "Experiments a campaign started",
        started.clone(),
    );
    let skipped = Family::<Labels, Counter>::default();
    registry.register(
        "chaos_campaign_skipped_slots",
        "Slots a campaign skipped, by reason",
        skipped.clone(),
    );
    let secs = |p: &Option<Planned>| {
        p.as_ref()
            .and_then(|p| p.start.parse::<Timestamp>().ok())
            .map(Timestamp::as_second)
    };
    for v in views {
        let name = v.spec.name.clone();
        let label = || vec![("campaign".to_owned(), name.clone())];
        let mut s = label();
        s.push((
            "state".into(),
            serde_json::to_value(v.state)
                .ok()
                .and_then(|x| x.as_str().map(str::to_owned))
                .unwrap_or_default(),
        ));
        s.push(("reason".into(), v.reason.clone().unwrap_or_default()));
        state.get_or_create(&s).set(1);
        if let Some(t) = secs(&v.next) {
            next.get_or_create(&label()).set(t);
        }
        if let Some(t) = secs(&v.last) {
            last.get_or_create(&label()).set(t);
        }
        running.get_or_create(&label()).set(v.running.len() as i64);
        started.get_or_create(&label()).inc_by(v.started);
        for (reason, n) in &v.skipped {
            let mut l = label();
            l.push(("reason".into(), (*reason).to_owned()));
            skipped.get_or_create(&l).inc_by(*n);
        }
    }
}
