//! Gleaner's HTTP API: JSON under `/v1`, errors as problem+json.
//!
//! - [`router`] builds the routes over an [`AppState`].
//! - One module per resource: [`project`], [`service_account`], [`plugin`], [`collector`],
//!   [`job`], [`resource`]; [`health`] for probes.
//! - [`problem`] is the error type and its code table; [`extract`] holds extractors whose
//!   rejections are problem+json too.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Request};
use gleaner_common::broker::Publisher;
use gleaner_common::crypto::Cipher;
use gleaner_common::outbox::Signal;
use gleaner_common::plugin::Catalog;
use sea_orm::DatabaseConnection;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub mod collector;
pub mod extract;
pub mod health;
pub mod job;
pub mod plugin;
pub mod problem;
pub mod project;
pub mod resource;
pub mod service_account;

/// What handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The parts of the state.
pub struct Inner {
    pub db: DatabaseConnection,
    pub cipher: Cipher,
    pub catalog: Catalog,
    /// Wakes the outbox relay after a commit that queued messages.
    pub signal: Signal,
    /// The broker, for readiness; `None` in the standalone mode, which dispatches in process.
    pub broker: Option<Arc<dyn Publisher>>,
}

impl AppState {
    #[must_use]
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route, with request ids and a tracing span per request.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(project::routes())
        .merge(service_account::routes())
        .merge(plugin::routes())
        .merge(collector::routes())
        .merge(job::routes())
        .merge(resource::routes())
        .fallback(|| async { problem::ApiError::new(problem::Code::NotFound, "no such route") })
        .with_state(state)
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                tracing::info_span!("http_request", request_id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
