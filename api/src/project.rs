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
use crate::extract::{ApiJson, Auth, Tenant, parse_id};
use crate::problem::{self, ApiError, ApiResult, Problem};

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
async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<ProjectList>> {
    let items = project::list(&state.db, auth.domain(), auth.projects()).await?;
    Ok(Json(ProjectList { items }))
}

/// A project the key sees: 404 for one outside its projects, as for another domain's.
pub(crate) async fn visible(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Project> {
    let id: ProjectId = parse_id("project", id)?;
    if !auth.sees(Some(id)) {
        return Err(ApiError::not_found("project", id));
    }
    Ok(project::get(&state.db, auth.domain(), id).await?)
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
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(visible(&state, &auth, &id).await?))
}
