//! `/v1/plugins`: the catalog.

use axum::Json;
use axum::extract::{Path, State};
use gleaner_common::plugin::PluginInfo;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::problem::{self, ApiError, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
}

/// The official plugins.
#[derive(Debug, Serialize, ToSchema)]
struct PluginList {
    items: Vec<PluginInfo>,
}

/// Lists the plugins of the catalog.
#[utoipa::path(
    get, path = "/v1/plugins", operation_id = "list_plugins", tag = "plugins",
    responses(
        (status = 200, description = "Every official plugin", body = PluginList),
    ),
)]
async fn list(State(state): State<AppState>) -> Json<PluginList> {
    Json(PluginList {
        items: state.catalog.official().to_vec(),
    })
}

/// One plugin, with its versions and the JSON Schema of a collector's `options`.
#[utoipa::path(
    get, path = "/v1/plugins/{id}", operation_id = "get_plugin", tag = "plugins",
    params(("id" = String, Path, description = "The plugin's id", example = "demo")),
    responses(
        (status = 200, description = "The plugin", body = PluginInfo),
        (status = 404, description = "No plugin with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
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
