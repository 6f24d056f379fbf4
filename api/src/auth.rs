//! Who may call what: every route's rule in one table ([`RULES`]), checked by one middleware
//! ([`authorize`]) before any handler runs.
//!
//! - A request to a `/v1` route carries `Authorization: Bearer <key>`. A missing, unknown,
//!   revoked or expired key gets 401 with `WWW-Authenticate: Bearer`.
//! - The key's role must be at least the route's: `viewer` reads, `member` changes projects,
//!   service accounts, collectors and schedules, collects and cancels, `admin` does everything
//!   (API keys, private plugins, the audit log). Too low a role gets 403 naming the role needed.
//! - A key limited to projects may not use a route that acts on what spans the domain
//!   (collectors, plugins, schedules, new projects, cancels): 403 saying so.
//! - Everything a handler reads is scoped by the key's domain ([`crate::extract::Tenant`]):
//!   another domain's object is 404, never 403, so ids do not leak.
//! - Open: `/healthz`, `/readyz`, `/openapi.json`, and `/metrics` unless
//!   `GLEANER_API__METRICS_TOKEN` asks for a bearer token of its own.
//!
//! A method a route does not take is 405 with `Allow` (HEAD goes with GET, under its rule).
//! A route without a rule is refused (500, logged): a test walks the router so that it never
//! ships that way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gleaner_common::id::ApiKeyId;
use gleaner_common::model::Role;
use gleaner_common::store::api_key::{self, Caller};
use gleaner_common::store::{self, audit};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sea_orm::DatabaseConnection;

use crate::AppState;
use crate::problem::{ApiError, Code};

/// What a route needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: probes and the API's description.
    Open,
    /// The metrics token when one is set (`GLEANER_API__METRICS_TOKEN`), else nothing.
    MetricsToken,
    /// A key of at least this role.
    Role(Role),
}

/// The rule of one route.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub method: &'static str,
    /// The route's template, as registered: `/v1/collectors/{id}`.
    pub path: &'static str,
    pub need: Need,
    /// The route acts on what spans the domain (collectors, plugins, schedules, new
    /// projects): a key limited to projects may not use it.
    pub domain_wide: bool,
}

const fn rule(method: &'static str, path: &'static str, need: Need, domain_wide: bool) -> Rule {
    Rule {
        method,
        path,
        need,
        domain_wide,
    }
}

const OPEN: Need = Need::Open;
const VIEWER: Need = Need::Role(Role::Viewer);
const MEMBER: Need = Need::Role(Role::Member);
const ADMIN: Need = Need::Role(Role::Admin);

