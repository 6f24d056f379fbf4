//! `/v1/plugins`: the catalog, and registration of private plugins.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::collections::BTreeMap;
use std::time::Duration;

use gleaner_common::access::Access;
use gleaner_common::config::PluginSettings;
use gleaner_common::external::{self, DEFAULT_TIMEOUT_SECONDS, Runtime, Spec};
use gleaner_common::id::DomainId;
use gleaner_common::model::Invalid;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_common::provider;
use gleaner_common::store::plugin::{self, Registration};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiJson, Tenant};
use crate::problem::{self, ApiError, ApiResult, Code, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, register))
        .routes(routes!(show))
}

/// The plugins a domain can use.
#[derive(Debug, Serialize, ToSchema)]
struct PluginList {
    items: Vec<PluginInfo>,
}

/// Lists the catalog: official plugins, then the domain's private ones.
#[utoipa::path(
    get, path = "/v1/plugins", operation_id = "list_plugins", tag = "plugins",
    responses(
        (status = 200, description = "Every plugin the domain can use", body = PluginList),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
) -> ApiResult<Json<PluginList>> {
    let items = plugin::list(&state.db, &state.catalog, domain).await?;
    Ok(Json(PluginList { items }))
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
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<PluginInfo>> {
    // No plugin has an id it could not be registered with; one the database cannot even hold
    // (a NUL) would fail there.
    if !valid_id(&id) {
        return Err(ApiError::not_found("plugin", id));
    }
    plugin::find(&state.db, &state.catalog, domain, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("plugin", id))
}

/// A private plugin to register: an executable speaking the JSON-lines plugin protocol
/// (docs/plugins.md), or an unmodified Cloudforet plugin (`runtime: cloudforet`,
/// docs/cloudforet.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterPlugin {
    /// 1–64 characters: lowercase letters, digits, `.`, `_`, `-`.
    #[schema(example = "json-inventory")]
    id: String,
    /// A semantic version; a new version of a registered id adds that version.
    #[schema(example = "1.0.0")]
    version: String,
    /// The protocol the plugin speaks (default `json_lines`).
    #[serde(default)]
    runtime: Runtime,
    /// The executable, inside the operator's plugin directory (`GLEANER_PLUGINS__DIR`) on the
    /// API host and every worker; a relative path is taken relative to it. A Cloudforet plugin
    /// has either this or `endpoint`.
    #[serde(default)]
    #[schema(example = "json_inventory.py")]
    command: String,
    /// The command's arguments; for a Cloudforet plugin, `{port}` becomes the port it serves
    /// on.
    #[serde(default)]
    args: Vec<String>,
    /// A collection running longer is killed and fails (default 3600).
    #[serde(default)]
    timeout_seconds: Option<u64>,
    /// Cloudforet: what the plugin is.
    #[serde(default)]
    kind: Option<PluginKind>,
    /// Cloudforet: environment variables of the process, among those the operator allows
    /// (`GLEANER_PLUGINS__ENV`). Never credentials: they go in each request.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Cloudforet: the port the process serves on, for a plugin that cannot be told one;
    /// otherwise Gleaner picks a free one (`SPACEONE_PORT`, `{port}` in `args`).
    #[serde(default)]
    port: Option<u16>,
    /// Cloudforet: `http://host:port` of a plugin already serving, instead of a command; it
    /// must be an endpoint the operator allows (`GLEANER_NETWORK__ALLOW_ENDPOINTS`).
    #[serde(default)]
    #[schema(example = "http://127.0.0.1:50051")]
    endpoint: Option<String>,
    /// Cloudforet: the provider whose service accounts the plugin collects with (default: the
    /// provider its metadata names).
    #[serde(default)]
    #[schema(example = "aws")]
    provider: Option<String>,
    /// Cloudforet: a display name (default: the id).
    #[serde(default)]
    name: Option<String>,
    /// Cloudforet metric data source: the metrics Gleaner collects with it, by the plugin's
    /// metric key (`CPUUtilization`) and the resource type they are for. A Cloudforet
    /// monitoring plugin names its metrics per resource only (`Metric.list`), so the operator
    /// says which to keep.
    #[serde(default)]
    metrics: Vec<gleaner_common::metric::MetricInfo>,
}

