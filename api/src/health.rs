//! Probes: `/healthz` (the process is up) and `/readyz` (its dependencies answer).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sea_orm::ConnectionTrait;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The process is up.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether the API can serve, and the state of each dependency.
#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    checks: Checks,
    /// `ok`, or `unavailable` when a check failed.
    #[schema(example = "ok")]
    status: &'static str,
}

/// One word per dependency.
#[derive(Debug, Serialize, ToSchema)]
struct Checks {
    /// `ok` or `unavailable`; `in-process` in the standalone mode, which has no broker.
    #[schema(example = "ok")]
    broker: &'static str,
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    database: &'static str,
}

/// Liveness: the process is up.
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "probes",
    responses(
        (status = 200, description = "The process is up", body = Health),
    ),
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers a query and the broker accepts a channel.
///
/// 503 otherwise, saying which dependency is down. The standalone mode has no broker: its check
/// reads `in-process`.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is down; `checks` names it", body = Readiness),
    ),
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = state.db.execute_unprepared("SELECT 1").await.is_ok();
    let broker = match &state.broker {
        Some(b) => b.ready().await.then_some("ok"),
        None => Some("in-process"),
    };
    let ready = database && broker.is_some();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(Readiness {
            checks: Checks {
                broker: broker.unwrap_or("unavailable"),
                database: word(database),
            },
            status: word(ready),
        }),
    )
}
