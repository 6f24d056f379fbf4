//! `/v1/collectors`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gleaner_common::model::{CollectorState, Invalid, Name, Priority, Trigger};
use gleaner_common::plugin::PluginInfo;
use gleaner_common::store::collector::{self, Collector, CollectorUpdate, NewCollector};
use gleaner_common::store::resource::{self, TypeCount};
use gleaner_common::store::{job, plugin};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{ApiJson, Tenant, parse_id};
use crate::problem::{ApiError, ApiResult};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/collectors", get(list).post(create))
        .route(
            "/v1/collectors/{id}",
            get(show).patch(update).delete(remove),
        )
        .route("/v1/collectors/{id}/collect", post(collect))
        .route(
            "/v1/collectors/{id}/enable",
            post(|State(s), Tenant(d), Path(id)| switch(s, d, id, CollectorState::Enabled)),
        )
        .route(
            "/v1/collectors/{id}/disable",
            post(|State(s), Tenant(d), Path(id)| switch(s, d, id, CollectorState::Disabled)),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCollector {
    name: String,
    plugin_id: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateCollector {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    /// Absent: unchanged; `null`: follow the latest version; a string: pin that version.
    #[serde(default, deserialize_with = "present")]
    version: Option<Option<String>>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`, via `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
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
    }
    let tags = body.tags.unwrap_or_default();
    check_tags(&tags, &mut errors);
    match (name, priority, plugin) {
        (Some(name), Some(priority), Some(plugin)) if errors.is_empty() => Ok(NewCollector {
            name,
            plugin,
            version: body.version,
            priority,
            options,
            tags,
        }),
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
    let new = validate(body, plugin.as_ref(), &known)?;
    let created = collector::create(&state.db, domain, new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list(State(state): State<AppState>, Tenant(domain): Tenant) -> ApiResult<Json<Value>> {
    let items = collector::list(&state.db, domain).await?;
    Ok(Json(json!({ "items": items })))
}

/// A collector with what the list shows, plus the resources it collected by type.
#[derive(Debug, Serialize)]
struct CollectorDetail {
    #[serde(flatten)]
    collector: Collector,
    resources: Vec<TypeCount>,
}

async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<CollectorDetail>> {
    let id = parse_id("collector", &id)?;
    let collector = collector::get(&state.db, domain, id).await?;
    let resources = resource::count_by_type(&state.db, domain, id).await?;
    Ok(Json(CollectorDetail {
        collector,
        resources,
    }))
}

async fn update(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateCollector>,
) -> ApiResult<Json<Collector>> {
    let id = parse_id("collector", &id)?;
    let current = collector::get(&state.db, domain, id).await?;
    let plugin = plugin::find(&state.db, &state.catalog, domain, &current.plugin_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                crate::problem::Code::Conflict,
                format!("plugin `{}` is no longer in the catalog", current.plugin_id),
            )
        })?;
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
    if let Some(Some(v)) = &body.version
        && let Err(e) = plugin.validate_version(v)
    {
        errors.push(e);
    }
    if let Some(options) = &body.options
        && let Err(e) = plugin.validate_options(options)
    {
        errors.extend(e);
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
    };
    Ok(Json(
        collector::update(&state.db, domain, id, &plugin, change).await?,
    ))
}

/// Queues a collection now: 202 with the job id; the job's progress is at `/v1/jobs/{id}`.
async fn collect(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = parse_id("collector", &id)?;
    let job = job::enqueue(&state.db, &state.catalog, domain, id, Trigger::Manual).await?;
    state.signal.notify();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job_id": job.id, "status": job.status })),
    ))
}

/// `enable` and `disable`: a disabled collector refuses `collect` with 409 until enabled again.
async fn switch(
    state: AppState,
    domain: gleaner_common::id::DomainId,
    id: String,
    to: CollectorState,
) -> ApiResult<Json<Collector>> {
    let id = parse_id("collector", &id)?;
    Ok(Json(collector::set_state(&state.db, domain, id, to).await?))
}

/// 204; the collector's resources stay, no longer owned.
async fn remove(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id("collector", &id)?;
    collector::delete(&state.db, domain, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
