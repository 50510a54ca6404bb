//! Faults that hide or vanish, the worst kind for a chaos tool: an experiment whose deferred start
//! fails, and writers racing on one name. Whatever fails, the API's view and the kernel's rule
//! set must stay equal.

use std::{net::SocketAddr, sync::Arc};

use aya::{
    maps::{Array, Map, MapData, MapInfo},
    programs::{SchedClassifier, TcAttachType},
};
use chaos_common::{GenSettings, RuleAction, RuntimeConfig, rules::MAX_RULES};
use chaos_user::client::{Client, ClientError};
use hyper::{Method, StatusCode};
use netlab::{Daemon, IFACE, Lab, SERVER_V4, UdpCounter, in_netns, udp_send};
use serde_json::{Value, json};

/// Ports the writers' rules drop everything to, one rule each.
const PORTS: [u16; 4] = [9100, 9101, 9102, 9103];

fn rules_for(i: usize) -> Vec<String> {
    // 1 to 3 rules, on a rotating choice of ports.
    (0..1 + i % 3)
        .map(|k| format!("proto=udp dport={} drop=100%", PORTS[(i + k) % PORTS.len()]))
        .collect()
}

/// The live rule set of the chaos program attached on `IFACE` in `ns`: its rule count and
/// each rule's drop probability, read from the program's own maps. None: nothing attached.
fn kernel_rules(ns: &str) -> Option<Vec<u32>> {
    in_netns(ns, || {
        let (_, progs) = SchedClassifier::query_tcx(IFACE, TcAttachType::Egress).ok()?;
        let prog = progs
            .iter()
            .find(|p| p.name_as_str() == Some("chaos_egress"))?;
        let map = |name: &str| -> MapData {
            let ids = prog.map_ids().unwrap().unwrap();
            let id = ids
                .into_iter()
                .find(|id| {
                    MapInfo::from_id(*id)
                        .is_ok_and(|m| m.name_as_str().is_some_and(|n| name.starts_with(n)))
                })
                .unwrap_or_else(|| panic!("the program has no {name}"));
            MapData::from_id(id).unwrap()
        };
        let config: Array<_, RuntimeConfig> =
            Array::try_from(Map::Array(map("CHAOS_CONFIG"))).unwrap();
        let settings: Array<_, GenSettings> =
            Array::try_from(Map::Array(map("CHAOS_SETTINGS"))).unwrap();
        let actions: Array<_, RuleAction> =
            Array::try_from(Map::Array(map("CHAOS_ACTIONS"))).unwrap();
        let generation = config.get(&0, 0).unwrap().active_gen;
        let s = settings.get(&generation, 0).unwrap();
        let count = (s.dir_rules[0] | s.dir_rules[1]).count_ones();
        Some(
            (0..count)
                .map(|i| {
                    actions
                        .get(&(generation * MAX_RULES + i), 0)
                        .unwrap()
                        .drop_prob
                })
                .collect(),
        )
    })
}

