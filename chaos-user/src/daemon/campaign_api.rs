//! `/v1/campaigns`: create or replace (PUT), list, get, plan, pause, resume, delete.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};

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
    Query(q): Query<PlanQuery>,
) -> Result<Response, ApiError> {
    let Path(name) = match name {
        Ok(n) => n,
        Err(r) => return Ok(bad_path(r)),
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
    body: Result<Json<CampaignSpec>, JsonRejection>,
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
