//! The Kubernetes agent's node side, end to end on real pods: the same pass the watches feed
//! (`Agent::sync`) over a `NetworkFault`, with the daemon's real experiment manager (worker
//! threads, the program attached in each pod's namespace) and real containerd CRI pods. The
//! Kubernetes API is the one thing mocked (`chaos_user::k8s::fake`, over tower-test): no
//! cluster runs on these machines. Outcomes are measured by `ping` from the host.

use std::{process::Command, sync::Arc, time::Duration};

use chaos_user::{
    daemon::state::{Manager, Policy},
    guard::Guard,
    k8s::{
        agent::{Agent, Config},
        crd::NetworkFault,
        fake::{NS, Shared, client},
    },
};
use k8s_openapi::jiff::Timestamp;
use netlab::cri::Cri;
use serde_json::{Value, json};

/// Whether one ping from the host to `ip` is answered within a second.
fn answers(ip: &str) -> bool {
    Command::new("ping")
        .args(["-c", "1", "-W", "1", ip])
        .output()
        .expect("ping")
        .status
        .success()
}

fn pod_object(name: &str, uid: &str, node: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "uid": uid, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": []},
           "status": {"phase": "Running"}})
}

fn faults(server: &Shared) -> Vec<Arc<NetworkFault>> {
    let s = server.lock().unwrap();
    s.faults
        .values()
        .map(|v| Arc::new(serde_json::from_value(v.clone()).unwrap()))
        .collect()
}

/// A resource over `app=cart` drops what the chosen pods send to the host: the cart pod stops
/// answering pings, the db pod does not; a restarted cart pod (a new UID) is faulted again;
/// deleting the resource restores it. The resource's status says what this node did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_fault_reaches_real_pods_through_the_agents_pass() {
    let cri = Cri::new("k8s");
    // SAFETY: set before any thread of this test reads the environment; the only test here.
    unsafe { std::env::set_var("CONTAINER_RUNTIME_ENDPOINT", cri.socket()) };
    let me = std::process::id();
    let cart = cri.run_pod(&format!("cart-{me}"), NS, &[("app", "cart")], false);
    let db = cri.run_pod(&format!("db-{me}"), NS, &[("app", "db")], false);
    let ip = |p: &netlab::cri::Pod| p.ip.expect("a pod IP").to_string();
    assert!(
        answers(&ip(&cart)) && answers(&ip(&db)),
        "both pods answer before"
    );

    let server = Shared::default();
    {
        let mut s = server.lock().unwrap();
        s.pods = vec![
            pod_object(&cart.name, &cart.uid, "node-a", "cart"),
            pod_object(&db.name, &db.uid, "node-a", "db"),
        ];
        let created = Timestamp::now().to_string();
        s.faults.insert(
            "drop-cart".into(),
            json!({"apiVersion": "chaos.dev/v1alpha1", "kind": "NetworkFault",
                   "metadata": {"name": "drop-cart", "namespace": NS, "uid": "f-1",
                                "resourceVersion": "1", "creationTimestamp": created},
                   "spec": {"selector": {"matchLabels": {"app": "cart"}}, "mode": "all",
                            "maxShare": 100,
                            "rules": [format!("dst={}/32 drop=100%", cri.gateway)]}}),
        );
    }
    let manager = Manager::new(Policy {
        lease: Duration::from_secs(3),
        guard: Guard::new(&[22, 6443, 10250], &[]).unwrap(),
        max_duration: Duration::from_secs(600),
    });
    let config = Config {
        node: "node-a".into(),
        max_duration: Duration::from_secs(600),
    };
    let agent = Agent::new(client(server.clone()), manager.clone(), config);

    agent.sync(&faults(&server), Timestamp::now()).await;
    assert!(!answers(&ip(&cart)), "the chosen pod is faulted");
    assert!(answers(&ip(&db)), "the pod not chosen is untouched");
    let status = server.lock().unwrap().faults["drop-cart"]["status"].clone();
    assert_eq!(
        status["nodes"],
        json!([{"node": "node-a", "targets": 1, "phase": "Injecting", "message": ""}]),
        "{status}"
    );
    let views = manager.list().await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(
        views[0].spec.target.as_deref(),
        Some(format!("pod={NS}/{}", cart.name).as_str())
    );
    assert_eq!(views[0].targets[0].state, "attached");

    // The pod restarts: a new sandbox, a new UID, the same name.
    cri.remove_pod(&cart.id);
    let cart2 = cri.run_pod(&cart.name, NS, &[("app", "cart")], false);
    server.lock().unwrap().pods[0] = pod_object(&cart2.name, &cart2.uid, "node-a", "cart");
    agent.pods_changed().await;
    agent.sync(&faults(&server), Timestamp::now()).await;
    let status = server.lock().unwrap().faults["drop-cart"]["status"].clone();
    let views = manager.list().await.unwrap();
    assert!(
        !answers(&ip(&cart2)),
        "the restarted pod is faulted again: {status} {:?}",
        views
            .iter()
            .map(|v| (&v.spec.name, &v.phase, &v.reason, &v.targets))
            .collect::<Vec<_>>()
    );
    let views = manager.list().await.unwrap();
    assert_eq!(views.len(), 1, "the old pod's experiment is gone");

    // The resource is deleted: restored.
    agent.sync(&[], Timestamp::now()).await;
    assert!(answers(&ip(&cart2)), "deleted: the pod answers again");
    assert!(manager.list().await.unwrap().is_empty());
    manager.shutdown().await;
}