const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// Checks the request; every problem at once.
fn validate(
    body: RegisterPlugin,
    plugins: &PluginSettings,
    access: &Access,
) -> Result<Validated, ApiError> {
    let mut errors = Vec::new();
    if !valid_id(&body.id) {
        errors.push(Invalid::new(
            "id",
            "1–64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    let version = semver::Version::parse(&body.version)
        .map_err(|e| {
            errors.push(Invalid::new(
                "version",
                format!("must be a semantic version such as 1.0.0: {e}"),
            ));
        })
        .ok();
    match body.runtime {
        Runtime::JsonLines => {
            if body.command.trim().is_empty() {
                errors.push(Invalid::new("command", "must not be empty"));
            }
            let cloudforet_only = [
                ("kind", body.kind.is_some()),
                ("metrics", !body.metrics.is_empty()),
                ("env", !body.env.is_empty()),
                ("port", body.port.is_some()),
                ("endpoint", body.endpoint.is_some()),
                ("provider", body.provider.is_some()),
                ("name", body.name.is_some()),
            ];
            for (field, given) in cloudforet_only {
                if given {
                    errors.push(Invalid::new(
                        field,
                        "is for `runtime: cloudforet` plugins only (a JSON-lines plugin says it in its init)",
                    ));
                }
            }
        }
        Runtime::Cloudforet => check_cloudforet(&body, plugins, access, &mut errors),
    }
    let timeout_seconds = body.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
        errors.push(Invalid::new(
            "timeout_seconds",
            format!("must be between 1 and {MAX_TIMEOUT_SECONDS}"),
        ));
    }
    match version {
        Some(version) if errors.is_empty() => Ok(Validated {
            id: body.id,
            version,
            kind: body.kind,
            metrics: body.metrics,
            provider: body.provider,
            name: body.name,
            spec: Spec {
                command: body.command,
                args: body.args,
                timeout_seconds,
                runtime: body.runtime,
                env: body.env,
                port: body.port,
                endpoint: body.endpoint,
            },
        }),
        _ => Err(ApiError::invalid(errors)),
    }
}

/// A checked registration.
struct Validated {
    id: String,
    version: semver::Version,
    kind: Option<PluginKind>,
    metrics: Vec<gleaner_common::metric::MetricInfo>,
    provider: Option<String>,
    name: Option<String>,
    spec: Spec,
}

/// The fields of a Cloudforet plugin: a kind Gleaner runs, a command or an allowed endpoint,
/// and only allowed environment variables, whose URLs are allowed endpoints too (they are
/// where the plugin sends what it is given, such as `AWS_ENDPOINT_URL`).
fn check_cloudforet(
    body: &RegisterPlugin,
    plugins: &PluginSettings,
    access: &Access,
    errors: &mut Vec<Invalid>,
) {
    match body.kind {
        None => errors.push(Invalid::new(
            "kind",
            "is required for a Cloudforet plugin: collector, cost_data_source or metric_data_source",
        )),
        Some(PluginKind::Collector | PluginKind::CostDataSource) => {}
        Some(PluginKind::MetricDataSource) => {}
    }
    match (body.kind, body.metrics.is_empty()) {
        (Some(PluginKind::MetricDataSource), true) => errors.push(Invalid::new(
            "metrics",
            "a Cloudforet metric data source needs the metrics to collect: [{name, resource_type, unit}], name being the plugin's metric key",
        )),
        (Some(PluginKind::MetricDataSource), false) => {
            check_metrics("metrics", &body.metrics, errors);
        }
        (_, false) => errors.push(Invalid::new(
            "metrics",
            "only a metric data source (`kind: metric_data_source`) collects metrics",
        )),
        (_, true) => {}
    }
    match (&body.endpoint, body.command.trim().is_empty()) {
        (Some(_), false) => errors.push(Invalid::new(
            "endpoint",
            "give either `command` (Gleaner runs the plugin) or `endpoint` (it runs already), not both",
        )),
        (None, true) => errors.push(Invalid::new(
            "command",
            "give `command` (Gleaner runs the plugin) or `endpoint` (it runs already)",
        )),
        (Some(endpoint), true) => {
            if !endpoint.starts_with("http://") {
                errors.push(Invalid::new(
                    "endpoint",
                    "must be http://host:port: Cloudforet plugins serve gRPC without TLS",
                ));
            } else if let Err(e) = access.endpoint("endpoint", endpoint, &[]) {
                errors.push(e);
            }
            for (field, given) in [
                ("args", !body.args.is_empty()),
                ("env", !body.env.is_empty()),
                ("port", body.port.is_some()),
            ] {
                if given {
                    errors.push(Invalid::new(
                        field,
                        "is for a plugin Gleaner runs (`command`), not one at an `endpoint`",
                    ));
                }
            }
        }
        (None, false) => {}
    }
    if body.port == Some(0) {
        errors.push(Invalid::new(
            "port",
            "must be 1–65535; leave it out and Gleaner picks a free port",
        ));
    }
    for (name, value) in &body.env {
        if let Err(e) = external::check_env(plugins, access, name, value) {
            errors.push(e);
        }
    }
}

/// Each metric a data source collects has a usable name and a resource type; refusals name
/// `<field>[i].name` or `<field>[i].resource_type`.
fn check_metrics(
    field: &str,
    metrics: &[gleaner_common::metric::MetricInfo],
    errors: &mut Vec<Invalid>,
) {
    for (i, m) in metrics.iter().enumerate() {
        if let Err(e) = gleaner_common::metric::check_name("name", &m.name) {
            errors.push(Invalid::new(format!("{field}[{i}].name"), e.detail));
        }
        if m.resource_type.trim().is_empty() {
            errors.push(Invalid::new(
                format!("{field}[{i}].resource_type"),
                "must not be empty",
            ));
        }
    }
}

/// What `init` answered must describe a plugin Gleaner can run.
fn check_metadata(meta: &external::Metadata) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    match (meta.kind, meta.metrics.is_empty()) {
        (PluginKind::MetricDataSource, true) => errors.push(Invalid::new(
            "metadata.metrics",
            "a metric data source declares the metrics it collects: [{name, resource_type, unit}]",
        )),
        (PluginKind::MetricDataSource, false) => {
            check_metrics("metadata.metrics", &meta.metrics, &mut errors);
        }
        (_, false) => errors.push(Invalid::new(
            "metadata.metrics",
            "only a metric data source declares metrics",
        )),
        (_, true) => {}
    }
    if provider::find(&meta.provider).is_none() {
        let known: Vec<_> = provider::PROVIDERS.iter().map(|p| p.id).collect();
        errors.push(Invalid::new(
            "metadata.provider",
            format!(
                "unknown provider `{}`; Gleaner knows: {}",
                meta.provider,
                known.join(", ")
            ),
        ));
    }
    if meta.name.trim().is_empty() {
        errors.push(Invalid::new("metadata.name", "must not be empty"));
    }
    if let Err(e) = jsonschema::validator_for(&meta.options_schema) {
        errors.push(Invalid::new(
            "metadata.options_schema",
            format!("not a valid JSON Schema: {e}"),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// Registers a private plugin (or a new version of one) after running its `init`: 201 with the
/// catalog entry; 422 with the plugin's stderr when `init` fails.
#[utoipa::path(
    post, path = "/v1/plugins", operation_id = "register_plugin", tag = "plugins",
    request_body = RegisterPlugin,
    responses(
        (status = 201, description = "The plugin, as the catalog shows it", body = PluginInfo),
        (status = 400, description = "A malformed body, or invalid fields: `id`, `version`, \
            `command`, `timeout_seconds`, the Cloudforet fields `kind`, `endpoint`, `env.<name>`, \
            `port`, `provider`, or `metadata.kind`, `metadata.provider`, \
            `metadata.options_schema` from what `init` answered",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 403, description = "Private plugins are disabled (no GLEANER_PLUGINS__DIR)",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The version is registered already, or `id` is official",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 422, description = "The plugin could not be started or its `init` failed; \
            `stderr` has what it wrote",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn register(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiJson(body): ApiJson<RegisterPlugin>,
) -> ApiResult<(StatusCode, Json<PluginInfo>)> {
    let v = validate(body, &state.plugins, &state.access)?;
    // Private plugins are the operator's to enable, wherever they run.
    if state.plugins.dir.is_none() {
        return Err(ApiError::new(Code::Forbidden, external::PRIVATE_DISABLED));
    }
    let run = if v.spec.endpoint.is_some() {
        v.spec.clone()
    } else {
        let command = external::resolve_command(state.plugins.dir.as_deref(), &v.spec.command)
            .map_err(|e| ApiError::from(Invalid::new("command", e)))?;
        Spec {
            command: command.to_string_lossy().into_owned(),
            ..v.spec.clone()
        }
    };
    plugin::ensure_new_version(&state.db, domain, &v.id, &v.version.to_string()).await?;
    let metadata = match v.spec.runtime {
        Runtime::JsonLines => external::init(&run).await.map_err(|e| {
            ApiError::new(
                Code::PluginFailed,
                format!("`{}` failed its init call: {}", v.spec.command, e.error),
            )
            .with_stderr(e.stderr)
        })?,
        Runtime::Cloudforet => cloudforet_init(domain, &v, &run).await?,
    };
    check_metadata(&metadata)?;
    let info = plugin::register(
        &state.db,
        &state.catalog,
        domain,
        Registration {
            id: v.id,
            version: v.version,
            spec: v.spec,
            metadata,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Starts a Cloudforet plugin (or reaches its endpoint), asks its `init`, and makes its
/// catalog entry of the answer. The process is stopped afterwards: workers start their own.
async fn cloudforet_init(
    domain: DomainId,
    v: &Validated,
    run: &Spec,
) -> Result<external::Metadata, ApiError> {
    let kind = v.kind.unwrap_or(PluginKind::Collector);
    let what = v.spec.endpoint.as_deref().unwrap_or(&v.spec.command);
    let host = gleaner_cloudforet::Host::new(Duration::from_secs(60));
    let answer = match host
        .lease(&format!("register/{}", v.id), run, &serde_json::Map::new())
        .await
    {
        Err(e) => Err(ApiError::new(
            Code::PluginFailed,
            format!("`{what}` could not be started: {e}"),
        )
        .with_stderr(e.output().to_owned())),
        Ok(lease) => {
            let answer = lease
                .client()
                .init(
                    kind,
                    &json!({}),
                    &domain.to_string(),
                    external::INIT_TIMEOUT,
                )
                .await;
            let output = lease.output();
            answer.map_err(|e| {
                ApiError::new(
                    Code::PluginFailed,
                    format!("`{what}` failed its init call: {e}"),
                )
                .with_stderr(output)
            })
        }
    };
    host.shutdown().await;
    let meta = answer?;
    let named = meta
        .get("provider")
        .and_then(Value::as_str)
        .or_else(|| {
            meta.get("supported_providers")
                .and_then(Value::as_array)
                .and_then(|p| p.first())
                .and_then(Value::as_str)
        })
        .map(str::to_owned);
    let Some(provider) = v.provider.clone().or(named) else {
        return Err(ApiError::from(Invalid::new(
            "provider",
            "the plugin's metadata names no provider: give the provider whose service accounts it collects with",
        )));
    };
    let options_schema = match meta.get("options_schema") {
        Some(s @ Value::Object(o)) if !o.is_empty() => s.clone(),
        _ => json!({"type": "object"}),
    };
    Ok(external::Metadata {
        name: v.name.clone().unwrap_or_else(|| v.id.clone()),
        description: format!("Cloudforet {} plugin", kind.as_str()),
        kind,
        provider,
        resource_types: Vec::new(),
        options_schema,
        metrics: v.metrics.clone(),
        plugin_metadata: Some(Value::Object(meta)),
    })
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn plugin_ids() {
        assert!(valid_id("my-plugin.v2_x"));
        assert!(valid_id("9lives"));
        assert!(!valid_id(""));
        assert!(!valid_id("-x"));
        assert!(!valid_id("My"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
