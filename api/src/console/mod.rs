//! The web console: server-rendered pages over the HTTP API, served at `/`.
//!
//! # Design
//!
//! Every page acts as the signed-in API key, through the API itself: a handler sends the
//! API's own request to the API's router in process ([`Api`]) and renders the answer. So the
//! console can do exactly what the key may do through the API, with the same validation, the
//! same audit records and the same problem+json, whose `errors` are shown beside their fields.
//! No rule lives in a page.
//!
//! The HTML is rendered with maud and made live with htmx (forms that swap a part of the
//! page); the job widget reads the job event stream through [`events`]. Every asset is
//! compiled into the binary ([`assets`]); nothing is loaded from elsewhere, and the
//! Content-Security-Policy says so.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::AppState;

mod assets;
mod billing;
mod collector;
mod form;
mod job;
mod resource;
mod schedule;
mod service_account;
pub mod session;
mod wizard;

pub use session::{Posted, Session};

/// The console's routes. `api` is the API's router, which pages call in process.
pub fn routes(api: Router) -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/collectors") }),
        )
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/assets/{name}", get(assets::serve))
        .route("/events", get(job::events))
        .merge(collector::routes())
        .merge(job::routes())
        .merge(service_account::routes())
        .merge(wizard::routes())
        .merge(schedule::routes())
        .merge(resource::routes())
        .merge(billing::routes())
        .layer(axum::Extension(ApiRouter(api)))
        .layer(axum::middleware::from_fn(headers))
}

/// An id in a page's path: a UUID, else 404 before anything is asked of the API. An id is put
/// into the path of the API's request, where `x?limit=1` or `../` would change what is asked.
pub(crate) struct Id(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Id {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(IntoResponse::into_response)?;
        uuid::Uuid::parse_str(&raw)
            .map(|u| Self(u.to_string()))
            .map_err(|_| {
                (
                    StatusCode::NOT_FOUND,
                    "No such page: the path does not hold an id.",
                )
                    .into_response()
            })
    }
}

/// The API's router, for [`Api`].
#[derive(Clone)]
pub(crate) struct ApiRouter(Router);

/// The API as the signed-in key: one request at a time, in process.
pub(crate) struct Api<'a> {
    router: &'a Router,
    key: &'a str,
    /// The browser's address, which the API's limit on failed keys counts by.
    peer: Option<std::net::SocketAddr>,
}

/// What the API answered to a request it refused: its status and problem body.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub problem: Value,
}

impl Refusal {
    /// A refusal of the console's own, on one field (a form it reads before the API does).
    pub fn field(status: StatusCode, field: &str, detail: &str) -> Self {
        Self {
            status,
            problem: serde_json::json!({"detail": detail, "errors": [{"field": field, "detail": detail}]}),
        }
    }

    /// The problem's detail.
    pub fn detail(&self) -> String {
        self.problem["detail"]
            .as_str()
            .unwrap_or("the request failed")
            .to_owned()
    }
}

impl<'a> Api<'a> {
    pub(crate) fn new(router: &'a ApiRouter, session: &'a Session) -> Self {
        Self {
            router: &router.0,
            key: session.key(),
            peer: None,
        }
    }

    /// The same, counting refused keys against the browser's address as the API does.
    pub(crate) fn with_peer(mut self, peer: Option<std::net::SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    /// Sends `method path` with `body`; the JSON answer, or the API's refusal.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Refusal> {
        let resp = self.send(method, path, body).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(Refusal {
                status,
                problem: value,
            })
        }
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, Refusal> {
        self.call(Method::GET, path, None).await
    }

