//! `/v1/jobs`, and the stream of their changes at `/v1/jobs/events`.

mod events;
pub(crate) mod view;

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use gleaner_common::id::{CollectorId, JobId, ServiceAccountId};
use gleaner_common::lifecycle;
use gleaner_common::store::job::Job;
use gleaner_common::store::service_account;

use self::view::Task;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiQuery, Auth, Tenant, page_limit, parse_id};
use crate::problem::{self, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(events::events))
        .routes(routes!(show))
        .routes(routes!(tasks))
        .routes(routes!(cancel))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the jobs of this collector.
    collector_id: Option<CollectorId>,
    /// Jobs to return, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
}

/// Jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct JobList {
    items: Vec<Job>,
}

/// Lists the most recent jobs.
#[utoipa::path(
    get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "The jobs, newest first", body = JobList),
        (status = 400, description = "An invalid or unknown query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<JobList>> {
    let limit = page_limit(q.limit, 50)?;
    let page = view::list(&state.db, domain, q.collector_id, None, limit).await?;
    Ok(Json(JobList { items: page.items }))
}

/// One job, with its progress and outcome.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "jobs",
    params(("id" = JobId, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No job with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let id = parse_id("job", &id)?;
    Ok(Json(view::get(&state.db, domain, id).await?))
}

/// A job's tasks.
#[derive(Debug, Serialize, ToSchema)]
struct TaskList {
    items: Vec<Task>,
}

/// A job's tasks: one per service account, with its own counts and error.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/tasks", operation_id = "list_job_tasks", tag = "jobs",
    params(("id" = JobId, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job's tasks", body = TaskList),
        (status = 404, description = "No job with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn tasks(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskList>> {
    let domain = auth.domain();
    let id = parse_id("job", &id)?;
    // 404 for an unknown job rather than an empty list.
    view::get(&state.db, domain, id).await?;
    let mut items = view::tasks(&state.db, domain, id).await?;
    // A key limited to projects sees the tasks of its projects' accounts only: another
    // account's task tells its errors and its plugin's output.
    if let Some(projects) = auth.projects() {
        let filter = service_account::Filter {
            projects: Some(projects),
            ..service_account::Filter::default()
        };
        let visible: HashSet<ServiceAccountId> = service_account::list(&state.db, domain, &filter)
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect();
        items.retain(|t| t.service_account_id.is_some_and(|a| visible.contains(&a)));
    }
    Ok(Json(TaskList { items }))
}

/// Cancels a queued or running job.
///
/// The job and its unfinished tasks become CANCELED at once. A running task's worker notices at
/// its next lease renewal (a quarter of `GLEANER_WORKER__LEASE`, 15 s by default) and stops its
/// plugin: an external plugin gets SIGTERM, then SIGKILL after a grace period. What was already
/// stored stays stored, and a canceled collection deletes nothing. Canceling a canceled job
/// answers it unchanged.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs",
    params(("id" = JobId, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The canceled job", body = Job),
        (status = 404, description = "No job with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The job already ended with SUCCESS or FAILURE",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let id = parse_id("job", &id)?;
    lifecycle::job::cancel(&state.db, domain, id).await?;
    Ok(Json(view::get(&state.db, domain, id).await?))
}
