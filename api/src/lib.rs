//! Gleaner's HTTP API: JSON under `/v1`, errors as problem+json.
//!
//! - [`router`] builds the routes over an [`AppState`].
//! - One module per resource: [`project`], [`service_account`], [`plugin`], [`collector`],
//!   [`job`], [`resource`]; [`verify`] for the credential checks of service accounts and
//!   collectors; [`health`] for probes, [`metrics`] for Prometheus.
//! - [`auth`]: who may call what, one rule per route; [`api_key`] and [`audit`] for the
//!   domain's keys and its log of changes.
//! - [`problem`] is the error type and its code table; [`extract`] holds extractors whose
//!   rejections are problem+json too.
//! - [`openapi()`] is the OpenAPI 3.1 document of every route, served at `GET /openapi.json`.
//!
//! # Adding a route
//!
//! The router and the OpenAPI document come from the same registrations, so a route is added to
//! both at once (copy a neighbour, e.g. `project::show`):
//! 1. Put `#[utoipa::path(get, path = "/v1/...", operation_id = "<unique>", tag = "...",
//!    params(...), request_body = ..., responses(...))]` on the handler: the success status with
//!    its body, and each 4xx it can answer as `(status = 404, description = "...", body = Problem,
//!    content_type = problem::CONTENT_TYPE)`; [`openapi()`] adds 500 and 503 to every `/v1` one.
//!    Queries are `#[derive(IntoParams)]` structs, bodies `#[derive(ToSchema)]` types (a named
//!    `XList { items }` for a listing: utoipa inlines a generic's item schema).
//! 2. Register it in its module's `routes()` with `.routes(routes!(handler))`, next to the
//!    handlers of the same path; never with `.route(..)`, which serves it undescribed.
//! 3. Add its rule to `auth::RULES` (who may call it), and its (method, path) to `ROUTES` in
//!    `tests/it/openapi.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Request};
use gleaner_common::broker::Publisher;
use gleaner_common::crypto::Cipher;
use gleaner_common::outbox::Signal;
use gleaner_common::plugin::{Catalog, Verifier};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub mod api_key;
pub mod audit;
pub mod auth;
mod catalog;
pub mod collector;
pub mod console;
pub mod cost;
pub mod extract;
pub mod health;
pub mod job;
pub mod metric;
pub mod metrics;
mod openapi;
pub mod plugin;
pub mod problem;
pub mod project;
pub mod requests;
pub mod resource;
pub mod schedule;
pub mod service_account;
pub mod verify;

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
    /// Cancelled when the server shuts down (by `gleaner::app::serve`): open event streams end
    /// on it, since a graceful shutdown waits for every response to finish.
    pub shutdown: CancellationToken,
    /// How often an open `GET /v1/jobs/events` stream polls the database.
    pub events_poll_interval: Duration,
    /// Private plugins: where their executables must be (`None` disables registering them
    /// as commands), and what a Cloudforet plugin's environment may set.
    pub plugins: gleaner_common::config::PluginSettings,
    /// Runs plugins' credential checks in this process (the worker's plugin registry).
    pub verifier: Arc<dyn Verifier>,
    /// How long a `verify` request waits for its plugin's checks.
    pub verify_timeout: Duration,
    /// API keys checked recently ([`auth`]).
    pub keys: auth::Keys,
    /// The bearer token `/metrics` asks for, if any.
    pub metrics_token: Option<String>,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Requests and event streams per API key.
    pub limits: Arc<auth::Limits>,
    /// What collectors' options may make a worker reach.
    pub access: Arc<gleaner_common::access::Access>,
    /// How long an idempotency key names its first request's job.
    pub idempotency_retention: Duration,
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

/// Every route with its OpenAPI description; see "Adding a route" above.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(project::routes())
        .merge(service_account::routes())
        .merge(plugin::routes())
        .merge(collector::routes())
        .merge(job::routes())
        .merge(resource::routes())
        .merge(catalog::routes())
        .merge(metric::routes())
        .merge(schedule::routes())
        .merge(cost::routes())
        .merge(verify::routes())
        .merge(api_key::routes())
        .merge(audit::routes())
        .merge(openapi::routes())
}

/// The OpenAPI 3.1 document of every route [`router`] serves.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes().into_openapi();
    openapi::add_common_responses(&mut doc);
    doc
}

/// Every route, with request ids and a tracing span per request.
pub fn router(state: AppState) -> Router {
    let (routes, _) = routes().split_for_parts();
    // Inside the routing, so the rule is looked up by the matched route's template.
    let routes = routes.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authorize,
    ));
    finish(routes, state)
}

/// Every route with no key asked: each request acts as `caller`. Only for the benchmark of
/// what checking keys costs (`gleaner-bench api`); never serve it.
#[doc(hidden)]
pub fn router_without_keys(
    state: AppState,
    caller: gleaner_common::store::api_key::Caller,
) -> Router {
    let (routes, _) = routes().split_for_parts();
    let routes = routes.route_layer(axum::middleware::from_fn(
        move |mut req: axum::extract::Request, next: axum::middleware::Next| {
            req.extensions_mut().insert(caller.clone());
            next.run(req)
        },
    ));
    finish(routes, state)
}

/// The layers around the routes: the body limit, the request's span and id, the fallback; and
/// the console beside them, which calls the API's routes in process.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let body_limit = axum::extract::DefaultBodyLimit::max(state.max_body_bytes);
    let api = routes
        .fallback(|| async { problem::ApiError::new(problem::Code::NotFound, "no such route") })
        .with_state(state.clone())
        .layer(body_limit);
    let console = console::routes(api.clone())
        .with_state(state)
        .layer(body_limit);
    api.merge(console)
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                tracing::info_span!("http_request", request_id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
