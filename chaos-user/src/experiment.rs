//! Experiments: named fault mixes on one interface, the unit the daemon manages.
//!
//! The same schema serves the HTTP API (JSON), config files (TOML) and `chaos apply -f`.
//!
//! Precedence when experiments overlap on an interface: higher `priority` first, then the
//! experiment created earlier; within an experiment, its rules in order. The first rule that
//! matches a packet decides, as in `chaos run`.

use std::time::Duration;

use chaos_common::rules::MAX_RULES;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    duration::{self, Bounds},
    rule::Rule,
};

/// Most experiments one daemon holds (each interface also holds at most 64 rules in all).
pub const MAX_EXPERIMENTS: usize = 256;
/// Longest experiment name: a DNS label, so names work in metrics labels and URLs as they are.
pub const MAX_NAME_LEN: usize = 63;

/// An experiment as written by users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Lower-case letters, digits and '-', 1-63 characters.
    pub name: String,
    /// Interface the faults apply on. With `target`, empty means the interface of the
    /// workload's default route.
    #[serde(default, deserialize_with = "null_as_default")]
    pub iface: String,
    /// Named network namespace of the interface (as `ip netns`); the daemon's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// A workload instead of a namespace, as `chaos run --target`: `container=ID-or-NAME`,
    /// `pod=NAMESPACE/NAME`, `pid=PID`, `cgroup=DIR`, `netns=FILE`, or a selector followed
    /// while the experiment runs: `container=GLOB`, `pod=NAMESPACE/GLOB`, `pods=LABELS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The Kubernetes namespace `pods=` looks in ("default" when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Rules in `chaos run`'s language; the first that matches a packet decides.
    pub rules: Vec<String>,
    /// How long the faults last once started, e.g. "5m"; until deleted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// How long to wait before the faults start, e.g. "30s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_delay: Option<String>,
    /// Higher wins when experiments overlap on an interface (default 0).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub priority: i32,
    /// Only count what the rules match: no packet is dropped, delayed or paced.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub dry_run: bool,
    /// Probes that end the experiment when one trips (`kind = "http"` or `"prometheus"`): its
    /// faults go at once, and it shows `failed` with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_conditions: Vec<crate::daemon::probe::StopCondition>,
}

/// `null` for an optional field means the same as leaving it out, for every optional field (the
/// `Option` ones take it as `None`): what the OpenAPI document promises.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A Kubernetes namespace name (RFC 1123 label).
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

/// Why an experiment was refused: the field and what is wrong with it.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize)]
#[error("{field}: {message}")]
pub struct ExperimentError {
    pub field: String,
    pub message: String,
}

impl ExperimentError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A spec that passed validation, with its rules parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub spec: ExperimentSpec,
    pub rules: Vec<Rule>,
    pub duration: Option<Duration>,
    pub start_delay: Duration,
}

impl TryFrom<ExperimentSpec> for Experiment {
    type Error = ExperimentError;