/// Every route and what it needs. A route missing here is refused; the README's "Who may do
/// what" table is this one.
pub const RULES: &[Rule] = &[
    rule("GET", "/healthz", OPEN, false),
    rule("GET", "/readyz", OPEN, false),
    rule("GET", "/openapi.json", OPEN, false),
    rule("GET", "/metrics", Need::MetricsToken, false),
    // API keys and the audit log: admins only.
    rule("POST", "/v1/api-keys", ADMIN, true),
    rule("GET", "/v1/api-keys", ADMIN, true),
    rule("DELETE", "/v1/api-keys/{id}", ADMIN, true),
    rule("GET", "/v1/audit", ADMIN, true),
    // Projects.
    rule("GET", "/v1/projects", VIEWER, false),
    rule("POST", "/v1/projects", MEMBER, true),
    rule("GET", "/v1/projects/{id}", VIEWER, false),
    rule("GET", "/v1/projects/{id}/billing", VIEWER, false),
    // Providers and service accounts.
    rule("GET", "/v1/providers", VIEWER, false),
    rule("GET", "/v1/service-accounts", VIEWER, false),
    rule("POST", "/v1/service-accounts", MEMBER, false),
    rule("GET", "/v1/service-accounts/{id}", VIEWER, false),
    rule("PATCH", "/v1/service-accounts/{id}", MEMBER, false),
    rule("POST", "/v1/service-accounts/{id}/verify", MEMBER, false),
    // Plugins: registering one runs a program on the API's and the workers' hosts.
    rule("GET", "/v1/plugins", VIEWER, false),
    rule("POST", "/v1/plugins", ADMIN, true),
    rule("GET", "/v1/plugins/{id}", VIEWER, false),
    // Collectors and their schedules.
    rule("GET", "/v1/collectors", VIEWER, false),
    rule("POST", "/v1/collectors", MEMBER, true),
    rule("GET", "/v1/collectors/{id}", VIEWER, false),
    rule("PATCH", "/v1/collectors/{id}", MEMBER, true),
    rule("DELETE", "/v1/collectors/{id}", MEMBER, true),
    rule("POST", "/v1/collectors/{id}/collect", MEMBER, true),
    rule("POST", "/v1/collectors/{id}/enable", MEMBER, true),
    rule("POST", "/v1/collectors/{id}/disable", MEMBER, true),
    rule("POST", "/v1/collectors/{id}/verify", MEMBER, true),
    rule("GET", "/v1/collectors/{id}/credentials", VIEWER, false),
    rule("GET", "/v1/collectors/{id}/jobs", VIEWER, false),
    rule("GET", "/v1/collectors/{id}/schedules", VIEWER, false),
    rule("POST", "/v1/collectors/{id}/schedules", MEMBER, true),
    rule("GET", "/v1/schedules/{id}", VIEWER, false),
    rule("PATCH", "/v1/schedules/{id}", MEMBER, true),
    rule("DELETE", "/v1/schedules/{id}", MEMBER, true),
    rule("GET", "/v1/schedules/{id}/fires", VIEWER, false),
    // Jobs.
    rule("GET", "/v1/jobs", VIEWER, false),
    rule("GET", "/v1/jobs/events", VIEWER, false),
    rule("GET", "/v1/jobs/{id}", VIEWER, false),
    rule("GET", "/v1/jobs/{id}/tasks", VIEWER, false),
    rule("POST", "/v1/jobs/{id}/cancel", MEMBER, true),
    // Resources and costs.
    rule("GET", "/v1/resources", VIEWER, false),
    rule("GET", "/v1/resources/{id}", VIEWER, false),
    rule("GET", "/v1/resources/{id}/changes", VIEWER, false),
    rule("GET", "/v1/catalog", VIEWER, false),
    rule("GET", "/v1/costs", VIEWER, false),
    rule("GET", "/v1/costs/summary", VIEWER, false),
    rule("GET", "/v1/dashboards/billing", VIEWER, false),
    // Metrics: a query of many series is a read, sent as a body for its length.
    rule("GET", "/v1/metrics", VIEWER, false),
    rule("POST", "/v1/metrics/query", VIEWER, false),
    rule("GET", "/v1/metrics/top", VIEWER, false),
    rule("GET", "/v1/resources/{id}/metrics", VIEWER, false),
    rule("GET", "/v1/resources/{id}/metrics/{metric}", VIEWER, false),
];

/// The rule of a route, by its method and template.
#[must_use]
pub fn rule_of(method: &Method, path: &str) -> Option<&'static Rule> {
    // Asked on every request: a map rather than a walk through the table.
    static BY_ROUTE: std::sync::LazyLock<HashMap<(&'static str, &'static str), &'static Rule>> =
        std::sync::LazyLock::new(|| RULES.iter().map(|r| ((r.method, r.path), r)).collect());
    BY_ROUTE.get(&(method.as_str(), path)).copied()
}

/// The methods the route `path` (a template) takes, by its rules; HEAD with GET.
#[must_use]
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let mut methods: Vec<&'static str> = RULES
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods
}

