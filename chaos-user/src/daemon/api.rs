//! The control API: HTTP/JSON, described in `docs/openapi.json`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        Path, Request, State,
        rejection::{JsonRejection, PathRejection},
    },
    http::{Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::json;

use super::state::{ApiError, Manager, Source};
use crate::experiment::{ExperimentError, ExperimentSpec};

/// Who is on the other end of an API connection, for the audit trail.
#[derive(Clone, Debug)]
pub struct Peer(String);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        // The kernel's word for the client's uid (SO_PEERCRED), not the client's.
        Self(match stream.io().peer_cred() {
            Ok(cred) => format!("uid {}", cred.uid()),
            Err(_) => "uid ?".to_owned(),
        })
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(_: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        // Every request on TCP carries the bearer token (the middleware checks it).
        Self("token".to_owned())
    }
}

/// The caller of a request: its connection's [`Peer`] (`unknown` without connection info, as in
/// tests that call the router directly).
pub(super) struct Who(pub(super) String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<Peer>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.0.clone());
        Ok(Self(peer))
    }
}

#[derive(Clone)]
struct App {
    manager: Arc<Manager>,
    started: std::time::SystemTime,
}

/// The API's routes. With `token`, every request must carry `Authorization: Bearer <token>`.
pub fn router(manager: Arc<Manager>, token: Option<String>) -> Router {
    let app = App {
        manager: manager.clone(),
        started: std::time::SystemTime::now(),
    };
    let router = Router::new()
        .route("/v1/experiments", get(list).post(create))
        .route(
            "/v1/experiments/{name}",
            get(fetch).put(replace).delete(remove),
        )
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route("/v1/status", get(status))
        .route("/v1/halt", post(halt))
        .route("/v1/unhalt", post(unhalt))
        .route("/v1/history", get(history))
        .route("/metrics", get(metrics))
        .with_state(app)
        .merge(super::campaign_api::routes(manager))
        // Every answer is JSON as documented, also for a path or method the API does not serve.
        .fallback(no_such_path)
        .method_not_allowed_fallback(method_not_allowed);
    match token {
        Some(token) => router.layer(middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move { bearer(&token, req, next).await }
        })),
        None => router,
    }
}

