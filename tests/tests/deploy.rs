//! The Kubernetes manifests under `deploy/`, checked offline:
//! - every built-in resource with `kubernetes-validate --strict` (unknown fields refused) for each
//!   Kubernetes version from 1.30 to the newest the installed release carries schemas for;
//! - the example `NetworkFault`s against the `openAPIV3Schema` in `deploy/crd.yaml` (jsonschema,
//!   unknown fields refused as the API server's strict field validation does), their rules
//!   through chaos's own rule parser;
//! - the PodMonitor (a Prometheus Operator resource, whose schema is not here) by shape only:
//!   that it selects the DaemonSet's pods and names its metrics port;
//! - the RBAC rules against exactly what the agent uses, the DaemonSet against the brief, the
//!   kustomization against the files, the Grafana dashboard's PromQL against chaos's metrics.
//!
//! The validators live in `.tools/venv` (`cargo xtask bootstrap` installs them). Needs no root.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

/// The oldest Kubernetes version the manifests must be valid for.
const OLDEST: (u32, u32) = (1, 30);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests lives in the workspace")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

/// A program of the venv `cargo xtask bootstrap` makes.
fn venv(program: &str) -> PathBuf {
    let bin = root().join(".tools/venv/bin").join(program);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask bootstrap`",
        bin.display()
    );
    bin
}

/// Runs the venv's Python with `script` and `args`: its status, and stdout and stderr together.
fn python(script: &str, args: &[&Path]) -> (bool, String) {
    let out = Command::new(venv("python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running the venv's python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The YAML documents of a file, as JSON (PyYAML's safe loader, as kubernetes-validate reads).
fn documents(file: &Path) -> Vec<Value> {
    let (ok, text) = python(
        "import json, sys, yaml\n\
         print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        &[file],
    );
    assert!(ok, "{} is not YAML: {text}", file.display());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", file.display()))
}

/// Every `*.yaml` under `deploy/`, sorted.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy(), &mut files);
    files.sort();
    files
}

/// How a manifest is checked, from its documents' API group.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Kind {
    /// Built into Kubernetes: kubernetes-validate.
    BuiltIn,
    /// A `chaos.dev` resource: the CRD's schema.
    NetworkFault,
    /// `monitoring.coreos.com`: its shape only.
    PrometheusOperator,
    /// kustomize's own file.
    Kustomization,
}

fn kind_of(doc: &Value) -> Kind {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    match api.split_once('/').map_or("", |(group, _)| group) {
        "chaos.dev" => Kind::NetworkFault,
        "monitoring.coreos.com" => Kind::PrometheusOperator,
        "kustomize.config.k8s.io" => Kind::Kustomization,
        _ => Kind::BuiltIn,
    }
}

/// The files of `deploy/` by how they are checked; a file mixing kinds fails the test.
fn manifests() -> BTreeMap<Kind, Vec<PathBuf>> {
    let mut by_kind: BTreeMap<Kind, Vec<PathBuf>> = BTreeMap::new();
    for file in yaml_files() {
        let docs = documents(&file);
        assert!(!docs.is_empty(), "{} holds no document", file.display());
        let kinds: BTreeSet<Kind> = docs.iter().map(kind_of).collect();
        assert_eq!(kinds.len(), 1, "{} mixes {kinds:?}", file.display());
        by_kind
            .entry(*kinds.first().unwrap())
            .or_default()
            .push(file);
    }
    by_kind
}

/// The Kubernetes versions (major.minor) the installed kubernetes-validate carries schemas for,
/// from [`OLDEST`] on, oldest first.
fn kubernetes_versions() -> Vec<String> {
    let (ok, text) = python(
        "import kubernetes_validate.utils as u\n\
         print('\\n'.join(sorted({u.major_minor(v) for v in u.all_versions()})))",
        &[],
    );
    assert!(ok, "listing kubernetes-validate's versions: {text}");
    let mut versions: Vec<(u32, u32)> = text
        .lines()
        .map(|l| {
            let (major, minor) = l.trim().split_once('.').expect("major.minor");
            (major.parse().unwrap(), minor.parse().unwrap())
        })
        .filter(|v| *v >= OLDEST)
        .collect();
    versions.sort_unstable();
    assert_eq!(
        versions.first(),
        Some(&OLDEST),
        "kubernetes-validate has no schemas for {}.{}: {text}",
        OLDEST.0,
        OLDEST.1
    );
    versions
        .into_iter()
        .map(|(major, minor)| format!("{major}.{minor}"))
        .collect()
}

/// `kubernetes-validate --strict` over `files` for every version: Err with its output when a
/// file is invalid, and also when it only warns (a kind it has no schema for is a warning and
/// exit status 0, which would let a misspelled kind through).
fn kubernetes_validate(files: &[PathBuf], versions: &[String]) -> Result<(), String> {
    let mut command = Command::new(venv("kubernetes-validate"));
    command.args(["--strict", "--quiet"]);
    for v in versions {
        command.args(["--kubernetes-version", v]);
    }
    let out = command
        .args(files)
        .output()
        .expect("running kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{said}", out.status))
    }
}

#[test]
fn built_in_manifests_validate_strictly_for_every_kubernetes_version() {
    let versions = kubernetes_versions();
    let manifests = manifests();
    let files = &manifests[&Kind::BuiltIn];
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(deploy()).unwrap().display().to_string())
        .collect();
    for expected in ["crd.yaml", "namespace.yaml", "rbac.yaml", "daemonset.yaml"] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }
    let started = std::time::Instant::now();
    if let Err(said) = kubernetes_validate(files, &versions) {
        panic!("kubernetes-validate --strict refused deploy/: {said}");
    }
    println!(
        "kubernetes-validate --strict: {} valid for Kubernetes {} ({:.1?})",
        names.join(", "),
        versions.join(", "),
        started.elapsed()
    );
}

/// The validator really runs: a misspelled field and a misspelled kind both fail.
#[test]
fn the_validator_refuses_a_misspelled_field_and_an_unknown_kind() {
    let dir = tempfile::tempdir().unwrap();
    let daemonset = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    let field = dir.path().join("field.yaml");
    assert!(daemonset.contains("\n      hostNetwork: true\n"));
    std::fs::write(
        &field,
        daemonset.replace("\n      hostNetwork: true\n", "\n      hostNetwrok: true\n"),
    )
    .unwrap();
    let kind = dir.path().join("kind.yaml");
    std::fs::write(
        &kind,
        daemonset.replace("kind: DaemonSet\n", "kind: DaemonSett\n"),
    )
    .unwrap();
    let versions = [format!("{}.{}", OLDEST.0, OLDEST.1)];
    let said = kubernetes_validate(&[field], &versions).expect_err("hostNetwrok must fail");
    assert!(said.contains("'hostNetwrok' was unexpected"), "{said}");
    let said = kubernetes_validate(&[kind], &versions).expect_err("DaemonSett must fail");
    assert!(said.contains("DaemonSett"), "{said}");
}

/// Checks NetworkFault files against the CRD's served versions' `openAPIV3Schema`: argv is the
/// CRD, then the files. OpenAPI's `nullable` becomes a JSON Schema type, and every object with
/// `properties` refuses other fields (unless it preserves unknown fields), as the API server
/// does under strict field validation; the root also takes apiVersion, kind and metadata.
const CRD_CHECK: &str = r#"
import sys, yaml, jsonschema

def strict(s):
    if isinstance(s, list):
        return [strict(v) for v in s]
    if not isinstance(s, dict):
        return s
    s = {k: strict(v) for k, v in s.items()}
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if ("properties" in s and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False
    return s

crd = yaml.safe_load(open(sys.argv[1]))
spec = crd["spec"]
validators = {}
for version in spec["versions"]:
    if not version.get("served"):
        continue
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"].update({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    })
    jsonschema.Draft4Validator.check_schema(schema)
    validators[spec["group"] + "/" + version["name"]] = jsonschema.Draft4Validator(schema)

failed = False
for name in sys.argv[2:]:
    for doc in [d for d in yaml.safe_load_all(open(name)) if d]:
        errors = []
        if doc.get("kind") != spec["names"]["kind"]:
            errors.append("kind %r is not %r" % (doc.get("kind"), spec["names"]["kind"]))
        meta = doc.get("metadata") or {}
        if not meta.get("name"):
            errors.append("metadata.name is missing")
        if spec["scope"] == "Namespaced" and not meta.get("namespace"):
            errors.append("metadata.namespace is missing (the resource is namespaced)")
        validator = validators.get(doc.get("apiVersion"))
        if validator is None:
            errors.append("apiVersion %r is not served by the CRD (%s)"
                          % (doc.get("apiVersion"), ", ".join(validators)))
        else:
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                errors.append("%s: %s" % (".".join(str(p) for p in e.path) or "(root)", e.message))
        for e in errors:
            print("ERROR %s: %s" % (name, e))
        if errors:
            failed = True
        else:
            print("OK %s: %s/%s" % (name, meta.get("namespace"), meta.get("name")))
sys.exit(1 if failed else 0)
"#;

fn crd_check(files: &[PathBuf]) -> Result<String, String> {
    let crd = deploy().join("crd.yaml");
    let mut args: Vec<&Path> = vec![&crd];
    args.extend(files.iter().map(PathBuf::as_path));
    let (ok, said) = python(CRD_CHECK, &args);
    if ok { Ok(said) } else { Err(said) }
}

#[test]
fn examples_match_the_crd_schema_and_their_rules_parse() {
    let manifests = manifests();
    let examples = &manifests[&Kind::NetworkFault];
    assert!(examples.len() >= 3, "{examples:?}");
    match crd_check(examples) {
        Ok(said) => print!("{said}"),
        Err(said) => panic!("an example does not match deploy/crd.yaml:\n{said}"),
    }
    let mut modes = BTreeSet::new();
    for file in examples {
        for doc in documents(file) {
            let spec = &doc["spec"];
            modes.insert(spec["mode"].as_str().unwrap_or("all").to_owned());
            // A campaign's rules are its fault menu's, and the block must make a campaign.
            let rules: Vec<&serde_json::Value> = match spec.get("campaign") {
                Some(block) => {
                    let parsed: chaos_user::k8s::crd::CampaignBlock =
                        serde_json::from_value(block.clone()).expect("a campaign block");
                    if let Err(e) = parsed.campaign("uid", false) {
                        panic!("{}: campaign: {e}", file.display());
                    }
                    block["faults"]
                        .as_array()
                        .expect("faults")
                        .iter()
                        .map(|f| &f["rule"])
                        .collect()
                }
                None => spec["rules"].as_array().expect("rules").iter().collect(),
            };
            for rule in rules {
                let rule = rule.as_str().expect("a rule is a string");
                if let Err(e) = rule.parse::<chaos_user::rule::Rule>() {
                    panic!("{}: rule {rule:?}: {e}", file.display());
                }
            }
        }
    }
    assert!(
        ["fixed", "fixed-percent", "all"]
            .iter()
            .all(|m| modes.contains(*m)),
        "the examples show the modes: {modes:?}"
    );
}

/// The schema check really runs: a misspelled field, a mode of no enum value, a missing
/// namespace and a wrong version all fail.
#[test]
fn the_crd_check_refuses_bad_resources() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(deploy().join("examples/all-dryrun.yaml")).unwrap();
    let cases = [
        ("dryRun: true", "dryrun: true", "'dryrun' was unexpected"),
        ("mode: all", "mode: half", "'half' is not one of"),
        ("  namespace: shop\n", "", "metadata.namespace is missing"),
        (
            "chaos.dev/v1alpha1",
            "chaos.dev/v1",
            "is not served by the CRD",
        ),
        ("  rules:\n", "  rulez:\n", "'rulez' was unexpected"),
    ];
    for (n, (from, to, expected)) in cases.iter().enumerate() {
        assert!(good.contains(from), "{from:?} is in the example");
        let bad = dir.path().join(format!("bad{n}.yaml"));
        std::fs::write(&bad, good.replacen(from, to, 1)).unwrap();
        let said = crd_check(&[bad]).expect_err(expected);
        assert!(said.contains(expected), "{to:?}: {said}");
    }
    // A campaign without its gap, or with a fault of no weight.
    let campaign =
        std::fs::read_to_string(deploy().join("examples/weekday-campaign.yaml")).unwrap();
    for (n, (from, to, expected)) in [
        (
            "    every: 15m..45m\n",
            "",
            "'every' is a required property",
        ),
        ("weight: 1\n", "weight: 0\n", "less than the minimum of 1"),
    ]
    .iter()
    .enumerate()
    {
        assert!(campaign.contains(from), "{from:?} is in the example");
        let bad = dir.path().join(format!("campaign{n}.yaml"));
        std::fs::write(&bad, campaign.replacen(from, to, 1)).unwrap();
        let said = crd_check(&[bad]).expect_err(expected);
        assert!(said.contains(expected), "{to:?}: {said}");
    }
}

/// (API group, resource, verb) triples a document's rules grant.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "{rule}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// One document of `file` whose kind is `kind`.
fn document(file: &str, kind: &str) -> Value {
    let docs = documents(&deploy().join(file));
    let mut found = docs.into_iter().filter(|d| d["kind"] == kind);
    let doc = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} in {file}"));
    assert!(found.next().is_none(), "two {kind}s in {file}");
    doc
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    let role = document("rbac.yaml", "ClusterRole");
    let expected: BTreeSet<(String, String, String)> = [
        ("chaos.dev", "networkfaults", &["get", "list", "watch"][..]),
        (
            "chaos.dev",
            "networkfaults/status",
            &["get", "patch", "update"],
        ),
        ("", "pods", &["get", "list", "watch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ]
    .into_iter()
    .flat_map(|(g, r, verbs)| {
        verbs
            .iter()
            .map(move |v| (g.to_owned(), r.to_owned(), (*v).to_owned()))
    })
    .collect();
    assert_eq!(grants(&role["rules"]), expected);
    assert!(
        !documents(&deploy().join("rbac.yaml"))
            .iter()
            .any(|d| d["kind"] == "Role" || d["kind"] == "RoleBinding"),
        "no other role"
    );
    let account = document("rbac.yaml", "ServiceAccount");
    let binding = document("rbac.yaml", "ClusterRoleBinding");
    let daemonset = document("daemonset.yaml", "DaemonSet");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        json!([{
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }])
    );
    assert_eq!(
        daemonset["spec"]["template"]["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
    assert_eq!(
        daemonset["metadata"]["namespace"],
        account["metadata"]["namespace"]
    );
}

/// Labels of `selector.matchLabels` all present in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn the_daemonset_runs_the_agent_as_specified() {
    let namespace = document("namespace.yaml", "Namespace");
    let ds = document("daemonset.yaml", "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(ds["metadata"]["namespace"], namespace["metadata"]["name"]);
    assert_eq!(namespace["metadata"]["name"], "chaos-system");
    assert!(selects(&ds["spec"]["selector"], labels), "{ds}");
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    );
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["image"],
        format!("localhost/chaos:{}", env!("CARGO_PKG_VERSION")),
        "the tag `cargo xtask image` builds"
    );
    assert_eq!(
        c["args"],
        json!(["daemon", "--kubernetes", "--metrics-listen", "0.0.0.0:9464"])
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "CONTAINER_RUNTIME_ENDPOINT", "value": "/run/containerd/containerd.sock"},
        ])
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}])
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/metrics", "port": "metrics"})
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let caps: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        caps,
        BTreeSet::from([
            "BPF",
            "NET_ADMIN",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "SYS_RESOURCE",
            "PERFMON"
        ])
    );
    let text = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    assert!(text.contains("`privileged: true`"), "the fallback is named");
    for (what, value) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(c["resources"][what][value].is_string(), "{what}.{value}");
    }
    // hostPath volume by mount path: (host path, type, read-only, propagation).
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mounts: BTreeMap<&str, (String, String, bool, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            let host = &volumes[m["name"].as_str().unwrap()]["hostPath"];
            host.is_object().then(|| {
                (
                    m["mountPath"].as_str().unwrap(),
                    (
                        host["path"].as_str().unwrap().to_owned(),
                        host["type"].as_str().unwrap_or("").to_owned(),
                        m["readOnly"] == true,
                        m["mountPropagation"].as_str().unwrap_or("").to_owned(),
                    ),
                )
            })
        })
        .collect();
    fn expect(
        path: &'static str,
        kind: &str,
        ro: bool,
        propagation: &str,
    ) -> (&'static str, (String, String, bool, String)) {
        (
            path,
            (path.to_owned(), kind.to_owned(), ro, propagation.to_owned()),
        )
    }
    assert_eq!(
        mounts,
        BTreeMap::from([
            expect("/sys/fs/bpf", "Directory", false, ""),
            expect("/sys/fs/cgroup", "Directory", true, ""),
            expect("/run/containerd/containerd.sock", "Socket", false, ""),
            expect("/run/crio", "", false, ""),
            expect("/run/netns", "", false, "HostToContainer"),
        ])
    );
}

#[test]
fn the_podmonitor_scrapes_the_agents_metrics_port() {
    let manifests = manifests();
    assert_eq!(
        manifests[&Kind::PrometheusOperator],
        [deploy().join("podmonitor.yaml")]
    );
    // No schema for the Prometheus Operator's resources here: the fields that must agree with
    // the DaemonSet, and the shape of the rest.
    let monitor = document("podmonitor.yaml", "PodMonitor");
    let ds = document("daemonset.yaml", "DaemonSet");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let spec = &monitor["spec"];
    let known: BTreeSet<&str> = ["selector", "namespaceSelector", "podMetricsEndpoints"].into();
    for key in spec.as_object().unwrap().keys() {
        assert!(known.contains(key.as_str()), "spec.{key}");
    }
    assert!(
        selects(
            &spec["selector"],
            &ds["spec"]["template"]["metadata"]["labels"]
        ),
        "{spec}"
    );
    let namespace = &ds["metadata"]["namespace"];
    assert!(
        monitor["metadata"]["namespace"] == *namespace
            && spec["namespaceSelector"]["matchNames"]
                .as_array()
                .is_some_and(|n| n.contains(namespace)),
        "{spec}"
    );
    let ports: Vec<&Value> = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    let endpoints = spec["podMetricsEndpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for e in endpoints {
        assert!(ports.contains(&&e["port"]), "{e} names a port of {ports:?}");
        assert_eq!(e["path"], "/metrics");
    }
}

#[test]
fn the_kustomization_lists_the_cluster_resources() {
    let manifests = manifests();
    assert_eq!(
        manifests[&Kind::Kustomization],
        [deploy().join("kustomization.yaml")]
    );
    let k = document("kustomization.yaml", "Kustomization");
    let listed: BTreeSet<PathBuf> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| deploy().join(r.as_str().unwrap()))
        .collect();
    // Every built-in resource file, and nothing else: the examples need a namespace `shop`,
    // the PodMonitor the Prometheus Operator.
    let built_in: BTreeSet<PathBuf> = manifests[&Kind::BuiltIn].iter().cloned().collect();
    assert_eq!(listed, built_in);
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    assert!(containerfile.lines().any(|l| l == "FROM scratch"));
    assert!(containerfile.lines().any(|l| l == "COPY chaos /chaos"));
    assert!(
        containerfile
            .lines()
            .any(|l| l == r#"ENTRYPOINT ["/chaos"]"#)
    );
}

/// The metrics chaos serves (OpenMetrics names: a counter's samples end in `_total`).
const COUNTERS: [&str; 6] = [
    "chaos_matched_packets",
    "chaos_dropped_packets",
    "chaos_delayed_packets",
    "chaos_conns_reset",
    "chaos_conns_refused",
    "chaos_conns_hung",
];
const GAUGES: [&str; 4] = [
    "chaos_target_attached",
    "chaos_experiments_by_phase",
    "chaos_experiments",
    "chaos_up",
];

const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "delta",
    "deriv",
    "floor",
    "group",
    "histogram_quantile",
    "increase",
    "irate",
    "label_replace",
    "last_over_time",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "quantile",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "stddev",
    "sum",
    "sum_over_time",
    "time",
    "topk",
    "vector",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset"];

/// The index just past the bracket closing the one at `open` (quotes respected).
fn past_closing(chars: &[char], open: usize) -> Result<usize, String> {
    let (left, right) = match chars[open] {
        '{' => ('{', '}'),
        '[' => ('[', ']'),
        _ => ('(', ')'),
    };
    let mut depth = 0;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = past_quote(chars, i)? - 1,
            c if c == left => depth += 1,
            c if c == right => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("unclosed {left}"))
}

fn past_quote(chars: &[char], open: usize) -> Result<usize, String> {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 1,
            c if c == quote => return Ok(i + 1),
            _ => {}
        }
        i += 1;
    }
    Err(format!("unclosed {quote}"))
}

/// The metric names a PromQL expression selects; Err for a function or keyword it does not
/// know (so a typo cannot hide as a "function"). Label matchers, ranges, strings, label lists
/// of `by (...)` and the like, and Grafana's `$variables` are skipped.
fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = past_quote(&chars, i)?;
        } else if c == '{' || c == '[' {
            i = past_closing(&chars, i)?;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < chars.len() && (is_name(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_name(c) {
            let start = i;
            while i < chars.len() && is_name(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (a) (...)`: an aggregation whose grouping comes first.
            let grouped = ["by", "without"].iter().any(|g| {
                let after = next + g.len();
                chars.len() > after
                    && chars[next..after].iter().copied().eq(g.chars())
                    && !is_name(chars[after])
            });
            let call = chars.get(next) == Some(&'(') || grouped;
            let word = word.as_str();
            if LABEL_LISTS.contains(&word) {
                if call {
                    i = past_closing(&chars, next)?;
                }
            } else if call && !FUNCTIONS.contains(&word) {
                return Err(format!("unknown function {word}"));
            } else if !call && !OPERATORS.contains(&word) {
                names.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// Checks an expression's metrics against chaos's: the names it uses.
fn chaos_metrics_in(expr: &str) -> Result<Vec<String>, String> {
    let names = metric_names(expr).map_err(|e| format!("{expr}: {e}"))?;
    if names.is_empty() {
        return Err(format!("{expr}: names no metric"));
    }
    for name in &names {
        let counter = name
            .strip_suffix("_total")
            .is_some_and(|base| COUNTERS.contains(&base));
        if counter || GAUGES.contains(&name.as_str()) {
            continue;
        }
        if COUNTERS.contains(&name.as_str()) {
            return Err(format!(
                "{expr}: {name} is a counter, exposed (OpenMetrics) as {name}_total"
            ));
        }
        return Err(format!("{expr}: {name} is not a metric chaos serves"));
    }
    Ok(names)
}

#[test]
fn the_promql_check_knows_chaos_metrics_from_others() {
    let ok = [
        (
            r#"sum by (experiment) (rate(chaos_dropped_packets_total{experiment=~"k8s-.*"}[1m]))"#,
            vec!["chaos_dropped_packets_total"],
        ),
        (
            "sum(chaos_up) - count(chaos_target_attached offset 5m)",
            vec!["chaos_up", "chaos_target_attached"],
        ),
        (
            "max without(rule)(chaos_conns_hung_total) / bottomk by (x) (1, chaos_up)",
            vec!["chaos_conns_hung_total", "chaos_up"],
        ),
        (
            "chaos_experiments * on (instance) group_left (node) chaos_up",
            vec!["chaos_experiments", "chaos_up"],
        ),
    ];
    for (expr, names) in ok {
        assert_eq!(chaos_metrics_in(expr).unwrap(), names, "{expr}");
    }
    for (expr, why) in [
        (
            "rate(chaos_dropped_packets[1m])",
            "exposed (OpenMetrics) as",
        ),
        ("sum by (job) (up)", "up is not a metric chaos serves"),
        (
            "rate(chaos_droped_packets_total[1m])",
            "chaos_droped_packets_total",
        ),
        ("sumx(chaos_up)", "unknown function sumx"),
        ("summ by (a) (chaos_up)", "unknown function summ"),
        ("1 + 2", "names no metric"),
    ] {
        let err = chaos_metrics_in(expr).expect_err(expr);
        assert!(err.contains(why), "{expr}: {err}");
    }
}

/// Every string under a key `key`, anywhere in `v`.
fn strings_at<'a>(v: &'a Value, key: &str, out: &mut Vec<(&'a str, &'a Value)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == key
                    && let Some(s) = child.as_str()
                {
                    out.push((s, v));
                }
                strings_at(child, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| strings_at(c, key, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_charts_only_chaos_metrics() {
    let text = std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    // No datasource pinned by UID: each one is the variable.
    let mut datasources = Vec::new();
    strings_at(&dashboard, "uid", &mut datasources);
    for (uid, parent) in datasources {
        if parent.get("type").is_some_and(|t| t == "prometheus") {
            assert!(uid == "${datasource}" || uid == "$datasource", "{parent}");
        }
    }
    let mut exprs = Vec::new();
    strings_at(&dashboard["panels"], "expr", &mut exprs);
    assert!(!exprs.is_empty());
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for (expr, _) in &exprs {
        match chaos_metrics_in(expr) {
            Ok(names) => used.extend(names),
            Err(e) => errors.push(e),
        }
    }
    // Variable queries: `label_values(EXPR, label)` selects EXPR's metrics.
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map_or(query, |(expr, _label)| expr);
        if let Err(e) = chaos_metrics_in(inner) {
            errors.push(format!("variable {}: {e}", v["name"]));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for wanted in [
        "chaos_target_attached",
        "chaos_dropped_packets_total",
        "chaos_delayed_packets_total",
        "chaos_conns_reset_total",
        "chaos_experiments_by_phase",
    ] {
        assert!(used.contains(wanted), "no panel charts {wanted}: {used:?}");
    }
    for counter in ["dropped_packets", "delayed_packets", "conns_reset"] {
        assert!(
            exprs.iter().any(|(e, _)| {
                e.contains(&format!("rate(chaos_{counter}_total"))
                    && e.contains("[1m])")
                    && e.contains("by (experiment)")
            }),
            "a 1-minute rate of chaos_{counter}_total by experiment"
        );
    }
    println!(
        "dashboard: {} queries over {}",
        exprs.len(),
        used.into_iter().collect::<Vec<_>>().join(", ")
    );
}