/// How long a key's check is trusted: a revoked key stops working on every API process within
/// this, and a process asks the database about a key in use at most this often.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keys this process checked at most [`CHECK_EVERY`] ago: most requests of a busy key are
/// answered without a query. Held in memory by the key as presented (a request holds it
/// anyway), so a lookup is one map probe; the store only ever sees the digest.
///
/// A check in use for half its life is renewed in the background by one request while the
/// others go on with it: when every request of a busy key waited for the check at once, each
/// second, the API lost a tenth of its throughput (BENCHMARKS.md).
#[derive(Clone, Default)]
pub struct Keys(Arc<KeysInner>);

#[derive(Default)]
struct KeysInner {
    checked: RwLock<HashMap<String, Checked>>,
    /// Keys revoked by this process, and when: a check that began before is not kept.
    forgotten: Mutex<HashMap<ApiKeyId, Instant>>,
}

/// One check of a key.
struct Checked {
    caller: Option<Caller>,
    /// When the check asked the store: it is trusted until [`CHECK_EVERY`] after.
    asked: Instant,
    /// A request has started renewing it.
    renewing: AtomicBool,
}

/// Checked keys kept at most: a flood of made-up keys must not grow the map without bound.
const KEPT: usize = 10_000;

impl Keys {
    /// The caller `key` stands for, from the cache while it is fresh.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn caller(
        &self,
        db: &DatabaseConnection,
        key: &str,
    ) -> Result<Option<Caller>, store::Error> {
        match self.known(db, key) {
            Some(caller) => Ok(caller),
            // Boxed: the query's future is large, and every request's future would carry its
            // room inline, cached or not.
            None => Box::pin(self.check(db, key)).await,
        }
    }

    /// What is known of `key` without asking the store: `Some(None)` for a malformed key or
    /// one refused less than [`CHECK_EVERY`] ago, `Some(caller)` for one that worked then (its
    /// check renewed in the background at half its life), `None` when the store must be asked.
    fn known(&self, db: &DatabaseConnection, key: &str) -> Option<Option<Caller>> {
        if !api_key::well_formed(key) {
            return Some(None);
        }
        let checked = self.read();
        let c = checked.get(key)?;
        let age = c.asked.elapsed();
        if age >= CHECK_EVERY {
            return None;
        }
        if age >= CHECK_EVERY / 2 && !c.renewing.swap(true, Ordering::AcqRel) {
            self.renew(db.clone(), key.to_owned());
        }
        Some(c.caller.clone())
    }

    /// Asks the store about `key` and keeps the answer.
    async fn check(
        &self,
        db: &DatabaseConnection,
        key: &str,
    ) -> Result<Option<Caller>, store::Error> {
        let asked = Instant::now();
        let caller = api_key::authenticate(db, key).await?;
        if let Some(c) = &caller
            && locked(&self.0.forgotten)
                .get(&c.key)
                .is_some_and(|at| *at >= asked)
        {
            // Revoked while it was being read: good for the request that asked, not for more.
            return Ok(caller);
        }
        let mut checked = self.write();
        if checked.len() >= KEPT {
            // Made-up keys go first: a flood of them must not push out the keys in use.
            checked.retain(|_, c| c.caller.is_some() && c.asked.elapsed() < CHECK_EVERY);
            if checked.len() >= KEPT {
                checked.clear();
            }
        }
        checked.insert(
            key.to_owned(),
            Checked {
                caller: caller.clone(),
                asked,
                renewing: AtomicBool::new(false),
            },
        );
        Ok(caller)
    }

    /// Checks `key` again in the background; on failure the old check runs out and the next
    /// request checks for itself.
    fn renew(&self, db: DatabaseConnection, key: String) {
        let keys = self.clone();
        tokio::spawn(async move {
            if let Err(e) = keys.check(&db, &key).await {
                tracing::warn!(error = %e, "renewing an API key's check failed");
            }
        });
    }

    /// Drops what this process knows of key `id`: its next request is checked in the store.
    pub fn forget(&self, id: ApiKeyId) {
        let mut forgotten = locked(&self.0.forgotten);
        // Those older than a check are of no use any more.
        forgotten.retain(|_, at| at.elapsed() < CHECK_EVERY * 10);
        forgotten.insert(id, Instant::now());
        drop(forgotten);
        self.write()
            .retain(|_, c| c.caller.as_ref().is_none_or(|c| c.key != id));
    }

    // The maps hold plain values, valid whatever a panicking holder was doing.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Checked>> {
        self.0
            .checked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Checked>> {
        self.0
            .checked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one API key may use: requests per second, and event streams open at once; and what
/// one client address may try without a working key.
pub struct Limits {
    /// `None`: no rate limit.
    rate: Option<DefaultKeyedRateLimiter<ApiKeyId>>,
    clock: DefaultClock,
    streams_per_key: usize,
    streams: Mutex<HashMap<ApiKeyId, usize>>,
    /// Failed authentications per address; `None`: no limit.
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses over it, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// Addresses remembered at most, blocked or counted, before the stale ones are dropped.
const ADDRESSES_KEPT: usize = 10_000;

impl Limits {
    /// `per_second` requests on average (0: unlimited), `burst` at once above it, and
    /// `streams_per_key` event streams.
    #[must_use]
    pub fn new(
        per_second: u32,
        burst: u32,
        streams_per_key: usize,
        failures_per_second: u32,
    ) -> Arc<Self> {
        let rate = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let failures = NonZeroU32::new(failures_per_second).map(|rate| {
            let burst = NonZeroU32::new(failures_per_second.saturating_mul(5)).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(Self {
            rate,
            clock: DefaultClock::default(),
            streams_per_key,
            streams: Mutex::default(),
            failures,
            blocked: Mutex::default(),
        })
    }

    /// How long `ip` stays refused for its failed authentications, if it is.
    fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let blocked = locked(&self.blocked);
        let until = *blocked.get(&ip)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failed authentication of `ip`: how long it is refused when it is over its
    /// limit.
    fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let limiter = self.failures.as_ref()?;
        let wait = limiter
            .check_key(&ip)
            .err()?
            .wait_time_from(self.clock.now());
        let mut blocked = locked(&self.blocked);
        if blocked.len() >= ADDRESSES_KEPT {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            limiter.retain_recent();
        }
        blocked.insert(ip, Instant::now() + wait);
        Some(wait)
    }

    /// Counts a request of `key`: how long to wait when it is over its rate.
    fn admit(&self, key: ApiKeyId) -> Result<(), Duration> {
        match &self.rate {
            Some(limiter) => limiter
                .check_key(&key)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// A slot for one more event stream of `key`, held until the stream ends; `None` when the
    /// key holds its maximum already.
    #[must_use]
    pub fn open_stream(self: &Arc<Self>, key: ApiKeyId) -> Option<StreamSlot> {
        let mut open = locked(&self.streams);
        let n = open.entry(key).or_default();
        if *n >= self.streams_per_key {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            limits: self.clone(),
            key,
        })
    }

    /// The most event streams one key may hold.
    #[must_use]
    pub fn streams_per_key(&self) -> usize {
        self.streams_per_key
    }
}

/// One open event stream of a key; dropping it (the stream ended) frees the slot.
pub struct StreamSlot {
    limits: Arc<Limits>,
    key: ApiKeyId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = locked(&self.limits.streams);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// `m`, locked. Its maps hold plain values, valid whatever a panicking holder was doing.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bearer token of a request, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(detail: &str) -> Response {
    ApiError::new(Code::Unauthorized, detail).into_response()
}

/// A request without a working key: 401, counted against its address, and 429 once the
/// address is over its limit.
fn refused(state: &AppState, peer: Option<IpAddr>, detail: &str) -> Response {
    match peer.and_then(|ip| state.limits.failed(ip)) {
        Some(wait) => too_many_failures(wait),
        None => unauthorized(detail),
    }
}

fn too_many_failures(wait: Duration) -> Response {
    ApiError::new(
        Code::TooManyRequests,
        "too many requests without a working API key from this address \
         (GLEANER_API__FAILED_AUTH_PER_SECOND); retry after the time in Retry-After",
    )
    .with_retry_after(seconds(wait))
    .into_response()
}

/// Whole seconds to wait, at least one (`Retry-After` has no fractions).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// Checks the request against its route's rule; lets it through with its [`Caller`] in the
/// request's extensions, and records a change in the audit log once it is answered.
pub async fn authorize(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", MatchedPath::as_str).to_owned();
    let method = req.method().clone();
    // axum answers HEAD with the GET handler, its body left out: the same read, the same rule.
    let ruled = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    let Some(rule) = rule_of(&ruled, &path) else {
        // A method the route does not take still gets here: the route matched by its path, and
        // axum's 405 comes from inside it. Answer that 405 as a problem, before asking for a key
        // as a router does; only a route with no rule at all is a bug.
        let allowed = allowed_methods(&path);
        if allowed.is_empty() {
            return ApiError::internal(format!("no access rule for {method} {path}"))
                .into_response();
        }
        let allow = allowed.join(", ");
        let mut response = ApiError::new(
            Code::MethodNotAllowed,
            format!("{path} takes {allow}, not {method}"),
        )
        .into_response();
        // RFC 9110 asks a 405 to name what the route takes. The methods are ASCII names.
        if let Ok(allow) = header::HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    };
    let needed = match rule.need {
        Need::Open => return next.run(req).await,
        Need::MetricsToken => {
            // Compared as digests: how long a comparison takes tells nothing of the token.
            let presented = bearer(req.headers()).map(api_key::hash);
            return match &state.metrics_token {
                Some(token) if presented.as_deref() != Some(api_key::hash(token).as_str()) => {
                    unauthorized("/metrics needs its token: Authorization: Bearer <token>")
                }
                _ => next.run(req).await,
            };
        }
        Need::Role(role) => role,
    };
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(key) = bearer(req.headers()) else {
        return refused(
            &state,
            peer,
            "an API key is needed: Authorization: Bearer <key>",
        );
    };
    let known = state.keys.known(&state.db, key);
    // An address over its failures is not looked up in the store: only keys known are let on.
    if known.is_none()
        && let Some(wait) = peer.and_then(|ip| state.limits.blocked(ip))
    {
        return too_many_failures(wait);
    }
    let checked = match known {
        Some(caller) => Ok(caller),
        None => Box::pin(state.keys.check(&state.db, key)).await,
    };
    let caller = match checked {
        Ok(Some(c)) => c,
        Ok(None) => return refused(&state, peer, "the API key is unknown, revoked or expired"),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(wait) = state.limits.admit(caller.key) {
        return ApiError::new(
            Code::TooManyRequests,
            "this API key made more requests than its rate allows (GLEANER_API__RATE_LIMIT_PER_SECOND); retry after the time in Retry-After",
        )
        .with_retry_after(seconds(wait))
        .into_response();
    }
    let change = (ruled != Method::GET).then(|| audit::Change {
        domain: caller.domain,
        key: Some(caller.key),
        method: method.to_string(),
        target_id: path_id(&path, req.uri().path()),
        route: path.clone(),
        status: 0,
    });
    let denied = if caller.role < needed {
        Some(format!(
            "{method} {path} needs the {} role; this key is {}",
            needed.as_str(),
            caller.role.as_str()
        ))
    } else if rule.domain_wide && caller.projects.is_some() {
        Some(format!(
            "{method} {path} acts on what spans the domain; this key is limited to projects"
        ))
    } else {
        None
    };
    if let Some(why) = denied {
        // A refused change is recorded too: who tried what is what an audit is for.
        let response = ApiError::new(Code::Forbidden, why).into_response();
        return match change {
            Some(change) => Box::pin(record(&state, change, response)).await,
            None => response,
        };
    }
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    match change {
        // Boxed, as the check of a key: reads, most requests, do not carry its room.
        Some(change) => Box::pin(record(&state, change, response)).await,
        None => response,
    }
}

/// The `{id}` of `template` in `path`, if the route has one.
fn path_id(template: &str, path: &str) -> Option<String> {
    template
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| *t == "{id}")
        .map(|(_, v)| v.to_owned())
}

/// Records `change` with the answer's status (and, for a 201, the id it created), and returns
/// the answer. A failure to record is logged: the change itself is done.
async fn record(state: &AppState, mut change: audit::Change, response: Response) -> Response {
    change.status = response.status().as_u16();
    // What a POST created is its target (a schedule, not the collector in its path).
    let response = if response.status().as_u16() == 201 {
        let (parts, body) = response.into_parts();
        // The answer is one JSON document already in memory: reading it whole costs nothing.
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                if let Some(id) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                {
                    change.target_id = Some(id);
                }
                Response::from_parts(parts, axum::body::Body::from(bytes))
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading a created object's answer for the audit log");
                Response::from_parts(parts, axum::body::Body::empty())
            }
        }
    } else {
        response
    };
    if let Err(e) = audit::record(&state.db, change).await {
        tracing::error!(error = %e, "recording a change in the audit log failed");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_has_a_rule_and_every_rule_a_route() {
        let doc = crate::openapi();
        let mut routes = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PATCH", &item.patch),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
            ] {
                if op.is_some() {
                    routes.push((method, path.clone()));
                }
            }
        }
        for (method, path) in &routes {
            let m: Method = method.parse().expect("a method");
            assert!(
                rule_of(&m, path).is_some(),
                "{method} {path} has no rule in auth::RULES"
            );
        }
        for r in RULES {
            assert!(
                routes.iter().any(|(m, p)| *m == r.method && p == r.path),
                "the rule for {} {} names no route",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn the_readme_says_what_each_route_needs() {
        // Its "Who may do what" table: one row per role, naming each route once.
        let readme = include_str!("../../README.md");
        let row_of = |route: &str| {
            readme
                .lines()
                .filter(|l| {
                    ["| anyone", "| viewer", "| member", "| admin"]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .find(|l| l.contains(&format!("`{route}`")))
                .map(str::to_owned)
        };
        for r in RULES {
            let route = format!("{} {}", r.method, r.path);
            let row = row_of(&route).unwrap_or_else(|| panic!("README: no row names `{route}`"));
            let role = match r.need {
                Need::Open => "| anyone |",
                Need::MetricsToken => "| anyone, or the metrics token",
                Need::Role(role) if r.domain_wide => {
                    &format!("| {} (not a project-limited key)", role.as_str())
                }
                Need::Role(role) => &format!("| {} |", role.as_str()),
            };
            assert!(
                row.starts_with(role),
                "README: `{route}` is in `{row}`, expected {role}"
            );
        }
    }

    #[test]
    fn a_route_takes_the_methods_of_its_rules_and_head_with_get() {
        assert_eq!(
            allowed_methods("/v1/collectors/{id}"),
            vec!["GET", "PATCH", "DELETE", "HEAD"]
        );
        assert_eq!(allowed_methods("/v1/collectors/{id}/collect"), vec!["POST"]);
        assert!(allowed_methods("/v1/nothing").is_empty());
    }

    #[test]
    fn the_id_of_a_route_is_read_from_its_path() {
        assert_eq!(
            path_id("/v1/collectors/{id}/collect", "/v1/collectors/abc/collect"),
            Some("abc".into())
        );
        assert_eq!(path_id("/v1/collectors", "/v1/collectors"), None);
    }

    #[test]
    fn a_bearer_token_is_read_whatever_the_scheme_case() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            "Bearer glk_x".parse().expect("header"),
        );
        assert_eq!(bearer(&h), Some("glk_x"));
        h.insert(
            header::AUTHORIZATION,
            "bearer  glk_y ".parse().expect("header"),
        );
        assert_eq!(bearer(&h), Some("glk_y"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h), None);
    }
}
