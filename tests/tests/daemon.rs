//! `chaos daemon`: a real daemon process, real requests over its socket, real traffic.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use chaos_user::client::{Client, ClientError};
use hyper::Method;
use netlab::{
    Daemon, IFACE, Lab, SERVER_V4, UdpCounter, assert_binomial, delivered, heavy_traffic, udp_send,
};
use serde_json::{Value, json};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn call(d: &Daemon, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
    runtime().block_on(Client::new(&d.socket).call(method, path, body.as_ref()))
}

fn experiment(name: &str, netns: &str, rules: &[&str]) -> Value {
    json!({ "name": name, "iface": IFACE, "netns": netns, "rules": rules })
}

fn counter(view: &Value, rule: usize, field: &str) -> u64 {
    view["counters"][rule][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {view}"))
}

#[test]
fn create_counts_and_delete_cleans() {
    let lab = Lab::new("dcrud");
    let d = Daemon::start(&[]);
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let e = experiment("cut-9000", &lab.a, &["proto=udp dport=9000 drop=100%"]);
    let created = call(&d, Method::POST, "/v1/experiments", Some(e)).unwrap();
    assert_eq!(created["phase"], "active");
    assert_eq!(
        delivered(&lab, dst, 500),
        0,
        "the experiment drops everything to :9000"
    );
    let view = call(&d, Method::GET, "/v1/experiments/cut-9000", None).unwrap();
    assert_eq!(
        (
            counter(&view, 0, "matched_packets"),
            counter(&view, 0, "dropped_packets")
        ),
        (500, 500)
    );
    // The CLI shows the same.
    let get = d.ctl(&["get", "cut-9000", "--output", "json"]);
    assert_eq!(get.code, Some(0), "{}", get.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&get.stdout).unwrap()["counters"][0]["dropped_packets"],
        500
    );
    let list = d.ctl(&["list"]);
    assert!(
        list.stdout.contains("cut-9000") && list.stdout.contains("active"),
        "{}",
        list.stdout
    );
    call(&d, Method::DELETE, "/v1/experiments/cut-9000", None).unwrap();
    assert_eq!(delivered(&lab, dst, 500), 500, "clean once deleted");
    let exit = d.stop();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

#[test]
fn mixed_fault_shares_hold_at_the_application() {
    let _traffic = heavy_traffic();
    let lab = Lab::new("dmix");
    let d = Daemon::start(&[]);
    // The delay half of a mix needs sch_fq (see delay.rs); here the drop share alone.
    let apply = d.ctl(&[
        "apply",
        "--name",
        "lossy",
        "--iface",
        IFACE,
        "--netns",
        &lab.a,
        "--rule",
        "proto=udp dport=9000 drop=10%",
    ]);
    assert_eq!(apply.code, Some(0), "{}", apply.stderr);
    const N: u64 = 20_000;
    let got = delivered(&lab, (SERVER_V4, 9000).into(), N);
    assert_binomial("daemon drop=10%", N - got, N, 0.1);
    let view = call(&d, Method::GET, "/v1/experiments/lossy", None).unwrap();
    assert_eq!(counter(&view, 0, "dropped_packets"), N - got);
    assert_eq!(d.stop().code, Some(0));
}

#[test]
fn a_duration_reverts_by_itself() {
    let lab = Lab::new("ddur");
    let d = Daemon::start(&[]);
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let rx = UdpCounter::start(&lab.b, dst);
    let mut e = experiment("short", &lab.a, &["proto=udp dport=9000 drop=100%"]);
    e["duration"] = json!("2s");
    let applied = Instant::now();
    call(&d, Method::POST, "/v1/experiments", Some(e)).unwrap();
    // A datagram every 10 ms for 4 s: the first to arrive marks the revert. The request itself
    // can take a while on a loaded machine (it attaches the program): count from the start.
    let ns = lab.a.clone();
    let sending_from = applied.elapsed();
    netlab::udp_send_to(&ns, &[dst], 400, 32, Some(Duration::from_millis(10)));
    let received = rx.finish_after(netlab::QUIET);
    let first = received
        .arrivals
        .iter()
        .map(|a| a.seq)
        .min()
        .expect("traffic flows again");
    let reverted_after = sending_from + Duration::from_millis(first * 10);
    eprintln!(
        "duration=2s: traffic flowed again {reverted_after:?} after the experiment was applied (measured {:?} in all)",
        applied.elapsed()
    );
    assert!(
        (Duration::from_millis(1900)..=Duration::from_millis(2600)).contains(&reverted_after),
        "reverted after {reverted_after:?}, want about 2 s"
    );
    let gone = call(&d, Method::GET, "/v1/experiments/short", None);
    assert!(matches!(gone, Err(ClientError::Refused { status, .. }) if status == 404));
    assert_eq!(d.stop().code, Some(0));
}

/// Writers replace their own experiment again and again, each version's rule carrying its
/// version number twice (priority and port); readers check every view they see is whole.
#[test]
fn a_thousand_writes_while_traffic_flows() {
    let lab = Lab::new("dload");
    let d = Daemon::start(&[]);
    let socket = d.socket.clone();
    let rt = runtime();
    const WRITERS: u64 = 4;
    const VERSIONS: u64 = 250;
    let traffic = {
        let ns = lab.a.clone();
        std::thread::spawn(move || udp_send(&ns, (SERVER_V4, 9999).into(), 20_000, 64))
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    rt.block_on(async {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (socket, ns) = (socket.clone(), lab.a.clone());
            writers.push(tokio::spawn(async move {
                let client = Client::new(&socket);
                for v in 0..VERSIONS {
                    let name = format!("writer-{w}");
                    let body = json!({
                        "name": name, "iface": IFACE, "netns": ns, "priority": v,
                        "rules": [format!("proto=udp dport={} drop=1%", 10_000 + v)],
                    });
                    client
                        .call(Method::PUT, &format!("/v1/experiments/{name}"), Some(&body))
                        .await
                        .unwrap_or_else(|e| panic!("write {w}/{v}: {e}"));
                }
            }));
        }
        let reader = {
            let (socket, stop) = (socket.clone(), stop.clone());
            tokio::spawn(async move {
                let client = Client::new(&socket);
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let list = client
                        .call(Method::GET, "/v1/experiments", None)
                        .await
                        .unwrap();
                    for e in list.as_array().unwrap() {
                        let v = e["priority"].as_u64().unwrap_or(0);
                        let rule = e["rules"][0].as_str().unwrap();
                        assert_eq!(
                            rule,
                            format!("proto=udp dport={} drop=1%", 10_000 + v),
                            "a half-applied experiment: {e}"
                        );
                        assert_eq!(
                            e["counters"][0]["spec"].as_str(),
                            Some(rule),
                            "counters of another version"
                        );
                    }
                    reads += 1;
                }
                reads
            })
        };
        for w in writers {
            w.await.expect("writer panicked");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.await.expect("reader panicked");
        eprintln!(
            "{} writes, {reads} concurrent list reads",
            WRITERS * VERSIONS
        );
    });
    assert_eq!(
        traffic.join().unwrap(),
        0,
        "traffic kept flowing without send errors"
    );
    for w in 0..WRITERS {
        let e = call(
            &d,
            Method::GET,
            &format!("/v1/experiments/writer-{w}"),
            None,
        )
        .unwrap();
        assert_eq!(e["priority"], VERSIONS - 1, "no lost update for writer {w}");
    }
    let exit = d.stop();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

/// The API's refusals: status, the field named, and nothing changed.
#[test]
fn malformed_requests_change_nothing() {
    let lab = Lab::new("dbad");
    let d = Daemon::start(&[]);
    let good = experiment("keep", &lab.a, &["proto=udp dport=9000 drop=100%"]);
    call(&d, Method::POST, "/v1/experiments", Some(good.clone())).unwrap();
    let before = call(&d, Method::GET, "/v1/experiments", None).unwrap();
    let refused = |method: Method, path: &str, body: Value, status: u16, field: &str| match call(
        &d,
        method.clone(),
        path,
        Some(body.clone()),
    ) {
        Err(ClientError::Refused {
            status: s,
            field: f,
            message,
        }) => {
            assert_eq!(
                (s.as_u16(), f.as_str()),
                (status, field),
                "{method} {path} {body}: {message}"
            );
        }
        other => panic!("{method} {path} {body}: expected {status}, got {other:?}"),
    };
    let mut bad_rule = good.clone();
    bad_rule["name"] = json!("other");
    bad_rule["rules"] = json!(["proto=udp drop=1", "dport=70000"]);
    refused(Method::POST, "/v1/experiments", bad_rule, 422, "rules[1]");
    refused(Method::POST, "/v1/experiments", good.clone(), 409, "name");
    let mut unknown = good.clone();
    unknown["colour"] = json!("red");
    refused(Method::PUT, "/v1/experiments/keep", unknown, 400, "colour");
    let mut no_rules = good.clone();
    no_rules.as_object_mut().unwrap().remove("rules");
    refused(Method::PUT, "/v1/experiments/keep", no_rules, 400, "rules");
    refused(
        Method::PUT,
        "/v1/experiments/other-name",
        good.clone(),
        422,
        "name",
    );
    let mut bad_name = good.clone();
    bad_name["name"] = json!("Not OK");
    refused(Method::POST, "/v1/experiments", bad_name, 422, "name");
    let mut bad_iface = good.clone();
    bad_iface["name"] = json!("ghost");
    bad_iface["iface"] = json!("nosuch0");
    refused(Method::POST, "/v1/experiments", bad_iface, 422, "iface");
    let mut bad_netns = good.clone();
    bad_netns["name"] = json!("nowhere");
    bad_netns["netns"] = json!("chaos-no-such-netns");
    refused(Method::POST, "/v1/experiments", bad_netns, 422, "netns");
    let mut bad_duration = good.clone();
    bad_duration["name"] = json!("soon");
    bad_duration["duration"] = json!("soon");
    refused(
        Method::POST,
        "/v1/experiments",
        bad_duration,
        422,
        "duration",
    );
    refused(
        Method::POST,
        "/v1/experiments",
        json!("not an object"),
        400,
        "body",
    );
    assert!(matches!(
        call(&d, Method::DELETE, "/v1/experiments/nope", None),
        Err(ClientError::Refused { status, .. }) if status == 404
    ));
    let after = call(&d, Method::GET, "/v1/experiments", None).unwrap();
    let strip = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| json!([e["name"], e["rules"], e["phase"]]))
            .collect()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "a refused request changed something"
    );
    assert_eq!(
        delivered(&lab, (SERVER_V4, 9000).into(), 200),
        0,
        "the good experiment still runs"
    );
    assert_eq!(d.stop().code, Some(0));
}

