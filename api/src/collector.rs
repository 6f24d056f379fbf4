//! `/v1/collectors`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use gleaner_common::access::Access;
use gleaner_common::billing::{Month, Window};
use gleaner_common::calendar::Calendar;
use gleaner_common::id::{CollectorId, DomainId, JobId, ProjectId, ServiceAccountId};
use gleaner_common::lifecycle;
use gleaner_common::model::{
    CollectorState, IdempotencyKey, Invalid, JobStatus, JobTimeout, Name, Priority, ScheduleState,
    Trigger,
};
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_common::store::collector::{self, Collector, CollectorUpdate, NewCollector};
use gleaner_common::store::resource::{self, TypeCount};
use gleaner_common::store::{plugin, schedule, service_account};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{
    ApiJson, ApiQuery, Auth, OptionalJson, Tenant, id_list, page_limit, parse_id,
};
use crate::job::view::{self as job_view, JobPage};
use crate::problem::{self, ApiError, ApiResult, Problem};
use crate::service_account::ServiceAccountList;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(collect))
        .routes(routes!(credentials))
        .routes(routes!(jobs))
        .routes(routes!(enable))
        .routes(routes!(disable))
}

/// A new collector: a configured use of a plugin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateCollector {
    /// 1–255 characters, unique among collectors; trimmed.
    #[schema(example = "demo")]
    name: String,
    /// A plugin's `id` from `GET /v1/plugins`.
    #[schema(example = "demo")]
    plugin_id: String,
    /// One of the plugin's versions, pinned; absent follows the plugin's latest.
    #[serde(default)]
    version: Option<String>,
    /// 0–1,000,000 (default 10); a lower number wins when collectors report the same field.
    #[serde(default)]
    priority: Option<i64>,
    /// Checked against the plugin's `options_schema` (errors name `options.<path>`).
    /// Absent is `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"resources": 1000}))]
    options: Option<Value>,
    /// Free-form labels; keys are 1–128 characters.
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    /// 1–604,800 (default 7,200): a job still unfinished this many seconds after it was
    /// accepted fails with reason "timeout", and its running tasks are stopped.
    #[serde(default)]
    job_timeout_seconds: Option<i64>,
}

