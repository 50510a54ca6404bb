//! Kubernetes: the `NetworkFault` resource and the node agent that applies it.

pub mod agent;
pub mod crd;
pub mod events;
#[cfg(any(test, feature = "fake-api"))]
pub mod fake;
pub mod select;
