//! `/v1/resources`.

use axum::Json;
use axum::extract::{Path, State};
use gleaner_common::id::{CollectorId, ProjectId, ResourceId, ServiceAccountId};
use gleaner_common::model::ResourceState;
use gleaner_common::store::resource::{self, ChangePage, Filter, Page, Resource};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiQuery, Auth, page_limit, parse_id};
use crate::problem::{self, ApiError, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(changes))
}

/// Resources per page unless asked otherwise.
const DEFAULT_LIMIT: u64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the resources this collector stored.
    collector_id: Option<CollectorId>,
    /// Only resources of this type, e.g. `compute.instance`.
    resource_type: Option<String>,
    /// Only the resources of this project.
    project_id: Option<ProjectId>,
    /// Only the resources found with this service account.
    service_account_id: Option<ServiceAccountId>,
    /// Only resources in this state.
    state: Option<ResourceState>,
    /// Resources per page, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// The previous page's `next_cursor`.
    cursor: Option<ResourceId>,
}

/// Lists resources, a page at a time in id order.
#[utoipa::path(
    get, path = "/v1/resources", operation_id = "list_resources", tag = "resources",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of resources", body = Page),
        (status = 400, description = "An invalid or unknown query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page>> {
    let limit = page_limit(q.limit, DEFAULT_LIMIT)?;
    let filter = Filter {
        collector_id: q.collector_id,
        resource_type: q.resource_type,
        project_id: q.project_id,
        projects: auth.projects().map(<[_]>::to_vec),
        service_account_id: q.service_account_id,
        state: q.state,
    };
    Ok(Json(
        resource::list(&state.db, auth.domain(), &filter, q.cursor, limit).await?,
    ))
}

/// A resource the key sees: 404 for one outside its projects, as for another domain's.
pub(crate) async fn visible(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Resource> {
    let id = parse_id("resource", id)?;
    let r = resource::get(&state.db, auth.domain(), id).await?;
    if !auth.sees(r.project_id) {
        return Err(ApiError::not_found("resource", id));
    }
    Ok(r)
}

/// One resource.
#[utoipa::path(
    get, path = "/v1/resources/{id}", operation_id = "get_resource", tag = "resources",
    params(("id" = ResourceId, Path, description = "The resource's id")),
    responses(
        (status = 200, description = "The resource", body = Resource),
        (status = 404, description = "No resource with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn show(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Resource>> {
    Ok(Json(visible(&state, &auth, &id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ChangesQuery {
    /// Changes per page, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// The previous page's `next_cursor`.
    cursor: Option<i64>,
}

/// A resource's history, oldest first.
///
/// `kind` is CREATED, UPDATED (with `diff`) or DELETED; `job_id` is the job that caused it.
#[utoipa::path(
    get,
    path = "/v1/resources/{id}/changes",
    operation_id = "list_resource_changes",
    tag = "resources",
    params(("id" = ResourceId, Path, description = "The resource's id"), ChangesQuery),
    responses(
        (status = 200, description = "A page of the resource's changes", body = ChangePage),
        (status = 400, description = "An invalid or unknown query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No resource with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn changes(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> ApiResult<Json<ChangePage>> {
    let limit = page_limit(q.limit, DEFAULT_LIMIT)?;
    let r = visible(&state, &auth, &id).await?;
    Ok(Json(
        resource::changes(&state.db, auth.domain(), r.id, q.cursor, limit).await?,
    ))
}
