//! A collector's schedules on its page: the list with the next fires in the schedule's
//! timezone and the browser's, the add form, pause, resume and delete.

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum::{Extension, Router};
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::collector::{Forms, detail_page, text};
use super::form::{self, Errors, Field, Kind};
use super::{Api, ApiRouter, Id, Posted, Session, csrf_field, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/collectors/{id}/schedules", post(create))
        .route(
            "/schedules/{id}/edit",
            axum::routing::get(edit_page).post(edit),
        )
        .route("/schedules/{id}/pause", post(pause))
        .route("/schedules/{id}/resume", post(resume))
        .route("/schedules/{id}/delete", post(delete))
}

/// A fire instant in `tz`, and machine-readable for the browser's own time (console.js).
fn fire(at: &Value, tz: Option<chrono_tz::Tz>) -> Markup {
    let Some(raw) = at.as_str() else {
        return html! { "—" };
    };
    let local = chrono::DateTime::parse_from_rfc3339(raw)
        .ok()
        .zip(tz)
        .map(|(d, tz)| d.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string())
        .unwrap_or_else(|| raw.to_owned());
    html! { time datetime=(raw) data-local="browser" { (local) } }
}

/// The schedules section of a collector's page, with the add form's `typed` values and errors.
pub(super) fn section(
    session: &Session,
    collector: &str,
    schedules: &[Value],
    typed: &Map<String, Value>,
    errors: &Errors,
) -> Markup {
    html! {
        h2 id="schedules" { "Schedules" }
        @if schedules.is_empty() {
            p { "No schedule: this collector runs only when asked." }
        } @else {
            table id="schedule-list" {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "When" }
                    th scope="col" { "Next fires (its timezone; yours below)" } th scope="col" { "Actions" }
                } }
                tbody {
                    @for s in schedules {
                        @let sid = text(&s["id"]);
                        @let tz: Option<chrono_tz::Tz> = s["timezone"].as_str().and_then(|t| t.parse().ok());
                        @let paused = s["state"] == "PAUSED";
                        tr data-schedule=(text(&s["name"])) {
                            td { (text(&s["name"])) }
                            td { (text(&s["state"])) }
                            td {
                                @if let Some(m) = s["every_minutes"].as_u64() {
                                    "every " (m) " minutes from midnight, "
                                } @else {
                                    "at " (s["hours"].as_array().map(|h| h.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) " h, "
                                }
                                (text(&s["timezone"]))
                            }
                            td {
                                ul class="fires" {
                                    @for f in s["next_fires"].as_array().map_or(&[][..], Vec::as_slice).iter().take(3) {
                                        li { (fire(f, tz)) }
                                    }
                                }
                            }
                            td class="actions" {
                                a href={ "/schedules/" (sid) "/edit" } aria-label={ "Edit schedule " (text(&s["name"])) } { "Edit" }
                                form method="post" action={ "/schedules/" (sid) (if paused { "/resume" } else { "/pause" }) } {
                                    (csrf_field(session))
                                    button type="submit" class="secondary" { @if paused { "Resume" } @else { "Pause" } }
                                }
                                form method="post" action={ "/schedules/" (sid) "/delete" }
                                    hx-post={ "/schedules/" (sid) "/delete" } hx-target="body"
                                    hx-confirm={ "Delete schedule " (text(&s["name"])) "?" } {
                                    (csrf_field(session))
                                    button type="submit" class="danger" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h3 { "Add a schedule" }
        (fields(session, &format!("/collectors/{collector}/schedules#schedules"), typed, errors, ("Add schedule", "add-schedule")))
    }
}

/// The schedule's fields, for the add form and the edit page; the button's label and id.
fn fields(
    session: &Session,
    action: &str,
    typed: &Map<String, Value>,
    errors: &Errors,
    (submit, submit_id): (&str, &str),
) -> Markup {
    let value = |k: &str| typed.get(k).map(form::text_of).unwrap_or_default();
    html! {
        (form::general(errors))
        form method="post" action=(action) class="stack" id="schedule-form" {
            (csrf_field(session))
            (Field { name: "name", label: "Schedule name", kind: Kind::Text, value: &value("name"), required: true,
                     hint: Some("Unique among this collector's schedules.") }.render_in("s", errors))
            (Field { name: "timezone", label: "Timezone", kind: Kind::Text,
                     value: &typed.get("timezone").map_or_else(|| "UTC".to_owned(), form::text_of), required: true,
                     hint: Some("An IANA name, such as Asia/Seoul or Europe/Paris.") }.render_in("s", errors))
            (Field { name: "hours", label: "Hours of the day", kind: Kind::Text, value: &value("hours"), required: false,
                     hint: Some("0–23 in that timezone, comma-separated: 9, 21. Or give minutes below.") }.render_in("s", errors))
            (Field { name: "every_minutes", label: "Every N minutes", kind: Kind::Number, value: &value("every_minutes"),
                     required: false, hint: Some("1–1440, from local midnight; instead of hours.") }.render_in("s", errors))
            button type="submit" id=(submit_id) { (submit) }
        }
    }
}

/// The body of a create or an update: hours or minutes, whichever was typed.
fn body_of(values: &std::collections::HashMap<String, String>) -> Value {
    let get = |k: &str| {
        values
            .get(k)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mut body = json!({"name": get("name"), "timezone": get("timezone")});
    if !get("hours").is_empty() {
        body["hours"] = hours(&get("hours"));
    }
    if !get("every_minutes").is_empty() {
        body["every_minutes"] = get("every_minutes")
            .parse::<i64>()
            .map_or_else(|_| Value::String(get("every_minutes")), Value::from);
    }
    body
}

/// A form's values as it is shown again, without its token.
fn typed_of(values: std::collections::HashMap<String, String>) -> Map<String, Value> {
    values
        .into_iter()
        .filter(|(k, _)| k != "csrf")
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// The fields a schedule form shows, which errors are placed on.
const SHOWN: [&str; 4] = ["name", "timezone", "hours", "every_minutes"];

async fn edit_page(
    session: Session,
    Extension(router): Extension<ApiRouter>,
    Id(id): Id,
) -> Response {
    let api = Api::new(&router, &session);
    let s = match api.get(&format!("/v1/schedules/{id}")).await {
        Ok(s) => s,
        Err(r) => return refused(&r, &session),
    };
    let hours = s["hours"]
        .as_array()
        .map(|h| h.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let typed: Map<String, Value> = [
        ("name", s["name"].clone()),
        ("timezone", s["timezone"].clone()),
        ("hours", Value::String(hours)),
        ("every_minutes", s["every_minutes"].clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    edit_form(
        &session,
        &id,
        &s,
        &typed,
        &Errors::default(),
        StatusCode::OK,
    )
}

fn edit_form(
    session: &Session,
    id: &str,
    s: &Value,
    typed: &Map<String, Value>,
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let collector = text(&s["collector_id"]);
    let body = html! {
        p { a href={ "/collectors/" (collector) "#schedules" } { "← The collector" } }
        h1 { "Schedule " (text(&s["name"])) }
        p class="hint" { "Giving hours makes it an hours schedule; giving minutes, an interval one." }
        (fields(session, &format!("/schedules/{id}/edit"), typed, errors, ("Save", "save-schedule")))
    };
    (status, super::page("Edit a schedule", Some(session), body)).into_response()
}

async fn edit(
    Extension(router): Extension<ApiRouter>,
    Id(id): Id,
    Posted { session, values }: Posted,
) -> Response {
    let api = Api::new(&router, &session);
    let current = match api.get(&format!("/v1/schedules/{id}")).await {
        Ok(s) => s,
        Err(r) => return refused(&r, &session),
    };
    let mut body = body_of(&values);
    // Both typed (the page shows both): the kind it is not yet is the change asked for.
    if let Some(b) = body.as_object_mut()
        && b.contains_key("hours")
        && b.contains_key("every_minutes")
    {
        if current["every_minutes"].is_null() {
            b.remove("hours");
        } else {
            b.remove("every_minutes");
        }
    }
    match api
        .call(Method::PATCH, &format!("/v1/schedules/{id}"), Some(&body))
        .await
    {
        Ok(s) => Redirect::to(&format!(
            "/collectors/{}#schedules",
            text(&s["collector_id"])
        ))
        .into_response(),
        Err(r) => {
            let errors = Errors::of(&r, &SHOWN.map(str::to_owned));
            edit_form(
                &session,
                &id,
                &current,
                &typed_of(values),
                &errors,
                r.status,
            )
        }
    }
}

/// The hours typed, as the API wants them; what is not a number is sent as typed, for the API
/// to name.
fn hours(raw: &str) -> Value {
    Value::Array(
        raw.split([',', ' '])
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                h.parse::<i64>()
                    .map_or_else(|_| Value::String(h.to_owned()), Value::from)
            })
            .collect(),
    )
}

async fn create(
    Extension(router): Extension<ApiRouter>,
    Id(collector): Id,
    Posted { session, values }: Posted,
) -> Response {
    let api = Api::new(&router, &session);
    let body = body_of(&values);
    match api
        .call(
            Method::POST,
            &format!("/v1/collectors/{collector}/schedules"),
            Some(&body),
        )
        .await
    {
        Ok(_) => Redirect::to(&format!("/collectors/{collector}#schedules")).into_response(),
        Err(r) => {
            let forms = Forms {
                schedule: Some((typed_of(values), Errors::of(&r, &SHOWN.map(str::to_owned)))),
                ..Forms::default()
            };
            let mut resp = detail_page(&api, &session, &collector, forms).await;
            *resp.status_mut() = r.status;
            resp
        }
    }
}

async fn set_state(session: &Session, router: &ApiRouter, id: &str, state: &str) -> Response {
    let api = Api::new(router, session);
    match api
        .call(
            Method::PATCH,
            &format!("/v1/schedules/{id}"),
            Some(&json!({"state": state})),
        )
        .await
    {
        Ok(s) => Redirect::to(&format!(
            "/collectors/{}#schedules",
            text(&s["collector_id"])
        ))
        .into_response(),
        Err(r) => refused(&r, session),
    }
}

async fn pause(
    Extension(router): Extension<ApiRouter>,
    Id(id): Id,
    Posted { session, .. }: Posted,
) -> Response {
    set_state(&session, &router, &id, "PAUSED").await
}

async fn resume(
    Extension(router): Extension<ApiRouter>,
    Id(id): Id,
    Posted { session, .. }: Posted,
) -> Response {
    set_state(&session, &router, &id, "ENABLED").await
}

async fn delete(
    Extension(router): Extension<ApiRouter>,
    headers: HeaderMap,
    Id(id): Id,
    Posted { session, .. }: Posted,
) -> Response {
    let api = Api::new(&router, &session);
    let schedule = match api.get(&format!("/v1/schedules/{id}")).await {
        Ok(s) => s,
        Err(r) => return refused(&r, &session),
    };
    if let Err(r) = api
        .call(Method::DELETE, &format!("/v1/schedules/{id}"), None)
        .await
    {
        return refused(&r, &session);
    }
    super::go_to(
        &headers,
        &format!("/collectors/{}#schedules", text(&schedule["collector_id"])),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hours_are_read_from_commas_and_spaces() {
        assert_eq!(hours("9, 21"), json!([9, 21]));
        assert_eq!(hours("9 21"), json!([9, 21]));
        assert_eq!(hours("nine"), json!(["nine"]));
        assert_eq!(hours(""), json!([]));
    }

    #[test]
    fn a_fire_is_shown_in_the_schedules_timezone() {
        let html = fire(&json!("2026-12-03T00:00:00Z"), "Asia/Seoul".parse().ok()).into_string();
        assert!(html.contains("2026-12-03 09:00 KST"), "{html}");
        assert!(
            html.contains(r#"datetime="2026-12-03T00:00:00Z""#),
            "{html}"
        );
    }
}
