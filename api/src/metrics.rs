//! `GET /metrics`: this process's metrics in Prometheus text, followed by gauges read from the
//! store at each scrape (jobs by status, the outbox's backlog). The names, types and labels are
//! listed in [`gleaner_common::metrics`].

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use gleaner_common::metrics;
use gleaner_common::store::census;
use tracing::warn;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(scrape))
}

/// Prometheus metrics of this process and of the store.
///
/// Always 200: when the database does not answer, the store's gauges (`gleaner_jobs`,
/// `gleaner_outbox_pending`, `gleaner_outbox_dead`) are left out and the process's own metrics
/// are still served, so one failed query does not blank every panel.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
            content_type = "text/plain; version=0.0.4"),
    ),
)]
async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    let census = match census::read(&state.db).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "reading the store's gauges failed; /metrics serves without them");
            None
        }
    };
    (
        [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render_with(census.as_ref()),
    )
}
