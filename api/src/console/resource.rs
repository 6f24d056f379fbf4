//! Resources: a browser by type, project, account and state, page by page; a resource with its
//! data and its change history as readable diffs.

use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::collector::{text, time};
use super::{Api, ApiRouter, Id, Session, page, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/resources", get(list))
        .route("/resources/{id}", get(detail))
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct Filter {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    resource_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    project_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    service_account_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    cursor: String,
}

const PAGE: u32 = 50;

async fn list(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    Query(f): Query<Filter>,
) -> Response {
    let api = Api::new(&api, &session);
    let query = serde_urlencoded::to_string(&f).unwrap_or_default();
    let page_ = match api
        .get(&format!("/v1/resources?limit={PAGE}&{query}"))
        .await
    {
        Ok(p) => p,
        Err(r) => return refused(&r, &session),
    };
    let projects = api.get("/v1/projects").await.unwrap_or_default();
    let accounts = api.get("/v1/service-accounts").await.unwrap_or_default();
    let next = page_["next_cursor"].as_str().map(|c| {
        let f2 = Filter {
            cursor: c.to_owned(),
            ..f.clone()
        };
        format!(
            "/resources?{}",
            serde_urlencoded::to_string(&f2).unwrap_or_default()
        )
    });
    page(
        "Resources",
        Some(&session),
        html! {
            h1 { "Resources" }
            form method="get" action="/resources" class="filters" role="search" {
                div class="field" {
                    label for="resource_type" { "Type" }
                    input id="resource_type" name="resource_type" type="text" value=(f.resource_type) placeholder="compute.instance";
                }
                (select("project_id", "Project", &projects["items"], &f.project_id))
                (select("service_account_id", "Account", &accounts["items"], &f.service_account_id))
                div class="field" {
                    label for="state" { "State" }
                    select id="state" name="state" {
                        @for (v, l) in [("", "Any"), ("ACTIVE", "Active"), ("DELETED", "Deleted")] {
                            option value=(v) selected[f.state == v] { (l) }
                        }
                    }
                }
                button type="submit" class="secondary" { "Apply" }
            }
            p id="resource-count" { (text(&page_["total"])) " resources" }
            table id="resources" {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Region" }
                    th scope="col" { "State" } th scope="col" { "Key" } th scope="col" { "Updated" }
                } }
                tbody {
                    @for r in page_["items"].as_array().map_or(&[][..], Vec::as_slice) {
                        tr {
                            td { a href={ "/resources/" (text(&r["id"])) } { (r["name"].as_str().unwrap_or("(no name)")) } }
                            td { (text(&r["resource_type"])) }
                            td { (text(&r["region"])) }
                            td { (text(&r["state"])) }
                            td { code { (text(&r["resource_key"])) } }
                            td { (time(&r["updated_at"])) }
                        }
                    }
                }
            }
            @if let Some(n) = next {
                p { a href=(n) rel="next" id="next-page" { "Next page" } }
            }
        },
    )
    .into_response()
}

fn select(name: &str, label: &str, items: &Value, chosen: &str) -> Markup {
    html! {
        div class="field" {
            label for=(name) { (label) }
            select id=(name) name=(name) {
                option value="" { "Any" }
                @for i in items.as_array().map_or(&[][..], Vec::as_slice) {
                    @let id = text(&i["id"]);
                    option value=(id) selected[id == chosen] { (text(&i["name"])) }
                }
            }
        }
    }
}

async fn detail(session: Session, Extension(api): Extension<ApiRouter>, Id(id): Id) -> Response {
    let api = Api::new(&api, &session);
    let r = match api.get(&format!("/v1/resources/{id}")).await {
        Ok(r) => r,
        Err(e) => return refused(&e, &session),
    };
    let changes = api
        .get(&format!("/v1/resources/{id}/changes?limit=100"))
        .await
        .unwrap_or_default();
    let name = r["name"].as_str().unwrap_or("(no name)").to_owned();
    let charts = metrics(&api, &id).await;
    page(
        &name,
        Some(&session),
        html! {
            p { a href="/resources" { "← Resources" } }
            h1 { (name) }
            dl class="facts" {
                dt { "Type" } dd { (text(&r["resource_type"])) }
                dt { "Key" } dd { code { (text(&r["resource_key"])) } }
                dt { "State" } dd { (text(&r["state"])) }
                dt { "Region" } dd { (text(&r["region"])) }
                dt { "Updated" } dd { (time(&r["updated_at"])) }
            }
            @if !charts.is_empty() {
                h2 { "Metrics" }
                p class="hint" { "The day up to each metric's newest sample, average per period." }
                @for (i, s) in charts.iter().enumerate() {
                    figure class="metric" {
                        figcaption { (text(&s["metric"])) " (" (text(&s["unit"])) "), last: " (last_value(s)) }
                        div class="metric-chart" data-index=(i) role="img"
                            aria-label={ (text(&s["metric"])) " over the day" } {}
                    }
                }
                (super::json_script("metric-data", &serde_json::json!({"series": charts})))
                link rel="stylesheet" href=(super::assets::url("uPlot.min.css"));
                script src=(super::assets::url("uPlot.iife.min.js")) defer {}
            }
            h2 { "Data" }
            pre id="resource-data" { (serde_json::to_string_pretty(&r["data"]).unwrap_or_default()) }
            h2 { "Changes" }
            ol id="changes" {
                @for c in changes["items"].as_array().map_or(&[][..], Vec::as_slice) {
                    li data-kind=(text(&c["kind"])) {
                        strong { (text(&c["kind"])) } " " (time(&c["created_at"]))
                        @if let Some(j) = c["job_id"].as_str() { " by job " a href={ "/jobs/" (j) } { code { (j.get(..8).unwrap_or(j)) } } }
                        @if let Some(d) = c["diff"].as_object() {
                            table class="diff" {
                                thead { tr { th scope="col" { "Field" } th scope="col" { "Before" } th scope="col" { "After" } } }
                                tbody {
                                    @for (field, v) in d {
                                        tr {
                                            th scope="row" { (field) }
                                            td { del { (pretty(&v["old"])) } }
                                            td { ins { (pretty(&v["new"])) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

// More charts than this make a page slow to read and to draw; the API lists every series.
const MAX_CHARTS: usize = 8;

/// The resource's series, each over the day up to its newest sample.
async fn metrics(api: &Api<'_>, id: &str) -> Vec<Value> {
    let stored = api
        .get(&format!("/v1/resources/{id}/metrics"))
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    for s in stored["items"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .take(MAX_CHARTS)
    {
        let metric: String =
            form_urlencoded::byte_serialize(text(&s["metric"]).as_bytes()).collect();
        let end = chrono::DateTime::parse_from_rfc3339(&text(&s["last_time"]))
            .map(|t| {
                (t + chrono::Duration::seconds(1))
                    .to_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
            .unwrap_or_default();
        let end: String = form_urlencoded::byte_serialize(end.as_bytes()).collect();
        if let Ok(series) = api
            .get(&format!("/v1/resources/{id}/metrics/{metric}?end={end}"))
            .await
        {
            out.push(series);
        }
    }
    out
}

/// The newest value of a series, with its unit.
fn last_value(s: &Value) -> String {
    s["values"]
        .as_array()
        .and_then(|v| v.iter().rev().find_map(Value::as_f64))
        .map_or_else(|| "—".to_owned(), |v| format!("{v} {}", text(&s["unit"])))
}

fn pretty(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}
