//! `/v1/resources`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use gleaner_common::id::{CollectorId, ProjectId, ResourceId, ServiceAccountId};
use gleaner_common::model::ResourceState;
use gleaner_common::store::resource::{self, ChangePage, Filter, Page, Resource};
use serde::Deserialize;

use crate::AppState;
use crate::extract::{ApiQuery, Tenant, page_limit, parse_id};
use crate::problem::ApiResult;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/resources", get(list))
        .route("/v1/resources/{id}", get(show))
        .route("/v1/resources/{id}/changes", get(changes))
}

/// Resources per page unless asked otherwise.
const DEFAULT_LIMIT: u64 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    collector_id: Option<CollectorId>,
    resource_type: Option<String>,
    project_id: Option<ProjectId>,
    service_account_id: Option<ServiceAccountId>,
    state: Option<ResourceState>,
    limit: Option<u64>,
    cursor: Option<ResourceId>,
}

async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page>> {
    let limit = page_limit(q.limit, DEFAULT_LIMIT)?;
    let filter = Filter {
        collector_id: q.collector_id,
        resource_type: q.resource_type,
        project_id: q.project_id,
        service_account_id: q.service_account_id,
        state: q.state,
    };
    Ok(Json(
        resource::list(&state.db, domain, &filter, q.cursor, limit).await?,
    ))
}

async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Resource>> {
    let id = parse_id("resource", &id)?;
    Ok(Json(resource::get(&state.db, domain, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    limit: Option<u64>,
    cursor: Option<i64>,
}

/// A resource's history, oldest first.
async fn changes(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> ApiResult<Json<ChangePage>> {
    let id = parse_id("resource", &id)?;
    let limit = page_limit(q.limit, DEFAULT_LIMIT)?;
    Ok(Json(
        resource::changes(&state.db, domain, id, q.cursor, limit).await?,
    ))
}
