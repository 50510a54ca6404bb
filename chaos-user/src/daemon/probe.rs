//! Stop conditions: probes that end an experiment when the system under test is hurt (AWS
//! FIS's stop conditions, the Chaos Toolkit's steady-state hypothesis). A probe that cannot
//! be reached counts as tripped (fail safe) unless its condition says `fail_open`.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::{
    duration::{self, Bounds},
    experiment::ExperimentError,
};

/// One condition, as written in an experiment's `stop_conditions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StopCondition {
    /// GET `url` every `every`; trips on a status outside `status` (default `200-399`), no
    /// answer within `timeout`, or an answer slower than `max_latency`.
    Http {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_latency: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fail_open: bool,
    },
    /// An instant PromQL `query` against the Prometheus HTTP API at `url` every `every`; trips
    /// when its first value is above `above` or below `below`, or when it has no value.
    Prometheus {
        url: String,
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        above: Option<serde_json::Number>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        below: Option<serde_json::Number>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fail_open: bool,
    },
}

/// A condition checked and ready to probe.
#[derive(Clone, Debug)]
pub struct Probe {
    pub every: Duration,
    timeout: Duration,
    fail_open: bool,
    what: What,
}

#[derive(Clone, Debug)]
enum What {
    Http {
        url: hyper::Uri,
        status: (u16, u16),
        max_latency: Option<Duration>,
    },
    Prometheus {
        url: hyper::Uri,
        above: Option<f64>,
        below: Option<f64>,
    },
}

/// Probes at most this often: the faults must go within a second of a trip.
const MIN_EVERY: Bounds = Bounds {
    min: Duration::from_millis(100),
    max: Duration::from_secs(3600),
    why_min: "a probe runs at most every 100ms",
};

impl StopCondition {
    /// Checks the condition (`field` names it in errors, e.g. `stop_conditions[0]`).
    pub fn probe(&self, field: &str) -> Result<Probe, ExperimentError> {
        let err =
            |sub: &str, message: String| ExperimentError::new(format!("{field}.{sub}"), message);
        let dur = |sub: &str, text: &Option<String>, default: Duration| match text {
            Some(t) => duration::parse(t, MIN_EVERY).map_err(|e| err(sub, e.to_string())),
            None => Ok(default),
        };
        let uri = |text: &str| -> Result<hyper::Uri, ExperimentError> {
            let uri: hyper::Uri = text
                .parse()
                .map_err(|e| err("url", format!("not a URL: {e}")))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(err(
                    "url",
                    "expected http://HOST[:PORT]/PATH (https is not supported)".into(),
                ));
            }
            Ok(uri)
        };
        match self {
            Self::Http {
                url,
                every,
                timeout,
                status,
                max_latency,
                fail_open,
            } => {
                let status = match status.as_deref() {
                    None => (200, 399),
                    Some(text) => parse_range(text).ok_or_else(|| {
                        err(
                            "status",
                            format!("expected CODE or LOW-HIGH (200-299), got {text}"),
                        )
                    })?,
                };
                let max_latency = max_latency
                    .as_ref()
                    .map(|t| {
                        duration::parse(t, Bounds::POSITIVE)
                            .map_err(|e| err("max_latency", e.to_string()))
                    })
                    .transpose()?;
                Ok(Probe {
                    every: dur("every", every, Duration::from_secs(1))?,
                    timeout: dur("timeout", timeout, Duration::from_secs(1))?,
                    fail_open: *fail_open,
                    what: What::Http {
                        url: uri(url)?,
                        status,
                        max_latency,
                    },
                })
            }
            Self::Prometheus {
                url,
                query,
                above,
                below,
                every,
                timeout,
                fail_open,
            } => {
                if query.trim().is_empty() {
                    return Err(err("query", "a PromQL query is needed".into()));
                }
                if above.is_none() && below.is_none() {
                    return Err(err("above", "give above, below or both".into()));
                }
                let base = url.trim_end_matches('/');
                let full = format!("{base}/api/v1/query?query={}", encode(query));
                Ok(Probe {
                    every: dur("every", every, Duration::from_secs(1))?,
                    timeout: dur("timeout", timeout, Duration::from_secs(1))?,
                    fail_open: *fail_open,
                    what: What::Prometheus {
                        url: uri(&full)?,
                        above: above.as_ref().and_then(serde_json::Number::as_f64),
                        below: below.as_ref().and_then(serde_json::Number::as_f64),
                    },
                })
            }
        }
    }
}

