//! Collectors: the filterable list, and the detail page with "collect now", enable and disable
//! and the job history.

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Api, ApiRouter, CsrfForm, Session, csrf_field, csrf_refused, htmx, page, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/collectors", get(list))
        .route("/collectors/{id}", get(detail))
        .route("/collectors/{id}/collect", post(collect))
        .route("/collectors/{id}/{switch}", post(switch))
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    /// A part of the name, plugin or tag.
    #[serde(default)]
    q: String,
    /// ENABLED, DISABLED or empty for both.
    #[serde(default)]
    state: String,
}

impl Filter {
    fn keeps(&self, c: &Value) -> bool {
        let q = self.q.trim().to_lowercase();
        let text = |k: &str| c[k].as_str().unwrap_or_default().to_lowercase();
        (self.state.is_empty() || c["state"] == self.state.as_str())
            && (q.is_empty()
                || text("name").contains(&q)
                || text("plugin_id").contains(&q)
                || c["tags"].as_object().is_some_and(|t| {
                    t.iter().any(|(k, v)| {
                        k.to_lowercase().contains(&q)
                            || v.as_str().is_some_and(|v| v.to_lowercase().contains(&q))
                    })
                }))
    }
}

async fn list(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Response {
    let all = match Api::new(&api, &session).get("/v1/collectors").await {
        Ok(v) => v,
        Err(r) => return refused(&r, &session),
    };
    let items: Vec<&Value> = all["items"]
        .as_array()
        .map(|a| a.iter().filter(|c| filter.keeps(c)).collect())
        .unwrap_or_default();
    let table = rows(&items);
    if htmx(&headers) {
        return table.into_response();
    }
    page(
        "Collectors",
        Some(&session),
        html! {
            h1 { "Collectors" }
            form class="filters" method="get" action="/collectors" role="search"
                hx-get="/collectors" hx-target="#collectors" hx-select="#collectors"
                hx-swap="outerHTML" hx-trigger="input changed delay:300ms from:input, change from:select, submit"
                hx-push-url="true" {
                div class="field" {
                    label for="q" { "Filter" }
                    input id="q" name="q" type="search" value=(filter.q) placeholder="name, plugin or tag";
                }
                div class="field" {
                    label for="state" { "State" }
                    select id="state" name="state" {
                        @for (v, label) in [("", "Any"), ("ENABLED", "Enabled"), ("DISABLED", "Disabled")] {
                            option value=(v) selected[filter.state == v] { (label) }
                        }
                    }
                }
                button type="submit" class="secondary" { "Apply" }
            }
            (table)
        },
    )
    .into_response()
}

fn rows(items: &[&Value]) -> Markup {
    html! {
        div id="collectors" {
            p class="hint" id="collector-count" { (items.len()) " collector" @if items.len() != 1 { "s" } }
            table {
                caption class="skip" { "Collectors" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "State" } th scope="col" class="num" { "Priority" }
                    th scope="col" { "Plugin" } th scope="col" { "Version" } th scope="col" { "Last collected" }
                    th scope="col" { "Next scheduled" } th scope="col" { "Last job" }
                } }
                tbody {
                    @for c in items {
                        tr {
                            td { a href={ "/collectors/" (text(&c["id"])) } { (text(&c["name"])) } }
                            td { (text(&c["state"])) }
                            td class="num" { (text(&c["priority"])) }
                            td { (text(&c["plugin_id"])) }
                            td { (text(&c["version"])) }
                            td { (time(&c["last_collected_at"])) }
                            td { (time(&c["next_scheduled_at"])) }
                            td { (status(&c["last_job"]["status"])) }
                        }
                    }
                }
            }
        }
    }
}

/// A JSON value as text: strings bare, `null` as a dash.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A timestamp, machine-readable in `datetime` and shown in UTC to the minute; the browser's
/// own time is in its title.
pub(super) fn time(v: &Value) -> Markup {
    match v.as_str() {
        Some(t) => {
            let shown = chrono::DateTime::parse_from_rfc3339(t).map_or_else(
                |_| t.to_owned(),
                |d| d.format("%Y-%m-%d %H:%M UTC").to_string(),
            );
            html! { time datetime=(t) { (shown) } }
        }
        None => html! { "—" },
    }
}

/// A job status, colored by class (and always as text).
pub(super) fn status(v: &Value) -> Markup {
    match v.as_str() {
        Some(s) => html! { span class={ "status status-" (s.to_lowercase()) } { (s) } },
        None => html! { "—" },
    }
}

async fn detail(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    Path(id): Path<String>,
) -> Response {
    detail_page(&Api::new(&api, &session), &session, &id, None).await
}

/// What a form on the detail page answered: shown above its buttons.
enum Outcome {
    Done(Markup),
    Refused(String),
}

