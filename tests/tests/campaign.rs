//! Campaigns on a real daemon: random experiments inside a short window, measured at the
//! application (UDP datagrams lost only while an experiment of the campaign runs, only on the
//! target and port it drew), against the plan its seed gives and the audit trail. The weights'
//! chi-squared test over 20,000 draws is a unit test of the same schedule code
//! (`campaign::tests`); the twenty-odd draws of a 20-second window could not test weights.

use std::{net::SocketAddr, time::Duration};

use jiff::{SignedDuration, Timestamp};
use netlab::{Daemon, IFACE, Lab, SERVER_V4, delivered, serve::HealthCheck, wait_until};
use serde_json::Value;

fn json(exit: &netlab::ChaosExit) -> Value {
    assert_eq!(exit.code, Some(0), "{} {}", exit.stdout, exit.stderr);
    serde_json::from_str(&exit.stdout).unwrap_or_else(|e| panic!("{e}: {}", exit.stdout))
}

fn ts(v: &Value) -> Timestamp {
    v.as_str().unwrap().parse().unwrap()
}

/// `HH:MM:SS` of `t` in UTC.
fn hms(t: Timestamp) -> String {
    t.strftime("%H:%M:%S").to_string()
}

fn campaign_toml(name: &str, window: &str, labs: &[&Lab], seed: u64, extra: &str) -> String {
    format!(
        r#"
[[campaign]]
name = "{name}"
window = "{window}"
every = "1s..3s"
duration = "2s"
max_concurrent = 1
iface = "{IFACE}"
targets = ["netns=/run/netns/{}", {{ weight = 2, target = "netns=/run/netns/{}" }}]
faults = [
  {{ weight = 3, rule = "proto=udp dport=9000 drop=100%" }},
  {{ weight = 1, rule = "proto=udp dport=9001 drop=100%" }},
]
seed = {seed}
{extra}
"#,
        labs[0].a, labs[1].a
    )
}

fn apply(d: &Daemon, dir: &std::path::Path, text: &str) -> netlab::ChaosExit {
    let file = dir.join("campaign.toml");
    std::fs::write(&file, text).unwrap();
    d.ctl(&["apply", "-f", file.to_str().unwrap(), "--output", "json"])
}

/// What one probe saw: at `at`, datagrams to `port` from lab `lab` were lost.
struct Seen {
    at: Timestamp,
    lab: usize,
    port: u16,
    lost: bool,
}

