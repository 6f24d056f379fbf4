//! `/v1/service-accounts` and `/v1/providers`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gleaner_common::id::{ProjectId, ServiceAccountId};
use gleaner_common::model::{Invalid, Name};
use gleaner_common::provider::{self, PROVIDERS, Provider};
use gleaner_common::store::service_account::{
    self, NewServiceAccount, ServiceAccount, ServiceAccountUpdate,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Auth, parse_id};
use crate::problem::{self, ApiError, ApiResult, Code, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(providers))
        .routes(routes!(list, create))
        .routes(routes!(show, update))
}

/// Every provider, in display order.
#[derive(Debug, Serialize, ToSchema)]
struct ProviderList {
    items: &'static [Provider],
}

/// The providers and the credential fields each needs.
#[utoipa::path(
    get, path = "/v1/providers", operation_id = "list_providers", tag = "service accounts",
    responses(
        (status = 200, description = "Every provider, in display order", body = ProviderList),
    ),
)]
async fn providers() -> Json<ProviderList> {
    Json(ProviderList { items: PROVIDERS })
}

/// A new service account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateServiceAccount {
    /// 1–255 characters, unique among the provider's accounts; trimmed.
    #[schema(example = "demo-1")]
    name: String,
    /// A provider's `id` from `GET /v1/providers`.
    #[schema(example = "demo")]
    provider: String,
    /// Required for billing-only providers.
    #[serde(default)]
    project_id: Option<ProjectId>,
    /// The provider's credential fields; checked against its schema (errors name
    /// `credentials.<field>`), encrypted at rest and never returned. Absent is `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
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

/// Creates a service account; its credentials are encrypted and never returned.
#[utoipa::path(
    post,
    path = "/v1/service-accounts",
    operation_id = "create_service_account",
    tag = "service accounts",
    request_body = CreateServiceAccount,
    responses(
        (status = 201, description = "The new service account", body = ServiceAccount),
        (status = 400, description = "A malformed body, or invalid fields: `name`, `provider`, \
            `project_id`, `credentials.<field>` (a URL field naming an endpoint the operator \
            does not allow, too)",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The provider has an account of that name",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateServiceAccount>,
) -> ApiResult<(StatusCode, Json<ServiceAccount>)> {
    let new = NewServiceAccount::try_from(body)?;
    new.provider
        .check_access(&state.access, &new.credentials)
        .map_err(ApiError::invalid)?;
    within_projects(&auth, new.project_id)?;
    let created = service_account::create(&state.db, &state.cipher, auth.domain(), new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the accounts of this provider.
    provider: Option<String>,
}

/// Service accounts, oldest first: never their credentials.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ServiceAccountList {
    pub(crate) items: Vec<ServiceAccount>,
}

/// Lists the service accounts.
#[utoipa::path(
    get,
    path = "/v1/service-accounts",
    operation_id = "list_service_accounts",
    tag = "service accounts",
    params(ListQuery),
    responses(
        (status = 200, description = "Every service account, or the provider's",
            body = ServiceAccountList),
        (status = 400, description = "An unknown query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ServiceAccountList>> {
    let filter = service_account::Filter {
        provider: q.provider.as_deref(),
        projects: auth.projects(),
        ..service_account::Filter::default()
    };
    let items = service_account::list(&state.db, auth.domain(), &filter).await?;
    Ok(Json(ServiceAccountList { items }))
}

/// One service account.
#[utoipa::path(
    get,
    path = "/v1/service-accounts/{id}",
    operation_id = "get_service_account",
    tag = "service accounts",
    params(("id" = ServiceAccountId, Path, description = "The service account's id")),
    responses(
        (status = 200, description = "The service account", body = ServiceAccount),
        (status = 404, description = "No service account with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn show(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ServiceAccount>> {
    Ok(Json(visible(&state, &auth, &id).await?))
}

/// A service account the key sees: 404 for one outside its projects, as for another
/// domain's.
pub(crate) async fn visible(state: &AppState, auth: &Auth, id: &str) -> ApiResult<ServiceAccount> {
    let id: ServiceAccountId = parse_id("service account", id)?;
    let account = service_account::get(&state.db, auth.domain(), id).await?;
    if !auth.sees(account.project_id) {
        return Err(ApiError::not_found("service account", id));
    }
    Ok(account)
}

/// Refuses to put an account in (or move it to) a project a limited key does not have.
fn within_projects(auth: &Auth, project: Option<ProjectId>) -> ApiResult<()> {
    if auth.sees(project) {
        return Ok(());
    }
    Err(ApiError::field(
        Code::Forbidden,
        "project_id",
        "this key is limited to projects: name one of them",
    ))
}

/// A change to a service account: any of its fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateServiceAccount {
    #[serde(default)]
    name: Option<String>,
    /// `null` removes the account from its project (refused for billing-only providers).
    #[serde(default, deserialize_with = "crate::collector::present")]
    #[schema(value_type = Option<ProjectId>)]
    project_id: Option<Option<ProjectId>>,
    /// Replaces every credential field, checked against the provider's schema as on create.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    credentials: Option<Value>,
}

/// Changes a service account's name, project or credentials (replaced as a whole, checked as
/// on create, encrypted, never returned).
#[utoipa::path(
    patch,
    path = "/v1/service-accounts/{id}",
    operation_id = "update_service_account",
    tag = "service accounts",
    params(("id" = ServiceAccountId, Path, description = "The service account's id")),
    request_body = UpdateServiceAccount,
    responses(
        (status = 200, description = "The service account", body = ServiceAccount),
        (status = 400, description = "Invalid fields: `name`, `project_id`, `credentials.<field>`",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No service account with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The provider has an account of that name",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateServiceAccount>,
) -> ApiResult<Json<ServiceAccount>> {
    let domain = auth.domain();
    let current = visible(&state, &auth, &id).await?;
    let id = current.id;
    if let Some(project) = body.project_id {
        within_projects(&auth, project)?;
    }
    let mut errors = Vec::new();
    let name = body
        .name
        .map(|n| Name::parse("name", &n).map_err(|e| errors.push(e)).ok())
        .unwrap_or_default();
    let credentials = match (body.credentials, provider::find(&current.provider)) {
        (Some(c), Some(p)) => p
            .validate(&c)
            .and_then(|c| p.check_access(&state.access, &c).map(|()| c))
            .map_err(|e| errors.extend(e))
            .ok(),
        _ => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let change = ServiceAccountUpdate {
        name,
        project_id: body.project_id,
        credentials,
    };
    Ok(Json(
        service_account::update(&state.db, &state.cipher, domain, id, change).await?,
    ))
}
