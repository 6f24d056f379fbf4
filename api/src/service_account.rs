//! `/v1/service-accounts` and `/v1/providers`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use gleaner_common::id::ProjectId;
use gleaner_common::model::{Invalid, Name};
use gleaner_common::provider::{self, PROVIDERS};
use gleaner_common::store::service_account::{self, NewServiceAccount, ServiceAccount};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Tenant, parse_id};
use crate::problem::{ApiError, ApiResult};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/providers", get(providers))
        .route("/v1/service-accounts", get(list).post(create))
        .route("/v1/service-accounts/{id}", get(show))
}

async fn providers() -> Json<Value> {
    Json(json!({ "items": PROVIDERS }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateServiceAccount {
    name: String,
    provider: String,
    #[serde(default)]
    project_id: Option<ProjectId>,
    #[serde(default)]
    credentials: Option<Value>,
}

impl TryFrom<CreateServiceAccount> for NewServiceAccount {
    type Error = ApiError;

    fn try_from(body: CreateServiceAccount) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let name = Name::parse("name", &body.name)
            .map_err(|e| errors.push(e))
            .ok();
        let provider = provider::find(&body.provider);
        if provider.is_none() {
            let known: Vec<_> = PROVIDERS.iter().map(|p| p.id).collect();
            errors.push(Invalid::new(
                "provider",
                format!(
                    "unknown provider `{}`; known: {}",
                    body.provider,
                    known.join(", ")
                ),
            ));
        }
        let credentials = provider.and_then(|p| {
            p.validate(&body.credentials.unwrap_or_else(|| json!({})))
                .map_err(|e| errors.extend(e))
                .ok()
        });
        match (name, provider, credentials) {
            (Some(name), Some(provider), Some(credentials)) if errors.is_empty() => {
                Ok(NewServiceAccount {
                    name,
                    provider,
                    project_id: body.project_id,
                    credentials,
                })
            }
            _ => Err(ApiError::invalid(errors)),
        }
    }
}

async fn create(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiJson(body): ApiJson<CreateServiceAccount>,
) -> ApiResult<(StatusCode, Json<ServiceAccount>)> {
    let new = NewServiceAccount::try_from(body)?;
    let created = service_account::create(&state.db, &state.cipher, domain, new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    provider: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let items = service_account::list(&state.db, domain, q.provider.as_deref()).await?;
    Ok(Json(json!({ "items": items })))
}

async fn show(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<ServiceAccount>> {
    let id = parse_id("service account", &id)?;
    Ok(Json(service_account::get(&state.db, domain, id).await?))
}