impl Probe {
    /// Probes every `every` while `alive()` holds: why it tripped first, or `None` once what
    /// it guards is gone.
    pub async fn watch<F: Future<Output = bool>>(
        &self,
        mut alive: impl FnMut() -> F,
    ) -> Option<String> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !alive().await {
                return None;
            }
            if let Some(why) = self.check().await {
                return Some(why);
            }
        }
    }

    /// One probe: why it tripped, or `None` when all is well.
    pub async fn check(&self) -> Option<String> {
        let unreachable = |e: String| (!self.fail_open).then(|| format!("unreachable: {e}"));
        match &self.what {
            What::Http {
                url,
                status,
                max_latency,
            } => {
                let start = Instant::now();
                let (code, _) = match get(url, self.timeout).await {
                    Ok(answer) => answer,
                    Err(e) => return unreachable(format!("GET {url}: {e}")),
                };
                let took = start.elapsed();
                if !(status.0..=status.1).contains(&code) {
                    return Some(format!(
                        "GET {url} answered {code}, outside {}-{}",
                        status.0, status.1
                    ));
                }
                match max_latency {
                    Some(max) if took > *max => Some(format!(
                        "GET {url} took {} ms, over {} ms",
                        took.as_millis(),
                        max.as_millis()
                    )),
                    _ => None,
                }
            }
            What::Prometheus { url, above, below } => {
                let body = match get(url, self.timeout).await {
                    Ok((200, body)) => body,
                    Ok((code, body)) => {
                        return unreachable(format!("Prometheus answered {code}: {body}"));
                    }
                    Err(e) => return unreachable(format!("Prometheus at {url}: {e}")),
                };
                let value = match first_value(&body) {
                    Ok(Some(v)) => v,
                    Ok(None) => return unreachable("the query has no value".into()),
                    Err(e) => return unreachable(e),
                };
                match (above, below) {
                    (Some(a), _) if value > *a => {
                        Some(format!("the query's value {value} is above {a}"))
                    }
                    (_, Some(b)) if value < *b => {
                        Some(format!("the query's value {value} is below {b}"))
                    }
                    _ => None,
                }
            }
        }
    }
}

/// One HTTP/1.1 GET: the status and the body (at most 1 MiB), within `timeout`.
async fn get(url: &hyper::Uri, timeout: Duration) -> Result<(u16, String), String> {
    let exchange = async {
        let host = url.host().ok_or("no host")?;
        let port = url.port_u16().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

/// The first value of an instant query's answer (a vector's first sample, or a scalar).
fn first_value(body: &str) -> Result<Option<f64>, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("the query failed: {}", v["error"]));
    }
    let result = &v["data"]["result"];
    let sample = match v["data"]["resultType"].as_str() {
        Some("vector") => result.get(0).map(|s| &s["value"]),
        Some("scalar") => Some(result),
        other => return Err(format!("expected a vector or a scalar, got {other:?}")),
    };
    Ok(sample
        .and_then(|s| s.get(1))
        .and_then(|n| n.as_str())
        .and_then(|n| n.parse().ok()))
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (100..=599).contains(&lo).then_some(())?;
    (lo <= hi && hi <= 599).then_some((lo, hi))
}

/// Percent-encodes a query parameter's value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_checked_with_their_field_named() {
        let bad = |c: StopCondition| c.probe("stop_conditions[0]").unwrap_err().to_string();
        let http = |url: &str| StopCondition::Http {
            url: url.into(),
            every: None,
            timeout: None,
            status: None,
            max_latency: None,
            fail_open: false,
        };
        assert_eq!(
            bad(http("https://x/")),
            "stop_conditions[0].url: expected http://HOST[:PORT]/PATH (https is not supported)"
        );
        assert!(http("http://127.0.0.1:8080/health").probe("s").is_ok());
        let prom = StopCondition::Prometheus {
            url: "http://127.0.0.1:9090".into(),
            query: "up".into(),
            above: None,
            below: None,
            every: None,
            timeout: None,
            fail_open: false,
        };
        assert_eq!(
            bad(prom),
            "stop_conditions[0].above: give above, below or both"
        );
        assert_eq!(parse_range("200-299"), Some((200, 299)));
        assert_eq!(parse_range("204"), Some((204, 204)));
        assert_eq!(parse_range("299-200"), None);
        assert_eq!(
            encode("sum(rate(x[1m])) > 0"),
            "sum%28rate%28x%5B1m%5D%29%29%20%3E%200"
        );
    }

    #[test]
    fn prometheus_answers_give_their_first_value() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"42.5"]}]}}"#;
        assert_eq!(first_value(vector), Ok(Some(42.5)));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(first_value(empty), Ok(None));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"7"]}}"#;
        assert_eq!(first_value(scalar), Ok(Some(7.0)));
    }
}