    fn try_from(spec: ExperimentSpec) -> Result<Self, Self::Error> {
        validate_name(&spec.name)?;
        if let Some(target) = &spec.target {
            target
                .parse::<crate::target::Target>()
                .map_err(|e| ExperimentError::new("target", e.to_string()))?;
            if spec.netns.is_some() {
                return Err(ExperimentError::new(
                    "netns",
                    "give netns or target, not both: a target names its own namespace",
                ));
            }
        }
        if let Some(ns) = &spec.namespace {
            if !spec
                .target
                .as_deref()
                .is_some_and(|t| t.starts_with("pods="))
            {
                return Err(ExperimentError::new(
                    "namespace",
                    "only a pods= target looks in a Kubernetes namespace",
                ));
            }
            if !is_dns_label(ns) {
                return Err(ExperimentError::new(
                    "namespace",
                    "not a Kubernetes namespace name (1-63 lower-case letters, digits and '-')",
                ));
            }
        }
        let iface_optional = spec.target.is_some() && spec.iface.is_empty();
        if !iface_optional
            && (spec.iface.is_empty() || spec.iface.len() > 15 || spec.iface.contains('/'))
        {
            return Err(ExperimentError::new(
                "iface",
                "not an interface name (1-15 characters, no '/')",
            ));
        }
        if let Some(ns) = &spec.netns
            && (ns.is_empty() || ns.contains('/') || ns == "." || ns == "..")
        {
            return Err(ExperimentError::new("netns", "not a namespace name"));
        }
        if spec.rules.is_empty() {
            return Err(ExperimentError::new("rules", "at least one rule is needed"));
        }
        if spec.rules.len() > MAX_RULES as usize {
            return Err(ExperimentError::new(
                "rules",
                format!(
                    "{} rules given; at most {MAX_RULES} fit on an interface",
                    spec.rules.len()
                ),
            ));
        }
        if spec.stop_conditions.len() > 8 {
            return Err(ExperimentError::new("stop_conditions", "at most 8"));
        }
        for (i, c) in spec.stop_conditions.iter().enumerate() {
            c.probe(&format!("stop_conditions[{i}]"))?;
        }
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.parse::<Rule>()
                    .map_err(|e| ExperimentError::new(format!("rules[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let duration = spec
            .duration
            .as_deref()
            .map(|d| parse_duration("duration", d, Bounds::POSITIVE))
            .transpose()?;
        let start_delay = spec
            .start_delay
            .as_deref()
            .map(|d| parse_duration("start_delay", d, Bounds::ANY))
            .transpose()?
            .unwrap_or(Duration::ZERO);
        Ok(Self {
            spec,
            rules,
            duration,
            start_delay,
        })
    }
}

pub fn validate_name(name: &str) -> Result<(), ExperimentError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ExperimentError::new(
            "name",
            "use 1-63 lower-case letters, digits and '-', not starting with '-'",
        ))
    }
}

fn parse_duration(field: &str, text: &str, bounds: Bounds) -> Result<Duration, ExperimentError> {
    duration::parse(text, bounds).map_err(|e| ExperimentError::new(field, e.to_string()))
}

/// A config file or `chaos apply -f` file: `[[experiment]]` and `[[campaign]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    #[serde(default, rename = "experiment")]
    pub experiments: Vec<ExperimentSpec>,
    #[serde(default, rename = "campaign")]
    pub campaigns: Vec<crate::campaign::CampaignSpec>,
}

