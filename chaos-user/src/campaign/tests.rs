use super::*;

fn spec(toml_text: &str) -> CampaignSpec {
    toml::from_str(toml_text).unwrap()
}

const WEEKDAYS: &str = r#"
name = "weekday-chaos"
window = "Mon-Fri 10:00-16:00 Europe/Berlin"
every = "15m..45m"
duration = "1m..5m"
targets = ["container=cart-*", { weight = 2, target = "pods=app=payments" }]
namespace = "shop"
faults = [
  { weight = 3, rule = "proto=tcp dport=5432 delay=200ms jitter=50ms" },
  { weight = 1, rule = "proto=tcp dport=6379 reset=yes conn-p=20%" },
]
seed = 42
"#;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn plan(c: &Campaign, from: &str, n: usize) -> Vec<Slot> {
    c.slots_from(ts(from)).take(n).collect()
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let a = Campaign::new(spec(WEEKDAYS), 0).unwrap();
    let b = Campaign::new(spec(WEEKDAYS), 99).unwrap();
    assert_eq!(a.seed, 42);
    let (pa, pb) = (
        plan(&a, "2026-12-01T00:00:00Z", 200),
        plan(&b, "2026-12-01T00:00:00Z", 200),
    );
    assert_eq!(pa, pb);
    // Starting to look later finds the same slots from there on: nodes that started at
    // different times agree.
    let later = plan(&a, "2026-12-02T12:00:00Z", 20);
    let from = pa.iter().position(|s| s.start == later[0].start).unwrap();
    assert_eq!(&pa[from..from + 20], &later[..]);
    let other = Campaign::new(spec(&WEEKDAYS.replace("seed = 42", "seed = 43")), 0).unwrap();
    assert_ne!(plan(&other, "2026-12-01T00:00:00Z", 200), pa);
}

#[test]
fn slots_stay_inside_the_window_and_under_max_concurrent() {
    let c = Campaign::new(
        spec(&WEEKDAYS.replace("duration = \"1m..5m\"", "duration = \"10m..50m\"")),
        0,
    )
    .unwrap();
    let window = c.window.clone().unwrap();
    let slots = plan(&c, "2026-12-01T00:00:00Z", 2000);
    let mut running: Vec<Timestamp> = Vec::new();
    let (mut outlast, mut concurrent) = (0, 0);
    for s in &slots {
        let o = window.at_or_after(s.start).unwrap();
        assert!(o.start <= s.start && s.start < o.end, "{s:?} outside {o:?}");
        assert!((c.duration.lo..=c.duration.hi).contains(&s.length));
        running.retain(|end| *end > s.start);
        match &s.skipped {
            None => {
                assert!(s.end() <= o.end, "{s:?} ends after {o:?}");
                assert!(running.is_empty(), "two at once: {s:?}");
                running.push(s.end());
            }
            Some(Skip::OutlastsWindow) => {
                assert!(s.end() > o.end);
                outlast += 1;
            }
            Some(Skip::MaxConcurrent(1)) => concurrent += 1,
            Some(other) => panic!("{other:?}"),
        }
    }
    // 50-minute experiments every 15-45 minutes: both reasons come up.
    assert!(outlast > 0 && concurrent > 0, "{outlast} {concurrent}");
    // Weekdays only: 2026-12-05 and 06 are a weekend.
    assert!(
        slots
            .iter()
            .all(|s| !(ts("2026-12-05T00:00:00Z")..ts("2026-12-07T00:00:00Z")).contains(&s.start))
    );
}

#[test]
fn gaps_are_drawn_from_every() {
    let c = Campaign::new(spec(WEEKDAYS), 0).unwrap();
    let slots = plan(&c, "2026-12-01T00:00:00Z", 500);
    let window = c.window.clone().unwrap();
    let mut first_of_day = 0;
    for pair in slots.windows(2) {
        let gap = Duration::try_from(pair[1].start - pair[0].start).unwrap();
        if window.at_or_after(pair[0].start) == window.at_or_after(pair[1].start) {
            assert!((c.every.lo..=c.every.hi).contains(&gap), "{gap:?}");
        } else {
            first_of_day += 1;
        }
    }
    assert!(first_of_day > 10);
}

