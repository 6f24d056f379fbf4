//! `/v1/plugins`: the catalog, and registration of private plugins.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gleaner_common::external::{self, DEFAULT_TIMEOUT_SECONDS, Spec};
use gleaner_common::model::Invalid;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use gleaner_common::provider;
use gleaner_common::store::plugin::{self, Registration};
use serde::{Deserialize, Serialize};
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

/// A private plugin to register: an executable speaking the plugin protocol (docs/plugins.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterPlugin {
    /// 1–64 characters: lowercase letters, digits, `.`, `_`, `-`.
    #[schema(example = "json-inventory")]
    id: String,
    /// A semantic version; a new version of a registered id adds that version.
    #[schema(example = "1.0.0")]
    version: String,
    /// The executable, inside the operator's plugin directory (`GLEANER_PLUGINS__DIR`) on the
    /// API host and every worker; a relative path is taken relative to it.
    #[schema(example = "json_inventory.py")]
    command: String,
    #[serde(default)]
    args: Vec<String>,
    /// A collection running longer is killed and fails (default 3600).
    #[serde(default)]
    timeout_seconds: Option<u64>,
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
fn validate(body: RegisterPlugin) -> Result<(String, semver::Version, Spec), ApiError> {
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
    if body.command.trim().is_empty() {
        errors.push(Invalid::new("command", "must not be empty"));
    }
    let timeout_seconds = body.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
        errors.push(Invalid::new(
            "timeout_seconds",
            format!("must be between 1 and {MAX_TIMEOUT_SECONDS}"),
        ));
    }
    match version {
        Some(version) if errors.is_empty() => Ok((
            body.id,
            version,
            Spec {
                command: body.command,
                args: body.args,
                timeout_seconds,
            },
        )),
        _ => Err(ApiError::invalid(errors)),
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
            for (i, m) in meta.metrics.iter().enumerate() {
                if let Err(e) = gleaner_common::metric::check_name("name", &m.name) {
                    errors.push(Invalid::new(
                        format!("metadata.metrics[{i}].name"),
                        e.detail,
                    ));
                }
                if m.resource_type.trim().is_empty() {
                    errors.push(Invalid::new(
                        format!("metadata.metrics[{i}].resource_type"),
                        "must not be empty",
                    ));
                }
            }
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
            `command`, `timeout_seconds`, or `metadata.kind`, `metadata.provider`, \
            `metadata.options_schema` from what `init` answered",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 403, description = "Private plugins are disabled (no GLEANER_PLUGINS__DIR)",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The version is registered already, or `id` is official",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 422, description = "The plugin's `init` failed; `stderr` has what it wrote",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn register(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiJson(body): ApiJson<RegisterPlugin>,
) -> ApiResult<(StatusCode, Json<PluginInfo>)> {
    let (id, version, spec) = validate(body)?;
    let command =
        external::resolve_command(state.plugin_dir.as_deref(), &spec.command).map_err(|e| {
            match state.plugin_dir {
                None => ApiError::new(Code::Forbidden, e),
                Some(_) => ApiError::from(Invalid::new("command", e)),
            }
        })?;
    plugin::ensure_new_version(&state.db, domain, &id, &version.to_string()).await?;
    let run = Spec {
        command: command.to_string_lossy().into_owned(),
        ..spec.clone()
    };
    let metadata = external::init(&run).await.map_err(|e| {
        ApiError::new(
            Code::PluginFailed,
            format!("`{}` failed its init call: {}", spec.command, e.error),
        )
        .with_stderr(e.stderr)
    })?;
    check_metadata(&metadata)?;
    let info = plugin::register(
        &state.db,
        &state.catalog,
        domain,
        Registration {
            id,
            version,
            spec,
            metadata,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
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
