//! One thread per interface the daemon injects on. The thread enters the interface's network
//! namespace once (netlink sockets, interface names and attachments all follow the calling
//! thread's namespace) and owns that interface's [`Injector`]; the async side sends it requests.
//!
//! fq and the ifb are installed the first time a rule set needs them and stay until the worker
//! stops, which is when the last experiment on the interface is gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    future::Future,
    pin::Pin,
    sync::mpsc,
    thread,
    time::Duration,
};

use chaos_common::RuleCounters;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::{
    datapath::{AttachMode, Capacity},
    experiment::ExperimentError,
    host,
    injector::Injector,
    netns,
    rule::Direction,
    ruleset::RuleSet,
    target::Resolved,
};

/// An interface, in a named namespace or the daemon's own, or the interfaces of workloads.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub netns: Option<String>,
    /// A workload (`container=...`, `pid=...`, `pods=...`, as `chaos run --target`) whose
    /// namespace the interface is in; `iface` empty: its default route's. A selector is
    /// followed: workloads that start to match are attached, those that stop are released.
    pub workload: Option<String>,
    /// The Kubernetes namespace `pods=` looks in.
    pub namespace: Option<String>,
    /// A rule says `force=yes`: workloads on the host's network are allowed.
    pub force: bool,
    pub iface: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let iface = if self.iface.is_empty() {
            "default interface"
        } else {
            &self.iface
        };
        match (&self.netns, &self.workload) {
            (Some(ns), _) => write!(f, "{iface} in netns {ns}"),
            (None, Some(w)) => write!(f, "{iface} of {w}"),
            (None, None) => f.write_str(iface),
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the daemon's state needs of an interface it injects on: the seam between the
/// experiments' bookkeeping and the kernel, so the bookkeeping is testable without one.
pub trait Port: Send + Sync {
    /// Makes `set` the interface's live rule set; `fresh` slots (given to rules that are new)
    /// are zeroed first.
    fn apply(&self, set: RuleSet, fresh: Vec<u32>) -> BoxFuture<'_, Result<(), String>>;
    /// Counters of `slots`, summed over CPUs.
    fn counters(&self, slots: Vec<u32>) -> BoxFuture<'_, Result<Vec<RuleCounters>, String>>;
    /// The workloads a workload target resolved to, with their namespace and interface.
    fn targets(&self) -> BoxFuture<'_, Result<Vec<TargetView>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// One workload of a target, as `chaos get` and the API show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TargetView {
    /// What it is, e.g. `container 3f2a9c1b7e0d (pid 4242)` or `pod shop/cart-1 (pid 4242)`.
    pub workload: String,
    /// Its network namespace file.
    pub netns: String,
    /// The interface attached to (empty when refused).
    pub iface: String,
    /// `attached`, or why it is not (`refused: ...`).
    pub state: String,
}

/// Starts a [`Port`] for an interface. Dropping the port stops it: detached and restored.
pub trait Ports: Send + Sync {
    /// A refusal names the field to blame (`netns`, `iface`).
    fn start(&self, target: Target) -> BoxFuture<'_, Result<Box<dyn Port>, ExperimentError>>;
    /// What each port's maps hold: rule sets are built for it.
    fn capacity(&self) -> Capacity;
}

/// The real ports: a [`Worker`] thread per interface, renewing its lease every third of `lease`.
pub struct Workers {
    pub lease: Duration,
}

impl Ports for Workers {
    fn start(&self, target: Target) -> BoxFuture<'_, Result<Box<dyn Port>, ExperimentError>> {
        Box::pin(async move {
            let worker = Worker::start(target, self.lease).await?;
            Ok(Box::new(worker) as Box<dyn Port>)
        })
    }

    fn capacity(&self) -> Capacity {
        Capacity::DAEMON
    }
}

