//! The agent against a mock of the Kubernetes API (kube's client over tower-test's mock
//! service, answered by a small in-memory API server below) and a node that records what it
//! is asked. No cluster runs here; the node side on real pods is `tests/tests/k8s_node.rs`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex as StdMutex},
};

use serde_json::{Value, json};

use super::*;

use super::super::fake::{NS, Shared, client};

/// A node that records its experiments; `refuse` makes puts of matching names fail.
#[derive(Clone, Default)]
struct FakeNode {
    experiments: Arc<StdMutex<BTreeMap<String, ExperimentSpec>>>,
    refuse: Arc<StdMutex<Option<String>>>,
    puts: Arc<StdMutex<u32>>,
}

impl Node for FakeNode {
    fn list(&self) -> BoxFuture<'_, Vec<(ExperimentSpec, bool)>> {
        let all = self
            .experiments
            .lock()
            .unwrap()
            .values()
            .map(|s| (s.clone(), false))
            .collect();
        Box::pin(async move { all })
    }

    fn put(&self, spec: ExperimentSpec) -> BoxFuture<'_, Result<(), String>> {
        *self.puts.lock().unwrap() += 1;
        let refused = self.refuse.lock().unwrap().clone();
        let result = match refused {
            Some(why) => Err(why),
            None => Experiment::try_from(spec.clone())
                .map_err(|e| e.to_string())
                .map(|_| {
                    self.experiments
                        .lock()
                        .unwrap()
                        .insert(spec.name.clone(), spec);
                }),
        };
        Box::pin(async move { result })
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), String>> {
        self.experiments.lock().unwrap().remove(&name);
        Box::pin(async { Ok(()) })
    }
}

impl FakeNode {
    fn targets(&self) -> Vec<String> {
        self.experiments
            .lock()
            .unwrap()
            .values()
            .map(|s| s.target.clone().unwrap_or_default())
            .collect()
    }
}

fn pod(name: &str, uid: &str, node: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "uid": uid, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": []},
           "status": {"phase": "Running"}})
}

fn fault(name: &str, uid: &str, spec: Value, created: &str) -> Value {
    json!({"apiVersion": "chaos.dev/v1alpha1", "kind": "NetworkFault",
           "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "1",
                        "creationTimestamp": created},
           "spec": spec})
}

const CREATED: &str = "2026-12-03T10:00:00Z";

fn at(t: &str) -> Timestamp {
    t.parse().unwrap()
}

fn cart_pods() -> Vec<Value> {
    vec![
        pod("cart-0", "u0", "n1", "cart"),
        pod("cart-1", "u1", "n1", "cart"),
        pod("cart-2", "u2", "n2", "cart"),
        pod("cart-3", "u3", "n2", "cart"),
        pod("db-0", "u4", "n1", "db"),
        pod("web-0", "u5", "n2", "web"),
        pod("web-1", "u6", "n2", "web"),
        pod("web-2", "u7", "n1", "web"),
    ]
}

fn all_cart() -> Value {
    json!({"selector": {"matchLabels": {"app": "cart"}}, "mode": "all",
           "rules": ["proto=tcp dport=6379 delay=100ms"], "duration": "10m"})
}

fn setup(spec: Value) -> (Shared, FakeNode, Agent<FakeNode>) {
    let server = Shared::default();
    {
        let mut s = server.lock().unwrap();
        s.pods = cart_pods();
        s.faults.insert(
            "slow-cart".into(),
            fault("slow-cart", "f-uid-1", spec, CREATED),
        );
    }
    let node = FakeNode::default();
    let agent = Agent::new(client(server.clone()), node.clone(), config("n1"));
    (server, node, agent)
}

fn config(node: &str) -> Config {
    Config {
        node: node.into(),
        max_duration: Duration::from_secs(3600),
    }
}

fn faults(server: &Shared) -> Vec<Arc<NetworkFault>> {
    server
        .lock()
        .unwrap()
        .faults
        .values()
        .map(|v| Arc::new(serde_json::from_value(v.clone()).unwrap()))
        .collect()
}

fn stored_status(server: &Shared) -> Value {
    server.lock().unwrap().faults["slow-cart"]["status"].clone()
}

