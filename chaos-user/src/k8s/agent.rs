//! The node agent of `chaos daemon --kubernetes`: the cluster carries the user's intent (the
//! `NetworkFault`s) to every node, and each node's agent makes its own part of it true.
//!
//! One level-triggered pass ([`Agent::sync`]) does all of it: for every resource, the pods it
//! picks (the same choice on every node, see [`super::select`]) that run on this node become
//! daemon experiments (`target = pod=NAMESPACE/NAME`, resolved through the node's CRI runtime);
//! experiments no resource wants any more are deleted; the node's entry in each resource's
//! status is written when it changed, and Events say what was injected, restored or refused.
//! A pass runs on every watch event and every second (for expiry), so a restarted pod (a new
//! UID), a deleted or expired resource, and a killed agent's restart all come out right.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{ListParams, PostParams},
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        reflector, watcher,
    },
};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{
    crd::{NetworkFault, NetworkFaultStatus, NodeStatus, Phase},
    select::{Candidate, select},
};
use crate::{
    daemon::state::{Manager, Source},
    experiment::{Experiment, ExperimentSpec},
};

/// Experiments the agent owns start with this; it never touches others.
pub const PREFIX: &str = "k8s-";

/// How long a namespace's pod list is reused before it is asked again (a local pod's change
/// asks at once).
const PODS_TTL: Duration = Duration::from_secs(5);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the agent needs of the node: the daemon's experiments.
pub trait Node: Send + Sync {
    /// The agent's experiments now (names starting with [`PREFIX`]), each with whether it
    /// failed (its pod's sandbox went: it is applied again, to find the new one).
    fn list(&self) -> BoxFuture<'_, Vec<(ExperimentSpec, bool)>>;
    fn put(&self, spec: ExperimentSpec) -> BoxFuture<'_, Result<(), String>>;
    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), String>>;
}

impl Node for Arc<Manager> {
    fn list(&self) -> BoxFuture<'_, Vec<(ExperimentSpec, bool)>> {
        Box::pin(async move {
            Manager::list(self)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|v| v.spec.name.starts_with(PREFIX))
                .map(|v| (v.spec, v.phase == crate::daemon::state::Phase::Failed))
                .collect()
        })
    }

    fn put(&self, spec: ExperimentSpec) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            Manager::put(self, spec, Source::Kubernetes, true, "kubernetes")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            Manager::delete(self, &name, "kubernetes")
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The agent's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// A resource without a duration ends after this.
    pub max_duration: Duration,
}

/// One node's agent.
pub struct Agent<N> {
    client: Client,
    node: N,
    config: Config,
    recorder: Recorder,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// The entry last written into each resource's status (`namespace/name`).
    written: BTreeMap<String, NodeStatus>,
    /// Each namespace's running pods with their labels, and when they were listed.
    pods: BTreeMap<String, (Instant, Vec<Labelled>)>,
}

/// A running pod and its labels.
type Labelled = (Candidate, BTreeMap<String, String>);

/// This node's part of one resource.
struct Part {
    experiments: Vec<ExperimentSpec>,
    status: NodeStatus,
}

