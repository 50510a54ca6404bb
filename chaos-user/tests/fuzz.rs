//! Bounded fuzzing of everything that decodes user input: the rule parser, experiment JSON
//! (the API's bodies) and TOML (config files). No input may panic; whatever parses must be
//! accepted by the compiler.

use chaos_user::{
    experiment::{Experiment, ExperimentFile, ExperimentSpec},
    guard::Guard,
    rule::Rule,
    ruleset::RuleSetBuilder,
};
use proptest::prelude::*;

/// Rule-shaped text: known keys with values that are often valid, sometimes not.
fn rule_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "dir", "proto", "dport", "sport", "dst", "src", "drop", "delay", "jitter", "dist",
        "delay-p", "rate", "reorder", "force", "x",
    ]);
    let value = prop_oneof![
        "[0-9]{1,6}",
        "[0-9]{1,5}-[0-9]{1,5}",
        "[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}",
        "2001:db8::[0-9a-f]{0,4}/[0-9]{1,3}",
        "198\\.18\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,2})?(,(198\\.18\\.[0-9]{1,3}\\.[0-9]{1,3}|2001:db8::[0-9a-f]{0,4})){0,3},?",
        "[0-9]{1,3}(\\.[0-9]{0,3})?%?",
        "[0-9]{1,5}(\\.[0-9]{1,3})?(us|ms|s|h)",
        "[0-9]{1,4}(k|m|g)?(bit|bps)",
        "(tcp|udp|any|egress|ingress|uniform|normal|pareto|yes|no)",
        ".{0,8}",
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn rule_parser_never_panics_on_any_text(text in ".{0,80}") {
        drop(text.parse::<Rule>());
    }

    #[test]
    fn parsed_rules_always_compile(text in rule_text()) {
        if let Ok(rule) = text.parse::<Rule>() {
            prop_assert!(RuleSetBuilder::new(&Guard::default()).rules([rule]).build().is_ok());
        }
    }

    #[test]
    fn experiment_json_never_panics(text in ".{0,120}") {
        if let Ok(spec) = serde_json::from_str::<ExperimentSpec>(&text) {
            drop(Experiment::try_from(spec));
        }
    }

    #[test]
    fn experiment_json_with_rule_shaped_fields(
        name in "[a-z0-9-]{0,70}",
        iface in ".{0,20}",
        rules in prop::collection::vec(rule_text(), 0..4),
        duration in ".{0,8}",
    ) {
        let body = serde_json::json!({ "name": name, "iface": iface, "rules": rules, "duration": duration });
        let spec: ExperimentSpec = serde_json::from_value(body).unwrap();
        drop(Experiment::try_from(spec));
    }

    #[test]
    fn config_files_never_panic(text in "(\\[\\[experiment\\]\\]\n|[a-z_]{1,8} = (\"[^\"]{0,20}\"|[0-9]{1,4}|\\[\"[^\"]{0,20}\"\\]|true)\n){0,8}") {
        drop(ExperimentFile::parse(&text));
    }
}
