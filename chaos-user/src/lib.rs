//! chaos: network fault injection with an eBPF TC program.
//!
//! The library holds everything the `chaos` binary does, one module per job, so tests and
//! benches drive the same code.

pub mod campaign;
pub mod caps;
pub mod client;
pub mod clsact;
pub mod cmd;
pub mod compile;
pub mod cri;
pub mod daemon;
pub mod datapath;
pub mod dist;
pub mod duration;
pub mod experiment;
pub mod guard;
pub mod host;
pub mod injector;
pub mod k8s;
pub mod netns;
pub mod plumbing;
pub mod qdisc;
pub mod recover;
pub mod report;
pub mod rtnl;
pub mod rule;
pub mod ruleset;
pub mod selector;
pub mod target;

/// An error the user can fix by changing the command line or the environment: the CLI exits
/// with status 2 for these, 1 for everything else.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);
