//! `/v1/campaigns`: create or replace (PUT), list, get, plan, pause, resume, delete.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};

use serde_json::{Value, json};

use super::{
    api::{Who, bad_body, bad_path},
    state::{ApiError, Manager, Source},
};
use crate::{campaign::CampaignSpec, experiment::ExperimentError};

/// Most slots `plan` shows.
const MAX_PLAN: usize = 1000;

pub fn routes(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/campaigns", get(list))
        .route("/v1/campaigns/{name}", get(fetch).put(put).delete(remove))
        .route("/v1/campaigns/{name}/plan", get(plan))
        .route("/v1/campaigns/{name}/pause", post(pause))
        .route("/v1/campaigns/{name}/resume", post(resume))
        .with_state(manager)
}

type Name = Result<Path<String>, PathRejection>;

async fn list(State(m): State<Arc<Manager>>) -> Response {
    Json(m.list_campaigns()).into_response()
}

async fn fetch(State(m): State<Arc<Manager>>, name: Name) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    Ok(Json(m.get_campaign(&name)?).into_response())
}

#[derive(serde::Deserialize)]
struct PlanQuery {
    count: Option<usize>,
}

async fn plan(
    State(m): State<Arc<Manager>>,
    name: Name,
    query: Result<Query<PlanQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    // A count that is no whole number (`abc`, `-1`, `1.5`, past usize): 400, as JSON like
    // every other answer (axum's own rejection is text/plain).
    let q = match query {
        Ok(Query(q)) => q,
        Err(r) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "count",
                &format!("{}: a whole number from 1 to {MAX_PLAN}", r.body_text()),
            ));
        }
    };
    let count = q.count.unwrap_or(10);
    if !(1..=MAX_PLAN).contains(&count) {
        return Err(ApiError::Invalid(ExperimentError::new(
            "count",
            format!("1 to {MAX_PLAN}"),
        )));
    }
    Ok(Json(m.plan_campaign(&name, count)?).into_response())
}

async fn put(
    State(m): State<Arc<Manager>>,
    Who(who): Who,
    name: Name,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    let spec = match body {
        Ok(Json(b)) => campaign_spec(b),
        Err(r) => return Ok(bad_body(r)),
    };
    let spec = match spec {
        Ok(s) => s,
        Err(response) => return Ok(*response),
    };
    if spec.name != name {
        return Err(ApiError::Invalid(ExperimentError::new(
            "name",
            format!("the body names '{}' but the path '{name}'", spec.name),
        )));
    }
    check(&spec).map_err(ApiError::Invalid)?;
    let (created, view) = m.put_campaign(spec, Source::Api, &who).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(view)).into_response())
}

async fn remove(
    State(m): State<Arc<Manager>>,
    Who(who): Who,
    name: Name,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    m.delete_campaign(&name, &who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pause(
    State(m): State<Arc<Manager>>,
    Who(who): Who,
    name: Name,
) -> Result<Response, ApiError> {
    set_paused(m, who, name, true).await
}

async fn resume(
    State(m): State<Arc<Manager>>,
    Who(who): Who,
    name: Name,
) -> Result<Response, ApiError> {
    set_paused(m, who, name, false).await
}

async fn set_paused(
    m: Arc<Manager>,
    who: String,
    name: Name,
    paused: bool,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
    };
    Ok(Json(m.pause_campaign(&name, paused, &who).await?).into_response())
}

fn error(status: StatusCode, field: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "field": field }))).into_response()
}

/// The body as a campaign, or the 400 answer. A `null` member of the campaign or of a fault
/// means the same as leaving it out, as for experiments; a weighted target is exactly
/// `{"weight", "target"}` (serde's untagged enum would ignore other members).
fn campaign_spec(mut body: Value) -> Result<CampaignSpec, Box<Response>> {
    let drop_nulls = |v: &mut Value| {
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
    };
    drop_nulls(&mut body);
    if let Some(faults) = body.get_mut("faults").and_then(Value::as_array_mut) {
        faults.iter_mut().for_each(drop_nulls);
    }
    if let Some(targets) = body.get("targets").and_then(Value::as_array) {
        for (i, t) in targets.iter().enumerate() {
            let weighted = |o: &serde_json::Map<String, Value>| {
                o.len() == 2
                    && o.get("target").is_some_and(Value::is_string)
                    && o.get("weight")
                        .and_then(Value::as_u64)
                        .is_some_and(|w| u32::try_from(w).is_ok())
            };
            let ok = match t {
                Value::String(_) => true,
                Value::Object(o) => weighted(o),
                _ => false,
            };
            if !ok {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    &format!("targets[{i}]"),
                    "expected a target (\"container=cart-*\") or exactly \
                     {\"weight\": 0 to 4294967295, \"target\": \"...\"}",
                )));
            }
        }
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| {
        Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            &format!("re-encoding the body: {e}"),
        ))
    })?;
    Json::<CampaignSpec>::from_bytes(&bytes)
        .map(|Json(spec)| spec)
        .map_err(|r| Box::new(bad_body(r)))
}

/// What the API refuses beyond `Campaign::new` (422, field named): an interface name that cannot
/// be one, a namespace that is no Kubernetes name, stop conditions that do not parse or are
/// more than 8 (as for experiments).
fn check(spec: &CampaignSpec) -> Result<(), ExperimentError> {
    let iface_ok = spec.iface.len() <= 15
        && spec
            .iface
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/');
    if !iface_ok {
        return Err(ExperimentError::new(
            "iface",
            "not an interface name (at most 15 printable ASCII characters, no '/' or space)",
        ));
    }
    if let Some(ns) = &spec.namespace {
        let ok = (1..=63).contains(&ns.len())
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !ok {
            return Err(ExperimentError::new(
                "namespace",
                "not a Kubernetes namespace name (1-63 lower-case letters, digits and '-')",
            ));
        }
    }
    if spec.stop_conditions.len() > 8 {
        return Err(ExperimentError::new("stop_conditions", "at most 8"));
    }
    for (i, c) in spec.stop_conditions.iter().enumerate() {
        c.probe(&format!("stop_conditions[{i}]"))?;
    }
    Ok(())
}
