//! Metrics: `/v1/metrics`, `/v1/metrics/query`, `/v1/metrics/top` and a resource's
//! `/v1/resources/{id}/metrics[/{metric}]`.
//!
//! Every answer comes from Gleaner's own store (samples and rollups that metrics jobs wrote),
//! never from the cloud: a chart is one query. A series is cut into whole periods
//! ([`Window`]); a period that is a multiple of an hour or of 5 minutes is read from that
//! rollup, so a long range never scans raw samples.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use gleaner_common::id::ResourceId;
use gleaner_common::metric::{self, MetricInfo, Stat, Window};
use gleaner_common::model::Invalid;
use gleaner_common::plugin::PluginKind;
use gleaner_common::store::metric::{self as store, StoredSeries, TopFilter};
use gleaner_common::store::plugin;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Auth};
use crate::problem::{self, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(query))
        .routes(routes!(top))
        .routes(routes!(stored))
        .routes(routes!(series))
}

/// The most resources one query asks for.
const MAX_RESOURCES: usize = 200;
/// The most resources a top-N answers with.
const MAX_TOP: u64 = 100;

/// A metric a data source of the catalog collects.
#[derive(Debug, Serialize, ToSchema)]
struct Available {
    name: String,
    /// `*` for a metric its source collects for resources of any type.
    resource_type: String,
    unit: String,
    description: String,
    /// The provider of the data source's service accounts.
    provider: String,
    /// The metric data source (plugin id).
    source: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct AvailableList {
    items: Vec<Available>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only metrics of this resource type, e.g. `compute.instance` (those of any type, `*`,
    /// included).
    resource_type: Option<String>,
    /// Only metrics of data sources of this provider, e.g. `aws`.
    provider: Option<String>,
}

/// What the metric data sources of the catalog (official and the domain's private ones)
/// collect, by resource type.
async fn catalog(state: &AppState, auth: &Auth) -> ApiResult<Vec<Available>> {
    let plugins = plugin::list(&state.db, &state.catalog, auth.domain()).await?;
    let mut items: Vec<Available> = plugins
        .into_iter()
        .filter(|p| p.kind == PluginKind::MetricDataSource)
        .flat_map(|p| {
            p.metrics.into_iter().map(move |m: MetricInfo| Available {
                name: m.name,
                resource_type: m.resource_type,
                unit: m.unit,
                description: m.description,
                provider: p.provider.clone(),
                source: p.id.clone(),
            })
        })
        .collect();
    items.sort_by(|a, b| {
        (&a.resource_type, &a.name, &a.source).cmp(&(&b.resource_type, &b.name, &b.source))
    });
    Ok(items)
}

/// The metrics that can be collected, with their unit and source.
#[utoipa::path(
    get, path = "/v1/metrics", operation_id = "list_metrics", tag = "monitoring",
    params(ListQuery),
    responses(
        (status = 200, description = "Metrics by resource type", body = AvailableList),
        (status = 400, description = "An unknown query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<AvailableList>> {
    let items = catalog(&state, &auth)
        .await?
        .into_iter()
        .filter(|m| {
            q.resource_type
                .as_ref()
                .is_none_or(|t| m.resource_type == metric::ANY_TYPE || *t == m.resource_type)
        })
        .filter(|m| q.provider.as_ref().is_none_or(|p| *p == m.provider))
        .collect();
    Ok(Json(AvailableList { items }))
}

/// The unit of a metric known to the catalog (for `resource_type`, when given); 400 naming
/// `metric` when no data source declares it.
async fn known(
    state: &AppState,
    auth: &Auth,
    name: &str,
    resource_type: Option<&str>,
) -> ApiResult<String> {
    metric::check_name("metric", name)?;
    catalog(state, auth)
        .await?
        .into_iter()
        .find(|m| {
            m.name == name
                && resource_type
                    .is_none_or(|t| m.resource_type == metric::ANY_TYPE || t == m.resource_type)
        })
        .map(|m| m.unit)
        .ok_or_else(|| {
            let of = resource_type.map_or_else(String::new, |t| format!(" for {t}"));
            Invalid::new(
                "metric",
                format!("no metric data source collects `{name}`{of} (GET /v1/metrics lists them)"),
            )
            .into()
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SeriesQuery {
    /// RFC 3339; rounded down to a whole period. Default: a day before `end`.
    start: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive; rounded up to a whole period. Default: now.
    end: Option<DateTime<Utc>>,
    /// Seconds per point, a whole number from 1 to 2,678,400. Default: the finest of 60, 300,
    /// 3600 and 86400 that fits at most 1,440 times in the range.
    period: Option<i64>,
    /// avg (default), max, min or sum of the samples in each period.
    stat: Option<Stat>,
}

/// One series of a resource.
#[derive(Debug, Serialize, ToSchema)]
struct Series {
    resource_id: ResourceId,
    metric: String,
    unit: String,
    period: i64,
    stat: Stat,
    /// The start of each period.
    labels: Vec<DateTime<Utc>>,
    /// One value per label; null where no sample was stored.
    values: Vec<Option<f64>>,
}

/// The values of `window`'s periods from the bins of one resource.
fn values(
    window: &Window,
    bins: Option<&HashMap<i64, metric::Agg>>,
    stat: Stat,
) -> Vec<Option<f64>> {
    let step = usize::try_from(window.period_ms).unwrap_or(usize::MAX);
    (window.start..window.end)
        .step_by(step)
        .map(|t| bins.and_then(|b| b.get(&t)).and_then(|a| stat.of(a)))
        .collect()
}

/// The series stored for a resource: its metrics and their newest samples.
#[utoipa::path(
    get, path = "/v1/resources/{id}/metrics", operation_id = "list_resource_metrics", tag = "monitoring",
    params(("id" = ResourceId, Path, description = "The resource's id")),
    responses(
        (status = 200, description = "The resource's series", body = StoredList),
        (status = 404, description = "No resource with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn stored(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<StoredList>> {
    let r = crate::resource::visible(&state, &auth, &id).await?;
    let items = store::stored(&state.db, auth.domain(), r.id).await?;
    Ok(Json(StoredList { items }))
}

#[derive(Debug, Serialize, ToSchema)]
struct StoredList {
    items: Vec<StoredSeries>,
}

/// One metric of one resource over time.
#[utoipa::path(
    get, path = "/v1/resources/{id}/metrics/{metric}", operation_id = "get_resource_metric", tag = "monitoring",
    params(
        ("id" = ResourceId, Path, description = "The resource's id"),
        ("metric" = String, Path, description = "The metric's name", example = "cpu.utilization"),
        SeriesQuery,
    ),
    responses(
        (status = 200, description = "The series", body = Series),
        (status = 400, description = "An unknown metric, `end` before `start`, a bad period or stat",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No resource with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn series(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> ApiResult<Json<Series>> {
    let r = crate::resource::visible(&state, &auth, &id).await?;
    let unit = known(&state, &auth, &name, Some(&r.resource_type)).await?;
    let window = Window::new(q.start, q.end, q.period, Utc::now())?;
    let stat = q.stat.unwrap_or_default();
    let bins = store::series(&state.db, auth.domain(), &[r.id], &name, &window).await?;
    Ok(Json(Series {
        resource_id: r.id,
        metric: name,
        unit,
        period: window.period_ms / 1000,
        stat,
        labels: window.labels(),
        values: values(&window, bins.get(&r.id), stat),
    }))
}

/// Many resources' series at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MetricQuery {
    /// 1–200 resources.
    resource_ids: Vec<ResourceId>,
    #[schema(example = "cpu.utilization")]
    metric: String,
    /// RFC 3339; rounded down to a whole period. Default: a day before `end`.
    #[serde(default)]
    start: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive; rounded up to a whole period. Default: now.
    #[serde(default)]
    end: Option<DateTime<Utc>>,
    /// Seconds per point, a whole number (see `GET /v1/resources/{id}/metrics/{metric}`).
    #[serde(default)]
    period: Option<i64>,
    #[serde(default)]
    stat: Option<Stat>,
}

/// The series of many resources, as Cloudforet's `Metric.get_data` answers: one list of
/// labels, and per resource one value per label.
#[derive(Debug, Serialize, ToSchema)]
struct MetricData {
    metric: String,
    unit: String,
    period: i64,
    stat: Stat,
    labels: Vec<DateTime<Utc>>,
    /// By resource id: one value per label, null where no sample was stored.
    values: BTreeMap<ResourceId, Vec<Option<f64>>>,
}

/// One metric of up to 200 resources over time.
#[utoipa::path(
    post, path = "/v1/metrics/query", operation_id = "query_metrics", tag = "monitoring",
    request_body = MetricQuery,
    responses(
        (status = 200, description = "The series", body = MetricData),
        (status = 400, description = "An unknown metric or resource, over 200 resources, \
            `end` before `start`, a bad period or stat",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn query(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(q): ApiJson<MetricQuery>,
) -> ApiResult<Json<MetricData>> {
    if q.resource_ids.is_empty() || q.resource_ids.len() > MAX_RESOURCES {
        return Err(Invalid::new(
            "resource_ids",
            format!("give 1 to {MAX_RESOURCES} resource ids"),
        )
        .into());
    }
    let unit = known(&state, &auth, &q.metric, None).await?;
    let window = Window::new(q.start, q.end, q.period, Utc::now())?;
    let mut ids = q.resource_ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let owners = store::owners(&state.db, auth.domain(), &ids).await?;
    if let Some(unknown) = ids
        .iter()
        .find(|id| owners.get(id).is_none_or(|project| !auth.sees(*project)))
    {
        return Err(Invalid::new("resource_ids", format!("no resource {unknown}")).into());
    }
    let stat = q.stat.unwrap_or_default();
    let bins = store::series(&state.db, auth.domain(), &ids, &q.metric, &window).await?;
    let values = ids
        .iter()
        .map(|id| (*id, values(&window, bins.get(id), stat)))
        .collect();
    Ok(Json(MetricData {
        metric: q.metric,
        unit,
        period: window.period_ms / 1000,
        stat,
        labels: window.labels(),
        values,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TopQuery {
    #[param(example = "cpu.utilization")]
    metric: String,
    /// Only resources of this type.
    resource_type: Option<String>,
    /// RFC 3339. Default: a day before `end`.
    start: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive. Default: now.
    end: Option<DateTime<Utc>>,
    /// avg (default), max, min or sum over the range.
    stat: Option<Stat>,
    /// 1–100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
}

/// A resource's place in a top-N.
#[derive(Debug, Serialize, ToSchema)]
struct TopItem {
    resource_id: ResourceId,
    name: Option<String>,
    resource_type: String,
    value: f64,
}

#[derive(Debug, Serialize, ToSchema)]
struct TopList {
    metric: String,
    unit: String,
    stat: Stat,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// Highest first.
    items: Vec<TopItem>,
}

/// The resources with the highest value of a metric over a range.
#[utoipa::path(
    get, path = "/v1/metrics/top", operation_id = "top_metrics", tag = "monitoring",
    params(TopQuery),
    responses(
        (status = 200, description = "The top resources, highest first", body = TopList),
        (status = 400, description = "An unknown metric, `end` before `start`, a bad stat or limit",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn top(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<TopQuery>,
) -> ApiResult<Json<TopList>> {
    let limit = q.limit.unwrap_or(10);
    if !(1..=MAX_TOP).contains(&limit) {
        return Err(Invalid::new("limit", format!("must be between 1 and {MAX_TOP}")).into());
    }
    let unit = known(&state, &auth, &q.metric, q.resource_type.as_deref()).await?;
    let (start, end) = metric::range(q.start, q.end, Utc::now())?;
    let stat = q.stat.unwrap_or_default();
    let filter = TopFilter {
        resource_type: q.resource_type,
        projects: auth.projects().map(<[_]>::to_vec),
    };
    let ranked =
        store::aggregate(&state.db, auth.domain(), &q.metric, (start, end), &filter).await?;
    let mut items: Vec<TopItem> = ranked
        .into_iter()
        .filter_map(|r| {
            stat.of(&r.agg).map(|value| TopItem {
                resource_id: r.id,
                name: r.name,
                resource_type: r.resource_type,
                value,
            })
        })
        .collect();
    // Highest first; ties by id, so that pages of equal values are stable.
    items.sort_by(|a, b| {
        b.value
            .total_cmp(&a.value)
            .then_with(|| a.resource_id.cmp(&b.resource_id))
    });
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Json(TopList {
        metric: q.metric,
        unit,
        stat,
        start: metric::instant(start),
        end: metric::instant(end),
        items,
    }))
}