/// A change to a collector: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateCollector {
    /// 1–255 characters, unique among collectors; trimmed.
    #[serde(default)]
    name: Option<String>,
    /// 0–1,000,000.
    #[serde(default)]
    priority: Option<i64>,
    /// Absent: unchanged; `null`: follow the latest version; a string: pin that version.
    #[serde(default, deserialize_with = "present")]
    version: Option<Option<String>>,
    /// Replaces the options; checked against the plugin's `options_schema`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    options: Option<Value>,
    /// Replaces the tags.
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    /// 1–604,800; applies to jobs accepted from now on.
    #[serde(default)]
    job_timeout_seconds: Option<i64>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`, via `default`).
pub(crate) fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Checks the body against the catalog; every problem is reported at once.
/// `known` lists the catalog's ids for the error when the plugin was not found.
fn validate<'a>(
    body: CreateCollector,
    plugin: Option<&'a PluginInfo>,
    known: &[String],
    access: &Access,
) -> Result<NewCollector<'a>, ApiError> {
    let mut errors = Vec::new();
    let name = Name::parse("name", &body.name)
        .map_err(|e| errors.push(e))
        .ok();
    let priority = Priority::new(
        "priority",
        body.priority.unwrap_or(i64::from(Priority::DEFAULT.get())),
    )
    .map_err(|e| errors.push(e))
    .ok();
    let job_timeout = JobTimeout::new(
        "job_timeout_seconds",
        body.job_timeout_seconds
            .unwrap_or(i64::from(JobTimeout::DEFAULT.seconds())),
    )
    .map_err(|e| errors.push(e))
    .ok();
    if plugin.is_none() {
        errors.push(Invalid::new(
            "plugin_id",
            format!(
                "unknown plugin `{}`; the catalog has: {}",
                body.plugin_id,
                known.join(", ")
            ),
        ));
    }
    let options = body.options.unwrap_or_else(|| json!({}));
    if let Some(p) = plugin {
        if let Some(v) = &body.version
            && let Err(e) = p.validate_version(v)
        {
            errors.push(e);
        }
        if let Err(e) = p.validate_options(&options) {
            errors.extend(e);
        }
        if let Err(e) = access.check(&p.options_schema, &options) {
            errors.extend(e);
        }
    }
    let tags = body.tags.unwrap_or_default();
    check_tags(&tags, &mut errors);
    match (name, priority, job_timeout, plugin) {
        (Some(name), Some(priority), Some(job_timeout), Some(plugin)) if errors.is_empty() => {
            Ok(NewCollector {
                name,
                plugin,
                version: body.version,
                priority,
                options,
                tags,
                job_timeout,
            })
        }
        _ => Err(ApiError::invalid(errors)),
    }
}

fn check_tags(tags: &BTreeMap<String, String>, errors: &mut Vec<Invalid>) {
    for key in tags.keys() {
        if key.trim().is_empty() || key.chars().count() > 128 {
            errors.push(Invalid::new(
                format!("tags.{key}"),
                "tag keys must be 1–128 characters",
            ));
        }
    }
}

/// Creates a collector.
///
/// `version` defaults to the plugin's latest and `priority` to 10; `options` are checked against
/// the plugin's schema. Every invalid field is reported at once.
#[utoipa::path(
    post, path = "/v1/collectors", operation_id = "create_collector", tag = "collectors",
    request_body = CreateCollector,
    responses(
        (status = 201, description = "The new collector", body = Collector),
        (status = 400, description = "A malformed body, or invalid fields: `name`, `plugin_id`, \
            `version`, `priority`, `options.<path>`, `tags.<key>`",
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
    ApiJson(body): ApiJson<CreateCollector>,
) -> ApiResult<(StatusCode, Json<Collector>)> {
    let plugin = plugin::find(&state.db, &state.catalog, domain, &body.plugin_id).await?;
    let known: Vec<String> = match plugin {
        Some(_) => Vec::new(),
        None => plugin::list(&state.db, &state.catalog, domain)
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect(),
    };
    let new = validate(body, plugin.as_ref(), &known, &state.access)?;
    let billing = new.plugin.kind == PluginKind::CostDataSource;
    let txn = gleaner_common::store::begin_write(&state.db)
        .await
        .map_err(gleaner_common::store::Error::from)?;
    let created = collector::create(&txn, domain, new).await?;
    if billing {
        // Costs change every day until a month's invoice closes: billing collectors sync daily
        // unless their schedule is changed, paused or deleted.
        let calendar = Calendar::new(DAILY_TIMEZONE, &[DAILY_HOUR]).map_err(ApiError::invalid)?;
        schedule::create(
            &txn,
            domain,
            created.id,
            Name::parse("name", DAILY_SCHEDULE)?,
            &calendar,
            ScheduleState::Enabled,
            chrono::Utc::now(),
        )
        .await?;
    }
    txn.commit()
        .await
        .map_err(gleaner_common::store::Error::from)?;
    let created = if billing {
        collector::get(&state.db, domain, created.id).await?
    } else {
        created
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// The schedule every billing collector starts with: daily at midnight UTC.
const DAILY_SCHEDULE: &str = "daily";
const DAILY_TIMEZONE: &str = "UTC";
const DAILY_HOUR: i64 = 0;

/// Every collector.
#[derive(Debug, Serialize, ToSchema)]
struct CollectorList {
    items: Vec<Collector>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the collector of this name (exact; names are unique).
    name: Option<String>,
}

/// Lists the collectors, each with its last job.
#[utoipa::path(
    get, path = "/v1/collectors", operation_id = "list_collectors", tag = "collectors",
    params(ListQuery),
    responses(
        (status = 200, description = "Every collector, or the one named", body = CollectorList),
        (status = 400, description = "An unknown query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<CollectorList>> {
    let items = match q.name {
        Some(name) => collector::find_by_name(&state.db, domain, &name)
            .await?
            .into_iter()
            .collect(),
        None => collector::list(&state.db, domain).await?,
    };
    Ok(Json(CollectorList { items }))
}

/// A collector with what the list shows, plus the resources it collected by type.
#[derive(Debug, Serialize, ToSchema)]
struct CollectorDetail {
    #[serde(flatten)]
    collector: Collector,
    /// What it collected, by resource type.
    resources: Vec<TypeCount>,
    /// The newest metric sample it stored, over all its series: where a metric collector's
    /// next collection starts. Null until it stored one (and for other collectors).
    metrics_watermark: Option<chrono::DateTime<chrono::Utc>>,
}

/// One collector, with the resources it collected by type.
#[utoipa::path(
    get, path = "/v1/collectors/{id}", operation_id = "get_collector", tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    responses(
        (status = 200, description = "The collector", body = CollectorDetail),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<CollectorDetail>> {
    let id = parse_id("collector", &id)?;
    let collector = collector::get(&state.db, domain, id).await?;
    let resources = resource::count_by_type(&state.db, domain, id).await?;
    let metrics_watermark =
        gleaner_common::store::metric::collector_watermark(&state.db, domain, id).await?;
    Ok(Json(CollectorDetail {
        collector,
        resources,
        metrics_watermark,
    }))
}

/// Changes a collector's name, priority, version, options or tags.
#[utoipa::path(
    patch, path = "/v1/collectors/{id}", operation_id = "update_collector", tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    request_body = UpdateCollector,
    responses(
        (status = 200, description = "The changed collector", body = Collector),
        (status = 400, description = "A malformed body, or invalid fields",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The name is taken, or the plugin left the catalog",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn update(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateCollector>,
) -> ApiResult<Json<Collector>> {
    let id = parse_id("collector", &id)?;
    let current = collector::get(&state.db, domain, id).await?;
    let plugin = plugin_of(&state, domain, &current).await?;
    let mut errors = Vec::new();
    let name = body
        .name
        .map(|n| Name::parse("name", &n))
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let priority = body
        .priority
        .map(|p| Priority::new("priority", p))
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let job_timeout = body
        .job_timeout_seconds
        .map(|t| JobTimeout::new("job_timeout_seconds", t))
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    if let Some(Some(v)) = &body.version
        && let Err(e) = plugin.validate_version(v)
    {
        errors.push(e);
    }
    if let Some(options) = &body.options {
        if let Err(e) = plugin.validate_options(options) {
            errors.extend(e);
        }
        if let Err(e) = state.access.check(&plugin.options_schema, options) {
            errors.extend(e);
        }
    }
    if let Some(tags) = &body.tags {
        check_tags(tags, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let change = CollectorUpdate {
        name,
        priority,
        version: body.version,
        options: body.options,
        tags: body.tags,
        job_timeout,
    };
    Ok(Json(
        collector::update(&state.db, domain, id, &plugin, change).await?,
    ))
}

/// The collector's plugin as the catalog describes it now.
///
/// # Errors
/// 409 when the plugin left the catalog.
pub(crate) async fn plugin_of(
    state: &AppState,
    domain: DomainId,
    c: &Collector,
) -> ApiResult<PluginInfo> {
    plugin::find(&state.db, &state.catalog, domain, &c.plugin_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                crate::problem::Code::Conflict,
                format!("plugin `{}` is no longer in the catalog", c.plugin_id),
            )
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CredentialsQuery {
    /// Only these service accounts: their ids, comma-separated (at most 1000).
    service_account_ids: Option<String>,
    /// Only the accounts of this project.
    project_id: Option<ProjectId>,
}

/// The service accounts a collector collects with: every account of its plugin's provider, as
/// `GET /v1/service-accounts` shows them (never their credentials), oldest first.
#[utoipa::path(
    get,
    path = "/v1/collectors/{id}/credentials",
    operation_id = "list_collector_credentials",
    tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id"), CredentialsQuery),
    responses(
        (status = 200, description = "The accounts of the plugin's provider, filtered",
            body = ServiceAccountList),
        (status = 400, description = "A malformed `service_account_ids` or `project_id`, or an \
            unknown query parameter", body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The collector's plugin left the catalog",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn credentials(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CredentialsQuery>,
) -> ApiResult<Json<ServiceAccountList>> {
    let domain = auth.domain();
    let id = parse_id("collector", &id)?;
    let ids: Option<Vec<ServiceAccountId>> = q
        .service_account_ids
        .as_deref()
        .map(|raw| id_list("service_account_ids", raw))
        .transpose()?;
    let c = collector::get(&state.db, domain, id).await?;
    // The planner gives a job one task per account of the plugin's provider: those are the
    // credentials the collector uses.
    let plugin = plugin_of(&state, domain, &c).await?;
    let filter = service_account::Filter {
        provider: Some(&plugin.provider),
        project_id: q.project_id,
        ids: ids.as_deref(),
        projects: auth.projects(),
    };
    let items = service_account::list(&state.db, domain, &filter).await?;
    Ok(Json(ServiceAccountList { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JobsQuery {
    /// Jobs per page, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// The previous page's `next_cursor`, as given.
    #[param(value_type = Option<String>)]
    cursor: Option<JobId>,
}

/// A collector's job history, newest first, each job as `GET /v1/jobs/{id}` shows it.
#[utoipa::path(
    get,
    path = "/v1/collectors/{id}/jobs",
    operation_id = "list_collector_jobs",
    tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id"), JobsQuery),
    responses(
        (status = 200, description = "A page of the collector's jobs, newest first",
            body = JobPage),
        (status = 400, description = "An invalid `limit` or `cursor`, or an unknown query \
            parameter", body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn jobs(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> ApiResult<Json<JobPage>> {
    let id = parse_id("collector", &id)?;
    let limit = page_limit(q.limit, 50)?;
    // 404 for an unknown collector rather than an empty history.
    collector::get(&state.db, domain, id).await?;
    Ok(Json(
        job_view::list(&state.db, domain, Some(id), q.cursor, limit).await?,
    ))
}

/// A queued collection: follow it at `/v1/jobs/{job_id}`.
#[derive(Debug, Serialize, ToSchema)]
struct Accepted {
    job_id: JobId,
    #[schema(example = "QUEUED")]
    status: JobStatus,
}

/// What to collect; every field is optional, and so is the body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CollectRequest {
    /// Billing collectors: the first month to import (`YYYY-MM`), for a backfill. With
    /// `end_month`, the window is those months; alone, it runs to the current month. Without
    /// either, the previous and the current month.
    #[schema(value_type = Option<String>, example = "2024-01")]
    start_month: Option<Month>,
    /// Billing collectors: the last month to import (`YYYY-MM`), included.
    #[schema(value_type = Option<String>, example = "2024-09")]
    end_month: Option<Month>,
}

impl CollectRequest {
    fn window(&self) -> Result<Option<Window>, ApiError> {
        let (start, end, field) = match (self.start_month, self.end_month) {
            (None, None) => return Ok(None),
            (Some(s), Some(e)) => (s, e, "end_month"),
            // The end is the current month: what is wrong is the start.
            (Some(s), None) if s > Month::current() => {
                return Err(Invalid::new(
                    "start_month",
                    format!("is after the current month, {}", Month::current()),
                )
                .into());
            }
            (Some(s), None) => (s, Month::current(), "start_month"),
            (None, Some(_)) => {
                return Err(Invalid::new("start_month", "is required with end_month").into());
            }
        };
        Window::new(start, end)
            .map(Some)
            .map_err(|e| Invalid::new(field, e.to_string()).into())
    }
}

/// The header that makes a `collect` idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on the answer to a `collect` whose `Idempotency-Key` was given before.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Queues a collection now: 202 with the job id; the job's progress is at `/v1/jobs/{id}`.
/// A billing collector's job replaces the costs of each month of its window, per billing
/// account.
///
/// With an `Idempotency-Key`, the same request sent again (a retry after a lost answer) gets
/// the first one's job, with its status now and `Idempotent-Replayed: true`, for as long as
/// `GLEANER_API__IDEMPOTENCY_RETENTION_HOURS` (24 by default).
#[utoipa::path(
    post, path = "/v1/collectors/{id}/collect", operation_id = "collect", tag = "collectors",
    params(
        ("id" = CollectorId, Path, description = "The collector's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII \
            characters naming this request: sent again with the same collector and months, \
            the first request's job is answered instead of a new one"),
    ),
    request_body(content = Option<CollectRequest>, description = "Optional: the months of a billing backfill"),
    responses(
        (status = 202, description = "The job is queued (or, for a key given before, the \
            first request's job, with `Idempotent-Replayed: true`)", body = Accepted),
        (status = 400, description = "A bad month window, or one given to an inventory \
            collector; a malformed `Idempotency-Key`",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The collector is disabled",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 422, description = "The `Idempotency-Key` was given with another collector \
            or other months", body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn collect(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<CollectRequest>,
) -> ApiResult<Response> {
    let id = parse_id("collector", &id)?;
    let key = idempotency_key(&headers)?;
    let window = body.unwrap_or_default().window()?;
    let Some(key) = key else {
        let job_id = lifecycle::job::enqueue(
            &state.db,
            &state.catalog,
            &state.access,
            domain,
            id,
            Trigger::Manual,
            window,
        )
        .await?;
        state.signal.notify();
        return Ok(accepted(job_id, JobStatus::Queued, false));
    };
    let retention = chrono::Duration::from_std(state.idempotency_retention)
        .unwrap_or(chrono::Duration::hours(24));
    let done = lifecycle::job::enqueue_once(
        &state.db,
        &state.catalog,
        &state.access,
        domain,
        id,
        window,
        &key,
        retention,
    )
    .await?;
    match done.replayed {
        Some(status) => Ok(accepted(done.job_id, status, true)),
        None => {
            state.signal.notify();
            Ok(accepted(done.job_id, JobStatus::Queued, false))
        }
    }
}

/// The request's `Idempotency-Key`, if it has one.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<IdempotencyKey>> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Invalid::new("Idempotency-Key", "must be given once").into());
    }
    let raw = value.to_str().map_err(|_| {
        ApiError::from(Invalid::new(
            "Idempotency-Key",
            "must be visible ASCII characters only (no spaces)",
        ))
    })?;
    Ok(Some(IdempotencyKey::parse("Idempotency-Key", raw)?))
}

fn accepted(job_id: JobId, status: JobStatus, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(Accepted { job_id, status })).into_response();
    if replayed {
        response.headers_mut().insert(
            HeaderName::from_static(IDEMPOTENT_REPLAYED),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// Enables a collector; idempotent.
#[utoipa::path(
    post,
    path = "/v1/collectors/{id}/enable",
    operation_id = "enable_collector",
    tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    responses(
        (status = 200, description = "The collector, ENABLED", body = Collector),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn enable(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Collector>> {
    switch(state, domain, id, CollectorState::Enabled).await
}

/// Disables a collector, which then refuses `collect` with 409 until enabled; idempotent.
#[utoipa::path(
    post,
    path = "/v1/collectors/{id}/disable",
    operation_id = "disable_collector",
    tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    responses(
        (status = 200, description = "The collector, DISABLED", body = Collector),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn disable(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Collector>> {
    switch(state, domain, id, CollectorState::Disabled).await
}

/// `enable` and `disable`: a disabled collector refuses `collect` with 409 until enabled again.
async fn switch(
    state: AppState,
    domain: DomainId,
    id: String,
    to: CollectorState,
) -> ApiResult<Json<Collector>> {
    let id = parse_id("collector", &id)?;
    Ok(Json(collector::set_state(&state.db, domain, id, to).await?))
}

/// Deletes a collector; its resources stay, no longer owned, and its jobs stay in the history.
#[utoipa::path(
    delete, path = "/v1/collectors/{id}", operation_id = "delete_collector", tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "One of its jobs is queued or running",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn remove(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id("collector", &id)?;
    collector::delete(&state.db, domain, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