#[test]
fn racing_writers_get_answers_the_final_state_explains() {
    let lab = Lab::new("race");
    let d = Daemon::start(&[]);
    let socket = Arc::new(d.socket.clone());
    let experiment =
        |rules: &[String]| json!({ "name": "x", "iface": IFACE, "netns": lab.a, "rules": rules });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    const WRITERS: usize = 4;
    const ROUNDS: usize = 40;
    let answers: Vec<(String, Vec<String>, Result<Value, ClientError>)> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let socket = socket.clone();
            let bodies: Vec<(Method, Vec<String>)> = (0..ROUNDS)
                .map(|r| {
                    let method = [Method::PUT, Method::DELETE, Method::POST][(w + r) % 3].clone();
                    (method, rules_for(w * ROUNDS + r))
                })
                .collect();
            let bodies: Vec<(Method, Vec<String>, Value)> = bodies
                .into_iter()
                .map(|(m, rules)| {
                    let body = experiment(&rules);
                    (m, rules, body)
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                let client = Client::new(&socket);
                let mut out = Vec::new();
                for (method, rules, body) in bodies {
                    let answer = match method {
                        Method::PUT => client.call(Method::PUT, "/v1/experiments/x", Some(&body)),
                        Method::POST => client.call(Method::POST, "/v1/experiments", Some(&body)),
                        _ => client.call(Method::DELETE, "/v1/experiments/x", None),
                    }
                    .await;
                    out.push((method.to_string(), rules, answer));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let refused = |a: &Result<Value, ClientError>| match a {
        Err(ClientError::Refused { status, .. }) => Some(*status),
        _ => None,
    };
    for (method, rules, answer) in &answers {
        match method.as_str() {
            // A PUT creates or replaces: never "not found", and it answers with its own rules.
            "PUT" => {
                let view = answer
                    .as_ref()
                    .unwrap_or_else(|e| panic!("PUT {rules:?}: {e:?}"));
                assert_eq!(view["rules"], json!(rules), "PUT answered another version");
            }
            "POST" => match answer {
                Ok(view) => assert_eq!(view["rules"], json!(rules)),
                Err(_) => assert_eq!(refused(answer), Some(StatusCode::CONFLICT), "{answer:?}"),
            },
            _ => {
                if answer.is_err() {
                    assert_eq!(refused(answer), Some(StatusCode::NOT_FOUND), "{answer:?}");
                }
            }
        }
    }
    // The final state, the kernel's rule set and the traffic all agree.
    let last = runtime.block_on(Client::new(&socket).call(Method::GET, "/v1/experiments/x", None));
    let want: Vec<String> = match &last {
        Ok(view) => serde_json::from_value(view["rules"].clone()).unwrap(),
        Err(e) => {
            assert_eq!(refused(&last), Some(StatusCode::NOT_FOUND), "{e:?}");
            Vec::new()
        }
    };
    match kernel_rules(&lab.a) {
        Some(drops) => assert_eq!(
            drops,
            vec![1 << 31; want.len()],
            "the kernel's rule set is the API's {want:?}"
        ),
        None => assert!(
            want.is_empty(),
            "nothing attached, but the API shows {want:?}"
        ),
    }
    for port in PORTS {
        let dst: SocketAddr = (SERVER_V4, port).into();
        let rx = UdpCounter::start(&lab.b, dst);
        assert_eq!(udp_send(&lab.a, dst, 100, 64), 0);
        let got = rx.finish().0;
        let cut = want.iter().any(|r| r.contains(&format!("dport={port} ")));
        assert_eq!(
            got,
            if cut { 0 } else { 100 },
            ":{port} with the final rules {want:?}"
        );
    }
    let answered = |m: &str| answers.iter().filter(|(x, _, _)| x == m).count();
    eprintln!(
        "{} answers ({} PUT, {} POST, {} DELETE); final rules {want:?}",
        answers.len(),
        answered("PUT"),
        answered("POST"),
        answered("DELETE")
    );
    let exit = d.stop();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

/// This kernel has no `sch_fq`: a delay rule's deferred start fails there. It must end `failed`
/// with the reason, and neither block nor hide the experiment beside it.
#[test]
fn a_deferred_start_that_fails_is_failed_and_hides_nothing() {
    let lab = Lab::new("dfail");
    let d = Daemon::start(&[]);
    let client = Client::new(&d.socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = |method: Method, path: &str, body: Option<Value>| {
        runtime.block_on(client.call(method, path, body.as_ref()))
    };
    let a1 = json!({ "name": "a1", "iface": IFACE, "netns": lab.a,
        "rules": ["proto=udp dport=9 drop=100%"] });
    let a2 = json!({ "name": "a2", "iface": IFACE, "netns": lab.a,
        "rules": ["proto=udp dport=7 delay=10ms"], "start_delay": "1s" });
    call(Method::POST, "/v1/experiments", Some(a1)).unwrap();
    let pending = call(Method::POST, "/v1/experiments", Some(a2)).unwrap();
    assert_eq!(pending["phase"], "pending");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let failed = loop {
        let v = call(Method::GET, "/v1/experiments/a2", None).unwrap();
        if v["phase"] != "pending" || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(failed["phase"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no fq qdisc"), "{failed}");
    let metrics = call(Method::GET, "/metrics", None).expect("metrics");
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains("chaos_experiment_failed{experiment=\"a2\"")
            && metrics.contains("no fq qdisc"),
        "{metrics}"
    );
    // a1 still drops, and it can still be deleted, after which nothing is dropped.
    let dst: SocketAddr = (SERVER_V4, 9).into();
    let delivered = |n| {
        let rx = UdpCounter::start(&lab.b, dst);
        assert_eq!(udp_send(&lab.a, dst, n, 64), 0);
        rx.finish().0
    };
    assert_eq!(delivered(300), 0, "a1 drops everything to :9");
    call(Method::DELETE, "/v1/experiments/a1", None).expect("a1 can be deleted");
    assert_eq!(
        refused_status(call(Method::GET, "/v1/experiments/a1", None)),
        Some(StatusCode::NOT_FOUND)
    );
    assert_eq!(delivered(300), 300, "a1's fault is gone with it");
    let logged = d.wait_for_stderr(
        "experiment failed to start",
        std::time::Duration::from_secs(10),
    );
    assert!(logged.contains("no fq qdisc"), "the log says why: {logged}");
    call(Method::DELETE, "/v1/experiments/a2", None).unwrap();
    let exit = d.stop();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

fn refused_status(answer: Result<Value, ClientError>) -> Option<StatusCode> {
    match answer {
        Err(ClientError::Refused { status, .. }) => Some(status),
        _ => None,
    }
}
