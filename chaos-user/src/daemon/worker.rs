//! One thread per interface the daemon injects on. The thread enters the interface's network
//! namespace once (netlink sockets, interface names and attachments all follow the calling
//! thread's namespace) and owns that interface's [`Injector`]; the async side sends it requests.
//!
//! fq and the ifb are installed the first time a rule set needs them and stay until the worker
//! stops, which is when the last experiment on the interface is gone.

use std::{fmt, future::Future, pin::Pin, sync::mpsc, thread, time::Duration};

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

/// An interface, in a named namespace or the daemon's own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub netns: Option<String>,
    /// A workload (`container=...`, `pid=...`, as `chaos run --target`) whose namespace the
    /// interface is in; `iface` empty: its default route's.
    pub workload: Option<String>,
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
    let (mut injector, workload) = match set_up(&target, lease) {
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
    loop {
        // A workload that ended took its interface with it: let the rest go too.
        if workload.as_ref().is_some_and(Resolved::is_gone) {
            warn!(%target, "the target is gone: its process ended");
            break;
        }
        if let Err(e) = injector.renew_lease(lease) {
            warn!(%target, "renewing the lease: {e}");
        }
        // The lease is at least 100ms (`Bounds::LEASE`), so this never spins.
        let request = match incoming.recv_timeout(lease / 3) {
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
        }
    }
    if let Err(e) = injector.close() {
        warn!(%target, "cleaning up: {e}");
    }
    info!(%target, "detached and restored");
}

/// Enters the namespace, loads, takes the lease and attaches; a refusal names the field to
/// blame.
fn set_up(
    target: &Target,
    lease: Duration,
) -> Result<(Injector, Option<Resolved>), ExperimentError> {
    if let Some(ns) = &target.netns {
        netns::enter(ns).map_err(|e| ExperimentError::new("netns", e.to_string()))?;
    }
    // The workload's namespace stays open (the file) for as long as the worker runs in it.
    let workload = match &target.workload {
        Some(text) => {
            let blame = |e: String| ExperimentError::new("target", e);
            let found = text
                .parse::<crate::target::Target>()
                .and_then(|t| t.resolve())
                .map_err(|e| blame(e.to_string()))?;
            netns::enter_file(&found.netns, &found.description)
                .map_err(|e| blame(e.to_string()))?;
            Some(found)
        }
        None => None,
    };
    let iface = |message: String| ExperimentError::new("iface", message);
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
    Ok((injector, workload))
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