#[test]
fn a_campaign_runs_its_plan_inside_its_window_only() {
    let labs = [Lab::new("camp0"), Lab::new("camp1")];
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let d = Daemon::start(&["--audit-log", log.to_str().unwrap()]);
    // A 16-second window opening 4 s from now, in UTC, every day (whole seconds).
    let now = Timestamp::now().as_second();
    let open = Timestamp::from_second(now + 4).unwrap();
    let close = Timestamp::from_second(now + 20).unwrap();
    let window = format!("* {}-{} UTC", hms(open), hms(close));
    let text = campaign_toml("weekly", &window, &[&labs[0], &labs[1]], 42, "");
    let applied = json(&apply(&d, dir.path(), &text));
    assert_eq!(applied[0]["spec"]["seed"], 42, "{applied}");
    assert_eq!(applied[0]["state"], "active");

    // The same seed gives the same plan: a twin with another name.
    let plan = json(&d.ctl(&[
        "campaign", "plan", "weekly", "--count", "40", "--output", "json",
    ]));
    apply(&d, dir.path(), &text.replace("\"weekly\"", "\"twin\""));
    let twin = json(&d.ctl(&[
        "campaign", "plan", "twin", "--count", "40", "--output", "json",
    ]));
    let key = |p: &Value| -> Vec<(String, String, String, String)> {
        p.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let f = |k: &str| s[k].as_str().unwrap_or("").to_owned();
                (f("start"), f("duration"), f("target"), f("rule"))
            })
            .collect()
    };
    assert_eq!(key(&plan), key(&twin));
    let other = text
        .replace("\"weekly\"", "\"other\"")
        .replace("seed = 42", "seed = 43");
    apply(&d, dir.path(), &other);
    let other_plan = json(&d.ctl(&[
        "campaign", "plan", "other", "--count", "40", "--output", "json",
    ]));
    assert_ne!(key(&plan), key(&other_plan), "another seed, another plan");
    for name in ["twin", "other"] {
        assert_eq!(d.ctl(&["campaign", "delete", name]).code, Some(0));
    }
    let today: Vec<&Value> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| ts(&s["start"]) < close)
        .collect();
    assert!(today.len() >= 6, "{plan}");

    // Probe every (lab, port) in turn until a second after the window closes.
    let dsts: [SocketAddr; 2] = [(SERVER_V4, 9000).into(), (SERVER_V4, 9001).into()];
    let mut seen = Vec::new();
    let deadline = close + SignedDuration::from_secs(1);
    while Timestamp::now() < deadline {
        for (lab, l) in labs.iter().enumerate() {
            for dst in dsts {
                let at = Timestamp::now();
                let got = delivered(l, dst, 3);
                seen.push(Seen {
                    at,
                    lab,
                    port: dst.port(),
                    lost: got < 3,
                });
            }
        }
    }

    // What ran, from the audit trail: each experiment's create and end.
    let audit: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut runs = Vec::new();
    for r in audit
        .iter()
        .filter(|r| r["action"] == "create" && r["who"] == "campaign:weekly")
    {
        let name = r["experiment"].as_str().unwrap();
        let when = |action: &str| {
            let r = audit
                .iter()
                .find(|e| e["action"] == action && e["experiment"] == name)
                .unwrap_or_else(|| panic!("{name} has no {action}: {audit:?}"));
            ts(&r["time"])
        };
        // Created ahead of its slot with a start delay (the program loads meanwhile).
        assert!(ts(&r["time"]) <= when("start"), "{name}");
        runs.push((name.to_owned(), when("start"), when("end")));
    }
    let planned: Vec<&&Value> = today.iter().filter(|s| s["outcome"].is_null()).collect();
    assert_eq!(
        runs.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        planned
            .iter()
            .map(|s| s["experiment"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        "the experiments started are the plan's"
    );
    let slack = SignedDuration::from_millis(300);
    let mut lags = Vec::new();
    for (i, (name, start, end)) in runs.iter().enumerate() {
        // Started by the daemon's timer at the slot, ended by the experiment's own clock.
        let (planned_start, planned_end) = (
            ts(&planned[i]["start"]),
            ts(&planned[i]["start"]) + SignedDuration::from_secs(2),
        );
        let lag = start.duration_since(planned_start);
        assert!(
            lag.abs() < slack,
            "{name} started {start}, planned {planned_start}"
        );
        assert!(
            end.duration_since(planned_end).abs() < slack,
            "{name} ended {end}, planned {planned_end}"
        );
        lags.push(lag);
        assert!(
            open <= *start && *end <= close + slack,
            "{name}: {start}..{end} outside {open}..{close}"
        );
        // max_concurrent = 1: each ends before the next starts (a gap equal to the length may put the
        // two timers a few milliseconds out of order).
        if let Some(next) = runs.get(i + 1) {
            assert!(
                *end <= next.1 + SignedDuration::from_millis(100),
                "{name} overlaps {}",
                next.0
            );
        }
    }
    // At the application: every loss fell inside an experiment that drew that lab and port,
    // and each experiment's drawn target and port lost datagrams while it ran.
    let target_of = |s: &Value| {
        if s["target"].as_str().unwrap().ends_with(&labs[0].a) {
            0
        } else {
            1
        }
    };
    let port_of = |s: &Value| {
        if s["rule"].as_str().unwrap().contains("9000") {
            9000
        } else {
            9001
        }
    };
    for s in seen.iter().filter(|s| s.lost) {
        let during = runs.iter().zip(&planned).any(|((_, start, end), p)| {
            *start - slack <= s.at
                && s.at <= *end + slack
                && target_of(p) == s.lab
                && port_of(p) == s.port
        });
        assert!(
            during,
            "datagrams lost at {} on lab {} port {} outside any experiment of theirs",
            s.at, s.lab, s.port
        );
    }
    for ((name, start, end), p) in runs.iter().zip(&planned) {
        let hit = seen.iter().any(|s| {
            s.lost
                && *start <= s.at
                && s.at <= *end
                && target_of(p) == s.lab
                && port_of(p) == s.port
        });
        assert!(
            hit,
            "{name} ({start}..{end}) lost nothing where it should have"
        );
    }
    eprintln!(
        "{} experiments in the window, started {:?} from their slot at most, {} probes, {} of \
         them lossy",
        runs.len(),
        lags.iter().map(|l| l.abs()).max(),
        seen.len(),
        seen.iter().filter(|s| s.lost).count()
    );

    // After the window: the next slot is tomorrow's, and the counts are in /metrics.
    let view = json(&d.ctl(&["campaign", "get", "weekly", "--output", "json"]));
    assert!(
        ts(&view["next"]["start"]) > close + SignedDuration::from_hours(12),
        "{view}"
    );
    assert_eq!(view["started"], runs.len() as u64);
    let metrics = d.metrics();
    assert!(
        metrics.lines().any(|l| l
            == format!(
                "chaos_campaign_started_experiments_total{{campaign=\"weekly\"}} {}",
                runs.len()
            )),
        "{metrics}"
    );
    assert!(metrics.contains("chaos_campaign_next_start_seconds{campaign=\"weekly\"}"));
    let list = d.ctl(&["campaign", "list"]);
    assert!(
        list.stdout.contains("weekly") && list.stdout.contains("active"),
        "{}",
        list.stdout
    );
}

/// A campaign's stop condition ends its running experiment within a second and the campaign
/// with it; pause ends it too, and a bad campaign is refused whole with the field named.
#[test]
fn a_stop_condition_ends_the_campaign_and_pause_ends_its_experiment() {
    let labs = [Lab::new("campstop0"), Lab::new("campstop1")];
    let dir = tempfile::tempdir().unwrap();
    let health = HealthCheck::start();
    let url = health.url.clone();
    let log = dir.path().join("audit.log");
    let d = Daemon::start(&["--audit-log", log.to_str().unwrap()]);
    // Always open; one long experiment on one target and port at a time.
    let text = format!(
        r#"
[[campaign]]
name = "guarded"
every = "1s"
duration = "4s"
iface = "{IFACE}"
targets = ["netns=/run/netns/{}"]
faults = [{{ rule = "proto=udp dport=9000 drop=100%" }}]
[[campaign.stop_conditions]]
kind = "http"
url = "{url}"
every = "200ms"
"#,
        labs[0].a
    );
    let dst: SocketAddr = (SERVER_V4, 9000).into();
    // A bad campaign: refused whole, the field named, exit 2, nothing applied.
    let bad = apply(
        &d,
        dir.path(),
        &text.replace("every = \"1s\"", "every = \"2s..1s\""),
    );
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("campaign[0].every: '2s..1s': the upper end is below the lower"),
        "{}",
        bad.stderr
    );
    assert_eq!(
        json(&d.ctl(&["campaign", "list", "--output", "json"])),
        Value::Array(vec![])
    );

    let applied = json(&apply(&d, dir.path(), &text));
    assert!(
        applied[0]["spec"]["seed"].is_u64(),
        "a drawn seed is shown: {applied}"
    );
    wait_until(
        "the first experiment faults",
        Duration::from_secs(7),
        || delivered(&labs[0], dst, 5) == 0,
    );
    // Pause: the experiment ends at once and the campaign starts none.
    let paused = json(&d.ctl(&["campaign", "pause", "guarded", "--output", "json"]));
    assert_eq!(paused["state"], "paused");
    assert_eq!(delivered(&labs[0], dst, 50), 50, "paused: nothing faulted");
    wait_until(
        "a slot skipped while paused",
        Duration::from_secs(3),
        || {
            json(&d.ctl(&["campaign", "get", "guarded", "--output", "json"]))["skipped"]["paused"]
                .as_u64()
                .is_some_and(|n| n > 0)
        },
    );
    json(&d.ctl(&["campaign", "resume", "guarded", "--output", "json"]));
    // The plan still counts the paused experiment until its planned end (every node's plan is
    // the same, whatever happened here), and slots are decided 3 s ahead (the program loads
    // meanwhile), so one paused slot can cost two 4 s turns: the next one starts within 11 s.
    wait_until(
        "faulting again after resume",
        Duration::from_secs(12),
        || delivered(&labs[0], dst, 5) == 0,
    );

    // A halt ends it too, and the slots meanwhile are skipped as halted.
    assert_eq!(d.ctl(&["halt", "--reason", "game day over"]).code, Some(0));
    assert_eq!(delivered(&labs[0], dst, 50), 50, "halted: nothing faulted");
    wait_until(
        "a slot skipped while halted",
        Duration::from_secs(6),
        || {
            json(&d.ctl(&["campaign", "get", "guarded", "--output", "json"]))["skipped"]["halted"]
                .as_u64()
                .is_some_and(|n| n > 0)
        },
    );
    let halted = json(&d.ctl(&["campaign", "get", "guarded", "--output", "json"]));
    assert!(
        halted["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["outcome"] == "skipped: the daemon is halted (game day over)"),
        "{halted}"
    );
    assert_eq!(halted["running"], Value::Array(vec![]));
    assert_eq!(d.ctl(&["unhalt"]).code, Some(0));
    wait_until(
        "faulting again after unhalt",
        Duration::from_secs(12),
        || delivered(&labs[0], dst, 5) == 0,
    );

    health.fail();
    let took = wait_until(
        "the stop condition ends the campaign",
        Duration::from_secs(2),
        || delivered(&labs[0], dst, 5) == 5,
    );
    eprintln!("faults gone {took:?} after the check started failing (probe every 200ms)");
    let view = json(&d.ctl(&["campaign", "get", "guarded", "--output", "json"]));
    assert_eq!(view["state"], "stopped");
    let reason = format!(
        "stop condition tripped: stop_conditions[0]: GET {url} answered 404, outside 200-399"
    );
    assert_eq!(view["reason"], reason.as_str());
    assert_eq!(view["running"], Value::Array(vec![]));
    // It starts nothing more.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(delivered(&labs[0], dst, 50), 50);
    let text_view = d.ctl(&["campaign", "get", "guarded"]);
    assert!(text_view.stdout.contains(&reason), "{}", text_view.stdout);
    let audit = std::fs::read_to_string(&log).unwrap();
    let actions: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["experiment"] == "guarded")
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        [
            "campaign-create",
            "campaign-pause",
            "campaign-resume",
            "trip"
        ],
        "{audit}"
    );
    assert!(audit.contains("answered 404"));
    let metrics = d.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chaos_campaign_state{")
                && l.contains("state=\"stopped\"")
                && l.contains("answered 404")),
        "{metrics}"
    );
    assert_eq!(d.ctl(&["campaign", "delete", "guarded"]).code, Some(0));
    let gone = d.ctl(&["campaign", "get", "guarded"]);
    assert_eq!(gone.code, Some(2), "{}", gone.stderr);
    assert!(
        gone.stderr.contains("no campaign named 'guarded'"),
        "{}",
        gone.stderr
    );
}
