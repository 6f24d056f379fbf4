//! `/v1/projects`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use gleaner_common::model::Name;
use gleaner_common::store::project::{self, Project};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{ApiJson, Tenant, parse_id};
use crate::problem::ApiResult;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/projects", get(list).post(create))
        .route("/v1/projects/{id}", get(show))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    name: String,
}

async fn create(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let name = Name::parse("name", &body.name)?;
    let created = project::create(&state.db, domain, name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list(State(state): State<AppState>, Tenant(domain): Tenant) -> ApiResult<Json<Value>> {
    let items = project::list(&state.db, domain).await?;
    Ok(Json(json!({ "items": items })))
}

async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    let id = parse_id("project", &id)?;
    Ok(Json(project::get(&state.db, domain, id).await?))
}