#[tokio::test]
async fn a_new_resource_faults_this_nodes_pods_and_says_so() {
    let (server, node, agent) = setup(all_cart());
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:05Z"))
        .await;
    let mut targets = node.targets();
    targets.sort();
    assert_eq!(targets, ["pod=shop/cart-0", "pod=shop/cart-1"]);
    let spec = node
        .experiments
        .lock()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert!(spec.name.starts_with("k8s-slow-cart-"), "{}", spec.name);
    assert_eq!(
        spec.name.len(),
        "k8s-slow-cart-".len() + 17,
        "{}",
        spec.name
    );
    assert_eq!(spec.rules, ["proto=tcp dport=6379 delay=100ms"]);
    // Ten minutes from creation, five seconds in.
    assert_eq!(spec.duration.as_deref(), Some("595000ms"));
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Injecting", "{status}");
    assert_eq!(
        status["nodes"],
        json!([{"node": "n1", "targets": 2, "phase": "Injecting", "message": ""}])
    );
    let events = server.lock().unwrap().events.clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "Injected");
    assert_eq!(events[0]["note"], "node n1: 2 pods faulted");
    assert_eq!(events[0]["regarding"]["name"], "slow-cart");
    // A second pass changes nothing and writes nothing.
    let puts = *node.puts.lock().unwrap();
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:06Z"))
        .await;
    assert_eq!(*node.puts.lock().unwrap(), puts, "nothing applied again");
    assert_eq!(server.lock().unwrap().status_writes, 1);
}

#[tokio::test]
async fn every_node_takes_its_share_of_one_choice() {
    for (mode, value, want) in [
        ("one", None, 1),
        ("fixed", Some("3"), 3),
        ("fixed-percent", Some("50"), 2),
    ] {
        let mut spec = all_cart();
        spec["mode"] = json!(mode);
        if let Some(v) = value {
            spec["value"] = json!(v);
        }
        let (server, n1, a1) = setup(spec);
        let n2 = FakeNode::default();
        let a2 = Agent::new(client(server.clone()), n2.clone(), config("n2"));
        let now = at("2026-12-03T10:00:05Z");
        a1.sync(&faults(&server), now).await;
        a2.sync(&faults(&server), now).await;
        let mut chosen = n1.targets();
        chosen.extend(n2.targets());
        assert_eq!(chosen.len(), want, "{mode}: {chosen:?}");
        // A node seeing its pods listed in another order chooses the same.
        server.lock().unwrap().pods.reverse();
        let n3 = FakeNode::default();
        let a3 = Agent::new(client(server.clone()), n3.clone(), config("n1"));
        a3.sync(&faults(&server), now).await;
        assert_eq!(n3.targets(), n1.targets(), "{mode}");
    }
}

#[tokio::test]
async fn a_restarted_pod_is_faulted_again_under_its_new_uid() {
    let (server, node, agent) = setup(all_cart());
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:05Z"))
        .await;
    let before: Vec<String> = node.experiments.lock().unwrap().keys().cloned().collect();
    server.lock().unwrap().pods[0] = pod("cart-0", "u0-new", "n1", "cart");
    agent.pods_changed().await;
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:06Z"))
        .await;
    let after: Vec<String> = node.experiments.lock().unwrap().keys().cloned().collect();
    assert_eq!(after.len(), 2);
    assert_ne!(
        before, after,
        "the old pod's experiment went, the new pod's came"
    );
    let mut targets = node.targets();
    targets.sort();
    assert_eq!(targets, ["pod=shop/cart-0", "pod=shop/cart-1"]);
}

#[tokio::test]
async fn a_deleted_resource_is_restored() {
    let (server, node, agent) = setup(all_cart());
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:05Z"))
        .await;
    assert_eq!(node.targets().len(), 2);
    agent.sync(&[], at("2026-12-03T10:00:06Z")).await;
    assert!(node.targets().is_empty());
}

#[tokio::test]
async fn an_expired_resource_ends_and_reports_finished() {
    let (server, node, agent) = setup(all_cart());
    agent
        .sync(&faults(&server), at("2026-12-03T10:09:59Z"))
        .await;
    assert_eq!(node.targets().len(), 2);
    agent
        .sync(&faults(&server), at("2026-12-03T10:10:00Z"))
        .await;
    assert!(node.targets().is_empty());
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Finished", "{status}");
    assert_eq!(status["nodes"][0]["message"], "its duration is over");
    let events = server.lock().unwrap().events.clone();
    assert_eq!(events.last().unwrap()["reason"], "Restored", "{events:?}");
}

#[tokio::test]
async fn a_status_conflict_reads_again_and_keeps_the_other_nodes_entry() {
    let (server, _node, agent) = setup(all_cart());
    server.lock().unwrap().conflicts = 2;
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:05Z"))
        .await;
    let status = stored_status(&server);
    let nodes: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n1", "n9"], "{status}");
    assert_eq!(server.lock().unwrap().status_writes, 1);
}

