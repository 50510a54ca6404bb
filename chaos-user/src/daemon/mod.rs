//! `chaos daemon`: experiments on every interface and namespace of a host, controlled over an
//! HTTP API or a config file.

pub mod api;
pub mod audit;
mod campaign_api;
pub mod campaigns;
pub mod probe;
pub mod state;
pub mod worker;