impl<N: Node> Agent<N> {
    pub fn new(client: Client, node: N, config: Config) -> Self {
        let reporter = Reporter {
            controller: "chaos-agent".into(),
            instance: Some(config.node.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node,
            config,
            memory: Mutex::default(),
        }
    }

    /// Forgets the pods listed so far: a pod of this node changed.
    pub async fn pods_changed(&self) {
        self.memory.lock().await.pods.clear();
    }

    /// One pass: makes this node's experiments those `faults` ask for, and reports.
    pub async fn sync(&self, faults: &[Arc<NetworkFault>], now: Timestamp) {
        let mut parts = Vec::new();
        let mut desired = BTreeMap::new();
        for fault in faults {
            let part = self.part(fault, now).await;
            for spec in &part.experiments {
                desired.insert(spec.name.clone(), spec.clone());
            }
            parts.push((fault.clone(), part));
        }
        let actual: BTreeMap<String, (ExperimentSpec, bool)> = self
            .node
            .list()
            .await
            .into_iter()
            .map(|(s, failed)| (s.name.clone(), (s, failed)))
            .collect();
        for name in actual.keys().filter(|n| !desired.contains_key(*n)) {
            match self.node.delete(name.clone()).await {
                Ok(()) => info!(experiment = name, "restored: no resource asks for it"),
                Err(e) => warn!(experiment = name, "deleting: {e}"),
            }
        }
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        for (name, spec) in &desired {
            if actual
                .get(name)
                .is_some_and(|(a, failed)| !failed && same(a, spec))
            {
                continue;
            }
            if let Err(e) = self.node.put(spec.clone()).await {
                warn!(experiment = name, "applying: {e}");
                failed.insert(name.clone(), e);
            }
        }
        for (fault, mut part) in parts {
            let refused: Vec<&String> = part
                .experiments
                .iter()
                .filter_map(|s| failed.get(&s.name))
                .collect();
            if !refused.is_empty() {
                part.status.targets -= refused.len() as u32;
                part.status.phase = Phase::Failed;
                part.status.message = refused
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
            }
            self.report(&fault, part.status).await;
        }
    }

    /// What this node does for `fault`: its experiments and its status entry.
    async fn part(&self, fault: &NetworkFault, now: Timestamp) -> Part {
        let node = self.config.node.clone();
        let status = |phase, targets, message: String| NodeStatus {
            node: node.clone(),
            targets,
            phase,
            message,
        };
        let none = |phase, message| Part {
            experiments: Vec::new(),
            status: status(phase, 0, message),
        };
        let (namespace, name) = (fault.namespace().unwrap_or_default(), fault.name_any());
        let uid = fault.uid().unwrap_or_default();
        let spec = &fault.spec;
        let lasts = match &spec.duration {
            Some(text) => match crate::duration::parse(text, crate::duration::Bounds::POSITIVE) {
                Ok(d) => d.min(self.config.max_duration),
                Err(e) => return none(Phase::Failed, format!("duration: {e}")),
            },
            None => self.config.max_duration,
        };
        let created = fault
            .meta()
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        let elapsed = Duration::try_from(now.duration_since(created)).unwrap_or_default();
        let Some(left) = lasts.checked_sub(elapsed).filter(|d| !d.is_zero()) else {
            return none(Phase::Finished, "its duration is over".into());
        };
        // The rules as the daemon will take them: the same checks and error texts.
        let mut rules = spec.rules.clone();
        if spec.allow_host_network {
            rules.iter_mut().for_each(|r| r.push_str(" force=yes"));
        }
        let campaign = match &spec.campaign {
            Some(block) => match block.campaign(&uid, spec.allow_host_network) {
                Ok(c) => Some(c),
                Err(e) => return none(Phase::Failed, format!("campaign.{e}")),
            },
            None => {
                let probe =
                    experiment_spec("k8s-check", &namespace, "probe", &rules, left, spec.dry_run);
                if let Err(e) = Experiment::try_from(probe) {
                    return none(Phase::Failed, e.to_string());
                }
                None
            }
        };
        let pods = match self.pods(&namespace).await {
            Ok(pods) => pods,
            Err(e) => return none(Phase::Pending, format!("listing pods: {e}")),
        };
        let selection = match select(&uid, &namespace, spec, &pods) {
            Ok(s) => s,
            Err(e) => return none(Phase::Failed, e),
        };
        let here = |c: &Candidate| c.node.as_deref() == Some(node.as_str());
        let experiments: Vec<ExperimentSpec> = match &campaign {
            None => selection
                .chosen
                .iter()
                .filter(|c| here(c))
                .map(|c| {
                    let exp = experiment_name(&name, &uid, &c.uid);
                    experiment_spec(&exp, &namespace, &c.name, &rules, left, spec.dry_run)
                })
                .collect(),
            Some(campaign) => {
                // Every node sees the same pods in the same order, so draws the same one.
                let mut chosen = selection.chosen.clone();
                chosen.sort_by(|a, b| a.uid.cmp(&b.uid));
                campaign
                    .live_at(now)
                    .iter()
                    .filter(|_| !chosen.is_empty())
                    .filter_map(|slot| {
                        let pod = &chosen[campaign.pick(slot, chosen.len())];
                        if !here(pod) {
                            return None;
                        }
                        let rule = campaign.spec.faults[slot.fault].rule.clone();
                        let until = slot.end().duration_since(now);
                        let lasts = Duration::try_from(until).unwrap_or_default().min(left);
                        let exp = experiment_name(
                            &name,
                            &uid,
                            &format!("{}@{}", pod.uid, slot.start.as_second()),
                        );
                        Some(experiment_spec(
                            &exp,
                            &namespace,
                            &pod.name,
                            &[rule],
                            lasts,
                            spec.dry_run,
                        ))
                    })
                    .collect()
            }
        };
        let refused: Vec<String> = selection
            .refused
            .iter()
            .filter(|(c, _)| here(c))
            .map(|(c, why)| format!("{}: {why}", c.name))
            .collect();
        let n = experiments.len() as u32;
        let phase = if n > 0 {
            Phase::Injecting
        } else {
            Phase::Pending
        };
        let mut message = refused.join("; ");
        if let Some(next) = campaign
            .as_ref()
            .and_then(|c| c.slots_from(now).find(|s| s.skipped.is_none()))
        {
            let sep = if message.is_empty() { "" } else { "; " };
            message = format!("{message}{sep}campaign: next experiment at {}", next.start);
        }
        Part {
            experiments,
            status: status(phase, n, message),
        }
    }

    /// The running pods of `namespace` with their labels (listed at most every [`PODS_TTL`]).
    async fn pods(&self, namespace: &str) -> Result<Vec<Labelled>, kube::Error> {
        if let Some((at, pods)) = self.memory.lock().await.pods.get(namespace)
            && at.elapsed() < PODS_TTL
        {
            return Ok(pods.clone());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = api.list(&ListParams::default()).await?;
        let pods: Vec<_> = list
            .items
            .iter()
            .filter_map(|p| Some((Candidate::of(p)?, p.labels().clone())))
            .collect();
        self.memory
            .lock()
            .await
            .pods
            .insert(namespace.to_owned(), (Instant::now(), pods.clone()));
        Ok(pods)
    }

    /// Writes this node's entry into the resource's status if it changed (a node with nothing
    /// to say and no entry yet writes nothing), and says what changed in an Event.
    async fn report(&self, fault: &NetworkFault, entry: NodeStatus) {
        let key = format!(
            "{}/{}",
            fault.namespace().unwrap_or_default(),
            fault.name_any()
        );
        let listed = fault
            .status
            .as_ref()
            .and_then(|s| s.nodes.iter().find(|n| n.node == entry.node));
        let before = self.memory.lock().await.written.get(&key).cloned();
        let known = before.as_ref().or(listed);
        if known == Some(&entry) {
            return;
        }
        let quiet = entry.targets == 0 && entry.message.is_empty() && entry.phase == Phase::Pending;
        if known.is_none() && quiet {
            return;
        }
        if let Err(e) = self.write_status(fault, &entry).await {
            warn!(resource = key, "writing its status: {e}");
            return;
        }
        self.memory
            .lock()
            .await
            .written
            .insert(key.clone(), entry.clone());
        let was = known.map_or(0, |k| k.targets);
        let event = match entry.phase {
            Phase::Failed => Some((EventType::Warning, "Failed", "Inject")),
            Phase::Injecting if entry.targets != was => {
                Some((EventType::Normal, "Injected", "Inject"))
            }
            Phase::Finished | Phase::Pending if was > 0 => {
                Some((EventType::Normal, "Restored", "Restore"))
            }
            _ => None,
        };
        if let Some((type_, reason, action)) = event {
            let note = match entry.phase {
                Phase::Failed => format!("node {}: {}", entry.node, entry.message),
                _ => format!("node {}: {} pods faulted", entry.node, entry.targets),
            };
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note),
                action: action.into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &fault.object_ref(&())).await {
                warn!(resource = key, "publishing an event: {e}");
            }
        }
    }

