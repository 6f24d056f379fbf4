//! `/v1/plugins`: the catalog.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use gleaner_common::plugin::PluginInfo;
use serde_json::{Value, json};

use crate::AppState;
use crate::problem::{ApiError, ApiResult};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/plugins", get(list))
        .route("/v1/plugins/{id}", get(show))
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "items": state.catalog.official() }))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PluginInfo>> {
    state
        .catalog
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("plugin", id))
}