    /// The API's job event stream as it is, resumed after `last_event_id`.
    pub(crate) async fn events(&self, last_event_id: Option<&HeaderValue>) -> Response {
        let mut req = Request::builder()
            .uri("/v1/jobs/events")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        self.oneshot(req.body(Body::empty())).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key));
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.oneshot(req.body(body)).await
    }

    async fn oneshot(&self, req: Result<Request<Body>, axum::http::Error>) -> Response {
        // Only a path that is not a URI fails here; paths are built from ids and constants.
        let Ok(mut req) = req else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        if let Some(peer) = self.peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// An error page for a refusal of the API (404 for an unknown id, 403 for a role too low).
pub(crate) fn refused(r: &Refusal, session: &Session) -> Response {
    let title = r.problem["title"].as_str().unwrap_or("Error").to_owned();
    let status = if r.status.is_client_error() || r.status.is_server_error() {
        r.status
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        status,
        page(
            &title,
            Some(session),
            html! {
                h1 { (title) }
                p role="alert" class="error" { (r.detail()) }
                @if r.status == StatusCode::UNAUTHORIZED {
                    p { a href="/sign-in" { "Sign in again" } }
                }
            },
        ),
    )
        .into_response()
}

/// A whole page: the header with the navigation, `main`, and the job widget when signed in.
pub(crate) fn page(title: &str, session: Option<&Session>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // htmx would add a <style> element, which the Content-Security-Policy refuses.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
                @if let Some(s) = session {
                    meta name="csrf-token" content=(s.csrf());
                }
                title { (title) " · Gleaner" }
                link rel="stylesheet" href=(assets::url("console.css"));
                script src=(assets::url("htmx.min.js")) defer {}
                script src=(assets::url("console.js")) defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    a class="brand" href="/" { "Gleaner" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/service-accounts" { "Service accounts" } }
                                li { a href="/collectors" { "Collectors" } }
                                li { a href="/jobs" { "Jobs" } }
                                li { a href="/resources" { "Resources" } }
                                li { a href="/billing" { "Billing" } }
                            }
                        }
                        form method="post" action="/sign-out" class="sign-out" {
                            (csrf_field(s))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" { (main) }
                @if session.is_some() {
                    aside id="job-widget" aria-label="Recent jobs" aria-live="polite" {
                        h2 { "Jobs" }
                        ol id="job-widget-list" {}
                        a href="/jobs" { "More" }
                    }
                }
            }
        }
    }
}

/// Data for a page's script, as JSON that cannot end the element early: `<` is escaped, so no
/// value (a resource's name, say) can close the script and open markup of its own.
pub(crate) fn json_script(id: &str, v: &Value) -> Markup {
    html! {
        script id=(id) type="application/json" { (maud::PreEscaped(v.to_string().replace('<', "\\u003c"))) }
    }
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf()); }
}

/// A page that is not the session's form: refused with 403.
pub(crate) fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "This form is out of date or was sent from another site; reload the page and send it again.",
    )
        .into_response()
}

/// Sends the browser to `to` after a form: a redirect, or for htmx (which would follow a
/// redirect itself and leave the address bar behind) an `HX-Location`.
pub(crate) fn go_to(headers: &HeaderMap, to: &str) -> Response {
    if htmx(headers) {
        let mut resp = StatusCode::OK.into_response();
        if let Ok(v) = HeaderValue::from_str(to) {
            resp.headers_mut().insert("hx-location", v);
        }
        return resp;
    }
    axum::response::Redirect::to(to).into_response()
}