/// `/metrics` alone, read-only and without a token: for a Prometheus scraping the node agent.
pub fn metrics_router(manager: Arc<Manager>) -> Router {
    let app = App {
        manager,
        started: std::time::SystemTime::now(),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(no_such_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn bearer(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    // subtle's constant-time compare: no early exit on the first differing byte.
    let ok =
        given.is_some_and(|g| subtle::ConstantTimeEq::ct_eq(g.as_bytes(), token.as_bytes()).into());
    if ok {
        next.run(req).await
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "a valid bearer token is needed (Authorization: Bearer <token>)",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

/// The token of an `Authorization` value: the scheme name is case-insensitive (RFC 9110 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

async fn no_such_path(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "path",
        &format!("no such path: {} (see docs/openapi.json)", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    // The router adds the Allow header to this answer.
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
        &format!("{} does not serve {method}", uri.path()),
    )
}

/// A name the router could not decode (percent-encoding that is not UTF-8): no experiment can
/// have it, so 404, as JSON.
pub(super) fn bad_path(rejection: PathRejection) -> Response {
    error(StatusCode::NOT_FOUND, "name", &rejection.body_text())
}

fn error(status: StatusCode, field: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "field": field }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Invalid(ExperimentError { field, message }) => {
                error(StatusCode::UNPROCESSABLE_ENTITY, &field, &message)
            }
            ApiError::NotFound(name) => error(
                StatusCode::NOT_FOUND,
                "name",
                &format!("no experiment named '{name}'"),
            ),
            ApiError::Conflict(name) => error(
                StatusCode::CONFLICT,
                "name",
                &format!("an experiment named '{name}' exists (PUT replaces it)"),
            ),
            ApiError::Internal(message) => error(StatusCode::INTERNAL_SERVER_ERROR, "", &message),
            halted @ ApiError::Halted(_) => error(StatusCode::CONFLICT, "", &halted.to_string()),
            ApiError::NoCampaign(name) => error(
                StatusCode::NOT_FOUND,
                "name",
                &format!("no campaign named '{name}'"),
            ),
        }
    }
}

/// A body that is not an experiment: 400, naming the field serde complained about.
pub(super) fn bad_body(rejection: JsonRejection) -> Response {
    let text = rejection.body_text();
    let field = text
        .split('`')
        .nth(1)
        .filter(|_| text.contains("field"))
        .unwrap_or("body");
    error(StatusCode::BAD_REQUEST, field, &text)
}

async fn list(State(app): State<App>) -> Result<Response, ApiError> {
    Ok(Json(app.manager.list().await?).into_response())
}

async fn create(
    State(app): State<App>,
    Who(who): Who,
    body: Result<Json<ExperimentSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = match body {
        Ok(b) => b,
        Err(r) => return Ok(bad_body(r)),
    };
    let (_, view) = app.manager.put(spec, Source::Api, false, &who).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn replace(
    State(app): State<App>,
    Who(who): Who,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ExperimentSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    let Json(spec) = match body {
        Ok(b) => b,
        Err(r) => return Ok(bad_body(r)),
    };
    if spec.name != name {
        return Err(ApiError::Invalid(ExperimentError::new(
            "name",
            format!("the body names '{}' but the path '{name}'", spec.name),
        )));
    }
    // Answered from the state this change produced: a delete right after it cannot turn an
    // applied change into a 404.
    let (created, view) = app.manager.put(spec, Source::Api, true, &who).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(view)).into_response())
}

async fn fetch(
    State(app): State<App>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    Ok(Json(app.manager.get(&name).await?).into_response())
}

async fn remove(
    State(app): State<App>,
    Who(who): Who,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    app.manager.delete(&name, &who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pause(State(app): State<App>, Who(who): Who) -> Result<Response, ApiError> {
    app.manager.set_paused(true, &who).await?;
    Ok(Json(app.manager.status().await).into_response())
}

async fn resume(State(app): State<App>, Who(who): Who) -> Result<Response, ApiError> {
    app.manager.set_paused(false, &who).await?;
    Ok(Json(app.manager.status().await).into_response())
}

/// Why a halt was asked for (the body is optional).
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HaltBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn halt(
    State(app): State<App>,
    Who(who): Who,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: none, or `{"reason": "..."}`.
    let given = if body.iter().all(u8::is_ascii_whitespace) {
        HaltBody::default()
    } else {
        match serde_json::from_slice::<HaltBody>(&body) {
            Ok(b) => b,
            Err(e) => return Ok(error(StatusCode::BAD_REQUEST, "reason", &e.to_string())),
        }
    };
    if given
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 1024)
    {
        return Err(ApiError::Invalid(ExperimentError::new(
            "reason",
            "at most 1024 characters",
        )));
    }
    let reason = given
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("halted by {who}"));
    app.manager.halt(&who, &reason).await?;
    Ok(Json(app.manager.status().await).into_response())
}

async fn unhalt(State(app): State<App>, Who(who): Who) -> Response {
    app.manager.unhalt(&who).await;
    Json(app.manager.status().await).into_response()
}

async fn history(State(app): State<App>) -> Response {
    Json(app.manager.history()).into_response()
}

async fn status(State(app): State<App>) -> Response {
    Json(app.manager.status().await).into_response()
}

type Labels = Vec<(String, String)>;

/// Prometheus text: per-experiment, per-rule counters and the daemon's health.
async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    let views = app.manager.list().await?;
    let status = app.manager.status().await;
    let mut registry = Registry::default();
    super::campaigns::metrics(&app.manager.list_campaigns(), &mut registry);
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let matched = counter(
        &mut registry,
        "chaos_matched_packets",
        "Packets a rule matched",
    );
    let matched_bytes = counter(&mut registry, "chaos_matched_bytes", "Bytes a rule matched");
    let dropped = counter(
        &mut registry,
        "chaos_dropped_packets",
        "Packets a rule dropped",
    );
    let delayed = counter(
        &mut registry,
        "chaos_delayed_packets",
        "Packets a rule delayed",
    );
    let rate_dropped = counter(
        &mut registry,
        "chaos_rate_dropped_packets",
        "Packets dropped because a rule's rate queue was full",
    );
    let conn_families = [
        (
            "chaos_conns_seen",
            "Connections a connection rule saw begin",
        ),
        (
            "chaos_conns_chosen",
            "Connections chosen for a rule's faults",
        ),
        (
            "chaos_conns_refused",
            "Connection attempts answered with a RST",
        ),
        (
            "chaos_conns_reset",
            "Connections aborted with a RST to both ends",
        ),
        (
            "chaos_conns_hung",
            "Connections whose packets are lost from then on",
        ),
        (
            "chaos_conn_dropped_packets",
            "Packets lost because their connection hung or was reset",
        ),
        ("chaos_duplicated_packets", "Packets a rule sent twice"),
        (
            "chaos_corrupted_packets",
            "Packets with a payload bit flipped",
        ),
    ]
    .map(|(name, help)| counter(&mut registry, name, help));
    for v in &views {
        for c in &v.counters {
            let labels: Labels = vec![
                ("experiment".into(), v.spec.name.clone()),
                ("rule".into(), c.rule.to_string()),
            ];
            matched.get_or_create(&labels).inc_by(c.matched_packets);
            matched_bytes.get_or_create(&labels).inc_by(c.matched_bytes);
            dropped.get_or_create(&labels).inc_by(c.dropped_packets);
            delayed.get_or_create(&labels).inc_by(c.delayed_packets);
            rate_dropped
                .get_or_create(&labels)
                .inc_by(c.rate_dropped_packets);
            let values = [
                c.conns_seen,
                c.conns_chosen,
                c.conns_refused,
                c.conns_reset,
                c.conns_hung,
                c.conn_dropped_packets,
                c.duplicated_packets,
                c.corrupted_packets,
            ];
            for (family, value) in conn_families.iter().zip(values) {
                family.get_or_create(&labels).inc_by(value);
            }
        }
    }
    let failed = Family::<Labels, Gauge>::default();
    registry.register(
        "chaos_experiment_failed",
        "1 for an experiment whose deferred start was refused, with the reason",
        failed.clone(),
    );
    for v in &views {
        if let Some(reason) = &v.reason {
            let labels: Labels = vec![
                ("experiment".into(), v.spec.name.clone()),
                ("reason".into(), reason.clone()),
            ];
            failed.get_or_create(&labels).set(1);
        }
    }
    // Per workload and per phase: what a dashboard groups faults by.
    let targets = Family::<Labels, Gauge>::default();
    registry.register(
        "chaos_target_attached",
        "1 for each workload an experiment's target resolved to and attached (0: refused)",
        targets.clone(),
    );
    let phases = Family::<Labels, Gauge>::default();
    registry.register(
        "chaos_experiments_by_phase",
        "Experiments held, by phase",
        phases.clone(),
    );
    for v in &views {
        for t in &v.targets {
            let labels: Labels = vec![
                ("experiment".into(), v.spec.name.clone()),
                ("workload".into(), t.workload.clone()),
                ("iface".into(), t.iface.clone()),
            ];
            targets
                .get_or_create(&labels)
                .set(i64::from(t.state == "attached"));
        }
        let phase = serde_json::to_value(v.phase)
            .ok()
            .and_then(|p| p.as_str().map(str::to_owned))
            .unwrap_or_default();
        phases.get_or_create(&vec![("phase".into(), phase)]).inc();
    }
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        registry.register(name, help, g);
    };
    gauge(&mut registry, "chaos_up", "1 while the daemon serves", 1);
    gauge(
        &mut registry,
        "chaos_halted",
        "1 while the daemon is halted (chaos halt): no experiment is accepted",
        i64::from(status.halted.is_some()),
    );
    gauge(
        &mut registry,
        "chaos_paused",
        "1 while every fault is paused",
        i64::from(status.paused),
    );
    gauge(
        &mut registry,
        "chaos_experiments",
        "Experiments held",
        status.experiments as i64,
    );
    gauge(
        &mut registry,
        "chaos_interfaces",
        "Interfaces with chaos attached",
        status.interfaces.len() as i64,
    );
    let started = app
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    gauge(
        &mut registry,
        "chaos_start_time_seconds",
        "When the daemon started (Unix time)",
        started,
    );
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_scheme_name_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "  bEaReR   abc"] {
            assert_eq!(bearer_token(value), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearerabc", "Bearer", "abc"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