    /// Read, change this node's entry, replace: a conflict (another node wrote in between)
    /// reads again.
    async fn write_status(
        &self,
        fault: &NetworkFault,
        entry: &NodeStatus,
    ) -> Result<(), kube::Error> {
        let api: Api<NetworkFault> =
            Api::namespaced(self.client.clone(), &fault.namespace().unwrap_or_default());
        let name = fault.name_any();
        let mut attempts = 0;
        loop {
            let mut current = api.get_status(&name).await?;
            let mut status = current.status.take().unwrap_or_default();
            status.nodes.retain(|n| n.node != entry.node);
            status.nodes.push(entry.clone());
            status.nodes.sort_by(|a, b| a.node.cmp(&b.node));
            status.phase = Some(NetworkFaultStatus::overall(&status.nodes));
            current.status = Some(status);
            match api
                .replace_status(&name, &PostParams::default(), &current)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether two experiment specs ask the same (the duration left shrinks every pass: the
/// deadline it came from does not change, so it is not compared).
fn same(a: &ExperimentSpec, b: &ExperimentSpec) -> bool {
    ExperimentSpec {
        duration: None,
        ..a.clone()
    } == ExperimentSpec {
        duration: None,
        ..b.clone()
    }
}

/// `k8s-<resource name>-<hash of its UID>-<hash of the pod's UID>`, a valid experiment name
/// (at most 63 characters): a restarted pod (a new UID) is a new experiment.
pub fn experiment_name(fault: &str, fault_uid: &str, pod_uid: &str) -> String {
    let clean = |s: &str, n: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(n)
            .collect::<String>()
            .trim_matches('-')
            .to_owned()
    };
    let hash = |s: &str| format!("{:08x}", super::select::fnv1a(s.bytes()) as u32);
    format!(
        "{PREFIX}{}-{}-{}",
        clean(fault, 30),
        hash(fault_uid),
        hash(pod_uid)
    )
}

fn experiment_spec(
    name: &str,
    namespace: &str,
    pod: &str,
    rules: &[String],
    left: Duration,
    dry_run: bool,
) -> ExperimentSpec {
    ExperimentSpec {
        name: name.to_owned(),
        iface: String::new(),
        netns: None,
        target: Some(format!("pod={namespace}/{pod}")),
        namespace: None,
        rules: rules.to_vec(),
        duration: Some(format!("{}ms", left.as_millis().max(1))),
        start_delay: None,
        priority: 0,
        dry_run,
        stop_conditions: Vec::new(),
    }
}

/// Runs the agent until the watches end: watches every `NetworkFault` and this node's pods,
/// and makes a pass on each change and every second.
pub async fn run<N: Node>(client: Client, node: N, config: Config) -> anyhow::Result<()> {
    let faults: Api<NetworkFault> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let fault_events = reflector(writer, watcher(faults, watcher::Config::default()))
        .default_backoff()
        .map(|event| match event {
            Ok(watcher::Event::InitDone) => Wake::Listed,
            _ => Wake::Faults,
        });
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node));
    let pod_events = watcher(pods, on_node)
        .default_backoff()
        .touched_objects()
        .map(|_| Wake::Pods);
    let tick = futures::stream::unfold(
        tokio::time::interval(Duration::from_secs(1)),
        |mut i| async {
            i.tick().await;
            Some((Wake::Tick, i))
        },
    );
    let mut wakes = std::pin::pin!(futures::stream::select(
        futures::stream::select(fault_events, pod_events),
        tick
    ));
    let name = config.node.clone();
    let agent = Agent::new(client, node, config);
    info!(node = name, "kubernetes agent started");
    // Until the first list is in, the store is empty: a pass then would delete what a
    // restarted agent is about to find again.
    let mut listed = false;
    while let Some(wake) = wakes.next().await {
        match wake {
            Wake::Pods => agent.pods_changed().await,
            Wake::Listed => listed = true,
            Wake::Faults | Wake::Tick => {}
        }
        if listed {
            agent.sync(&store.state(), Timestamp::now()).await;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// The resources' list is complete (at start, and after a watch is made again).
    Listed,
    Faults,
    Pods,
    Tick,
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
