//! Faults on one interface: the program and its maps ([`Datapath`]) and the host plumbing
//! around them ([`Plumbing`]), driven through one path by `chaos run` and by each of the
//! daemon's interface workers.
//!
//! Order matters and lives here only: plumbing before a rule set that holds packets goes live
//! (a kernel without fq or ifb must leave the interface untouched), clsact before a netlink
//! attachment, and on close the program detached before the plumbing goes.

use chaos_common::RuleCounters;
use thiserror::Error;

use crate::{
    datapath::{AttachMode, Capacity, Datapath, DatapathError},
    plumbing::{Plumbing, PlumbingError},
    rule::Direction,
    ruleset::RuleSet,
};

#[derive(Debug, Error)]
pub enum InjectorError {
    // Boxed: aya's errors are large, and every call here returns this.
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error(transparent)]
    Plumbing(#[from] PlumbingError),
}

impl From<DatapathError> for InjectorError {
    fn from(e: DatapathError) -> Self {
        Self::Datapath(Box::new(e))
    }
}

/// chaos on one interface of the calling thread's network namespace.
pub struct Injector {
    // The datapath first: fields drop in order, and the program must be detached before the
    // plumbing it may redirect into goes.
    datapath: Datapath,
    plumbing: Plumbing,
    iface: String,
    /// The lease last renewed: `apply` renews it once done, since loading the stage programs
    /// can take longer than a short lease (the faults would lapse until the next renewal).
    lease: Option<std::time::Duration>,
}

impl Injector {
    /// Loads the program with maps sized by `capacity`, for `iface` (index `ifindex`);
    /// touches nothing on the interface yet.
    pub fn load(iface: &str, ifindex: u32, capacity: Capacity) -> Result<Self, InjectorError> {
        Ok(Self {
            datapath: Datapath::load_with(capacity)?,
            plumbing: Plumbing::new(iface, ifindex),
            iface: iface.to_owned(),
            lease: None,
        })
    }

    /// What the maps were sized for: rule sets must be built for it.
    pub fn capacity(&self) -> Capacity {
        self.datapath.capacity()
    }

    /// Attaches the program in each of `directions`.
    pub fn attach(
        &mut self,
        directions: &[Direction],
        mode: AttachMode,
    ) -> Result<(), InjectorError> {
        if mode.resolve() == AttachMode::Netlink {
            self.plumbing.ensure_clsact()?;
        }
        for direction in directions {
            self.datapath.attach(&self.iface, *direction, mode)?;
        }
        Ok(())
    }

    /// Makes `set` live: adds the plumbing it holds packets with, zeroes the counters of
    /// `fresh_slots` (given to rules that are new), then writes and flips the generation.
    pub fn apply(&mut self, set: &RuleSet, fresh_slots: &[u32]) -> Result<(), InjectorError> {
        let holds = set.holds();
        let ifb = self.plumbing.ensure(&holds)?;
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

    /// Counters of `slots`, summed over CPUs.
    pub fn counters(&self, slots: &[u32]) -> Result<Vec<RuleCounters>, InjectorError> {
        slots
            .iter()
            .map(|slot| Ok(self.datapath.counters_of(*slot)?))
            .collect()
    }

    /// Detaches the program, then removes the plumbing; reports the first failure after
    /// trying both. Dropping an injector does the same.
    pub fn close(&mut self) -> Result<(), InjectorError> {
        let detached = self.datapath.detach_all();
        let restored = self.plumbing.restore();
        detached?;
        restored?;
        Ok(())
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("{e}");
        }
    }
}
