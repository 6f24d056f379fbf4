//! `/v1/audit`: every change made through the API, for the domain's admins.

use axum::Json;
use axum::extract::State;
use gleaner_common::store::audit::{self, Entry};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::{ApiQuery, Tenant, page_limit};
use crate::problem::{self, ApiResult, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Entries to return, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// The previous page's `next_cursor`.
    cursor: Option<i64>,
    /// Only the changes of this object (a collector's id, say).
    target_id: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct AuditPage {
    items: Vec<Entry>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<i64>,
}

/// The domain's audit log: every change made through the API (a POST, PATCH or DELETE,
/// collect and cancel included), with the key that made it, its route, its target, and how it
/// ended.
#[utoipa::path(
    get, path = "/v1/audit", operation_id = "list_audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "The changes, newest first", body = AuditPage),
        (status = 400, description = "An invalid or unknown query parameter",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = page_limit(q.limit, 100)?;
    let mut items = audit::list(
        &state.db,
        domain,
        q.target_id.as_deref(),
        q.cursor,
        limit.saturating_add(1),
    )
    .await?;
    let more = items.len() as u64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(AuditPage { items, next_cursor }))
}
