//! Trust for chaos in production: the big red button (`chaos halt`) and the audit trail. A real
//! daemon, real traffic in namespaces, the audit log read as written.

use std::net::SocketAddr;

use netlab::{Daemon, IFACE, Lab, SERVER_V4, delivered};
use serde_json::Value;

fn apply(d: &Daemon, lab: &Lab, name: &str) -> netlab::ChaosExit {
    d.ctl(&[
        "apply",
        "--name",
        name,
        "--iface",
        IFACE,
        "--netns",
        &lab.a,
        "--rule",
        "proto=udp dport=9000 drop=100%",
    ])
}

/// `chaos halt` ends every experiment at once (traffic flows again) and refuses new ones with
/// the reason until `chaos unhalt`; every change is in the audit log once, with the caller's
/// uid from the socket's peer credentials, and `chaos history` shows the same.
#[test]
fn halt_ends_everything_and_every_change_is_audited_once() {
    let lab = Lab::new("audit");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let d = Daemon::start(&["--audit-log", log.to_str().unwrap()]);
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    for name in ["a1", "a2"] {
        let out = apply(&d, &lab, name);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    assert_eq!(delivered(&lab, dst, 200), 0, "faulted");
    let delete = d.ctl(&["delete", "a2"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);

    let halt = d.ctl(&["halt", "--reason", "checkout errors rising"]);
    assert_eq!(halt.code, Some(0), "{}", halt.stderr);
    assert_eq!(
        delivered(&lab, dst, 200),
        200,
        "halted: every fault is gone"
    );
    assert!(d.ctl(&["list", "--output", "json"]).stdout.trim() == "[]");
    let refused = apply(&d, &lab, "a3");
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "the daemon is halted (checkout errors rising): no experiment is accepted until `chaos unhalt`"
        ),
        "{}",
        refused.stderr
    );
    let status = d.ctl(&["status"]);
    assert!(
        status.stdout.contains("HALTED (checkout errors rising)"),
        "{}",
        status.stdout
    );
    assert_eq!(d.ctl(&["unhalt"]).code, Some(0));
    let again = apply(&d, &lab, "a4");
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(delivered(&lab, dst, 200), 0, "unhalted: faults apply again");

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let said: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            (f("who"), f("action"), f("experiment"))
        })
        .collect();
    let uid = format!("uid {}", unsafe { libc::getuid() });
    let want: Vec<(String, String, String)> = [
        (uid.as_str(), "create", "a1"),
        (uid.as_str(), "create", "a2"),
        (uid.as_str(), "delete", "a2"),
        (uid.as_str(), "halt", ""),
        (uid.as_str(), "unhalt", ""),
        (uid.as_str(), "create", "a4"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(said, want, "{text}");
    let halt = &records[3];
    assert_eq!(halt["why"], "checkout errors rising");
    assert_eq!(halt["what"], "ended a1");
    assert!(
        records[0]["what"]
            .as_str()
            .unwrap()
            .contains("proto=udp dport=9000 drop=100%")
    );
    assert!(records[0]["time"].as_str().unwrap().ends_with('Z'));

    let history = d.ctl(&["history", "--output", "json"]);
    assert_eq!(history.code, Some(0), "{}", history.stderr);
    let kept: Vec<Value> = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(kept, records, "the daemon's memory and the file agree");
    let table = d.ctl(&["history"]);
    assert!(
        table.stdout.contains("checkout errors rising"),
        "{}",
        table.stdout
    );
    assert_eq!(d.stop().code, Some(0));
}
