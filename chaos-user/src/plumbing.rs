//! The host plumbing around the program on one interface, and its one owner: chaos's fq at the
//! root (egress holds), chaos's ifb with its own fq (ingress holds, and local TCP's delay on
//! its returning packets), and the clsact qdisc netlink attachments need.
//!
//! [`Plumbing::ensure`] adds what a rule set's [`Holds`] need and never takes anything away
//! while the interface is in use: the next rule set may need it again, and removing fq would
//! drop the packets it holds. [`Plumbing::restore`] (and dropping it) removes all of it after
//! the program is detached, leaving the interface as it was found.

use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};

use crate::{
    clsact::{self, AddedClsact},
    host,
    qdisc::{self, Ifb, InstalledFq, QdiscError},
    ruleset::Holds,
};

#[derive(Debug, Error)]
pub enum PlumbingError {
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    #[error("{0}")]
    Kernel(String),
    #[error("adding a clsact qdisc to {iface}: {source}")]
    Clsact {
        iface: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("restoring {iface}: {source}")]
    Restore {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// What chaos added to one interface.
#[derive(Debug)]
pub struct Plumbing {
    iface: String,
    ifindex: u32,
    /// chaos's root fq and its horizon.
    fq: Option<(InstalledFq, Duration)>,
    /// chaos's ifb and the horizon of its fq.
    ifb: Option<(Ifb, Duration)>,
    /// A clsact qdisc chaos added (None also when one was there before).
    clsact: Option<AddedClsact>,
    clsact_checked: bool,
    /// The index the ifb must have, if any (see [`Plumbing::with_ifb_index`]).
    ifb_index: Option<u32>,
}

impl Plumbing {
    /// Nothing added yet to `iface` (index `ifindex`).
    pub fn new(iface: &str, ifindex: u32) -> Self {
        Self {
            iface: iface.to_owned(),
            ifindex,
            fq: None,
            ifb: None,
            clsact: None,
            clsact_checked: false,
            ifb_index: None,
        }
    }

    /// As [`Plumbing::new`], with the ifb (if one is needed) made as interface `index` of the
    /// namespace: a program shared by workloads in several namespaces has one ifb index.
    pub fn with_ifb_index(iface: &str, ifindex: u32, index: u32) -> Self {
        let mut plumbing = Self::new(iface, ifindex);
        plumbing.ifb_index = Some(index);
        plumbing
    }

    /// The interface it plumbs.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Makes sure the interface has a clsact qdisc, for netlink attachments: added if missing
    /// (and removed by `restore`), left alone if it was there.
    pub fn ensure_clsact(&mut self) -> Result<(), PlumbingError> {
        if self.clsact_checked {
            return Ok(());
        }
        self.clsact =
            clsact::ensure(&self.iface, self.ifindex).map_err(|source| PlumbingError::Clsact {
                iface: self.iface.clone(),
                source,
            })?;
        self.clsact_checked = true;
        Ok(())
    }

    /// Adds what `holds` needs that is not there yet: fq at the root for egress holds, the ifb
    /// for ingress ones, each with a horizon covering the longest hold (a longer one replaces
    /// chaos's own fq in place, keeping what it holds). Returns the ifb's index (0: none).
    pub fn ensure(&mut self, holds: &Holds) -> Result<u32, PlumbingError> {
        let Some(horizon) = holds.horizon else {
            return Ok(self.ifb_ifindex());
        };
        if holds.egress_fq && self.fq.as_ref().is_none_or(|(_, h)| *h < horizon) {
            let fq = qdisc::install_fq(&self.iface, self.ifindex, horizon)?;
            info!(iface = self.iface, ?horizon, "installed fq");
            self.fq = Some((fq, horizon));
        }
        match &mut self.ifb {
            Some((ifb, h)) if holds.ifb && *h < horizon => {
                qdisc::install_fq(&ifb.name, ifb.ifindex, horizon)?;
                *h = horizon;
            }
            None if holds.ifb => {
                host::check_ingress_hold_kernel().map_err(PlumbingError::Kernel)?;
                let ifb = qdisc::create_ifb(self.ifindex, horizon, self.ifb_index)?;
                info!(
                    iface = self.iface,
                    ifb = ifb.name,
                    "created ifb for ingress holds"
                );
                self.ifb = Some((ifb, horizon));
            }
            _ => {}
        }
        Ok(self.ifb_ifindex())
    }

    fn ifb_ifindex(&self) -> u32 {
        self.ifb.as_ref().map_or(0, |(ifb, _)| ifb.ifindex)
    }

    /// Removes everything chaos added, reporting the first failure after trying all. Call it
    /// once the program is detached.
    pub fn restore(&mut self) -> Result<(), PlumbingError> {
        let mut first_error = None;
        let mut failed = |iface: String, source| {
            first_error.get_or_insert(PlumbingError::Restore { iface, source });
        };
        if let Some((ifb, _)) = self.ifb.take() {
            let name = ifb.name.clone();
            match ifb.delete() {
                Ok(()) => info!(ifb = name, "deleted ifb"),
                Err(e) => failed(name, e),
            }
        }
        if let Some((fq, _)) = self.fq.take() {
            match fq.restore() {
                Ok(()) => info!(
                    iface = self.iface,
                    "removed fq; the default root qdisc is back"
                ),
                Err(e) => failed(self.iface.clone(), e),
            }
        }
        if let Some(added) = self.clsact.take() {
            match added.remove() {
                Ok(()) => info!(iface = self.iface, "removed the clsact qdisc chaos added"),
                Err(e) => failed(self.iface.clone(), e),
            }
        }
        self.clsact_checked = false;
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            warn!("{e}");
        }
    }
}
