//! `/v1/catalog`: what collectors report besides resources (the cloud service types, regions,
//! namespaces and metric definitions of Cloudforet plugins).

use axum::Json;
use axum::extract::State;
use gleaner_cloudforet::inventory::CatalogKind;
use gleaner_common::model::Invalid;
use gleaner_common::store::catalog::{self, CatalogEntry};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiQuery, Tenant};
use crate::problem::{self, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Catalog entries.
#[derive(Debug, Serialize, ToSchema)]
struct CatalogList {
    items: Vec<CatalogEntry>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only entries of this kind: `cloud_service_type`, `region`, `namespace` or `metric`.
    kind: Option<String>,
    /// Only entries of this provider, e.g. `aws`.
    provider: Option<String>,
}

/// Every catalog entry of the domain (by kind, provider and key): collectors report tens to
/// hundreds of them, so the list is not paged.
#[utoipa::path(
    get, path = "/v1/catalog", operation_id = "list_catalog", tag = "resources",
    params(ListQuery),
    responses(
        (status = 200, description = "Catalog entries", body = CatalogList),
        (status = 400, description = "An unknown `kind` or query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<CatalogList>> {
    if let Some(kind) = &q.kind
        && !CatalogKind::ALL.iter().any(|k| k.as_str() == kind)
    {
        let known: Vec<&str> = CatalogKind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(Invalid::new("kind", format!("must be one of {}", known.join(", "))).into());
    }
    let items = catalog::list(&state.db, domain, q.kind.as_deref(), q.provider.as_deref()).await?;
    Ok(Json(CatalogList { items }))
}
