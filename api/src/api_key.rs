//! `/v1/api-keys`: the domain's API keys, for its admins.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use gleaner_common::id::{ApiKeyId, ProjectId};
use gleaner_common::model::{Name, Role};
use gleaner_common::store::api_key::{self, ApiKey, NewKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiJson, Tenant, parse_id};
use crate::problem::{self, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

/// A new API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// 1–255 characters, unique among the domain's keys; trimmed.
    #[schema(example = "ci")]
    name: String,
    role: Role,
    /// Limits the key to these projects: it sees and changes only their service accounts,
    /// resources and costs, and none of what spans the domain (collectors, plugins,
    /// schedules).
    project_ids: Option<Vec<ProjectId>>,
    /// When the key stops working; never when absent.
    expires_at: Option<DateTime<Utc>>,
}

/// A key just created: the only answer that holds its secret.
#[derive(Debug, Serialize, ToSchema)]
struct CreatedKey {
    #[serde(flatten)]
    key: ApiKey,
    /// The key, shown this once: send it as `Authorization: Bearer <key>`.
    #[schema(example = "glk_3f9a1c07…")]
    secret: String,
}

/// Creates an API key; its secret is in this answer only.
#[utoipa::path(
    post, path = "/v1/api-keys", operation_id = "create_api_key", tag = "api keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, with its secret (shown this once)", body = CreatedKey),
        (status = 400, description = "A malformed body, an invalid name, role or project, or an expiry in the past",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The name is taken",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn create(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let new = NewKey {
        name: Name::parse("name", &body.name)?,
        role: body.role,
        project_ids: body.project_ids,
        expires_at: body.expires_at,
    };
    let (key, secret) = api_key::create(&state.db, domain, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key,
            secret: secret.expose().to_owned(),
        }),
    ))
}

/// The domain's keys.
#[derive(Debug, Serialize, ToSchema)]
struct ApiKeyList {
    items: Vec<ApiKey>,
}

/// Lists the domain's API keys, revoked ones included, without their secrets.
#[utoipa::path(
    get, path = "/v1/api-keys", operation_id = "list_api_keys", tag = "api keys",
    responses((status = 200, description = "The keys, oldest first", body = ApiKeyList)),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
) -> ApiResult<Json<ApiKeyList>> {
    let items = api_key::list(&state.db, domain).await?;
    Ok(Json(ApiKeyList { items }))
}

/// Revokes an API key: it stops working on every API process within a second. Revoking a
/// revoked key answers it unchanged.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", operation_id = "revoke_api_key", tag = "api keys",
    params(("id" = ApiKeyId, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key, revoked", body = ApiKey),
        (status = 404, description = "No key with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn revoke(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    let id = parse_id("API key", &id)?;
    let revoked = api_key::revoke(&state.db, domain, id).await?;
    // This process stops honouring it now; the others within `auth::CHECK_EVERY`.
    state.keys.forget(id);
    Ok(Json(revoked))
}