/// Pearson's chi-squared statistic of `counts` against `weights`.
fn chi_squared(counts: &[u64], weights: &[u32]) -> f64 {
    let n: u64 = counts.iter().sum();
    let total: u32 = weights.iter().sum();
    counts
        .iter()
        .zip(weights)
        .map(|(&c, &w)| {
            let expected = n as f64 * f64::from(w) / f64::from(total);
            (c as f64 - expected).powi(2) / expected
        })
        .sum()
}

#[test]
fn targets_and_faults_follow_their_weights() {
    let text = r#"
name = "weights"
every = "1s..2s"
duration = "1s"
targets = ["netns=/a", { weight = 2, target = "netns=/b" }, { weight = 5, target = "netns=/c" }]
iface = "eth0"
faults = [{ weight = 3, rule = "drop=10%" }, { rule = "drop=20%" }]
seed = 7
"#;
    let c = Campaign::new(spec(text), 0).unwrap();
    // 20,000 draws: an expected count of at least 2,500 in every cell.
    let slots = plan(&c, "2026-12-01T00:00:00Z", 20_000);
    let (mut targets, mut faults) = ([0u64; 3], [0u64; 2]);
    for s in &slots {
        targets[s.target] += 1;
        faults[s.fault] += 1;
    }
    // Critical values at p = 0.001: 13.82 for 2 degrees of freedom, 10.83 for 1.
    let (t, f) = (
        chi_squared(&targets, &[1, 2, 5]),
        chi_squared(&faults, &[3, 1]),
    );
    assert!(t < 13.82, "targets {targets:?}: chi-squared {t:.2}");
    assert!(f < 10.83, "faults {faults:?}: chi-squared {f:.2}");
    // And it can fail: the same counts against the wrong weights.
    assert!(chi_squared(&targets, &[1, 1, 1]) > 100.0);
    // Without a window, max_concurrent holds across UTC midnight too.
    let mut last_end = Timestamp::MIN;
    for s in slots.iter().filter(|s| s.skipped.is_none()) {
        assert!(s.start >= last_end, "{s:?}");
        last_end = s.end();
    }
}

#[test]
fn errors_name_the_field() {
    let err = |text: &str| Campaign::new(spec(text), 0).unwrap_err().to_string();
    assert_eq!(
        err(&WEEKDAYS.replace("15m..45m", "45m..15m")),
        "every: '45m..15m': the upper end is below the lower"
    );
    assert_eq!(
        err(&WEEKDAYS.replace("15m..45m", "500ms..2s")),
        "every: 500ms is shorter than the minimum 1s (a campaign's experiments are at least a \
         second apart and long)"
    );
    assert_eq!(
        err(&WEEKDAYS.replace("reset=yes", "reset=maybe")),
        format!(
            "faults[1].rule: {}",
            "proto=tcp dport=6379 reset=maybe conn-p=20%"
                .parse::<Rule>()
                .unwrap_err()
        )
    );
    assert!(
        err(&WEEKDAYS.replace("container=cart-*", "vm=cart")).starts_with("targets[0]: target: "),
        "{}",
        err(&WEEKDAYS.replace("container=cart-*", "vm=cart"))
    );
    assert_eq!(
        err(&WEEKDAYS.replace("Europe/Berlin", "Europe/Atlantis")),
        "window: 'Europe/Atlantis' is not a time zone (IANA names: Europe/Berlin, UTC)"
    );
    assert_eq!(
        err(&WEEKDAYS.replace("weight = 3", "weight = 0")),
        "faults[0].weight: at least 1"
    );
    let probe = format!("{WEEKDAYS}stop_conditions = [{{ kind = \"http\", url = \"ftp://x\" }}]\n");
    assert!(
        err(&probe).starts_with("stop_conditions[0]"),
        "{}",
        err(&probe)
    );
    // A weighted target takes exactly weight and target.
    let extra = WEEKDAYS.replace("weight = 2, target", "weight = 2, colour = \"red\", target");
    assert!(toml::from_str::<CampaignSpec>(&extra).is_err());
    assert_eq!(
        err(&WEEKDAYS.replace("weekday-chaos", &"x".repeat(41))),
        "name: longer than 40 characters (its experiments add the start time)"
    );
}
