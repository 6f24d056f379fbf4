//! Jobs: the history, a job with its tasks, cancel, and what the job widget reads.

use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::collector::{status, text, time};
use super::{Api, ApiRouter, Id, Posted, Session, csrf_field, page, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/recent", get(recent))
        .route("/jobs/{id}", get(detail))
        .route("/jobs/{id}/cancel", post(cancel))
}

/// The job event stream for the widget: the API's own stream, as the session's key.
pub(super) async fn events(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    headers: HeaderMap,
) -> Response {
    // The browser's EventSource sends back the last id it saw after a cut.
    Api::new(&api, &session)
        .events(headers.get("last-event-id"))
        .await
}

/// The newest jobs, with their collectors' names: what the widget shows before any event.
async fn recent(session: Session, Extension(api): Extension<ApiRouter>) -> Response {
    let api = Api::new(&api, &session);
    let jobs = api.get("/v1/jobs?limit=5").await.unwrap_or_default();
    let names: Map<String, Value> = api
        .get("/v1/collectors")
        .await
        .ok()
        .and_then(|c| c["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (text(&c["id"]), c["name"].clone()))
        .collect();
    Json(json!({"items": jobs["items"], "collectors": names})).into_response()
}

/// A table of jobs, newest first.
pub(super) fn table(jobs: &[Value]) -> Markup {
    html! {
        @if jobs.is_empty() {
            p { "No jobs yet." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Job" } th scope="col" { "Status" } th scope="col" { "Trigger" }
                    th scope="col" class="num" { "Tasks" } th scope="col" class="num" { "Created" }
                    th scope="col" class="num" { "Updated" } th scope="col" class="num" { "Deleted" }
                    th scope="col" class="num" { "Failed" } th scope="col" { "Started" }
                } }
                tbody {
                    @for j in jobs {
                        @let id = text(&j["id"]);
                        tr {
                            td { a href={ "/jobs/" (id) } { code { (id.get(..8).unwrap_or(&id)) } } }
                            td { (status(&j["status"])) }
                            td { (text(&j["trigger"])) }
                            td class="num" { (text(&j["tasks_done"])) "/" (text(&j["tasks_total"])) }
                            td class="num" { (text(&j["counts"]["created"])) }
                            td class="num" { (text(&j["counts"]["updated"])) }
                            td class="num" { (text(&j["counts"]["deleted"])) }
                            td class="num" { (text(&j["counts"]["failed"])) }
                            td { (time(&j["started_at"])) }
                        }
                    }
                }
            }
        }
    }
}

async fn list(session: Session, Extension(api): Extension<ApiRouter>) -> Response {
    match Api::new(&api, &session).get("/v1/jobs?limit=100").await {
        Ok(jobs) => page(
            "Jobs",
            Some(&session),
            html! {
                h1 { "Jobs" }
                (table(jobs["items"].as_array().map_or(&[][..], Vec::as_slice)))
            },
        )
        .into_response(),
        Err(r) => refused(&r, &session),
    }
}

async fn detail(session: Session, Extension(api): Extension<ApiRouter>, Id(id): Id) -> Response {
    let api = Api::new(&api, &session);
    let job = match api.get(&format!("/v1/jobs/{id}")).await {
        Ok(j) => j,
        Err(r) => return refused(&r, &session),
    };
    let tasks = api
        .get(&format!("/v1/jobs/{id}/tasks"))
        .await
        .unwrap_or_default();
    let running = matches!(job["status"].as_str(), Some("QUEUED" | "IN_PROGRESS"));
    page(
        &format!("Job {}", id.get(..8).unwrap_or(&id)),
        Some(&session),
        html! {
            p { a href="/jobs" { "← Jobs" } }
            h1 { "Job " code { (id) } }
            dl class="facts" {
                dt { "Status" } dd id="job-status" { (status(&job["status"])) }
                dt { "Plugin" } dd { (text(&job["plugin_id"])) " " (text(&job["plugin_version"])) }
                dt { "Trigger" } dd { (text(&job["trigger"])) }
                dt { "Tasks" } dd { (text(&job["tasks_done"])) " of " (text(&job["tasks_total"])) " done, " (text(&job["tasks_failed"])) " failed" }
                dt { "Created" } dd { (time(&job["created_at"])) }
                dt { "Finished" } dd { (time(&job["finished_at"])) }
                @if let Some(e) = job["error"].as_str() {
                    dt { "Error" } dd class="error" { (e) }
                }
            }
            @if let Some(c) = job["collector_id"].as_str() {
                p { a href={ "/collectors/" (c) } { "The collector" } }
            }
            @if running {
                form method="post" action={ "/jobs/" (id) "/cancel" } class="actions" {
                    (csrf_field(&session))
                    button type="submit" class="danger" { "Cancel job" }
                }
            }
            h2 { "Tasks" }
            @for t in tasks["items"].as_array().map_or(&[][..], Vec::as_slice) {
                section class="task" aria-label={ "Task " (text(&t["id"])) } {
                    h3 { "Task " code { (text(&t["id"]).get(..8).unwrap_or_default()) } " " (status(&t["status"])) }
                    dl class="facts" {
                        dt { "Service account" } dd { (text(&t["service_account_id"])) }
                        dt { "Attempt" } dd { (text(&t["attempt"])) " of " (text(&t["max_attempts"])) }
                        dt { "Counts" } dd {
                            "created " (text(&t["counts"]["created"])) ", updated " (text(&t["counts"]["updated"]))
                            ", unchanged " (text(&t["counts"]["unchanged"])) ", deleted " (text(&t["counts"]["deleted"]))
                            ", failed " (text(&t["counts"]["failed"]))
                        }
                        @if let Some(e) = t["error"].as_str() {
                            dt { "Error" } dd class="error" { (e) }
                        }
                    }
                    @for a in t["previous_attempts"].as_array().map_or(&[][..], Vec::as_slice) {
                        p class="hint" { "Earlier attempt: " (text(&a["error"])) }
                    }
                    @if let Some(s) = t["stderr"].as_str().filter(|s| !s.is_empty()) {
                        details {
                            summary { "The plugin's stderr" }
                            pre { (s) }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

async fn cancel(
    Extension(api): Extension<ApiRouter>,
    Id(id): Id,
    Posted { session, .. }: Posted,
) -> Response {
    match Api::new(&api, &session)
        .call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await
    {
        Ok(_) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(r) => refused(&r, &session),
    }
}
