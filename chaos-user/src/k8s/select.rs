//! Which pods a `NetworkFault` picks. Every node's agent decides alone, so the choice is a
//! function of what every node sees alike: the resource's UID, the matching pods' UIDs and
//! the spec. Pods are ranked by a hash of both UIDs and the first ones taken: the same pods on
//! every node, a different spread for each resource, and a pod that comes or goes moves the
//! choice by at most that pod.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::LabelSelector};

use super::crd::{Mode, NetworkFaultSpec};

/// The default cap on the share of a namespace's pods one resource may fault.
pub const DEFAULT_MAX_SHARE: u32 = 50;

/// A pod as the choice needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub host_network: bool,
}

impl Candidate {
    /// A running pod's candidate; `None` for one not running (pending, finished, deleting).
    pub fn of(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Running");
        if !running || meta.deletion_timestamp.is_some() {
            return None;
        }
        let spec = pod.spec.as_ref();
        Some(Self {
            uid: meta.uid.clone()?,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        })
    }
}

/// What a resource picks among a namespace's pods.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub chosen: Vec<Candidate>,
    /// Matching pods left out by a guard rail, with why.
    pub refused: Vec<(Candidate, String)>,
}

/// Picks the pods `spec` faults among `pods` (the running pods of the resource's namespace,
/// `labels` each) for the resource with UID `fault_uid`. An error says why nothing is picked.
pub fn select(
    fault_uid: &str,
    namespace: &str,
    spec: &NetworkFaultSpec,
    pods: &[(Candidate, BTreeMap<String, String>)],
) -> Result<Selection, String> {
    if namespace == "kube-system" && !spec.allow_kube_system {
        return Err(
            "pods in kube-system are never faulted unless the resource says allowKubeSystem: true"
                .to_owned(),
        );
    }
    let mut selection = Selection::default();
    let mut eligible = Vec::new();
    for (pod, labels) in pods {
        if !matches(&spec.selector, labels)? {
            continue;
        }
        if pod.host_network && !spec.allow_host_network {
            selection.refused.push((
                pod.clone(),
                "host networking (its namespace is the node's): refused unless \
                 allowHostNetwork: true"
                    .to_owned(),
            ));
            continue;
        }
        eligible.push(pod.clone());
    }
    let wanted = count(spec, eligible.len())?;
    let share = spec.max_share.unwrap_or(DEFAULT_MAX_SHARE);
    let cap = pods.len() * share as usize / 100;
    if wanted > cap {
        return Err(format!(
            "{wanted} of the namespace's {} pods asked, over the cap of {share} % ({cap} pods): \
             raise maxShare to allow it",
            pods.len()
        ));
    }
    eligible.sort_by_key(|p| (rank(fault_uid, &p.uid), p.uid.clone()));
    eligible.truncate(wanted);
    selection.chosen = eligible;
    Ok(selection)
}

/// How many of `n` eligible pods the mode takes.
fn count(spec: &NetworkFaultSpec, n: usize) -> Result<usize, String> {
    let value = || {
        spec.value
            .as_deref()
            .ok_or_else(|| format!("mode {} needs a value", mode_name(spec.mode)))?
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("value: expected a whole number, got {:?}", spec.value))
    };
    Ok(match spec.mode {
        Mode::One => n.min(1),
        Mode::All => n,
        Mode::Fixed => (value()? as usize).min(n),
        Mode::FixedPercent => {
            let p = value()?;
            if p > 100 {
                return Err(format!("value: a percentage is 0-100, got {p}"));
            }
            n * p as usize / 100
        }
    })
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::One => "one",
        Mode::All => "all",
        Mode::Fixed => "fixed",
        Mode::FixedPercent => "fixed-percent",
    }
}

/// A pod's rank for a resource: both UIDs hashed together.
fn rank(fault_uid: &str, pod_uid: &str) -> u64 {
    fnv1a(fault_uid.bytes().chain([0]).chain(pod_uid.bytes()))
}

