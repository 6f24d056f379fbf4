//! Collectors: the filterable list, and the detail page with "collect now", enable and disable
//! and the job history.

use axum::extract::Query;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::form::{self, Errors, Field, Kind};
use super::{Api, ApiRouter, Id, Posted, Session, csrf_field, htmx, page, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/collectors", get(list))
        .route("/collectors/{id}", get(detail))
        .route("/collectors/{id}/collect", post(collect))
        .route(
            "/collectors/{id}/enable",
            post(|r, p, f| switch(r, p, f, "enable")),
        )
        .route(
            "/collectors/{id}/disable",
            post(|r, p, f| switch(r, p, f, "disable")),
        )
        .route("/collectors/{id}/edit", post(edit))
        .route("/collectors/{id}/delete", post(delete))
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
            p { a class="button" href="/collectors/new" id="new-collector" { "New collector" } }
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

async fn detail(session: Session, Extension(api): Extension<ApiRouter>, Id(id): Id) -> Response {
    detail_page(&Api::new(&api, &session), &session, &id, Forms::default()).await
}

/// What a form on the detail page answered: shown above its buttons.
pub(super) enum Outcome {
    Done(Markup),
    Refused(String),
}

/// The state of the detail page's forms after one was sent: what it answered, or the values
/// typed into a refused form with its errors.
#[derive(Default)]
pub(super) struct Forms {
    pub outcome: Option<Outcome>,
    pub schedule: Option<(Map<String, Value>, Errors)>,
    pub edit: Option<(Map<String, Value>, Errors)>,
}

pub(super) async fn detail_page(
    api: &Api<'_>,
    session: &Session,
    id: &str,
    forms: Forms,
) -> Response {
    let c = match api.get(&format!("/v1/collectors/{id}")).await {
        Ok(v) => v,
        Err(r) => return refused(&r, session),
    };
    let jobs = api
        .get(&format!("/v1/collectors/{id}/jobs?limit=20"))
        .await
        .unwrap_or_default();
    let schedules = api
        .get(&format!("/v1/collectors/{id}/schedules"))
        .await
        .unwrap_or_default();
    let versions = api
        .get(&format!("/v1/plugins/{}", text(&c["plugin_id"])))
        .await
        .map(|p| p["versions"].clone())
        .unwrap_or_default();
    let name = text(&c["name"]);
    let enabled = c["state"] == "ENABLED";
    let (schedule_typed, schedule_errors) = forms.schedule.unwrap_or_default();
    let edit_open = forms.edit.is_some();
    let (edit_typed, edit_errors) = forms.edit.unwrap_or_else(|| {
        let tags = c["tags"]
            .as_object()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let typed = [
            ("name", c["name"].clone()),
            ("priority", c["priority"].clone()),
            (
                "version",
                if c["upgrade_mode"] == "AUTO" {
                    Value::Null
                } else {
                    c["version"].clone()
                },
            ),
            ("tags", Value::String(tags)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        (typed, Errors::default())
    });
    let outcome = forms.outcome;
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
            details open[edit_open] {
                summary { "Edit" }
                (edit_form(session, id, &edit_typed, &edit_errors, &versions))
            }
            h2 { "Resources" }
            @match c["resources"].as_array() {
                Some(types) if !types.is_empty() => {
                    ul { @for t in types { li { (text(&t["resource_type"])) ": " (text(&t["count"])) } } }
                }
                _ => { p { "None collected yet." } }
            }
            (super::schedule::section(session, id, schedules["items"].as_array().map_or(&[][..], Vec::as_slice),
                                      &schedule_typed, &schedule_errors))
            h2 { "Jobs" }
            (super::job::table(jobs["items"].as_array().map_or(&[][..], Vec::as_slice)))
            h2 { "Delete" }
            form method="post" action={ "/collectors/" (id) "/delete" } hx-post={ "/collectors/" (id) "/delete" }
                hx-target="body" hx-confirm={ "Delete collector " (name) " and its schedules? Its resources and jobs stay." } {
                (csrf_field(session))
                p class="hint" { "Its schedules go with it; its resources and its jobs stay." }
                button type="submit" class="danger" id="delete-collector" { "Delete collector" }
            }
        },
    )
    .into_response()
}

fn edit_form(
    session: &Session,
    id: &str,
    typed: &Map<String, Value>,
    errors: &Errors,
    versions: &Value,
) -> Markup {
    let value = |k: &str| typed.get(k).map(form::text_of).unwrap_or_default();
    let version = value("version");
    let version_error = errors.get("version");
    html! {
        (form::general(errors))
        form method="post" action={ "/collectors/" (id) "/edit" } class="stack" id="edit-form" {
            (csrf_field(session))
            (Field { name: "name", label: "Name", kind: Kind::Text, value: &value("name"), required: true, hint: None }.render(errors))
            (Field { name: "priority", label: "Priority", kind: Kind::Number, value: &value("priority"), required: true,
                     hint: Some("0–1,000,000; lower wins.") }.render(errors))
            div class="field" {
                label for="f-version" { "Version" }
                select id="f-version" name="version" aria-invalid=[version_error.map(|_| "true")]
                    aria-describedby=[version_error.map(|_| "f-version-error")] {
                    option value="" { "Latest, following new versions" }
                    @for v in versions.as_array().map_or(&[][..], Vec::as_slice) {
                        @let v = text(v);
                        option value=(v) selected[v == version] { (v) " (pinned)" }
                    }
                }
                @if let Some(e) = version_error { p id="f-version-error" class="error" { (e) } }
            }
            (Field { name: "tags", label: "Tags", kind: Kind::Area, value: &value("tags"), required: false,
                     hint: Some("One key=value per line.") }.render(errors))
            button type="submit" id="save-collector" { "Save" }
        }
    }
}

async fn edit(
    Extension(router): Extension<ApiRouter>,
    Id(id): Id,
    Posted { session, values }: Posted,
) -> Response {
    let api = Api::new(&router, &session);
    let get = |k: &str| {
        values
            .get(k)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let typed: Map<String, Value> = values
        .iter()
        .filter(|(k, _)| k.as_str() != "csrf")
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let shown = ["name", "priority", "version", "tags"].map(str::to_owned);
    let refuse = |r: super::Refusal| {
        let forms = Forms {
            edit: Some((typed.clone(), Errors::of(&r, &shown))),
            ..Forms::default()
        };
        (r.status, forms)
    };
    let tags = match super::wizard::tags(&get("tags")) {
        Ok(t) => t,
        Err(e) => {
            let (status, forms) =
                refuse(super::Refusal::field(StatusCode::BAD_REQUEST, "tags", &e));
            return with_status(detail_page(&api, &session, &id, forms).await, status);
        }
    };
    let body = serde_json::json!({
        "name": get("name"),
        "priority": get("priority").parse::<i64>().map_or_else(|_| Value::String(get("priority")), Value::from),
        "version": if get("version").is_empty() { Value::Null } else { Value::String(get("version")) },
        "tags": tags,
    });
    match api
        .call(Method::PATCH, &format!("/v1/collectors/{id}"), Some(&body))
        .await
    {
        Ok(_) => Redirect::to(&format!("/collectors/{id}")).into_response(),
        Err(r) => {
            let (status, forms) = refuse(r);
            with_status(detail_page(&api, &session, &id, forms).await, status)
        }
    }
}

/// `resp` with `status`: a refused form's page says so to the browser too.
pub(super) fn with_status(mut resp: Response, status: StatusCode) -> Response {
    if resp.status().is_success() {
        *resp.status_mut() = status;
    }
    resp
}

async fn delete(
    Extension(router): Extension<ApiRouter>,
    headers: HeaderMap,
    Id(id): Id,
    Posted { session, .. }: Posted,
) -> Response {
    let api = Api::new(&router, &session);
    match api
        .call(Method::DELETE, &format!("/v1/collectors/{id}"), None)
        .await
    {
        Ok(_) => super::go_to(&headers, "/collectors"),
        Err(r) => {
            let forms = Forms {
                outcome: Some(Outcome::Refused(r.detail())),
                ..Forms::default()
            };
            with_status(detail_page(&api, &session, &id, forms).await, r.status)
        }
    }
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
    Extension(router): Extension<ApiRouter>,
    headers: HeaderMap,
    Id(id): Id,
    Posted { session, .. }: Posted,
) -> Response {
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
    detail_page(
        &api,
        &session,
        &id,
        Forms {
            outcome: Some(outcome),
            ..Forms::default()
        },
    )
    .await
}

async fn switch(
    Extension(router): Extension<ApiRouter>,
    Id(id): Id,
    Posted { session, .. }: Posted,
    switch: &'static str,
) -> Response {
    let api = Api::new(&router, &session);
    match api
        .call(Method::POST, &format!("/v1/collectors/{id}/{switch}"), None)
        .await
    {
        // Post/redirect/get: a reload does not send the form again.
        Ok(_) => Redirect::to(&format!("/collectors/{id}")).into_response(),
        Err(r) => {
            let forms = Forms {
                outcome: Some(Outcome::Refused(r.detail())),
                ..Forms::default()
            };
            with_status(detail_page(&api, &session, &id, forms).await, r.status)
        }
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
