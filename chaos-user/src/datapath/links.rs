//! Attaching the program to interfaces, and detaching it.

use aya::{
    Ebpf,
    programs::{
        LinkOrder, TcAttachType,
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use tracing::info;

use super::{DatapathError, Result, classifier, program_name};
use crate::rule::Direction;

/// How programs are attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX on kernels 6.6 and newer, netlink cls_bpf before.
    #[default]
    Auto,
    /// A TCX link: detaches by itself when chaos's file descriptor closes.
    Tcx,
    /// A netlink cls_bpf filter on a clsact qdisc (added if missing, then removed again).
    Netlink,
}

impl AttachMode {
    /// `Tcx` or `Netlink`: what `Auto` means on this kernel.
    pub fn resolve(self) -> Self {
        match self {
            // If the version cannot be read, TCX is tried and its error reported.
            Self::Auto => match KernelVersion::current() {
                Ok(v) if v < KernelVersion::new(6, 6, 0) => Self::Netlink,
                _ => Self::Tcx,
            },
            other => other,
        }
    }
}

struct Link {
    /// Which attachment group it belongs to: a daemon worker attaches one program to the
    /// interfaces of several workloads, each in its own namespace (`crate::injector`).
    tag: u32,
    iface: String,
    direction: Direction,
    id: SchedClassifierLinkId,
}

/// The program's attachments. A netlink attachment needs a clsact qdisc on the interface:
/// that is the host plumbing's (`crate::plumbing`), made before attaching.
#[derive(Default)]
pub struct Links(Vec<Link>);

impl Links {
    /// Attaches the program for `direction` to `iface`, first in its chain: a program before
    /// chaos could redirect or drop packets before the faults apply.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        tag: u32,
        iface: &str,
        direction: Direction,
        mode: AttachMode,
    ) -> Result<()> {
        let attach_type = match direction {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        };
        let options = match mode.resolve() {
            AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
            _ => TcAttachOptions::TcxOrder(LinkOrder::first()),
        };
        let id = classifier(ebpf, program_name(direction))?
            .attach_with_options(iface, attach_type, options)
            .map_err(|source| DatapathError::Attach {
                iface: iface.to_owned(),
                direction: direction.as_str(),
                source,
            })?;
        info!(iface, direction = direction.as_str(), ?mode, "attached");
        self.0.push(Link {
            tag,
            iface: iface.to_owned(),
            direction,
            id,
        });
        Ok(())
    }

    /// Detaches everything, reporting the first failure after trying all.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.detach_where(ebpf, |_| true)
    }

    /// Detaches the attachments of group `tag`. A netlink attachment is found by its interface
    /// in the calling thread's namespace: call it from the group's.
    pub fn detach_tag(&mut self, ebpf: &mut Ebpf, tag: u32) -> Result<()> {
        self.detach_where(ebpf, |t| t == tag)
    }

    fn detach_where(&mut self, ebpf: &mut Ebpf, wanted: impl Fn(u32) -> bool) -> Result<()> {
        let mut first_error = None;
        let (gone, kept) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|l| wanted(l.tag));
        self.0 = kept;
        let gone: Vec<Link> = gone;
        for Link {
            iface,
            direction,
            id,
            ..
        } in gone
        {
            let result = classifier(ebpf, program_name(direction)).and_then(|prog| {
                prog.detach(id).map_err(|source| DatapathError::Detach {
                    iface: iface.clone(),
                    direction: direction.as_str(),
                    source,
                })
            });
            match result {
                Ok(()) => info!(iface, direction = direction.as_str(), "detached"),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