enum Request {
    // Boxed: a rule set is large, and the channel holds one of these per request.
    /// Zero the counters of the fresh slots, then make the rule set live: one round trip.
    Apply(Box<RuleSet>, Vec<u32>, oneshot::Sender<Result<(), String>>),
    Counters(Vec<u32>, oneshot::Sender<Result<Vec<RuleCounters>, String>>),
    Targets(oneshot::Sender<Result<Vec<TargetView>, String>>),
}

/// Handle to a worker thread; dropping it detaches everything on the interface and restores it.
pub struct Worker {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<thread::JoinHandle<()>>,
}

pub const GONE: &str = "the interface's worker stopped";

impl Worker {
    /// Starts the thread: enters the namespace, loads the program and attaches it both ways.
    /// The thread renews the program's lease every third of `lease`.
    pub async fn start(target: Target, lease: Duration) -> Result<Self, ExperimentError> {
        let (requests, incoming) = mpsc::channel();
        let (ready, started) = oneshot::channel();
        let name = format!("chaos-{}", target.iface);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || run(target, lease, incoming, ready))
            .map_err(|e| ExperimentError::new("iface", format!("starting a worker thread: {e}")))?;
        match started.await {
            Ok(Ok(())) => Ok(Self {
                requests: Some(requests),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                join(thread);
                Err(e)
            }
            Err(_) => {
                join(thread);
                Err(ExperimentError::new("iface", GONE))
            }
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Request,
    ) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .as_ref()
            .ok_or(GONE)?
            .send(make(reply))
            .map_err(|_| GONE.to_owned())?;
        answer.await.map_err(|_| GONE.to_owned())?
    }
}

impl Port for Worker {
    fn apply(&self, set: RuleSet, fresh: Vec<u32>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.ask(|reply| Request::Apply(Box::new(set), fresh, reply)))
    }

    fn counters(&self, slots: Vec<u32>) -> BoxFuture<'_, Result<Vec<RuleCounters>, String>> {
        Box::pin(self.ask(|reply| Request::Counters(slots, reply)))
    }

    fn targets(&self) -> BoxFuture<'_, Result<Vec<TargetView>, String>> {
        Box::pin(self.ask(Request::Targets))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; it then drops the injector, which
        // detaches and restores the interface. Wait for that, so "deleted" means clean.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            join(thread);
        }
    }
}

fn join(thread: thread::JoinHandle<()>) {
    if thread.join().is_err() {
        warn!("an interface worker panicked");
    }
}

