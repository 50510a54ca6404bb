//! When a campaign may run: `Mon-Fri 10:00-16:00 Europe/Berlin`.
//!
//! Days (`Mon-Fri`, `Sat,Sun`, `*`), a local time range (`HH:MM[:SS]-HH:MM[:SS]`, overnight when
//! the end is not after the start) and an IANA time zone (UTC when left out). Each day the
//! window opens is one *occurrence*: the unit a campaign's schedule is drawn in, so every node
//! that reads the same text finds the same occurrences.

use std::fmt;

use jiff::{
    Timestamp, ToSpan as _,
    civil::{Date, Time, Weekday},
    tz::TimeZone,
};

/// A parsed window.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    text: String,
    /// Monday first.
    days: [bool; 7],
    start: Time,
    end: Time,
    tz: TimeZone,
}

/// One opening of a window, as instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub start: Timestamp,
    pub end: Timestamp,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (days, range, zone) = match parts[..] {
            [d, r] => (d, r, "UTC"),
            [d, r, z] => (d, r, z),
            _ => {
                return Err(format!(
                    "'{text}' is not a window: DAYS START-END [ZONE], e.g. \
                     'Mon-Fri 10:00-16:00 Europe/Berlin'"
                ));
            }
        };
        let days = parse_days(days)?;
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| format!("'{range}' is not a time range: START-END, e.g. 10:00-16:00"))?;
        let (start, end) = (parse_time(start)?, parse_time(end)?);
        if start == end {
            return Err(format!("'{range}' opens and closes at the same time"));
        }
        let tz = TimeZone::get(zone)
            .map_err(|_| format!("'{zone}' is not a time zone (IANA names: Europe/Berlin, UTC)"))?;
        Ok(Self {
            text: text.to_owned(),
            days,
            start,
            end,
            tz,
        })
    }

    /// Open all day, every day, in UTC: the occurrences of a campaign without a window.
    pub fn always() -> Self {
        Self {
            text: "* 00:00-00:00 UTC".into(),
            days: [true; 7],
            start: Time::midnight(),
            end: Time::midnight(),
            tz: TimeZone::UTC,
        }
    }

    /// The occurrence opening on local `date`, if the window opens that day.
    fn on(&self, date: Date) -> Option<Occurrence> {
        if !self.days[weekday_index(date.weekday())] {
            return None;
        }
        let start = date
            .to_datetime(self.start)
            .to_zoned(self.tz.clone())
            .ok()?;
        let end_date = if self.end <= self.start {
            date.tomorrow().ok()?
        } else {
            date
        };
        let end = end_date
            .to_datetime(self.end)
            .to_zoned(self.tz.clone())
            .ok()?;
        Some(Occurrence {
            start: start.timestamp(),
            end: end.timestamp(),
        })
    }

    /// The occurrence open at `t`, or else the next one to open; none within two weeks means
    /// none ever (a window opens at least weekly).
    pub fn at_or_after(&self, t: Timestamp) -> Option<Occurrence> {
        let today = t.to_zoned(self.tz.clone()).date();
        // Yesterday's occurrence may run overnight into today.
        let mut date = today.yesterday().ok()?;
        for _ in 0..16 {
            if let Some(o) = self.on(date)
                && o.end > t
            {
                return Some(o);
            }
            date = date.checked_add(1.day()).ok()?;
        }
        None
    }

    /// The occurrence opened last before `o` (for what may still run into it).
    pub fn before(&self, o: Occurrence) -> Option<Occurrence> {
        let mut date = o.start.to_zoned(self.tz.clone()).date().yesterday().ok()?;
        for _ in 0..8 {
            if let Some(p) = self.on(date)
                && p.start < o.start
            {
                return Some(p);
            }
            date = date.yesterday().ok()?;
        }
        None
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn weekday_index(d: Weekday) -> usize {
    d.to_monday_zero_offset() as usize
}

fn day(name: &str) -> Result<usize, String> {
    let lower = name.to_ascii_lowercase();
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    (0..7)
        .find(|&i| lower == DAYS[i] || lower == FULL[i])
        .ok_or_else(|| format!("'{name}' is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    if text == "*" || text.eq_ignore_ascii_case("daily") {
        return Ok([true; 7]);
    }
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                // Fri-Mon wraps over the weekend.
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Ok(days)
}

fn parse_time(text: &str) -> Result<Time, String> {
    let bad = || format!("'{text}' is not a time of day (HH:MM or HH:MM:SS)");
    let fields: Vec<i8> = text
        .split(':')
        .map(|f| {
            (f.len() == 2 && f.bytes().all(|b| b.is_ascii_digit()))
                .then(|| f.parse().ok())
                .flatten()
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    let (h, m, s) = match fields[..] {
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => return Err(bad()),
    };
    // 24:00 closes at midnight.
    if (h, m, s) == (24, 0, 0) {
        return Ok(Time::midnight());
    }
    Time::new(h, m, s, 0).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn weekday_hours_in_berlin() {
        let w = Window::parse("Mon-Fri 10:00-16:00 Europe/Berlin").unwrap();
        // Wednesday 2026-12-02, 09:00 UTC is 10:00 in Berlin (CET, UTC+1).
        let o = w.at_or_after(ts("2026-12-02T08:00:00Z")).unwrap();
        assert_eq!(o.start, ts("2026-12-02T09:00:00Z"));
        assert_eq!(o.end, ts("2026-12-02T15:00:00Z"));
        // Inside it: the same occurrence.
        assert_eq!(w.at_or_after(ts("2026-12-02T12:00:00Z")), Some(o));
        // Friday evening: next Monday.
        let mon = w.at_or_after(ts("2026-12-04T18:00:00Z")).unwrap();
        assert_eq!(mon.start, ts("2026-12-07T09:00:00Z"));
        assert_eq!(w.before(mon).unwrap().start, ts("2026-12-04T09:00:00Z"));
        // Summer time: 08:00 UTC.
        let june = w.at_or_after(ts("2026-06-01T00:00:00Z")).unwrap();
        assert_eq!(june.start, ts("2026-06-01T08:00:00Z"));
    }

    #[test]
    fn overnight_and_seconds() {
        let w = Window::parse("Sat,Sun 22:00:30-02:00").unwrap();
        // Sunday 2026-12-06 01:00 UTC: inside Saturday's occurrence.
        let o = w.at_or_after(ts("2026-12-06T01:00:00Z")).unwrap();
        assert_eq!(o.start, ts("2026-12-05T22:00:30Z"));
        assert_eq!(o.end, ts("2026-12-06T02:00:00Z"));
        let always = Window::always();
        let day = always.at_or_after(ts("2026-12-06T01:00:00Z")).unwrap();
        assert_eq!(
            (day.start, day.end),
            (ts("2026-12-06T00:00:00Z"), ts("2026-12-07T00:00:00Z"))
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            Window::parse("Mon-Fri 10:00-16:00 Mars/Olympus").unwrap_err(),
            "'Mars/Olympus' is not a time zone (IANA names: Europe/Berlin, UTC)"
        );
        assert_eq!(
            Window::parse("Mon-Fry 10:00-16:00").unwrap_err(),
            "'Fry' is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
        );
        assert_eq!(
            Window::parse("Mon 10-16").unwrap_err(),
            "'10' is not a time of day (HH:MM or HH:MM:SS)"
        );
        assert_eq!(
            Window::parse("Mon 10:00-10:00").unwrap_err(),
            "'10:00-10:00' opens and closes at the same time"
        );
        assert!(
            Window::parse("weekdays")
                .unwrap_err()
                .contains("not a window")
        );
    }
}
