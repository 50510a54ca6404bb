//! The `NetworkFault` resource (`chaos.dev/v1alpha1`). Its CRD is generated from these types
//! (`chaos crd`, committed as `deploy/crd.yaml`), so schema and code cannot drift.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Faults for the pods a selector picks in the resource's namespace, applied by the chaos agent
/// on every node those pods run on.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "chaos.dev",
    version = "v1alpha1",
    kind = "NetworkFault",
    namespaced,
    status = "NetworkFaultStatus",
    shortname = "nf",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFaultSpec {
    /// The pods of the resource's namespace whose labels match.
    pub selector: LabelSelector,
    /// How many of the matching pods are faulted: one, all, a fixed number (`value`) or a
    /// share (`value` percent). The choice is made by pod UID, the same on every node.
    #[serde(default)]
    pub mode: Mode,
    /// The number (`fixed`) or percentage (`fixed-percent`, 0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Rules in chaos's rule language (`chaos run --help`); the first that matches a packet
    /// decides, e.g. `proto=tcp dport=6379 delay=100ms jitter=20ms`.
    /// Required unless `campaign` gives the faults.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub rules: Vec<String>,
    /// Random experiments over time instead of `rules` all along: each slot of the schedule
    /// faults one of the selected pods with one fault of the menu. Every node draws the same
    /// schedule, pods and faults from the seed (the resource's UID when none is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<CampaignBlock>,
    /// How long the faults last, counted from the resource's creation, e.g. `10m`; the agent's
    /// `--max-duration` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Only count what the rules match: no packet is dropped, delayed or reset.
    #[serde(default)]
    pub dry_run: bool,
    /// Also fault pods with host networking (their namespace is the node's). Their rules then
    /// carry `force=yes`, which also lifts the guarded ports.
    #[serde(default)]
    pub allow_host_network: bool,
    /// Allow a resource in `kube-system`.
    #[serde(default)]
    pub allow_kube_system: bool,
    /// The largest share of the namespace's pods one resource may fault, in percent (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_share: Option<u32>,
}

/// A `NetworkFault`'s campaign: as a daemon's `[[campaign]]`, with the selected pods as targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignBlock {
    /// When experiments may run: `Mon-Fri 10:00-16:00 Europe/Berlin`; always when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Gap between experiments' starts: `15m..45m` or `30m`.
    pub every: String,
    /// Length of each experiment: `1m..5m` or `2m`.
    pub duration: String,
    /// Most experiments at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
    /// The weighted menu each experiment draws one rule from.
    #[schemars(length(min = 1, max = 64))]
    pub faults: Vec<crate::campaign::Fault>,
    /// The same seed gives the same schedule (default: from the resource's UID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl CampaignBlock {
    /// The campaign it describes; `uid` seeds it when the block has no seed.
    pub fn campaign(
        &self,
        uid: &str,
        force: bool,
    ) -> Result<crate::campaign::Campaign, crate::experiment::ExperimentError> {
        let faults = self
            .faults
            .iter()
            .map(|f| crate::campaign::Fault {
                weight: f.weight,
                rule: if force {
                    format!("{} force=yes", f.rule)
                } else {
                    f.rule.clone()
                },
            })
            .collect();
        let spec = crate::campaign::CampaignSpec {
            // Names the daemon's experiments, which the agent names itself.
            name: "k8s".into(),
            window: self.window.clone(),
            every: self.every.clone(),
            duration: self.duration.clone(),
            max_concurrent: self.max_concurrent.unwrap_or(1),
            // The pods are picked by `Campaign::pick` among those selected; this only passes
            // validation.
            targets: vec![crate::campaign::Weighted::Plain("pid=1".into())],
            namespace: None,
            iface: String::new(),
            faults,
            seed: self.seed,
            stop_conditions: Vec::new(),
        };
        crate::campaign::Campaign::new(spec, super::select::fnv1a(uid.bytes()))
    }
}

/// How the matching pods are picked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    One,
    #[default]
    All,
    Fixed,
    FixedPercent,
}

/// Written by the agents: one entry per node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFaultStatus {
    /// Over all nodes: Failed if one failed, Injecting if one injects, Finished once over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
}

/// One node's part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    /// Pods faulted on this node now.
    pub targets: u32,
    pub phase: Phase,
    #[serde(default)]
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Injecting,
    Finished,
    Failed,
}

impl NetworkFaultStatus {
    /// The overall phase from the nodes' entries.
    pub fn overall(nodes: &[NodeStatus]) -> Phase {
        let any = |p| nodes.iter().any(|n| n.phase == p);
        if any(Phase::Failed) {
            Phase::Failed
        } else if any(Phase::Injecting) {
            Phase::Injecting
        } else if !nodes.is_empty() && nodes.iter().all(|n| n.phase == Phase::Finished) {
            Phase::Finished
        } else {
            Phase::Pending
        }
    }
}

/// The CRD as YAML: what `chaos crd` prints and `deploy/crd.yaml` holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    let yaml = serde_yaml::to_string(&NetworkFault::crd()).expect("a CRD serializes");
    format!("# Generated by `chaos crd` from chaos-user/src/k8s/crd.rs: do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "deploy/crd.yaml is stale: run `cargo run -p chaos-user -- crd > deploy/crd.yaml`"
        );
    }

    #[test]
    fn an_example_resource_parses() {
        let yaml = r#"
apiVersion: chaos.dev/v1alpha1
kind: NetworkFault
metadata: {name: slow-cart, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  mode: fixed-percent
  value: "50"
  rules: ["proto=tcp dport=6379 delay=100ms jitter=20ms"]
  duration: 10m
"#;
        let f: NetworkFault = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(f.spec.mode, Mode::FixedPercent);
        assert_eq!(f.spec.value.as_deref(), Some("50"));
        assert!(!f.spec.dry_run);
    }
}