#[test]
fn config_file_and_sighup() {
    let lab = Lab::new("dcfg");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chaos.toml");
    let write = |port: u16, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[[experiment]]\nname = \"from-file\"\niface = \"{IFACE}\"\nnetns = \"{}\"\nrules = [\"proto=udp dport={port} drop=100%\"]\n{extra}",
                lab.a
            ),
        )
        .unwrap();
    };
    // A bad file at start: exit 2, one line naming the field.
    write(9000, "colour = \"red\"\n");
    let bad = netlab::chaos_output(&[
        "daemon",
        "--socket",
        dir.path().join("x.sock").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("unknown field `colour`"),
        "{}",
        bad.stderr
    );
    write(9000, "");
    let d = Daemon::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        delivered(&lab, (SERVER_V4, 9000).into(), 200),
        0,
        "the file's experiment runs"
    );
    // A broken file on SIGHUP: the running set stays.
    std::fs::write(&config, "[[experiment]]\nname = \"from-file\"\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for_stderr("reload refused", Duration::from_secs(10));
    assert_eq!(
        call(&d, Method::GET, "/v1/experiments/from-file", None).unwrap()["rules"],
        json!(["proto=udp dport=9000 drop=100%"]),
        "the running experiment unchanged"
    );
    assert_eq!(
        delivered(&lab, (SERVER_V4, 9000).into(), 200),
        0,
        "old rules kept after a bad reload"
    );
    // A good one: replaced whole. The view changes once the new rule set is live.
    write(9001, "");
    d.signal(libc::SIGHUP);
    let new_rules = json!(["proto=udp dport=9001 drop=100%"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&d, Method::GET, "/v1/experiments/from-file", None).unwrap()["rules"] != new_rules {
        assert!(Instant::now() < deadline, "SIGHUP not handled within 10 s");
    }
    assert_eq!(
        delivered(&lab, (SERVER_V4, 9000).into(), 200),
        200,
        "old rule gone"
    );
    assert_eq!(
        delivered(&lab, (SERVER_V4, 9001).into(), 200),
        0,
        "new rule live"
    );
    let exit = d.stop();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("reload refused"),
        "the bad reload was logged: {}",
        exit.stderr
    );
}