/// FNV-1a: stable across processes, versions and nodes (unlike std's hasher), so every node
/// computes the same ranks and names.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `labels` match a Kubernetes label selector (matchLabels and matchExpressions).
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in selector.match_expressions.iter().flatten() {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => return Err(format!("selector: unknown operator {other}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn spec(mode: Mode, value: Option<&str>) -> NetworkFaultSpec {
        NetworkFaultSpec {
            selector: LabelSelector {
                match_labels: Some([("app".to_owned(), "cart".to_owned())].into()),
                match_expressions: None,
            },
            mode,
            value: value.map(str::to_owned),
            rules: vec!["drop=1%".into()],
            campaign: None,
            duration: None,
            dry_run: false,
            allow_host_network: false,
            allow_kube_system: false,
            max_share: Some(100),
        }
    }

    fn pods(n: usize, app: &str) -> Vec<(Candidate, BTreeMap<String, String>)> {
        (0..n)
            .map(|i| {
                (
                    Candidate {
                        uid: format!("uid-{app}-{i}"),
                        namespace: "shop".into(),
                        name: format!("{app}-{i}"),
                        node: Some(format!("n{}", i % 3)),
                        host_network: false,
                    },
                    [("app".to_owned(), app.to_owned())].into(),
                )
            })
            .collect()
    }

    fn names(s: &Selection) -> Vec<String> {
        s.chosen.iter().map(|c| c.name.clone()).collect()
    }

    #[test]
    fn modes_pick_the_same_pods_whatever_the_order() {
        let mut all = pods(10, "cart");
        all.extend(pods(5, "db"));
        let one = select("f1", "shop", &spec(Mode::One, None), &all).unwrap();
        assert_eq!(one.chosen.len(), 1);
        assert_eq!(
            select("f1", "shop", &spec(Mode::All, None), &all)
                .unwrap()
                .chosen
                .len(),
            10
        );
        let fixed = select("f1", "shop", &spec(Mode::Fixed, Some("3")), &all).unwrap();
        assert_eq!(fixed.chosen.len(), 3);
        let half = select("f1", "shop", &spec(Mode::FixedPercent, Some("50")), &all).unwrap();
        assert_eq!(half.chosen.len(), 5);
        // Another node sees the pods in another order: the same choice.
        let mut reversed = all.clone();
        reversed.reverse();
        let again = select(
            "f1",
            "shop",
            &spec(Mode::FixedPercent, Some("50")),
            &reversed,
        );
        assert_eq!(names(&again.unwrap()), names(&half));
        // The fixed three are the first three of the half: one ranking.
        assert_eq!(names(&fixed)[..], names(&half)[..3]);
        // Another resource spreads differently (over 10 pods, 5 of them, almost surely).
        let other = select("f2", "shop", &spec(Mode::FixedPercent, Some("50")), &all).unwrap();
        assert_ne!(names(&other), names(&half));
    }

    #[test]
    fn guard_rails_refuse_with_reasons() {
        let mut all = pods(4, "cart");
        all[0].0.host_network = true;
        let s = select("f", "shop", &spec(Mode::All, None), &all).unwrap();
        assert_eq!(s.chosen.len(), 3);
        assert_eq!(s.refused.len(), 1);
        assert!(s.refused[0].1.starts_with("host networking"));
        let mut capped = spec(Mode::All, None);
        capped.max_share = None;
        assert_eq!(
            select("f", "shop", &capped, &all).unwrap_err(),
            "3 of the namespace's 4 pods asked, over the cap of 50 % (2 pods): raise maxShare \
             to allow it"
        );
        assert_eq!(
            select("f", "kube-system", &spec(Mode::All, None), &all).unwrap_err(),
            "pods in kube-system are never faulted unless the resource says allowKubeSystem: true"
        );
        assert_eq!(
            select("f", "shop", &spec(Mode::Fixed, None), &all).unwrap_err(),
            "mode fixed needs a value"
        );
        assert_eq!(
            select("f", "shop", &spec(Mode::FixedPercent, Some("150")), &all).unwrap_err(),
            "value: a percentage is 0-100, got 150"
        );
    }

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let selector = LabelSelector {
            match_labels: Some([("app".to_owned(), "cart".to_owned())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["canary".into()]),
            }]),
        };
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(matches(&selector, &labels(&[("app", "cart")])).unwrap());
        assert!(matches(&selector, &labels(&[("app", "cart"), ("tier", "web")])).unwrap());
        assert!(!matches(&selector, &labels(&[("app", "cart"), ("tier", "canary")])).unwrap());
        assert!(!matches(&selector, &labels(&[("app", "db")])).unwrap());
    }
}
