//! Faults on one interface: the program and its maps ([`Datapath`]) and the host plumbing
//! around them ([`Plumbing`]), driven through one path by `chaos run` and by each of the
//! daemon's interface workers.
//!
//! Order matters and lives here only: plumbing before a rule set that holds packets goes live
//! (a kernel without fq or ifb must leave the interface untouched), clsact before a netlink
//! attachment, and on close the program detached before the plumbing goes.

use std::fs::File;

use chaos_common::RuleCounters;
use thiserror::Error;

use crate::{
    datapath::{AttachMode, Capacity, Datapath, DatapathError},
    plumbing::{Plumbing, PlumbingError},
    rule::Direction,
    ruleset::{Holds, RuleSet},
};

#[derive(Debug, Error)]
pub enum InjectorError {
    // Boxed: aya's errors are large, and every call here returns this.
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error(transparent)]
    Plumbing(#[from] PlumbingError),
    /// A workload's namespace or interface.
    #[error("{0}")]
    Netns(String),
    #[error("no interface to attach to")]
    NoInterface,
}

impl From<DatapathError> for InjectorError {
    fn from(e: DatapathError) -> Self {
        Self::Datapath(Box::new(e))
    }
}

/// chaos on one interface of the calling thread's network namespace, or one program on the
/// interfaces of several workloads, each in its own namespace (a daemon's selector target).
pub struct Injector {
    // The datapath first: fields drop in order, and the program must be detached before the
    // plumbing it may redirect into goes.
    datapath: Datapath,
    members: Vec<Member>,
    /// The rule set's holds last applied: a member added later gets the same plumbing.
    holds: Holds,
    /// The lease last renewed: `apply` renews it once done, since loading the stage programs
    /// can take longer than a short lease (the faults would lapse until the next renewal).
    lease: Option<std::time::Duration>,
    /// The calling thread's own namespace, returned to after working in a member's.
    home: Option<File>,
    next_tag: u32,
    /// Shared by workloads (see [`Injector::load_shared`]): members are attached in the
    /// directions the live rule set needs, as it needs them.
    shared: bool,
    /// The directions the live rule set needs (shared injectors only).
    directions: Vec<Direction>,
}

/// One interface the program is attached to.
struct Member {
    key: String,
    /// Its namespace, when it is not the calling thread's.
    netns: Option<File>,
    tag: u32,
    plumbing: Plumbing,
    /// The directions attached so far.
    attached: Vec<Direction>,
}

/// What [`Injector::add_member`] found.
#[derive(Clone, Debug)]
pub struct Attached {
    pub iface: String,
}

/// The ifb index every member of a shared program gets in its namespace: indexes are per
/// namespace, and the program redirects held ingress packets to one index.
const SHARED_IFB_INDEX: u32 = 0x6368_0000;

impl Injector {
    /// Loads the program with maps sized by `capacity`, for `iface` (index `ifindex`);
    /// touches nothing on the interface yet.
    pub fn load(iface: &str, ifindex: u32, capacity: Capacity) -> Result<Self, InjectorError> {
        let mut injector = Self::load_shared(capacity)?;
        injector.members.push(Member {
            key: iface.to_owned(),
            netns: None,
            tag: 0,
            plumbing: Plumbing::new(iface, ifindex),
            attached: Vec::new(),
        });
        injector.shared = false;
        Ok(injector)
    }

