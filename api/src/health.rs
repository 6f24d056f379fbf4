//! Probes: `/healthz` (the process is up) and `/readyz` (its dependencies answer).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers a query and the broker accepts a channel; 503 otherwise,
/// saying which dependency is down. The standalone mode has no broker: its check reads
/// `in-process`.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
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
        Json(
            json!({"status": word(ready), "checks": {"database": word(database), "broker": broker.unwrap_or("unavailable")}}),
        ),
    )
}