fn run(
    target: Target,
    lease: Duration,
    incoming: mpsc::Receiver<Request>,
    ready: oneshot::Sender<Result<(), ExperimentError>>,
) {
    let (mut injector, mut workloads) = match set_up(&target, lease) {
        Ok(ok) => ok,
        Err(e) => {
            // The daemon may have given up waiting; nothing else to do with the error then.
            ready.send(Err(e)).ok();
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    info!(%target, "attached");
    // The lease is at least 100ms (`Bounds::LEASE`), so this never spins.
    let tick = (lease / 3).min(FOLLOW);
    loop {
        if let Some(w) = &mut workloads
            && w.follow(&mut injector) == Followed::Gone
        {
            // A workload that ended took its interface with it: let the rest go too.
            warn!(%target, "the target is gone: its process ended");
            break;
        }
        if let Err(e) = injector.renew_lease(lease) {
            warn!(%target, "renewing the lease: {e}");
        }
        let request = match incoming.recv_timeout(tick) {
            Ok(request) => request,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match request {
            Request::Apply(set, fresh, reply) => {
                let result = injector.apply(&set, &fresh).map_err(|e| e.to_string());
                reply.send(result).ok();
            }
            Request::Counters(slots, reply) => {
                reply
                    .send(injector.counters(&slots).map_err(|e| e.to_string()))
                    .ok();
            }
            Request::Targets(reply) => {
                let views = workloads.as_ref().map(Workloads::views).unwrap_or_default();
                reply.send(Ok(views)).ok();
            }
        }
    }
    if let Err(e) = injector.close() {
        warn!(%target, "cleaning up: {e}");
    }
    info!(%target, "detached and restored");
}

/// How often a selector is looked up again: a workload that starts to match is faulted within
/// two of these.
pub const FOLLOW: Duration = Duration::from_secs(1);

/// Enters the namespace, loads, takes the lease and attaches; a refusal names the field to
/// blame. A workload target gets one program for all its workloads, each attached from
/// inside its namespace.
fn set_up(
    target: &Target,
    lease: Duration,
) -> Result<(Injector, Option<Workloads>), ExperimentError> {
    let iface = |message: String| ExperimentError::new("iface", message);
    if let Some(text) = &target.workload {
        let blame = |e: String| ExperimentError::new("target", e);
        let mut workload = text
            .parse::<crate::target::Target>()
            .map_err(|e| blame(e.to_string()))?;
        if let Some(ns) = &target.namespace {
            workload = workload.in_namespace(ns);
        }
        let mut injector = Injector::load_shared(Capacity::DAEMON)
            .map_err(|e| iface(first_line(&e.to_string())))?;
        // The lease before any attachment: see below.
        injector
            .renew_lease(lease)
            .map_err(|e| iface(first_line(&e.to_string())))?;
        let mut workloads = Workloads {
            selector: workload.is_selector(),
            target: workload,
            force: target.force,
            iface: (!target.iface.is_empty()).then(|| target.iface.clone()),
            members: BTreeMap::new(),
            refused: BTreeMap::new(),
            looked: None,
        };
        if workloads.selector {
            // A runtime that does not answer is refused now; a selector matching nothing yet
            // is not: its workloads may come.
            let found = workloads
                .target
                .resolve_all()
                .map_err(|e| blame(e.to_string()))?;
            workloads.take(&mut injector, found);
        } else {
            let found = workloads
                .target
                .resolve()
                .map_err(|e| blame(e.to_string()))?;
            let description = found.description.clone();
            workloads
                .admit(&mut injector, found)
                .map_err(|e| ExperimentError::new(e.0, format!("{description}: {}", e.1)))?;
        }
        return Ok((injector, Some(workloads)));
    }
    if let Some(ns) = &target.netns {
        netns::enter(ns).map_err(|e| ExperimentError::new("netns", e.to_string()))?;
    }
    let name = if target.iface.is_empty() {
        netns::default_route_iface()
            .map_err(|e| iface(format!("reading routes: {e}")))?
            .ok_or_else(|| iface(format!("no default route for {target}: give iface")))?
    } else {
        target.iface.clone()
    };
    let ifindex =
        netns::if_index(&name).ok_or_else(|| iface(format!("interface '{target}' not found")))?;
    host::check_link_type(&name, ifindex).map_err(iface)?;
    let mut injector = Injector::load(&name, ifindex, Capacity::DAEMON)
        .map_err(|e| iface(first_line(&e.to_string())))?;
    // The lease before the attachment: a netlink filter whose program has none looks like a
    // leftover to another chaos cleaning up (`crate::recover`), and would be removed.
    injector
        .renew_lease(lease)
        .map_err(|e| iface(first_line(&e.to_string())))?;
    // Both directions from the start: a rule set without rules for a direction costs one map
    // lookup per packet there, and later rule sets never have to attach.
    injector
        .attach(&[Direction::Ingress, Direction::Egress], AttachMode::Auto)
        .map_err(|e| iface(first_line(&e.to_string())))?;
    Ok((injector, None))
}

/// The workloads of a workload target, attached through one shared program.
struct Workloads {
    target: crate::target::Target,
    selector: bool,
    force: bool,
    iface: Option<String>,
    /// Attached, by key: the workload (its namespace held open) and its interface.
    members: BTreeMap<String, (Resolved, String)>,
    /// Matches not attached, by key: what and why.
    /// A refusal that may clear up (an attachment that failed, a workload not yet routed) is
    /// tried again at the next look; host networking is not.
    refused: BTreeMap<String, (Resolved, String, bool)>,
    looked: Option<std::time::Instant>,
}

#[derive(PartialEq, Eq)]
enum Followed {
    Ok,
    /// The one workload of a target that is not a selector ended.
    Gone,
}

impl Workloads {
    /// Releases workloads that ended, and for a selector attaches the new matches and releases
    /// those that stopped matching (at most once per [`FOLLOW`]).
    fn follow(&mut self, injector: &mut Injector) -> Followed {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, (r, _))| r.is_gone())
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            self.release(injector, key);
        }
        self.refused.retain(|_, (r, _, _)| !r.is_gone());
        if !self.selector {
            return if gone.is_empty() {
                Followed::Ok
            } else {
                Followed::Gone
            };
        }
        if self.looked.is_some_and(|t| t.elapsed() < FOLLOW) {
            return Followed::Ok;
        }
        match self.target.resolve_all() {
            Ok(found) => self.take(injector, found),
            // A runtime that stops answering keeps what is attached; the lease still holds.
            Err(e) => warn!(target = %self.target, "looking up the workloads: {e}"),
        }
        Followed::Ok
    }

    /// Makes `found` the selector's workloads: new ones attached, missing ones released.
    fn take(&mut self, injector: &mut Injector, found: Vec<Resolved>) {
        self.looked = Some(std::time::Instant::now());
        let keys: BTreeSet<String> = found.iter().map(|r| r.key.clone()).collect();
        let stale: Vec<String> = self
            .members
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in &stale {
            self.release(injector, key);
        }
        self.refused
            .retain(|k, (_, _, retry)| keys.contains(k) && !*retry);
        for r in found {
            if self.members.contains_key(&r.key) || self.refused.contains_key(&r.key) {
                continue;
            }
            let key = r.key.clone();
            if let Err((_, reason)) = self.admit(injector, r) {
                warn!(target = %self.target, key, reason, "workload not attached");
            }
        }
    }

    /// Attaches one workload, or records why not: (field to blame, reason).
    fn admit(
        &mut self,
        injector: &mut Injector,
        found: Resolved,
    ) -> Result<(), (&'static str, String)> {
        let refused = if found.host_network && !self.force {
            Err((
                "target",
                "on the host's network (its namespace is the node's): refused unless a rule \
                 says force=yes"
                    .to_owned(),
            ))
        } else {
            found
                .netns
                .try_clone()
                .map_err(|e| ("target", e.to_string()))
                .and_then(|netns| {
                    injector
                        .add_member(&found.key, netns, self.iface.as_deref(), AttachMode::Auto)
                        .map_err(|e| ("iface", first_line(&e.to_string())))
                })
        };
        match refused {
            Ok(attached) => {
                info!(
                    workload = found.description,
                    iface = attached.iface,
                    "attached"
                );
                self.members
                    .insert(found.key.clone(), (found, attached.iface));
                Ok(())
            }
            Err(e) => {
                let retry = !found.host_network || self.force;
                self.refused.insert(
                    found.key.clone(),
                    (found, format!("refused: {}", e.1), retry),
                );
                Err(e)
            }
        }
    }

    fn release(&mut self, injector: &mut Injector, key: &str) {
        if let Some((r, _)) = self.members.remove(key) {
            match injector.remove_member(key) {
                Ok(()) => info!(workload = r.description, "released"),
                Err(e) => warn!(workload = r.description, "releasing: {e}"),
            }
        }
    }

    fn views(&self) -> Vec<TargetView> {
        let attached = self.members.values().map(|(r, iface)| TargetView {
            workload: r.description.clone(),
            netns: r.netns_path.display().to_string(),
            iface: iface.clone(),
            state: "attached".to_owned(),
        });
        let refused = self.refused.values().map(|(r, why, _)| TargetView {
            workload: r.description.clone(),
            netns: r.netns_path.display().to_string(),
            iface: String::new(),
            state: why.clone(),
        });
        attached.chain(refused).collect()
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