    /// Loads the program with no interface yet: [`Injector::add_member`] attaches it to
    /// workloads' interfaces. One program for all of them: loading (the verifier) is what
    /// takes time, not attaching.
    pub fn load_shared(capacity: Capacity) -> Result<Self, InjectorError> {
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| InjectorError::Netns(format!("opening this thread's namespace: {e}")))?;
        Ok(Self {
            datapath: Datapath::load_with(capacity)?,
            members: Vec::new(),
            holds: Holds::default(),
            lease: None,
            home: Some(home),
            next_tag: 1,
            shared: true,
            directions: Vec::new(),
        })
    }

    /// What the maps were sized for: rule sets must be built for it.
    pub fn capacity(&self) -> Capacity {
        self.datapath.capacity()
    }

    /// Attaches the program in each of `directions` (to the interface given at load).
    pub fn attach(
        &mut self,
        directions: &[Direction],
        mode: AttachMode,
    ) -> Result<(), InjectorError> {
        let member = self.members.first_mut().ok_or(InjectorError::NoInterface)?;
        attach_member(&mut self.datapath, member, directions, mode)
    }

    /// Attaches the program to `iface` (the default route's when `None`) in the namespace
    /// `netns`, as member `key`, in the directions the live rule set needs (each TCX attachment
    /// costs a kernel grace period, 8-16 ms here: a direction no rule uses is not attached),
    /// with the plumbing it holds packets with. Nothing stays if it fails.
    pub fn add_member(
        &mut self,
        key: &str,
        netns: File,
        iface: Option<&str>,
        mode: AttachMode,
    ) -> Result<Attached, InjectorError> {
        let tag = self.next_tag;
        let (datapath, holds, directions) = (&mut self.datapath, &self.holds, &self.directions);
        let member = within(self.home.as_ref(), Some(&netns), key, || {
            let name = match iface {
                Some(name) => name.to_owned(),
                None => crate::netns::default_route_iface()
                    .map_err(|e| InjectorError::Netns(format!("reading routes: {e}")))?
                    .ok_or_else(|| {
                        InjectorError::Netns("no default route: give the interface".into())
                    })?,
            };
            let ifindex = crate::netns::if_index(&name)
                .ok_or_else(|| InjectorError::Netns(format!("no interface {name}")))?;
            crate::host::check_link_type(&name, ifindex).map_err(InjectorError::Netns)?;
            let mut member = Member {
                key: key.to_owned(),
                netns: None,
                tag,
                plumbing: Plumbing::with_ifb_index(&name, ifindex, SHARED_IFB_INDEX),
                attached: Vec::new(),
            };
            let done = member
                .plumbing
                .ensure(holds)
                .map_err(InjectorError::from)
                .and_then(|_| attach_member(datapath, &mut member, directions, mode));
            if let Err(e) = done {
                // The attach error is the one to report; the cleanup's is only logged.
                if let Err(again) = release(datapath, &mut member) {
                    tracing::warn!("undoing a failed attachment: {again}");
                }
                return Err(e);
            }
            Ok((member, name))
        })?;
        let (mut member, name) = member;
        member.netns = Some(netns);
        self.next_tag += 1;
        self.members.push(member);
        Ok(Attached { iface: name })
    }

    /// Detaches member `key` and removes its plumbing; a member whose namespace is gone
    /// (its workload ended) has nothing left to remove.
    pub fn remove_member(&mut self, key: &str) -> Result<(), InjectorError> {
        let Some(at) = self.members.iter().position(|m| m.key == key) else {
            return Ok(());
        };
        let mut member = self.members.remove(at);
        let netns = member.netns.take();
        let datapath = &mut self.datapath;
        within(self.home.as_ref(), netns.as_ref(), key, || {
            release(datapath, &mut member)
        })
    }

    /// The members' keys, in the order they were added.
    pub fn member_keys(&self) -> Vec<String> {
        self.members.iter().map(|m| m.key.clone()).collect()
    }

    /// Makes `set` live: adds the plumbing it holds packets with, zeroes the counters of
    /// `fresh_slots` (given to rules that are new), then writes and flips the generation.
    pub fn apply(&mut self, set: &RuleSet, fresh_slots: &[u32]) -> Result<(), InjectorError> {
        let holds = set.holds();
        let mut ifb = 0;
        if self.shared {
            for direction in set.directions() {
                if !self.directions.contains(&direction) {
                    self.directions.push(direction);
                }
            }
        }
        for member in &mut self.members {
            let datapath = &mut self.datapath;
            let wanted = &self.directions;
            let netns = member.netns.take();
            let key = member.key.clone();
            let done = within(self.home.as_ref(), netns.as_ref(), &key, || {
                let ifb = member.plumbing.ensure(&holds)?;
                attach_member(datapath, member, wanted, AttachMode::Auto)?;
                Ok(ifb)
            });
            member.netns = netns;
            ifb = done?;
        }
        self.holds = holds;
        self.datapath.set_holds(ifb, holds.reverse_tcp_delay)?;
        for slot in fresh_slots {
            self.datapath.reset_counters(*slot)?;
        }
        self.datapath.apply(set)?;
        if let Some(lease) = self.lease {
            self.datapath.set_lease(lease)?;
        }
        Ok(())
    }

    /// Renews the program's lease (see `RuntimeConfig::lease_until_ns`).
    pub fn renew_lease(&mut self, lease: std::time::Duration) -> Result<(), InjectorError> {
        self.lease = Some(lease);
        Ok(self.datapath.set_lease(lease)?)
    }

    /// Counters of `slots`, summed over CPUs (and over members: they share the maps).
    pub fn counters(&self, slots: &[u32]) -> Result<Vec<RuleCounters>, InjectorError> {
        slots
            .iter()
            .map(|slot| Ok(self.datapath.counters_of(*slot)?))
            .collect()
    }

    /// Detaches the program, then removes the plumbing; reports the first failure after
    /// trying all. Dropping an injector does the same.
    pub fn close(&mut self) -> Result<(), InjectorError> {
        let mut first = None;
        for key in self.member_keys() {
            if let Err(e) = self.remove_member(&key) {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.datapath.detach_all() {
            first.get_or_insert(e.into());
        }
        first.map_or(Ok(()), Err)
    }
}

/// Clsact for a netlink attachment, then the program in each of `directions` not attached yet.
fn attach_member(
    datapath: &mut Datapath,
    member: &mut Member,
    directions: &[Direction],
    mode: AttachMode,
) -> Result<(), InjectorError> {
    let missing: Vec<Direction> = directions
        .iter()
        .copied()
        .filter(|d| !member.attached.contains(d))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if mode.resolve() == AttachMode::Netlink {
        member.plumbing.ensure_clsact()?;
    }
    for direction in missing {
        datapath.attach_tagged(member.tag, member.plumbing.iface(), direction, mode)?;
        member.attached.push(direction);
    }
    Ok(())
}

/// Detaches a member, then removes its plumbing: both are tried, the first failure reported.
fn release(datapath: &mut Datapath, member: &mut Member) -> Result<(), InjectorError> {
    let detached = datapath.detach_tag(member.tag);
    let restored = member.plumbing.restore();
    detached?;
    restored?;
    Ok(())
}

/// Runs `f` in namespace `netns` (when given), returning to `home` after: a worker thread
/// works in its workloads' namespaces one call at a time and lives in its own.
fn within<T>(
    home: Option<&File>,
    netns: Option<&File>,
    what: &str,
    f: impl FnOnce() -> Result<T, InjectorError>,
) -> Result<T, InjectorError> {
    let (Some(home), Some(netns)) = (home, netns) else {
        return f();
    };
    crate::netns::enter_file(netns, what).map_err(|e| InjectorError::Netns(e.to_string()))?;
    let result = f();
    // Staying in a workload's namespace would put every later call there: fatal if so.
    crate::netns::enter_file(home, "the worker's own namespace")
        .expect("returning to the thread's own network namespace");
    result
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("{e}");
        }
    }
}
