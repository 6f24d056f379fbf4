//! Schedules: `/v1/collectors/{id}/schedules` and `/v1/schedules/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use gleaner_common::calendar::Calendar;
use gleaner_common::id::{CollectorId, ScheduleId};
use gleaner_common::model::{Name, ScheduleState};
use gleaner_common::store::schedule::{self, Fire, Schedule, ScheduleUpdate};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Tenant, page_limit, parse_id};
use crate::problem::{self, ApiError, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(fires))
}

/// A new schedule: at `hours` of the day, or `every_minutes` from local midnight (exactly one
/// of the two).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSchedule {
    /// Unique among the collector's schedules.
    #[schema(example = "every six hours")]
    name: String,
    /// An IANA timezone.
    #[schema(example = "Asia/Seoul")]
    timezone: String,
    /// Hours of the day, 0–23, in `timezone`. Required unless `every_minutes` is given.
    #[serde(default)]
    #[schema(example = json!([0, 6, 12, 18]))]
    hours: Option<Vec<i64>>,
    /// Fires at local midnight in `timezone`, then every this many minutes until the next
    /// midnight (1–1440; the day's last gap is shorter when it does not divide 1440). Instead
    /// of `hours`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1440)]
    every_minutes: Option<i64>,
    /// ENABLED (default) or PAUSED.
    #[serde(default)]
    state: Option<ScheduleState>,
}

/// Any of a schedule's fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateSchedule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    /// Makes it an hours schedule, if it was an interval one.
    #[serde(default)]
    hours: Option<Vec<i64>>,
    /// Makes it an interval schedule, if it was an hours one; not with `hours`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1440)]
    every_minutes: Option<i64>,
    #[serde(default)]
    state: Option<ScheduleState>,
}

/// A collector's schedules.
#[derive(Debug, Serialize, ToSchema)]
struct ScheduleList {
    items: Vec<Schedule>,
}

/// A schedule's latest fires.
#[derive(Debug, Serialize, ToSchema)]
struct FireList {
    items: Vec<Fire>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FiresQuery {
    /// At most this many, newest first, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
}

/// Adds a schedule to a collector.
#[utoipa::path(
    post, path = "/v1/collectors/{id}/schedules", operation_id = "create_schedule",
    tag = "schedules",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    request_body = CreateSchedule,
    responses(
        (status = 201, description = "The new schedule, with its next fires", body = Schedule),
        (status = 400, description = "A malformed body, or invalid fields: `name`, \
            `timezone`, `hours`, `every_minutes` (both or neither of the last two too)",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The collector has a schedule of that name",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn create(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    let id = parse_id("collector", &id)?;
    let mut errors = Vec::new();
    let name = Name::parse("name", &body.name)
        .map_err(|e| errors.push(e))
        .ok();
    let cal = Calendar::parse(&body.timezone, body.hours.as_deref(), body.every_minutes)
        .map_err(|e| errors.extend(e))
        .ok();
    let (Some(name), Some(cal)) = (name, cal) else {
        return Err(ApiError::invalid(errors));
    };
    let created = schedule::create(
        &state.db,
        domain,
        id,
        name,
        &cal,
        body.state.unwrap_or(ScheduleState::Enabled),
        Utc::now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists a collector's schedules.
#[utoipa::path(
    get, path = "/v1/collectors/{id}/schedules", operation_id = "list_schedules",
    tag = "schedules",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    responses(
        (status = 200, description = "Its schedules, oldest first", body = ScheduleList),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleList>> {
    let id = parse_id("collector", &id)?;
    let items = schedule::list(&state.db, domain, id, Utc::now()).await?;
    Ok(Json(ScheduleList { items }))
}

/// One schedule, with its next fires.
#[utoipa::path(
    get, path = "/v1/schedules/{id}", operation_id = "get_schedule", tag = "schedules",
    params(("id" = ScheduleId, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 404, description = "No schedule with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    let id = parse_id("schedule", &id)?;
    Ok(Json(
        schedule::get(&state.db, domain, id, Utc::now()).await?,
    ))
}

/// Changes a schedule's name, timezone, hours, interval or state. `hours` makes it an hours
/// schedule and `every_minutes` an interval one, whichever it was. New times, a new timezone,
/// or a paused schedule enabled again fire from the next matching time: fires that fell while
/// it was paused are neither run nor recorded as missed.
#[utoipa::path(
    patch, path = "/v1/schedules/{id}", operation_id = "update_schedule", tag = "schedules",
    params(("id" = ScheduleId, Path, description = "The schedule's id")),
    request_body = UpdateSchedule,
    responses(
        (status = 200, description = "The changed schedule", body = Schedule),
        (status = 400, description = "A malformed body, or invalid fields: `name`, \
            `timezone`, `hours`, `every_minutes` (both of the last two too)",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No schedule with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The collector has a schedule of that name",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn update(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSchedule>,
) -> ApiResult<Json<Schedule>> {
    let id = parse_id("schedule", &id)?;
    let mut errors = Vec::new();
    let name = body
        .name
        .map(|n| Name::parse("name", &n))
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let mut cal = None;
    if body.timezone.is_some() || body.hours.is_some() || body.every_minutes.is_some() {
        let current = schedule::current_calendar(&state.db, domain, id).await?;
        cal = current
            .changed(
                body.timezone.as_deref(),
                body.hours.as_deref(),
                body.every_minutes,
            )
            .map_err(|e| errors.extend(e))
            .ok();
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let change = ScheduleUpdate {
        name,
        calendar: cal,
        state: body.state,
    };
    Ok(Json(
        schedule::update(&state.db, domain, id, change, Utc::now()).await?,
    ))
}

/// Deletes a schedule and its fire history.
#[utoipa::path(
    delete, path = "/v1/schedules/{id}", operation_id = "delete_schedule", tag = "schedules",
    params(("id" = ScheduleId, Path, description = "The schedule's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No schedule with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn remove(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id("schedule", &id)?;
    schedule::delete(&state.db, domain, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A schedule's latest fires with their outcome: QUEUED (with the job), SKIPPED or MISSED
/// (with the reason).
#[utoipa::path(
    get, path = "/v1/schedules/{id}/fires", operation_id = "list_schedule_fires",
    tag = "schedules",
    params(("id" = ScheduleId, Path, description = "The schedule's id"), FiresQuery),
    responses(
        (status = 200, description = "Its fires, newest first", body = FireList),
        (status = 400, description = "A bad `limit`",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No schedule with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn fires(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FiresQuery>,
) -> ApiResult<Json<FireList>> {
    let id = parse_id("schedule", &id)?;
    let limit = page_limit(q.limit, 100)?;
    let items = schedule::fires(&state.db, domain, id, limit).await?;
    Ok(Json(FireList { items }))
}