async fn detail_page(
    api: &Api<'_>,
    session: &Session,
    id: &str,
    outcome: Option<Outcome>,
) -> Response {
    let c = match api.get(&format!("/v1/collectors/{id}")).await {
        Ok(v) => v,
        Err(r) => return refused(&r, session),
    };
    let jobs = api
        .get(&format!("/v1/collectors/{id}/jobs?limit=20"))
        .await
        .unwrap_or_default();
    let name = text(&c["name"]);
    let enabled = c["state"] == "ENABLED";
    page(
        &name,
        Some(session),
        html! {
            p { a href="/collectors" { "← Collectors" } }
            h1 { "Collector " (name) }
            dl class="facts" {
                dt { "State" } dd id="collector-state" { (text(&c["state"])) }
                dt { "Plugin" } dd { (text(&c["plugin_id"])) " " (text(&c["version"])) }
                dt { "Priority" } dd { (text(&c["priority"])) }
                dt { "Last collected" } dd { (time(&c["last_collected_at"])) }
                dt { "Next scheduled" } dd { (time(&c["next_scheduled_at"])) }
                dt { "Tags" } dd {
                    @match c["tags"].as_object() {
                        Some(t) if !t.is_empty() => {
                            @for (k, v) in t { code { (k) "=" (text(v)) } " " }
                        }
                        _ => { "—" }
                    }
                }
            }
            div class="actions" {
                form method="post" action={ "/collectors/" (id) "/collect" }
                    hx-post={ "/collectors/" (id) "/collect" } hx-target="#collect-outcome" hx-swap="outerHTML" {
                    (csrf_field(session))
                    button type="submit" id="collect-now" { "Collect now" }
                }
                form method="post" action={ "/collectors/" (id) (if enabled { "/disable" } else { "/enable" }) } {
                    (csrf_field(session))
                    button type="submit" class="secondary" id="toggle-state" {
                        @if enabled { "Disable" } @else { "Enable" }
                    }
                }
            }
            (outcome_box(outcome.as_ref()))
            h2 { "Resources" }
            @match c["resources"].as_array() {
                Some(types) if !types.is_empty() => {
                    ul { @for t in types { li { (text(&t["resource_type"])) ": " (text(&t["count"])) } } }
                }
                _ => { p { "None collected yet." } }
            }
            h2 { "Jobs" }
            (super::job::table(jobs["items"].as_array().map_or(&[][..], Vec::as_slice)))
        },
    )
    .into_response()
}

fn outcome_box(outcome: Option<&Outcome>) -> Markup {
    html! {
        div id="collect-outcome" {
            @match outcome {
                Some(Outcome::Done(m)) => { p class="notice" role="status" { (m) } }
                Some(Outcome::Refused(why)) => { p class="error" role="alert" { (why) } }
                None => {}
            }
        }
    }
}

async fn collect(
    session: Session,
    Extension(router): Extension<ApiRouter>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !session.csrf_ok(&form.csrf) {
        return csrf_refused();
    }
    let api = Api::new(&router, &session);
    let outcome = match api
        .call(Method::POST, &format!("/v1/collectors/{id}/collect"), None)
        .await
    {
        Ok(v) => {
            let job = text(&v["job_id"]);
            Outcome::Done(html! {
                "Job " a href={ "/jobs/" (job) } { (job.get(..8).unwrap_or(&job)) } " " (text(&v["status"]))
            })
        }
        Err(r) => Outcome::Refused(r.detail()),
    };
    if htmx(&headers) {
        let status = match outcome {
            Outcome::Refused(_) => StatusCode::CONFLICT,
            Outcome::Done(_) => StatusCode::OK,
        };
        return (status, outcome_box(Some(&outcome))).into_response();
    }
    detail_page(&api, &session, &id, Some(outcome)).await
}

async fn switch(
    session: Session,
    Extension(router): Extension<ApiRouter>,
    Path((id, switch)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !session.csrf_ok(&form.csrf) {
        return csrf_refused();
    }
    if !matches!(switch.as_str(), "enable" | "disable") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let api = Api::new(&router, &session);
    match api
        .call(Method::POST, &format!("/v1/collectors/{id}/{switch}"), None)
        .await
    {
        // Post/redirect/get: a reload does not send the form again.
        Ok(_) => Redirect::to(&format!("/collectors/{id}")).into_response(),
        Err(r) => detail_page(&api, &session, &id, Some(Outcome::Refused(r.detail()))).await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_filter_reads_names_plugins_tags_and_state() {
        let c = json!({"name": "AWS prod", "plugin_id": "aws", "state": "ENABLED",
                       "tags": {"team": "payments"}});
        let f = |q: &str, state: &str| Filter {
            q: q.into(),
            state: state.into(),
        };
        assert!(f("", "").keeps(&c));
        assert!(f("prod", "").keeps(&c));
        assert!(f("AWS", "ENABLED").keeps(&c));
        assert!(f("payments", "").keeps(&c));
        assert!(!f("azure", "").keeps(&c));
        assert!(!f("", "DISABLED").keeps(&c));
    }
}
