//! One thread per interface the daemon injects on. The thread enters the interface's network
//! namespace once (netlink sockets, interface names and attachments all follow the calling
//! thread's namespace) and owns that interface's [`Datapath`]; the async side sends it requests.
//!
//! fq and the ifb are installed the first time a rule set needs them and stay until the worker
//! stops, which is when the last experiment on the interface is gone.

use std::{fmt, sync::mpsc, thread, time::Duration};

use chaos_common::RuleCounters;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::{
    compile::{CompiledRules, Holds},
    datapath::{AttachMode, Datapath},
    host, netns,
    rule::{Direction, MAX_HORIZON},
};

/// An interface, in a named namespace or the daemon's own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub netns: Option<String>,
    pub iface: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{} in netns {ns}", self.iface),
            None => f.write_str(&self.iface),
        }
    }
}

enum Request {
    // Boxed: a compiled rule set is large, and the channel holds one of these per request.
    /// Zero the counters of the fresh slots, then make the rule set live: one round trip.
    Apply(
        Box<CompiledRules>,
        Holds,
        Vec<u32>,
        oneshot::Sender<Result<(), String>>,
    ),
    Counters(Vec<u32>, oneshot::Sender<Result<Vec<RuleCounters>, String>>),
}

/// Handle to a worker thread; dropping it detaches everything on the interface and restores it.
pub struct Worker {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<thread::JoinHandle<()>>,
}

const GONE: &str = "the interface's worker stopped";

impl Worker {
    /// Starts the thread: enters the namespace, loads the program and attaches it both ways.
    /// The thread renews the program's lease every third of `lease`.
    pub async fn start(target: Target, lease: Duration) -> Result<Self, String> {
        let (requests, incoming) = mpsc::channel();
        let (ready, started) = oneshot::channel();
        let name = format!("chaos-{}", target.iface);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || run(target, lease, incoming, ready))
            .map_err(|e| format!("starting a worker thread: {e}"))?;
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
                Err(GONE.to_owned())
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

    /// Makes `rules` the interface's live rule set, installing what it holds packets with.
    /// `fresh` slots (given to rules that are new) are zeroed first.
    pub async fn apply(
        &self,
        rules: CompiledRules,
        holds: Holds,
        fresh: Vec<u32>,
    ) -> Result<(), String> {
        self.ask(|reply| Request::Apply(Box::new(rules), holds, fresh, reply))
            .await
    }

    /// Counters of `slots`, summed over CPUs.
    pub async fn counters(&self, slots: Vec<u32>) -> Result<Vec<RuleCounters>, String> {
        self.ask(|reply| Request::Counters(slots, reply)).await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; it then drops the Datapath, which
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
    ready: oneshot::Sender<Result<(), String>>,
) {
    let (mut datapath, ifindex) = match set_up(&target) {
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
    let mut installed = Holds::default();
    loop {
        if let Err(e) = datapath.set_lease(lease) {
            warn!(%target, "renewing the lease: {e}");
        }
        let request = match incoming.recv_timeout(lease / 3) {
            Ok(request) => request,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match request {
            Request::Apply(rules, holds, fresh, reply) => {
                let result = fresh
                    .iter()
                    .try_for_each(|slot| datapath.reset_counters(*slot))
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        apply(
                            &mut datapath,
                            &target,
                            ifindex,
                            &mut installed,
                            &rules,
                            holds,
                        )
                    });
                reply.send(result).ok();
            }
            Request::Counters(slots, reply) => {
                let result = slots
                    .iter()
                    .map(|slot| datapath.counters_of(*slot).map_err(|e| e.to_string()))
                    .collect();
                reply.send(result).ok();
            }
        }
    }
    if let Err(e) = datapath.detach_all() {
        warn!(%target, "cleaning up: {e}");
    }
    info!(%target, "detached and restored");
}

fn set_up(target: &Target) -> Result<(Datapath, u32), String> {
    if let Some(ns) = &target.netns {
        netns::enter(ns).map_err(|e| e.to_string())?;
    }
    let ifindex =
        netns::if_index(&target.iface).ok_or_else(|| format!("interface '{target}' not found"))?;
    host::check_link_type(&target.iface, ifindex)?;
    let mut datapath = Datapath::load().map_err(|e| first_line(&e.to_string()))?;
    // Both directions from the start: a rule set without rules for a direction costs one map
    // lookup per packet there, and later rule sets never have to attach.
    for direction in [Direction::Ingress, Direction::Egress] {
        datapath
            .attach(&target.iface, ifindex, direction, AttachMode::Auto)
            .map_err(|e| first_line(&e.to_string()))?;
    }
    Ok((datapath, ifindex))
}

fn apply(
    datapath: &mut Datapath,
    target: &Target,
    ifindex: u32,
    installed: &mut Holds,
    rules: &CompiledRules,
    holds: Holds,
) -> Result<(), String> {
    // The daemon's fq covers any delay a rule can ask for, so a later, longer rule never has to
    // replace it.
    if holds.egress_fq && !installed.egress_fq {
        datapath
            .install_fq(&target.iface, ifindex, MAX_HORIZON)
            .map_err(|e| e.to_string())?;
        installed.egress_fq = true;
    }
    if holds.ifb && !installed.ifb {
        host::check_ingress_hold_kernel()?;
        datapath
            .create_ifb(&target.iface, ifindex, MAX_HORIZON)
            .map_err(|e| e.to_string())?;
        installed.ifb = true;
    }
    if holds.reverse_tcp_delay && !installed.reverse_tcp_delay {
        datapath
            .enable_reverse_tcp_delay()
            .map_err(|e| e.to_string())?;
        installed.reverse_tcp_delay = true;
    }
    datapath.apply(rules).map_err(|e| e.to_string())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
