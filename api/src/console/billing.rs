//! The billing dashboard: the domain's month, or a project's, against the month before; the
//! month-to-date trend as a chart; costs by provider, project and account; top services.

use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{Datelike as _, NaiveDate, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::assets;
use super::collector::text;
use super::{Api, ApiRouter, Id, Session, page, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/billing", get(domain))
        .route("/projects/{id}/billing", get(project))
}

#[derive(Debug, Default, Deserialize)]
struct MonthQuery {
    #[serde(default)]
    month: String,
}

/// The month asked for, or this one; with its first day and the next month's.
fn month_of(raw: &str) -> (String, NaiveDate, NaiveDate) {
    let first = NaiveDate::parse_from_str(&format!("{raw}-01"), "%Y-%m-%d").unwrap_or_else(|_| {
        let t = Utc::now().date_naive();
        NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap_or(t)
    });
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first);
    (first.format("%Y-%m").to_string(), first, next)
}

/// An amount as stored, every decimal kept, grouped by thousands, with its currency's sign.
pub(super) fn money(amount: &Value, currency: &str) -> String {
    let raw = text(amount);
    let (neg, digits) = raw
        .strip_prefix('-')
        .map_or((false, raw.as_str()), |d| (true, d));
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = match currency {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" | "CNY" => "¥",
        "KRW" => "₩",
        _ => "",
    };
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    let minus = if neg { "−" } else { "" };
    if sign.is_empty() {
        format!("{minus}{grouped}{frac} {currency}")
    } else {
        format!("{minus}{sign}{grouped}{frac} {currency}")
    }
}

async fn domain(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    Query(q): Query<MonthQuery>,
) -> Response {
    let api = Api::new(&api, &session);
    let (month, first, next) = month_of(&q.month);
    let dash = match api
        .get(&format!("/v1/dashboards/billing?month={month}"))
        .await
    {
        Ok(d) => d,
        Err(r) => return refused(&r, &session),
    };
    let by_account = api
        .get(&format!(
            "/v1/costs/summary?group_by=service_account&start={first}&end={next}"
        ))
        .await
        .unwrap_or_default();
    let accounts = names(&api, "/v1/service-accounts").await;
    let body = dashboard(
        &dash,
        &month,
        "/billing",
        &accounts,
        Some(&by_account["items"]),
    );
    page(
        "Billing",
        Some(&session),
        html! { h1 { "Billing, " (month) } (body) },
    )
    .into_response()
}

async fn project(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    Id(id): Id,
    Query(q): Query<MonthQuery>,
) -> Response {
    let api = Api::new(&api, &session);
    let (month, _, _) = month_of(&q.month);
    let (dash, p) = match (
        api.get(&format!("/v1/projects/{id}/billing?month={month}"))
            .await,
        api.get(&format!("/v1/projects/{id}")).await,
    ) {
        (Ok(d), Ok(p)) => (d, p),
        (Err(r), _) | (_, Err(r)) => return refused(&r, &session),
    };
    let accounts = names(&api, "/v1/service-accounts").await;
    let body = dashboard(
        &dash,
        &month,
        &format!("/projects/{id}/billing"),
        &accounts,
        None,
    );
    page(
        "Billing",
        Some(&session),
        html! {
            p { a href={ "/billing?month=" (month) } { "← The domain's billing" } }
            h1 { "Billing of project " (text(&p["name"])) ", " (month) }
            (body)
        },
    )
    .into_response()
}

/// Names by id, from a list route.
async fn names(api: &Api<'_>, path: &str) -> serde_json::Map<String, Value> {
    api.get(path)
        .await
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|i| (text(&i["id"]), i["name"].clone()))
        .collect()
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[][..], Vec::as_slice)
}

