//! The OpenAPI 3.1 description of the API, generated from the handlers and served at
//! `GET /openapi.json`.
//!
//! Each handler carries `#[utoipa::path]` (method, path, parameters, body, responses), and each
//! module's `routes()` registers handlers with `utoipa_axum::routes!`, which adds a route to the
//! axum router and its operation to the document in one step: a route registered that way cannot
//! be served undescribed. [`crate::openapi`] assembles the whole document.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{self, Need};
use crate::problem::{self, FieldError, Problem};

/// What the derive contributes: info, tags and the shared error schema; paths come from the
/// routers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Gleaner",
        version = env!("CARGO_PKG_VERSION"),
        description = "Collects cloud resource inventory through plugins. Every body is JSON; \
            every error is RFC 9457 `application/problem+json` (the `Problem` schema) naming the \
            offending fields.",
    ),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "probes", description = "Liveness and readiness"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "projects", description = "Projects group service accounts"),
        (name = "service accounts", description = "Provider accounts and their credentials"),
        (name = "plugins", description = "The plugin catalog"),
        (name = "collectors", description = "Configured uses of a plugin, and collecting"),
        (name = "jobs", description = "Collections and their tasks"),
        (name = "resources", description = "Collected resources and their history"),
        (name = "monitoring", description = "Collected metric samples: series, queries and top-N"),
        (name = "openapi", description = "This document"),
    )
)]
pub(crate) struct ApiDoc;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(document))
}

/// Built once, on the first request: the document does not change while the process runs.
static DOCUMENT: LazyLock<OpenApi> = LazyLock::new(crate::openapi);

/// This OpenAPI 3.1 document.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "openapi",
    responses(
        (status = 200, description = "The OpenAPI document of this API", body = Object),
    ),
)]
async fn document() -> Json<&'static OpenApi> {
    Json(&DOCUMENT)
}

/// Adds what the access rules ([`crate::auth::RULES`]) and the server say of every operation,
/// so handlers list only their own 4xx: the bearer scheme a route asks for with its 401, 403
/// and 429; 413 and 415 for a body; 500 for a bug, 503 while the database is unreachable.
pub(crate) fn add_common_responses(doc: &mut OpenApi) {
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                problem::CONTENT_TYPE,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("glk_ followed by 64 hex characters")
                    .description(Some(
                        "An API key: `Authorization: Bearer glk_…`. For `/metrics`, the token of \
                     GLEANER_API__METRICS_TOKEN when one is set.",
                    ))
                    .build(),
            ),
        );
    for (path, item) in &mut doc.paths.paths {
        let operations = [
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
            ("PATCH", &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let need = method
                .parse()
                .ok()
                .and_then(|m| auth::rule_of(&m, path))
                .map(|r| (r.need, r.domain_wide));
            let mut add = |status: &str, description: String| {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(&description).into());
            };
            match need {
                Some((Need::Role(role), domain_wide)) => {
                    add("401", "No API key, or one that is unknown, revoked or expired (with `WWW-Authenticate: Bearer`)".into());
                    let limited = if domain_wide {
                        ", or a key limited to projects (this acts on what spans the domain)"
                    } else {
                        ""
                    };
                    add(
                        "403",
                        format!("The key's role is below `{}`{limited}", role.as_str()),
                    );
                    add(
                        "429",
                        "The key is over its request rate, or the client's address over its failed \
                         authentications; wait for `Retry-After` seconds".into(),
                    );
                    operation.security =
                        Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                }
                Some((Need::MetricsToken, _)) => {
                    add(
                        "401",
                        "GLEANER_API__METRICS_TOKEN is set and the request does not carry it"
                            .into(),
                    );
                    // Open unless the operator set a token.
                    operation.security = Some(vec![
                        SecurityRequirement::default(),
                        SecurityRequirement::new(BEARER, Vec::<String>::new()),
                    ]);
                }
                Some((Need::Open, _)) | None => {
                    operation.security = Some(vec![SecurityRequirement::default()]);
                }
            }
            if operation.request_body.is_some() {
                add(
                    "413",
                    "The body is larger than GLEANER_API__MAX_BODY_BYTES".into(),
                );
                add(
                    "415",
                    "The body is not sent as `Content-Type: application/json`".into(),
                );
            }
            if path.starts_with("/v1/") {
                add(
                    "500",
                    "The server failed; the cause is logged, not sent".into(),
                );
                add("503", "The database is unavailable; retry shortly".into());
            }
        }
    }
}

/// The name of the bearer scheme in the document.
const BEARER: &str = "bearer";

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Every `$ref` in `value`, with where it was found.
    fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(target)) => out.push((at.clone(), target)),
                        _ => refs(v, format!("{at}/{key}"), out),
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    refs(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn document_is_json_whose_refs_all_resolve_to_schemas() {
        let text = crate::openapi()
            .to_pretty_json()
            .expect("the document serializes");
        let doc: Value = serde_json::from_str(&text).expect("the document is valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Gleaner");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemas = doc["components"]["schemas"]
            .as_object()
            .expect("components.schemas is an object");
        let mut found = Vec::new();
        refs(&doc, String::new(), &mut found);
        assert!(!found.is_empty(), "the document has no $ref at all");
        let dangling: Vec<_> = found
            .iter()
            .filter(|(_, target)| {
                target
                    .strip_prefix("#/components/schemas/")
                    .is_none_or(|name| !schemas.contains_key(name))
            })
            .collect();
        assert!(dangling.is_empty(), "unresolved $refs: {dangling:#?}");
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(crate::openapi()).expect("the document serializes");
        let mut seen = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(
                    seen.insert(id.to_owned()),
                    "{method} {path}: `{id}` is taken"
                );
            }
        }
    }

    #[test]
    fn every_error_response_is_a_problem() {
        let doc = serde_json::to_value(crate::openapi()).expect("the document serializes");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    if !status.starts_with(['4', '5']) || path == "/readyz" {
                        continue;
                    }
                    let schema = &response["content"][problem::CONTENT_TYPE]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}