impl ExperimentFile {
    /// Parses TOML and validates every experiment, and that names are unique.
    pub fn parse(text: &str) -> Result<Vec<Experiment>, ExperimentError> {
        let file: ExperimentFile = toml::from_str(text)
            .map_err(|e| ExperimentError::new("file", e.message().to_owned()))?;
        let mut seen = std::collections::HashSet::new();
        file.experiments
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                if !seen.insert(spec.name.clone()) {
                    return Err(ExperimentError::new(
                        format!("experiment[{i}].name"),
                        format!("'{}' given twice", spec.name),
                    ));
                }
                Experiment::try_from(spec).map_err(|e| ExperimentError {
                    field: format!("experiment[{i}].{}", e.field),
                    message: e.message,
                })
            })
            .collect()
    }

    /// Parses TOML and validates every campaign, and that names are unique.
    pub fn parse_campaigns(
        text: &str,
    ) -> Result<Vec<crate::campaign::CampaignSpec>, ExperimentError> {
        let file: ExperimentFile = toml::from_str(text)
            .map_err(|e| ExperimentError::new("file", e.message().to_owned()))?;
        let mut seen = std::collections::HashSet::new();
        for (i, spec) in file.campaigns.iter().enumerate() {
            let at = |e: ExperimentError| ExperimentError {
                field: format!("campaign[{i}].{}", e.field),
                message: e.message,
            };
            if !seen.insert(spec.name.clone()) {
                return Err(at(ExperimentError::new(
                    "name",
                    format!("'{}' given twice", spec.name),
                )));
            }
            crate::campaign::Campaign::new(spec.clone(), 0).map_err(at)?;
        }
        Ok(file.campaigns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, rules: &[&str]) -> ExperimentSpec {
        ExperimentSpec {
            name: name.into(),
            iface: "eth0".into(),
            netns: None,
            target: None,
            namespace: None,
            rules: rules.iter().map(|r| (*r).to_owned()).collect(),
            duration: None,
            start_delay: None,
            priority: 0,
            dry_run: false,
            stop_conditions: Vec::new(),
        }
    }

    #[test]
    fn valid_experiment() {
        let mut s = spec(
            "slow-redis",
            &["proto=tcp dport=6379 drop=5% delay=200ms delay-p=20%"],
        );
        s.duration = Some("5m".into());
        s.start_delay = Some("10s".into());
        let e = Experiment::try_from(s).unwrap();
        assert_eq!(e.duration, Some(Duration::from_secs(300)));
        assert_eq!(e.start_delay, Duration::from_secs(10));
        assert_eq!(e.rules.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let field = |s: ExperimentSpec| Experiment::try_from(s).unwrap_err().field;
        assert_eq!(field(spec("Bad_Name", &["drop=1"])), "name");
        assert_eq!(field(spec("ok", &[])), "rules");
        assert_eq!(field(spec("ok", &["drop=1", "dport=0"])), "rules[1]");
        let mut s = spec("ok", &["drop=1"]);
        s.duration = Some("soon".into());
        assert_eq!(field(s), "duration");
        let mut s = spec("ok", &["drop=1"]);
        s.iface = "a/b".into();
        assert_eq!(field(s), "iface");
    }

    #[test]
    fn null_means_absent_for_every_optional_field() {
        let with_nulls: ExperimentSpec = serde_json::from_str(
            r#"{"name": "a", "iface": "eth0", "rules": ["drop=1"], "netns": null,
                "duration": null, "start_delay": null, "priority": null, "dry_run": null}"#,
        )
        .unwrap();
        assert_eq!(with_nulls, spec("a", &["drop=1"]));
        let set: ExperimentSpec = serde_json::from_str(
            r#"{"name": "a", "iface": "eth0", "rules": ["drop=1"], "priority": -3, "dry_run": true}"#,
        )
        .unwrap();
        assert_eq!((set.priority, set.dry_run), (-3, true));
        let too_big =
            r#"{"name": "a", "iface": "eth0", "rules": ["drop=1"], "priority": 2147483648}"#;
        assert!(serde_json::from_str::<ExperimentSpec>(too_big).is_err());
    }

    #[test]
    fn at_most_64_rules() {
        let rules = vec!["drop=1"; 64];
        assert!(Experiment::try_from(spec("a", &rules)).is_ok());
        let rules = vec!["drop=1"; 65];
        let e = Experiment::try_from(spec("a", &rules)).unwrap_err();
        assert_eq!(e.field, "rules", "{e}");
    }

    #[test]
    fn files_parse_whole_or_not_at_all() {
        let ok = "[[experiment]]\nname = \"a\"\niface = \"eth0\"\nrules = [\"drop=1\"]\n";
        assert_eq!(ExperimentFile::parse(ok).unwrap().len(), 1);
        let twice = format!("{ok}{ok}");
        assert_eq!(
            ExperimentFile::parse(&twice).unwrap_err().field,
            "experiment[1].name"
        );
        let bad_rule = ok.replace("drop=1", "drop=2");
        assert_eq!(
            ExperimentFile::parse(&bad_rule).unwrap_err().field,
            "experiment[0].rules[0]"
        );
        let unknown = format!("{ok}colour = \"red\"\n");
        assert_eq!(ExperimentFile::parse(&unknown).unwrap_err().field, "file");
    }
}
