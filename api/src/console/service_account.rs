//! Service accounts: the list per provider, and the add form generated from the provider's
//! credential fields (`GET /v1/providers`).

use axum::extract::Query;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use maud::html;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::collector::{text, time};
use super::form::{self, Errors, Field, Kind};
use super::{Api, ApiRouter, Posted, Session, csrf_field, page, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/service-accounts", get(list))
        .route("/service-accounts/new", get(new).post(create))
}

#[derive(Debug, Default, Deserialize)]
struct Which {
    #[serde(default)]
    provider: String,
}

async fn list(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    Query(which): Query<Which>,
) -> Response {
    let api = Api::new(&api, &session);
    let (providers, accounts, projects) = match (
        api.get("/v1/providers").await,
        api.get("/v1/service-accounts").await,
        api.get("/v1/projects").await,
    ) {
        (Ok(p), Ok(a), Ok(pr)) => (p, a, pr),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return refused(&r, &session),
    };
    let providers = providers["items"].as_array().cloned().unwrap_or_default();
    let accounts = accounts["items"].as_array().cloned().unwrap_or_default();
    let chosen = if which.provider.is_empty() {
        providers
            .first()
            .map(|p| text(&p["id"]))
            .unwrap_or_default()
    } else {
        which.provider
    };
    let project_name = |id: &Value| {
        projects["items"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == *id))
            .map_or_else(|| text(id), |p| text(&p["name"]))
    };
    let shown: Vec<&Value> = accounts
        .iter()
        .filter(|a| a["provider"] == chosen.as_str())
        .collect();
    page(
        "Service accounts",
        Some(&session),
        html! {
            h1 { "Service accounts" }
            nav aria-label="Providers" class="tabs" {
                ul {
                    @for p in &providers {
                        @let id = text(&p["id"]);
                        @let n = accounts.iter().filter(|a| a["provider"] == id.as_str()).count();
                        li {
                            a href={ "/service-accounts?provider=" (id) }
                                aria-current=[(id == chosen).then_some("page")] {
                                (text(&p["name"])) " (" (n) ")"
                            }
                        }
                    }
                }
            }
            p { a class="button" href={ "/service-accounts/new?provider=" (chosen) } id="add-account" { "Add" } }
            @if shown.is_empty() {
                p { "No service account of this provider yet." }
            } @else {
                table id="accounts" {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Project" }
                        th scope="col" { "Credentials" } th scope="col" { "Created" }
                    } }
                    tbody {
                        @for a in &shown {
                            tr {
                                td { (text(&a["name"])) }
                                td { (project_name(&a["project_id"])) }
                                td { @if a["has_credentials"] == true { "stored" } @else { "none" } }
                                td { (time(&a["created_at"])) }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

async fn new(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    Query(which): Query<Which>,
) -> Response {
    let api = Api::new(&api, &session);
    render_form(
        &api,
        &session,
        &which.provider,
        &Map::new(),
        &Errors::default(),
        StatusCode::OK,
    )
    .await
}

/// The add form of `provider`'s accounts, with `typed` values and `errors`.
async fn render_form(
    api: &Api<'_>,
    session: &Session,
    provider: &str,
    typed: &Map<String, Value>,
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let (providers, projects) = match (
        api.get("/v1/providers").await,
        api.get("/v1/projects").await,
    ) {
        (Ok(p), Ok(pr)) => (p, pr),
        (Err(r), _) | (_, Err(r)) => return refused(&r, session),
    };
    let Some(p) = providers["items"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == provider))
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, page("Unknown provider", Some(session), html! {
            h1 { "Unknown provider" }
            p { "No provider is named " code { (provider) } ". " a href="/service-accounts" { "Service accounts" } }
        }))
            .into_response();
    };
    let billing = p["billing_only"] == true;
    let value = |k: &str| typed.get(k).map(form::text_of).unwrap_or_default();
    let name = value("name");
    let project = value("project_id");
    let project_error = errors.get("project_id");
    let body = html! {
        p { a href={ "/service-accounts?provider=" (provider) } { "← Service accounts" } }
        h1 { "Add a " (text(&p["name"])) " service account" }
        (form::general(errors))
        form method="post" action={ "/service-accounts/new?provider=" (provider) } class="stack" id="account-form" {
            (csrf_field(session))
            input type="hidden" name="provider" value=(provider);
            (Field { name: "name", label: "Name", kind: Kind::Text, value: &name, required: true,
                     hint: Some("Unique among this provider's accounts.") }.render(errors))
            div class="field" {
                label for="f-project_id" {
                    "Project" @if billing { " " span class="hint" { "(required for billing accounts)" } }
                }
                select id="f-project_id" name="project_id" required[billing]
                    aria-invalid=[project_error.map(|_| "true")]
                    aria-describedby=[project_error.map(|_| "f-project_id-error")] {
                    option value="" { @if billing { "Choose a project" } @else { "No project" } }
                    @for pr in projects["items"].as_array().map_or(&[][..], Vec::as_slice) {
                        @let id = text(&pr["id"]);
                        option value=(id) selected[id == project] { (text(&pr["name"])) }
                    }
                }
                @if let Some(e) = project_error {
                    p id="f-project_id-error" class="error" { (e) }
                }
            }
            @let fields = p["credentials"].as_array().cloned().unwrap_or_default();
            @if !fields.is_empty() {
                fieldset {
                    legend { "Credentials" }
                    p class="hint" { "Encrypted when stored, and never shown again." }
                    @for f in &fields {
                        @let fname = format!("credentials.{}", text(&f["name"]));
                        @let secret = f["secret"] == true;
                        @let typed_value = if secret { String::new() } else { value(&fname) };
                        (Field {
                            name: &fname,
                            label: &text(&f["name"]),
                            kind: if secret { Kind::Secret } else { Kind::Text },
                            value: &typed_value,
                            required: f["required"] == true,
                            hint: f["description"].as_str(),
                        }.render(errors))
                    }
                }
            }
            button type="submit" { "Add service account" }
        }
    };
    (status, page("Add a service account", Some(session), body)).into_response()
}

async fn create(
    Extension(router): Extension<ApiRouter>,
    Posted { session, values }: Posted,
) -> Response {
    let api = Api::new(&router, &session);
    let provider = values.get("provider").cloned().unwrap_or_default();
    let mut body = Map::new();
    let mut credentials = Map::new();
    for (k, v) in &values {
        if let Some(field) = k.strip_prefix("credentials.") {
            // An empty optional field is left out, not sent as "".
            if !v.is_empty() {
                credentials.insert(field.to_owned(), Value::String(v.clone()));
            }
        }
    }
    body.insert(
        "name".into(),
        values.get("name").cloned().unwrap_or_default().into(),
    );
    body.insert("provider".into(), provider.clone().into());
    if let Some(p) = values.get("project_id").filter(|p| !p.is_empty()) {
        body.insert("project_id".into(), p.clone().into());
    }
    body.insert("credentials".into(), Value::Object(credentials));
    match api
        .call(
            Method::POST,
            "/v1/service-accounts",
            Some(&Value::Object(body.clone())),
        )
        .await
    {
        Ok(_) => {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("provider", &provider)
                .finish();
            Redirect::to(&format!("/service-accounts?{q}")).into_response()
        }
        Err(r) => {
            let mut shown: Vec<String> =
                vec!["name".into(), "project_id".into(), "provider".into()];
            shown.extend(
                values
                    .keys()
                    .filter(|k| k.starts_with("credentials."))
                    .cloned(),
            );
            let errors = Errors::of(&r, &shown);
            let typed: Map<String, Value> = values
                .into_iter()
                .filter(|(k, _)| k != "csrf")
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            render_form(&api, &session, &provider, &typed, &errors, r.status).await
        }
    }
}
