//! `/v1/projects`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gleaner_common::id::ProjectId;
use gleaner_common::model::Name;
use gleaner_common::store::project::{self, Project};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiJson, Tenant, parse_id};
use crate::problem::{self, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
}

/// A new project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    /// 1–255 characters, unique among projects; trimmed.
    #[schema(example = "demo")]
    name: String,
}

/// Creates a project.
#[utoipa::path(
    post, path = "/v1/projects", operation_id = "create_project", tag = "projects",
    request_body = CreateProject,
    responses(
        (status = 201, description = "The new project", body = Project),
        (status = 400, description = "A malformed body or an invalid name",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The name is taken",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn create(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let name = Name::parse("name", &body.name)?;
    let created = project::create(&state.db, domain, name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every project.
#[derive(Debug, Serialize, ToSchema)]
struct ProjectList {
    items: Vec<Project>,
}

/// Lists the projects.
#[utoipa::path(
    get, path = "/v1/projects", operation_id = "list_projects", tag = "projects",
    responses(
        (status = 200, description = "Every project", body = ProjectList),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
) -> ApiResult<Json<ProjectList>> {
    let items = project::list(&state.db, domain).await?;
    Ok(Json(ProjectList { items }))
}

/// One project.
#[utoipa::path(
    get, path = "/v1/projects/{id}", operation_id = "get_project", tag = "projects",
    params(("id" = ProjectId, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The project", body = Project),
        (status = 404, description = "No project with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    let id = parse_id("project", &id)?;
    Ok(Json(project::get(&state.db, domain, id).await?))
}
