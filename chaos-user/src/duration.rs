//! The one duration syntax of chaos: every flag (`--duration`, `--lease`, `--max-duration`),
//! every experiment field (`duration`, `start_delay`) and every rule value (`delay=`, `jitter=`)
//! goes through [`parse`], each with the bounds that make sense for it.
//!
//! A duration is one or more `NUMBER UNIT` terms, summed: `50ms`, `1.5s`, `200us`, `1h30m`.
//! humantime alone takes no fractions (`1.5s`), and the rule language always took them.

use std::{fmt, time::Duration};

use thiserror::Error;

/// The range a duration must fall in, with what it is for (used in the error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: Duration,
    pub max: Duration,
    /// Why the minimum is there, for the error: "the lease is renewed every third of it".
    pub why_min: &'static str,
}

impl Bounds {
    /// Zero allowed (a start delay, a jitter).
    pub const ANY: Self = Self {
        min: Duration::ZERO,
        max: TEN_YEARS,
        why_min: "",
    };

    /// Anything longer than zero (a run's or an experiment's duration).
    pub const POSITIVE: Self = Self {
        min: Duration::from_nanos(1),
        max: TEN_YEARS,
        why_min: "a zero-length fault does nothing",
    };

    /// A controller's lease: renewed every third of it, so it must leave time to renew.
    pub const LEASE: Self = Self {
        min: Duration::from_millis(100),
        max: Duration::from_secs(3600),
        why_min: "the lease is renewed every third of it",
    };
}

/// Longer than any experiment anyone means, and far inside the kernel clock's u64 nanoseconds.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("'{0}' is not a duration (examples: 200us, 50ms, 1.5s, 5m, 1h30m)")]
    Syntax(String),
    #[error("{value} is shorter than the minimum {min} ({why})")]
    TooShort {
        value: String,
        min: Pretty,
        why: &'static str,
    },
    #[error("{value} is longer than the maximum {max}")]
    TooLong { value: String, max: Pretty },
}

/// A duration printed as humans write it (`100ms`, `1h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pretty(pub Duration);

impl fmt::Display for Pretty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Parses `text` and checks it against `bounds`.
pub fn parse(text: &str, bounds: Bounds) -> Result<Duration, DurationError> {
    let value = parse_unbounded(text).ok_or_else(|| DurationError::Syntax(text.to_owned()))?;
    if value < bounds.min {
        return Err(DurationError::TooShort {
            value: text.to_owned(),
            min: Pretty(bounds.min),
            why: bounds.why_min,
        });
    }
    if value > bounds.max {
        return Err(DurationError::TooLong {
            value: text.to_owned(),
            max: Pretty(bounds.max),
        });
    }
    Ok(value)
}

/// A clap value parser for a flag with these bounds.
pub fn flag(bounds: Bounds) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| parse(text, bounds).map_err(|e| e.to_string())
}

fn parse_unbounded(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let number: f64 = number.parse().ok()?;
        let seconds_per_unit = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(number * seconds_per_unit).ok()?)?;
        rest = after.trim_start();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_sum_and_take_fractions() {
        let ok = |t: &str| parse(t, Bounds::ANY).unwrap();
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("200us"), Duration::from_micros(200));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1m 30s"), Duration::from_secs(90));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("2ns"), Duration::from_nanos(2));
    }

    #[test]
    fn errors_name_the_value_and_the_bound() {
        let err = |t: &str, b| parse(t, b).unwrap_err().to_string();
        assert_eq!(
            err("soon", Bounds::ANY),
            "'soon' is not a duration (examples: 200us, 50ms, 1.5s, 5m, 1h30m)"
        );
        assert_eq!(
            err("10", Bounds::ANY),
            "'10' is not a duration (examples: 200us, 50ms, 1.5s, 5m, 1h30m)"
        );
        assert_eq!(
            err("0s", Bounds::LEASE),
            "0s is shorter than the minimum 100ms (the lease is renewed every third of it)"
        );
        assert_eq!(
            err("2ns", Bounds::LEASE),
            "2ns is shorter than the minimum 100ms (the lease is renewed every third of it)"
        );
        assert_eq!(
            err("0s", Bounds::POSITIVE),
            "0s is shorter than the minimum 1ns (a zero-length fault does nothing)"
        );
        assert_eq!(err("2h", Bounds::LEASE), "2h is longer than the maximum 1h");
        assert!(err("99999999999999999999d", Bounds::ANY).contains("not a duration"));
    }
}