#[test]
fn pause_stops_every_fault_and_resume_restarts_them() {
    let lab = Lab::new("dpause");
    let d = Daemon::start(&[]);
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    call(
        &d,
        Method::POST,
        "/v1/experiments",
        Some(experiment("p", &lab.a, &["proto=udp dport=9000 drop=100%"])),
    )
    .unwrap();
    assert_eq!(d.ctl(&["pause"]).code, Some(0));
    assert_eq!(delivered(&lab, dst, 200), 200, "paused: no faults");
    assert_eq!(
        call(&d, Method::GET, "/v1/experiments/p", None).unwrap()["phase"],
        "paused"
    );
    assert_eq!(d.ctl(&["resume"]).code, Some(0));
    assert_eq!(delivered(&lab, dst, 200), 0, "resumed");
    assert_eq!(d.stop().code, Some(0));
}

#[test]
fn cli_without_a_daemon_says_so() {
    let exit = netlab::chaos_output(&["list", "--socket", "/nonexistent/chaos.sock"]);
    assert_eq!(exit.code, Some(2));
    assert!(
        exit.stderr
            .contains("no chaos daemon is running at /nonexistent/chaos.sock"),
        "{}",
        exit.stderr
    );
}

/// docs/openapi.json: every documented operation is served, with a documented status, and the
/// experiment view has every property the document requires.
#[test]
fn openapi_document_matches_the_server() {
    let lab = Lab::new("dapi");
    let d = Daemon::start(&[]);
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let body = experiment("doc", &lab.a, &["proto=udp dport=9000 drop=1%"]);
    let created = call(&d, Method::POST, "/v1/experiments", Some(body.clone())).unwrap();
    // Every documented property of an experiment is one the server takes (it refuses unknown
    // fields), and it has one documented property per field of the schema it serves.
    let documented = doc["components"]["schemas"]["Experiment"]["properties"]
        .as_object()
        .unwrap();
    let mut full = body.clone();
    for (field, value) in [
        ("name", json!("doc-full")),
        ("duration", json!("1m")),
        ("start_delay", json!("1s")),
        ("priority", json!(1)),
        ("dry_run", json!(true)),
        (
            "stop_conditions",
            json!([{"kind": "http", "url": "http://127.0.0.1:1/", "fail_open": true}]),
        ),
    ] {
        assert!(documented.contains_key(field), "{field} is not documented");
        full[field] = value;
    }
    // A target names its own namespace: it goes in an experiment of its own, without netns.
    let mut targeted = body.clone();
    targeted["name"] = json!("doc-target");
    targeted.as_object_mut().unwrap().remove("netns");
    targeted["target"] = json!(format!("netns=/run/netns/{}", lab.a));
    // A pods= selector and its Kubernetes namespace: taken as fields (never a 400); without a
    // CRI runtime on the machine the target is refused (422), with one it matches nothing yet.
    let mut pods = body.clone();
    pods["name"] = json!("doc-pods");
    pods.as_object_mut().unwrap().remove("netns");
    pods["target"] = json!("pods=app=doc");
    pods["namespace"] = json!("shop");
    let got = runtime()
        .block_on(raw_status(
            &d,
            Method::POST,
            "/v1/experiments",
            Some(pods.clone()),
        ))
        .unwrap();
    assert!(
        got == 201 || got == 422,
        "pods= with a namespace answered {got}"
    );
    if got == 201 {
        call(&d, Method::DELETE, "/v1/experiments/doc-pods", None).unwrap();
    }
    for field in documented.keys() {
        assert!(
            full.get(field).is_some() || targeted.get(field).is_some() || pods.get(field).is_some(),
            "documented {field} not exercised"
        );
    }
    call(&d, Method::POST, "/v1/experiments", Some(full)).unwrap();
    call(&d, Method::DELETE, "/v1/experiments/doc-full", None).unwrap();
    let view = call(&d, Method::POST, "/v1/experiments", Some(targeted)).unwrap();
    assert_eq!(view["phase"], "active", "{view}");
    call(&d, Method::DELETE, "/v1/experiments/doc-target", None).unwrap();
    let view_schema = &doc["components"]["schemas"]["ExperimentView"];
    for field in view_schema["required"].as_array().unwrap() {
        assert!(
            created.get(field.as_str().unwrap()).is_some(),
            "ExperimentView lacks {field}: {created}"
        );
    }
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            if !["get", "put", "post", "delete"].contains(&method.as_str()) {
                continue;
            }
            let concrete = path.replace("{name}", "doc");
            let m: Method = method.to_uppercase().parse().unwrap();
            let payload = matches!(method.as_str(), "put" | "post").then(|| body.clone());
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let got = match runtime().block_on(raw_status(&d, m, &concrete, payload)) {
                Ok(s) => s,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            assert!(
                documented.contains(&got),
                "{method} {path} answered {got}, documented {documented:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} operations documented");
    assert_eq!(d.stop().code, Some(0));
}

/// Status code of a request, whatever it is.
async fn raw_status(
    d: &Daemon,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<u16, String> {
    Client::new(&d.socket)
        .call_status(method, path, body.as_ref())
        .await
        .map(|(status, _)| status.as_u16())
        .map_err(|e| e.to_string())
}

/// One HTTP/1.1 exchange: `request` (with `Connection: close`) written to `stream`, the whole
/// answer read back. Returns (status, the head in lower case, the body).
fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    request: &str,
) -> (u16, String, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {response:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A request over the daemon's unix socket; see [`exchange`].
fn unix_request(
    d: &Daemon,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let stream = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(
        stream,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: chaos\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// A GET over TCP with `authorization` as the header's value, if any; see [`exchange`].
fn tcp_get_full(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    exchange(
        stream,
        &format!("GET {path} HTTP/1.1\r\nHost: chaos\r\n{auth}Connection: close\r\n\r\n"),
    )
}

/// One HTTP/1.1 GET over TCP; returns the status code.
fn tcp_get(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    tcp_get_full(addr, path, token.map(|t| format!("Bearer {t}")).as_deref()).0
}

/// An error answer as documented: JSON with `error` and `field`.
fn assert_json_error(what: &str, (status, head, body): &(u16, String, String), want: u16) {
    assert_eq!(*status, want, "{what}: {head}\n{body}");
    assert!(
        head.contains("content-type: application/json"),
        "{what}: not JSON: {head}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body:?}"));
    assert!(
        v["error"].is_string() && v["field"].is_string(),
        "{what}: not {{error, field}}: {v}"
    );
}

#[test]
fn tcp_listener_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "0123456789abcdef-test-token";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    // A free port on loopback for the daemon's listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let d = Daemon::start(&[
        "--listen",
        &addr.to_string(),
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let no_token = tcp_get_full(addr, "/v1/status", None);
    assert_json_error("no token", &no_token, 401);
    assert!(
        no_token.1.contains("www-authenticate: bearer"),
        "a 401 says which scheme: {}",
        no_token.1
    );
    // The scheme name is case-insensitive (RFC 9110 11.1).
    for scheme in ["bearer", "BEARER"] {
        let (status, _, body) =
            tcp_get_full(addr, "/v1/status", Some(&format!("{scheme} {token}")));
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    assert_json_error(
        "unknown path without a token",
        &tcp_get_full(addr, "/nope", None),
        401,
    );
    assert_eq!(
        tcp_get(addr, "/v1/status", Some("wrong-token-of-same-len-xx")),
        401,
        "wrong token"
    );
    assert_eq!(tcp_get(addr, "/v1/status", Some(token)), 200, "the token");
    assert_eq!(d.stop().code, Some(0));
    let no_token = netlab::chaos_output(&["daemon", "--listen", &addr.to_string()]);
    assert_eq!(
        no_token.code,
        Some(2),
        "--listen without --token-file: {}",
        no_token.stderr
    );
}

#[test]
fn completions_and_man_pages() {
    let bash = netlab::chaos_output(&["completions", "bash"]);
    assert_eq!(bash.code, Some(0));
    assert!(
        bash.stdout.contains("_chaos") && bash.stdout.contains("daemon"),
        "bash completion"
    );
    let dir = tempfile::tempdir().unwrap();
    let man = netlab::chaos_output(&["man", dir.path().to_str().unwrap()]);
    assert_eq!(man.code, Some(0), "{}", man.stderr);
    for page in ["chaos.1", "chaos-run.1", "chaos-daemon.1", "chaos-apply.1"] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is a man page");
    }
}

#[test]
fn guard_rails_dry_run_and_the_duration_cap() {
    let lab = Lab::new("dguard");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    let listen = format!("127.0.0.1:{port}");
    let d = Daemon::start(&[
        "--max-duration",
        "10s",
        "--listen",
        &listen,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let refused = |body: Value, field: &str, says: &str| match call(
        &d,
        Method::POST,
        "/v1/experiments",
        Some(body.clone()),
    ) {
        Err(ClientError::Refused {
            status,
            field: f,
            message,
        }) => {
            assert_eq!(
                (status.as_u16(), f.as_str()),
                (422, field),
                "{body}: {message}"
            );
            assert!(message.contains(says), "{body}: {message}");
        }
        other => panic!("{body}: expected 422, got {other:?}"),
    };
    refused(
        experiment("ssh", &lab.a, &["proto=tcp dport=22 drop=1%"]),
        "rules[0]",
        "port 22 (SSH)",
    );
    let api_rule = format!("proto=tcp dport={port} drop=1% force=yes");
    refused(
        experiment("api", &lab.a, &[&api_rule]),
        "rules[0]",
        "the chaos daemon's API listens",
    );
    let mut long = experiment("long", &lab.a, &["proto=udp drop=1%"]);
    long["duration"] = json!("1m");
    refused(long, "duration", "--max-duration");
    // Overridden explicitly: accepted.
    call(
        &d,
        Method::POST,
        "/v1/experiments",
        Some(experiment(
            "ssh",
            &lab.a,
            &["proto=tcp dport=22 drop=1% force=yes"],
        )),
    )
    .unwrap();
    // No duration: the cap applies.
    let capped = call(&d, Method::GET, "/v1/experiments/ssh", None).unwrap();
    assert!(
        capped["expires_in_seconds"].as_f64().unwrap() <= 10.0,
        "{capped}"
    );
    // A dry run counts and touches nothing.
    let mut dry = experiment("dry", &lab.a, &["proto=udp dport=9000 drop=100%"]);
    dry["dry_run"] = json!(true);
    call(&d, Method::POST, "/v1/experiments", Some(dry)).unwrap();
    assert_eq!(
        delivered(&lab, (SERVER_V4, 9000).into(), 300),
        300,
        "a dry run drops nothing"
    );
    let view = call(&d, Method::GET, "/v1/experiments/dry", None).unwrap();
    assert_eq!(
        (
            counter(&view, 0, "matched_packets"),
            counter(&view, 0, "dropped_packets")
        ),
        (300, 0)
    );
    assert_eq!(d.stop().code, Some(0));
}

/// What docs/openapi.json promises beyond the happy path: every error is JSON (404 for unknown
/// paths, 405 with Allow for unserved methods), `application/json; charset=utf-8` is JSON,
/// `null` means absent for every optional field, and at most 64 rules are refused the
/// documented way.
#[test]
fn every_answer_is_as_documented() {
    let lab = Lab::new("ddoc");
    let d = Daemon::start(&[]);
    assert_json_error(
        "unknown path",
        &unix_request(&d, "GET", "/v2/nothing", "", ""),
        404,
    );
    assert_json_error(
        "trailing slash",
        &unix_request(&d, "GET", "/v1/experiments/", "", ""),
        404,
    );
    let wrong_method = unix_request(&d, "DELETE", "/v1/status", "", "");
    assert_json_error("wrong method", &wrong_method, 405);
    assert!(
        wrong_method.1.contains("allow: get,head"),
        "a 405 names the methods served: {}",
        wrong_method.1
    );
    assert_json_error(
        "wrong method on an experiment",
        &unix_request(&d, "POST", "/v1/experiments/x", "", ""),
        405,
    );
    // A JSON body with a charset parameter is JSON.
    let body = experiment("charset", &lab.a, &["proto=udp dport=9000 drop=1%"]).to_string();
    let (status, head, answer) = unix_request(
        &d,
        "POST",
        "/v1/experiments",
        "Content-Type: application/json; charset=utf-8\r\n",
        &body,
    );
    assert_eq!(status, 201, "{head}\n{answer}");
    // null is absent, for every optional field.
    let mut nulls = experiment("nulls", &lab.a, &["proto=udp dport=9001 drop=1%"]);
    for field in ["duration", "start_delay", "priority", "dry_run"] {
        nulls[field] = Value::Null;
    }
    let view = call(&d, Method::POST, "/v1/experiments", Some(nulls.clone())).unwrap();
    assert_eq!(view["phase"], "active", "{view}");
    for field in ["duration", "start_delay", "priority", "dry_run"] {
        assert!(view.get(field).is_none(), "{field} shown: {view}");
    }
    // netns null: the daemon's own namespace (an interface there that does not exist, so
    // nothing outside the lab is touched).
    nulls["netns"] = Value::Null;
    nulls["name"] = json!("nulls-netns");
    nulls["iface"] = json!("nosuch-api0");
    match call(&d, Method::POST, "/v1/experiments", Some(nulls)) {
        Err(ClientError::Refused { status, field, .. }) => {
            assert_eq!((status.as_u16(), field.as_str()), (422, "iface"));
        }
        other => panic!("netns null: {other:?}"),
    }
    // 65 rules: 422 naming rules, whatever else is on the interface.
    let many: Vec<String> = (0..65)
        .map(|p| format!("proto=udp dport={} drop=1%", 20_000 + p))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    match call(
        &d,
        Method::POST,
        "/v1/experiments",
        Some(experiment("many", &lab.a, &many)),
    ) {
        Err(ClientError::Refused {
            status,
            field,
            message,
        }) => {
            assert_eq!(
                (status.as_u16(), field.as_str()),
                (422, "rules"),
                "{message}"
            );
        }
        other => panic!("65 rules: {other:?}"),
    }
    // priority is an int32: one past it is not an experiment.
    let mut big = experiment("big", &lab.a, &["proto=udp dport=9002 drop=1%"]);
    big["priority"] = json!(2_147_483_648_i64);
    assert_json_error(
        "priority past int32",
        &unix_request(
            &d,
            "POST",
            "/v1/experiments",
            "Content-Type: application/json\r\n",
            &big.to_string(),
        ),
        400,
    );
    big["priority"] = json!(i32::MAX);
    call(&d, Method::POST, "/v1/experiments", Some(big)).unwrap();
    assert_eq!(d.stop().code, Some(0));
}
