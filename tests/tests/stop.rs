//! Stop conditions against real probes: Python's http.server that starts failing, a real
//! Prometheus (Debian's package, started here on loopback, scraping the daemon's /metrics)
//! whose query crosses its threshold, and a probe that cannot be reached. Measured at the
//! application: the faulted traffic flows again once a condition trips.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use netlab::{
    Daemon, IFACE, Lab, SERVER_V4, delivered,
    serve::{HealthCheck, KillOnDrop, free_port, http_status},
    wait_until,
};
use serde_json::{Value, json};

/// `curl` over the daemon's socket: the answer's body.
fn api(d: &Daemon, method: &str, path: &str, body: Option<&Value>) -> String {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "--unix-socket",
        d.socket.to_str().unwrap(),
        "-X",
        method,
    ]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = c.arg(format!("http://chaos{path}")).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn view(d: &Daemon, name: &str) -> Value {
    serde_json::from_str(&api(d, "GET", &format!("/v1/experiments/{name}"), None)).unwrap()
}

fn guarded(lab: &Lab, name: &str, condition: Value) -> Value {
    json!({"name": name, "iface": IFACE, "netns": lab.a,
           "rules": ["proto=udp dport=9000 drop=100%"], "stop_conditions": [condition]})
}

/// An HTTP check that starts failing (404) ends the experiment: failed with the reason, its
/// faults gone within a second of the probe seeing it, in `chaos get`, the audit log and
/// /metrics. An unreachable probe trips at once; with fail_open it does not.
#[test]
fn an_http_check_that_fails_ends_the_experiment() {
    let lab = Lab::new("stophttp");
    let dir = tempfile::tempdir().unwrap();
    let health = HealthCheck::start();
    let url = health.url.clone();
    let log = dir.path().join("audit.log");
    let d = Daemon::start(&["--audit-log", log.to_str().unwrap()]);
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let every = Duration::from_millis(200);
    let created = api(
        &d,
        "POST",
        "/v1/experiments",
        Some(&guarded(
            &lab,
            "guarded",
            json!({"kind": "http", "url": url, "every": "200ms"}),
        )),
    );
    assert!(created.contains("\"active\""), "{created}");
    assert_eq!(
        delivered(&lab, dst, 200),
        0,
        "faulted while the check passes"
    );

    health.fail();
    let took = wait_until(
        "the experiment failed",
        every + Duration::from_secs(1),
        || view(&d, "guarded")["phase"] == "failed",
    );
    eprintln!(
        "tripped and restored {took:?} after the check started failing (probe every {every:?})"
    );
    assert_eq!(delivered(&lab, dst, 200), 200, "the faults are gone");
    let v = view(&d, "guarded");
    let reason = v["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        format!(
            "stop condition tripped: stop_conditions[0]: GET {url} answered 404, outside 200-399"
        )
    );
    let get = d.ctl(&["get", "guarded"]);
    assert!(get.stdout.contains(reason), "{}", get.stdout);
    let metrics = d.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chaos_experiment_failed{")
                && l.contains("guarded")
                && l.contains("answered 404")),
        "{metrics}"
    );
    let audit = std::fs::read_to_string(&log).unwrap();
    let trips: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "trip")
        .collect();
    assert_eq!(trips.len(), 1, "{audit}");
    assert_eq!(trips[0]["experiment"], "guarded");
    assert_eq!(trips[0]["who"], "daemon");

    // Nothing answers on this port: fail safe, it trips at the first probe.
    let closed = format!("http://127.0.0.1:{}/health", free_port());
    api(
        &d,
        "POST",
        "/v1/experiments",
        Some(&guarded(
            &lab,
            "blind",
            json!({"kind": "http", "url": closed, "every": "200ms"}),
        )),
    );
    wait_until("an unreachable probe trips", Duration::from_secs(2), || {
        view(&d, "blind")["phase"] == "failed"
    });
    assert!(
        view(&d, "blind")["reason"]
            .as_str()
            .unwrap()
            .contains("unreachable: GET")
    );
    api(
        &d,
        "POST",
        "/v1/experiments",
        Some(&guarded(
            &lab,
            "open",
            json!({"kind": "http", "url": closed, "every": "200ms", "fail_open": true}),
        )),
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        view(&d, "open")["phase"],
        "active",
        "fail_open: an unreachable probe does not trip"
    );
    assert_eq!(d.stop().code, Some(0));
}

/// A real Prometheus scrapes the daemon's /metrics every second; the experiment's stop
/// condition asks it for the packets the experiment dropped and trips above 100: the faults
/// end once the traffic has been dropped enough, measured by the datagrams that arrive after.
#[test]
fn a_prometheus_query_over_its_threshold_ends_the_experiment() {
    let lab = Lab::new("stopprom");
    let dir = tempfile::tempdir().unwrap();
    let (metrics_port, prom_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: chaos\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let d = Daemon::start(&["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (cargo xtask bootstrap installs it)"),
    );
    let prom = format!("http://127.0.0.1:{prom_port}");
    wait_until("prometheus ready", Duration::from_secs(30), || {
        http_status(&format!("{prom}/-/ready")) == "200"
    });
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    let query = "sum(chaos_dropped_packets_total{experiment=\"prom\"}) or vector(0)";
    let created = api(
        &d,
        "POST",
        "/v1/experiments",
        Some(&guarded(
            &lab,
            "prom",
            json!({"kind": "prometheus", "url": prom, "query": query,
                                            "above": 100, "every": "200ms"}),
        )),
    );
    assert!(created.contains("\"active\""), "{created}");
    assert_eq!(delivered(&lab, dst, 50), 0, "under the threshold: faulted");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        view(&d, "prom")["phase"],
        "active",
        "50 dropped, scraped: still under 100"
    );
    assert_eq!(
        delivered(&lab, dst, 200),
        0,
        "faulted until the next scrape"
    );
    wait_until("the query crossed 100", Duration::from_secs(10), || {
        view(&d, "prom")["phase"] == "failed"
    });
    let reason = view(&d, "prom")["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("the query's value 250 is above 100"),
        "{reason}"
    );
    assert_eq!(delivered(&lab, dst, 200), 200, "the faults are gone");
    assert_eq!(d.stop().code, Some(0));
}