fn dashboard(
    d: &Value,
    month: &str,
    here: &str,
    accounts: &serde_json::Map<String, Value>,
    by_account: Option<&Value>,
) -> Markup {
    let trend: Vec<Value> = items(&d["month_to_date_trend"]).to_vec();
    let chart_data = json!({"trend": trend});
    html! {
        form method="get" action=(here) class="filters" {
            div class="field" {
                label for="month" { "Month" }
                input id="month" name="month" type="month" value=(month);
            }
            button type="submit" class="secondary" { "Show" }
        }
        section aria-labelledby="totals-h" {
            h2 id="totals-h" { "This month against last month" }
            table id="totals" {
                thead { tr { th scope="col" { "Currency" } th scope="col" class="num" { (month) } th scope="col" class="num" { "Last month" } } }
                tbody {
                    @for t in items(&d["this_month"]) {
                        @let cur = text(&t["currency"]);
                        @let last = items(&d["last_month"]).iter().find(|l| l["currency"] == t["currency"]);
                        tr {
                            th scope="row" { (cur) }
                            td class="num total" data-currency=(cur) { (money(&t["billed_cost"], &cur)) }
                            td class="num" { @match last { Some(l) => (money(&l["billed_cost"], &cur)), None => "—" } }
                        }
                    }
                }
            }
            @if items(&d["this_month"]).is_empty() { p { "No costs this month." } }
        }
        section aria-labelledby="trend-h" {
            h2 id="trend-h" { "Month to date, per day" }
            div id="trend-chart" role="img" aria-label="Billed cost per day this month" {}
            (super::json_script("trend-data", &chart_data))
            details {
                summary { "The figures" }
                (rows(&trend, &[("Day", "day")]))
            }
        }
        section aria-labelledby="provider-h" {
            h2 id="provider-h" { "By provider" }
            (rows(items(&d["by_provider"]), &[("Provider", "provider")]))
        }
        @if d["by_project"].is_array() {
            section aria-labelledby="project-h" {
                h2 id="project-h" { "By project" }
                table id="by-project" {
                    thead { tr { th scope="col" { "Project" } th scope="col" { "Currency" } th scope="col" class="num" { "Billed" } th scope="col" class="num" { "Effective" } } }
                    tbody {
                        @for r in items(&d["by_project"]) {
                            @let cur = text(&r["currency"]);
                            tr {
                                td {
                                    @match r["project"].as_str() {
                                        Some(p) => a href={ "/projects/" (p) "/billing?month=" (month) } { (text(&r["project_name"])) },
                                        None => "No project",
                                    }
                                }
                                td { (cur) }
                                td class="num" { (money(&r["billed_cost"], &cur)) }
                                td class="num" { (money(&r["effective_cost"], &cur)) }
                            }
                        }
                    }
                }
            }
        }
        @let accounts_rows = by_account.map(items).or_else(|| d["by_service_account"].as_array().map(Vec::as_slice));
        @if let Some(rows_) = accounts_rows {
            section aria-labelledby="account-h" {
                h2 id="account-h" { "By account" }
                table id="by-account" {
                    thead { tr { th scope="col" { "Service account" } th scope="col" { "Currency" } th scope="col" class="num" { "Billed" } th scope="col" class="num" { "Effective" } } }
                    tbody {
                        @for r in rows_ {
                            @let cur = text(&r["currency"]);
                            @let id = text(&r["service_account"]);
                            tr {
                                td { (accounts.get(&id).map_or(id.clone(), text)) }
                                td { (cur) }
                                td class="num" { (money(&r["billed_cost"], &cur)) }
                                td class="num" { (money(&r["effective_cost"], &cur)) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="services-h" {
            h2 id="services-h" { "Top services" }
            (rows(items(&d["top_services"]), &[("Service", "service")]))
        }
        link rel="stylesheet" href=(assets::url("uPlot.min.css"));
        script src=(assets::url("uPlot.iife.min.js")) defer {}
    }
}

/// A table of summary items: the given key columns, then currency, billed and effective.
fn rows(items: &[Value], keys: &[(&str, &str)]) -> Markup {
    html! {
        @if items.is_empty() {
            p { "None." }
        } @else {
            table {
                thead { tr {
                    @for (label, _) in keys { th scope="col" { (label) } }
                    th scope="col" { "Currency" } th scope="col" class="num" { "Billed" } th scope="col" class="num" { "Effective" }
                } }
                tbody {
                    @for r in items {
                        @let cur = text(&r["currency"]);
                        tr {
                            @for (_, k) in keys { td { (text(&r[*k])) } }
                            td { (cur) }
                            td class="num" { (money(&r["billed_cost"], &cur)) }
                            td class="num" { (money(&r["effective_cost"], &cur)) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_keep_every_decimal() {
        assert_eq!(money(&json!("3.71561541189"), "USD"), "$3.71561541189 USD");
        assert_eq!(money(&json!("1234567.5"), "EUR"), "€1,234,567.5 EUR");
        assert_eq!(
            money(&json!("-2.61370000000"), "USD"),
            "−$2.61370000000 USD"
        );
        assert_eq!(money(&json!("100"), "CHF"), "100 CHF");
    }

    #[test]
    fn the_month_defaults_to_this_one() {
        let (m, first, next) = month_of("2024-12");
        assert_eq!(
            (m.as_str(), first.to_string(), next.to_string()),
            ("2024-12", "2024-12-01".into(), "2025-01-01".into())
        );
        let (m, _, _) = month_of("garbage");
        assert_eq!(m, Utc::now().format("%Y-%m").to_string());
    }
}
