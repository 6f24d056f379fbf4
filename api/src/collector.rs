//! `/v1/collectors`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gleaner_common::model::{Invalid, Name, Priority, Trigger};
use gleaner_common::plugin::Catalog;
use gleaner_common::store::collector::{self, Collector, NewCollector};
use gleaner_common::store::job;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{ApiJson, Tenant, parse_id};
use crate::problem::{ApiError, ApiResult};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/collectors", get(list).post(create))
        .route("/v1/collectors/{id}", get(show))
        .route("/v1/collectors/{id}/collect", post(collect))
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

/// Checks the body against the catalog; every problem is reported at once.
fn validate<'a>(body: CreateCollector, catalog: &'a Catalog) -> Result<NewCollector<'a>, ApiError> {
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
    let plugin = catalog.get(&body.plugin_id);
    if plugin.is_none() {
        let known: Vec<_> = catalog.official().iter().map(|p| p.id.as_str()).collect();
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
        if let Some(v) = &body.version {
            if !p.has_version(v) {
                errors.push(Invalid::new(
                    "version",
                    format!(
                        "plugin `{}` has no version `{v}`; it has {}",
                        p.id,
                        p.versions.join(", ")
                    ),
                ));
            }
        }
        if let Err(e) = p.validate_options(&options) {
            errors.extend(e);
        }
    }
    let tags = body.tags.unwrap_or_default();
    for key in tags.keys() {
        if key.trim().is_empty() || key.len() > 128 {
            errors.push(Invalid::new(
                format!("tags.{key}"),
                "tag keys must be 1–128 characters",
            ));
        }
    }
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

async fn create(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiJson(body): ApiJson<CreateCollector>,
) -> ApiResult<(StatusCode, Json<Collector>)> {
    let new = validate(body, &state.catalog)?;
    let created = collector::create(&state.db, domain, new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list(State(state): State<AppState>, Tenant(domain): Tenant) -> ApiResult<Json<Value>> {
    let items = collector::list(&state.db, domain).await?;
    Ok(Json(json!({ "items": items })))
}

async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Collector>> {
    let id = parse_id("collector", &id)?;
    Ok(Json(collector::get(&state.db, domain, id).await?))
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
