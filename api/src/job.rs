//! `/v1/jobs`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use gleaner_common::id::CollectorId;
use gleaner_common::store::job::{self, Job};
use gleaner_common::store::task;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{ApiQuery, Tenant, page_limit, parse_id};
use crate::problem::ApiResult;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/tasks", get(tasks))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    collector_id: Option<CollectorId>,
    limit: Option<u64>,
}

async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit, 50)?;
    let items = job::list(&state.db, domain, q.collector_id, limit).await?;
    Ok(Json(json!({ "items": items })))
}

async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let id = parse_id("job", &id)?;
    Ok(Json(job::get(&state.db, domain, id).await?))
}

async fn tasks(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id("job", &id)?;
    // 404 for an unknown job rather than an empty list.
    job::get(&state.db, domain, id).await?;
    let items = task::list(&state.db, domain, id).await?;
    Ok(Json(json!({ "items": items })))
}