#[tokio::test]
async fn bad_rules_and_guard_rails_fail_with_the_daemons_words() {
    let mut spec = all_cart();
    spec["rules"] = json!(["proto=tcp dport=0 drop=1%"]);
    let (server, node, agent) = setup(spec);
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:05Z"))
        .await;
    assert!(node.targets().is_empty());
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Failed");
    let message = status["nodes"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("rules[0]: "), "{message}");
    let events = server.lock().unwrap().events.clone();
    assert_eq!(events[0]["type"], "Warning");

    let mut capped = all_cart();
    capped["selector"] = json!({});
    let (server, node, agent) = setup(capped);
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:05Z"))
        .await;
    assert!(node.targets().is_empty());
    assert_eq!(
        stored_status(&server)["nodes"][0]["message"],
        "8 of the namespace's 8 pods asked, over the cap of 50 % (4 pods): raise maxShare to allow it"
    );

    // The daemon refusing a pod (its runtime, its namespace): Failed with its reason.
    let (server, node, agent) = setup(all_cart());
    *node.refuse.lock().unwrap() = Some("target: no ready pod shop/cart-0".into());
    agent
        .sync(&faults(&server), at("2026-12-03T10:00:05Z"))
        .await;
    let status = stored_status(&server);
    assert_eq!(status["nodes"][0]["phase"], "Failed", "{status}");
    assert_eq!(status["nodes"][0]["targets"], 0, "{status}");
}

#[tokio::test]
async fn a_broken_watch_resumes_and_a_resource_made_meanwhile_is_applied() {
    let server = Shared::default();
    server.lock().unwrap().pods = cart_pods();
    let node = FakeNode::default();
    let run = tokio::spawn(run(client(server.clone()), node.clone(), config("n1")));
    // The first list finds nothing; every watch call ends at once (a broken watch). A
    // resource that appears now is found by the next list or watch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.targets().is_empty());
    {
        let mut s = server.lock().unwrap();
        let created = Timestamp::now().to_string();
        let f = fault("slow-cart", "f-uid-1", all_cart(), &created);
        s.fault_watch
            .push(json!({"type": "ADDED", "object": f.clone()}));
        s.faults.insert("slow-cart".into(), f);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.targets().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        node.targets().len(),
        2,
        "{:?}",
        server.lock().unwrap().requests
    );
    let watches = server
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r.contains("networkfaults?") && r.contains("watch=true"))
        .count();
    assert!(watches >= 2, "the watch was made again after it broke");
    run.abort();
}

/// A campaign in the resource: two agents that never talk run exactly the experiments its
/// schedule has live at each moment, each on the node of the pod drawn for it, with the fault
/// drawn for it, and the seed defaults to the resource's UID.
#[tokio::test]
async fn a_campaign_is_run_by_the_node_of_the_pod_each_slot_draws() {
    let spec = json!({"selector": {"matchLabels": {"app": "cart"}},
        "campaign": {"every": "5s..10s", "duration": "3s..8s", "maxConcurrent": 2,
                     "faults": [{"weight": 3, "rule": "proto=tcp dport=6379 delay=100ms"},
                                {"rule": "proto=tcp dport=5432 reset=yes"}]}});
    let (server, n1, agent1) = setup(spec.clone());
    let n2 = FakeNode::default();
    let agent2 = Agent::new(client(server.clone()), n2.clone(), config("n2"));
    let block: crate::k8s::crd::CampaignBlock =
        serde_json::from_value(spec["campaign"].clone()).unwrap();
    let campaign = block.campaign("f-uid-1", false).unwrap();
    assert_eq!(
        campaign.seed,
        super::super::select::fnv1a("f-uid-1".bytes())
    );
    let pods = ["u0", "u1", "u2", "u3"];
    let (mut checked, mut busy) = (0, 0);
    let start = at("2026-12-03T10:00:00Z");
    for second in 0..180 {
        let now = start + jiff::SignedDuration::from_secs(second);
        agent1.sync(&faults(&server), now).await;
        agent2.sync(&faults(&server), now).await;
        let live = campaign.live_at(now);
        let mut want: Vec<(String, String)> = live
            .iter()
            .map(|slot| {
                let uid = pods[campaign.pick(slot, pods.len())];
                let pod = format!("pod=shop/cart-{}", &uid[1..]);
                (pod, campaign.spec.faults[slot.fault].rule.clone())
            })
            .collect();
        let mut got: Vec<(String, String)> = Vec::new();
        for (node, name) in [(&n1, "n1"), (&n2, "n2")] {
            for s in node.experiments.lock().unwrap().values() {
                let target = s.target.clone().unwrap();
                let on = if ["0", "1"].iter().any(|i| target.ends_with(i)) {
                    "n1"
                } else {
                    "n2"
                };
                assert_eq!(on, name, "{target} faulted on the wrong node");
                got.push((target, s.rules[0].clone()));
            }
        }
        want.sort();
        got.sort();
        assert_eq!(got, want, "at {now}");
        assert!(live.len() <= 2, "max_concurrent");
        checked += 1;
        busy += usize::from(!live.is_empty());
    }
    // The schedule had experiments live most of the time, and none at other times.
    assert!(busy > 60 && busy < checked, "{busy} of {checked}");
    let status = stored_status(&server);
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["message"]
                .as_str()
                .unwrap()
                .contains("campaign: next experiment at")),
        "{status}"
    );
}