/// Whether the request was made by htmx (a part of a page is wanted, not a whole one).
pub(crate) fn htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// The headers every console response carries: nothing is loaded from elsewhere, nothing
/// frames the console, and pages that show one key's data are not cached.
async fn headers(req: Request<Body>, next: axum::middleware::Next) -> Response {
    // A POST of another origin is refused before anything: with SameSite=Strict it would have
    // no session, but the sign-in form has none to lose (a login CSRF).
    if req.method() == Method::POST && cross_site(req.headers()) {
        return csrf_refused();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Whether a request says it comes from a page of another site (`Sec-Fetch-Site`, or an
/// `Origin` whose host is not ours).
fn cross_site(h: &HeaderMap) -> bool {
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    match (
        h.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        h.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => {
            origin != "null"
                && origin
                    .split_once("://")
                    .is_none_or(|(_, rest)| rest.trim_end_matches('/') != host)
        }
        (Some(_), None) => true,
        _ => false,
    }
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    next: Option<String>,
}

async fn sign_in_page(axum::extract::Query(q): axum::extract::Query<SignInQuery>) -> Markup {
    sign_in_form(q.next.as_deref(), None)
}

fn sign_in_form(next: Option<&str>, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            form method="post" action="/sign-in" class="stack" {
                input type="hidden" name="next" value=(next.unwrap_or("/"));
                div class="field" {
                    label for="api_key" { "API key" }
                    input id="api_key" name="api_key" type="password" required
                        autocomplete="current-password" spellcheck="false"
                        aria-describedby=[error.map(|_| "api_key-error")]
                        aria-invalid=[error.map(|_| "true")];
                    @if let Some(e) = error {
                        p id="api_key-error" class="error" role="alert" { (e) }
                    }
                    p class="hint" {
                        "A key of your domain (" code { "glk_…" } "). The standalone mode writes the first admin key to "
                        code { "gleaner-data/admin.key" } "."
                    }
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The browser's address, when the server was started with it (`gleaner api`, standalone).
struct Peer(Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

#[derive(serde::Deserialize)]
struct SignInForm {
    api_key: String,
    next: Option<String>,
}

async fn sign_in(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(api): axum::Extension<ApiRouter>,
    Peer(peer): Peer,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SignInForm>,
) -> Response {
    let key = form.api_key.trim();
    let next = safe_next(form.next.as_deref());
    let probe = Session::probe(key);
    // Any key may read projects: this proves the key, through the API's own check, which also
    // slows an address that keeps trying wrong keys (429).
    if let Err(r) = Api::new(&api, &probe)
        .with_peer(peer)
        .get("/v1/projects")
        .await
    {
        let status = if r.status == StatusCode::TOO_MANY_REQUESTS {
            r.status
        } else {
            StatusCode::UNAUTHORIZED
        };
        return (status, sign_in_form(Some(next), Some(&r.detail()))).into_response();
    }
    let Ok(value) = session::seal(&state.cipher, key) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut resp = axum::response::Redirect::to(next).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(Some(&value), &headers),
    );
    resp
}

/// Where to go after signing in: a path of this site only, never another host.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        // Control characters cannot go in a Location header; `\` is `/` to some browsers.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/",
    }
}

async fn sign_out(headers: HeaderMap, _: Posted) -> Response {
    let mut resp = axum::response::Redirect::to("/sign-in").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(None, &headers));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_data_cannot_close_its_element() {
        let html = json_script(
            "d",
            &serde_json::json!({"name": "</script><script>alert(1)"}),
        )
        .into_string();
        assert!(!html.contains("</script><script>"), "{html}");
        assert!(html.contains(r"\u003c/script>"), "{html}");
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        for (given, to) in [
            (Some("/collectors/1?x=2"), "/collectors/1?x=2"),
            (Some("//evil.example/"), "/"),
            (Some("https://evil.example/"), "/"),
            (Some("/\\evil.example"), "/"),
            (Some("/a\r\nSet-Cookie: x=1"), "/"),
            (None, "/"),
        ] {
            assert_eq!(safe_next(given), to, "{given:?}");
        }
    }

    #[test]
    fn posts_of_other_sites_are_told_apart() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&h(&[
            ("origin", "https://evil.example"),
            ("host", "gleaner:8080")
        ])));
        assert!(!cross_site(&h(&[
            ("origin", "http://gleaner:8080"),
            ("host", "gleaner:8080")
        ])));
        // curl and old browsers send neither: the CSRF token still guards them.
        assert!(!cross_site(&h(&[])));
    }
}
