//! The collector creation wizard: a plugin from the catalog, then its version, its options
//! (a form generated from the plugin's options schema), a name, a priority and tags.

use axum::extract::Query;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use maud::html;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::collector::text;
use super::form::{self, Errors, Field, Kind};
use super::{Api, ApiRouter, Posted, Session, csrf_field, page, refused};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/collectors/new", get(start).post(create))
}

#[derive(Debug, Default, Deserialize)]
struct Chosen {
    #[serde(default)]
    plugin: String,
}

async fn start(
    session: Session,
    Extension(api): Extension<ApiRouter>,
    Query(chosen): Query<Chosen>,
) -> Response {
    let api = Api::new(&api, &session);
    if !chosen.plugin.is_empty() {
        return details(
            &api,
            &session,
            &chosen.plugin,
            &Map::new(),
            &Errors::default(),
            StatusCode::OK,
        )
        .await;
    }
    let plugins = match api.get("/v1/plugins").await {
        Ok(p) => p,
        Err(r) => return refused(&r, &session),
    };
    page(
        "New collector",
        Some(&session),
        html! {
            p { a href="/collectors" { "← Collectors" } }
            h1 { "New collector" }
            p class="wizard-step" { "Step 1 of 2: the plugin" }
            form method="get" action="/collectors/new" class="stack" {
                fieldset {
                    legend { "Plugin" }
                    @for (i, p) in plugins["items"].as_array().map_or(&[][..], Vec::as_slice).iter().enumerate() {
                        @let id = text(&p["id"]);
                        div {
                            input type="radio" name="plugin" id={ "plugin-" (id) } value=(id) required checked[i == 0];
                            " "
                            label for={ "plugin-" (id) } {
                                strong { (id) } " — " (text(&p["kind"])) ", " (text(&p["provider"]))
                                ", latest " (text(&p["latest"]))
                                @if p["official"] != true { " (private)" }
                            }
                        }
                    }
                }
                button type="submit" id="wizard-next" { "Next" }
            }
        },
    )
    .into_response()
}

/// The option fields of a plugin's schema: (field name, schema of the property, required).
fn option_fields(schema: &Value) -> Vec<(String, Value, bool)> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(k, s)| {
                    (
                        format!("options.{k}"),
                        s.clone(),
                        required.contains(&k.as_str()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How an option is typed: strings as text, numbers as numbers, the rest as JSON.
fn kind_of(schema: &Value) -> Kind {
    match schema["type"].as_str() {
        Some("string") => Kind::Text,
        Some("integer" | "number") => Kind::Number,
        Some("boolean") => Kind::Text,
        _ => Kind::Area,
    }
}

async fn details(
    api: &Api<'_>,
    session: &Session,
    plugin: &str,
    typed: &Map<String, Value>,
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let segment: String = form_urlencoded::byte_serialize(plugin.as_bytes()).collect();
    let p = match api.get(&format!("/v1/plugins/{segment}")).await {
        Ok(p) => p,
        Err(r) => return refused(&r, session),
    };
    let value = |k: &str| typed.get(k).map(form::text_of).unwrap_or_default();
    let version = value("version");
    let version_error = errors.get("version");
    let fields = option_fields(&p["options_schema"]);
    let body = html! {
        p { a href="/collectors/new" { "← Choose another plugin" } }
        h1 { "New collector: " (plugin) }
        p class="wizard-step" { "Step 2 of 2: name, version, options, priority and tags" }
        (form::general(errors))
        form method="post" action="/collectors/new" class="stack" id="collector-form" {
            (csrf_field(session))
            input type="hidden" name="plugin_id" value=(plugin);
            (Field { name: "name", label: "Name", kind: Kind::Text, value: &value("name"), required: true,
                     hint: Some("Unique among collectors.") }.render(errors))
            div class="field" {
                label for="f-version" { "Version" }
                select id="f-version" name="version" aria-invalid=[version_error.map(|_| "true")]
                    aria-describedby=[version_error.map(|_| "f-version-error")] {
                    option value="" { "Latest (" (text(&p["latest"])) "), following new versions" }
                    @for v in p["versions"].as_array().map_or(&[][..], Vec::as_slice) {
                        @let v = text(v);
                        option value=(v) selected[v == version] { (v) " (pinned)" }
                    }
                }
                @if let Some(e) = version_error {
                    p id="f-version-error" class="error" { (e) }
                }
            }
            @if !fields.is_empty() {
                fieldset {
                    legend { "Options" }
                    @for (name, schema, required) in &fields {
                        @let label = name.trim_start_matches("options.");
                        @let kind = kind_of(schema);
                        @let hint = match (schema["description"].as_str(), kind) {
                            (Some(d), Kind::Area) => format!("{d} (JSON)"),
                            (Some(d), _) => d.to_owned(),
                            (None, Kind::Area) => "JSON".to_owned(),
                            (None, _) if schema["type"] == "boolean" => "true or false".to_owned(),
                            (None, _) => String::new(),
                        };
                        (Field { name, label, kind, value: &value(name), required: *required,
                                 hint: (!hint.is_empty()).then_some(hint.as_str()) }.render(errors))
                    }
                }
            }
            (Field { name: "priority", label: "Priority", kind: Kind::Number,
                     value: &typed.get("priority").map_or_else(|| "10".to_owned(), form::text_of), required: false,
                     hint: Some("0–1,000,000; when collectors report the same field, the lower number wins.") }.render(errors))
            (Field { name: "tags", label: "Tags", kind: Kind::Area, value: &value("tags"), required: false,
                     hint: Some("One key=value per line.") }.render(errors))
            button type="submit" id="create-collector" { "Create collector" }
        }
    };
    (status, page("New collector", Some(session), body)).into_response()
}

/// The option's value as the API wants it: text for a string option, else the JSON typed.
fn option_value(schema: &Value, raw: &str) -> Value {
    if schema["type"] == "string" {
        return Value::String(raw.to_owned());
    }
    // Not JSON: sent as text, and the API names the option that refuses it.
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// `key=value` lines as tags; the first bad line's error.
pub(super) fn tags(raw: &str) -> Result<Map<String, Value>, String> {
    raw.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_owned(), Value::String(v.trim().to_owned())))
            }
            _ => Err(format!("`{l}` is not key=value")),
        })
        .collect()
}

async fn create(
    Extension(router): Extension<ApiRouter>,
    Posted { session, values }: Posted,
) -> Response {
    let api = Api::new(&router, &session);
    let plugin = values.get("plugin_id").cloned().unwrap_or_default();
    let typed: Map<String, Value> = values
        .iter()
        .filter(|(k, _)| k.as_str() != "csrf")
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let segment: String = form_urlencoded::byte_serialize(plugin.as_bytes()).collect();
    let schema = match api.get(&format!("/v1/plugins/{segment}")).await {
        Ok(p) => p["options_schema"].clone(),
        Err(r) => return refused(&r, &session),
    };
    let fields = option_fields(&schema);
    let mut options = Map::new();
    for (name, s, _) in &fields {
        if let Some(raw) = values.get(name).filter(|v| !v.trim().is_empty()) {
            options.insert(
                name.trim_start_matches("options.").to_owned(),
                option_value(s, raw.trim()),
            );
        }
    }
    let mut body = Map::new();
    body.insert(
        "name".into(),
        values.get("name").cloned().unwrap_or_default().into(),
    );
    body.insert("plugin_id".into(), plugin.clone().into());
    body.insert("options".into(), Value::Object(options));
    if let Some(v) = values.get("version").filter(|v| !v.is_empty()) {
        body.insert("version".into(), v.clone().into());
    }
    if let Some(p) = values.get("priority").filter(|p| !p.trim().is_empty()) {
        body.insert("priority".into(), option_value(&Value::Null, p.trim()));
    }
    let mut shown: Vec<String> = fields.iter().map(|(n, _, _)| n.clone()).collect();
    shown.extend(["name", "priority", "version", "tags", "options"].map(str::to_owned));
    match tags(values.get("tags").map_or("", String::as_str)) {
        Ok(t) => {
            body.insert("tags".into(), Value::Object(t));
        }
        Err(e) => {
            let r = super::Refusal::field(StatusCode::BAD_REQUEST, "tags", &e);
            return details(
                &api,
                &session,
                &plugin,
                &typed,
                &Errors::of(&r, &shown),
                r.status,
            )
            .await;
        }
    }
    match api
        .call(Method::POST, "/v1/collectors", Some(&Value::Object(body)))
        .await
    {
        Ok(c) => Redirect::to(&format!("/collectors/{}", text(&c["id"]))).into_response(),
        Err(r) => {
            details(
                &api,
                &session,
                &plugin,
                &typed,
                &Errors::of(&r, &shown),
                r.status,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn options_are_typed_by_their_schema() {
        assert_eq!(option_value(&json!({"type": "string"}), "10"), json!("10"));
        assert_eq!(option_value(&json!({"type": "integer"}), "10"), json!(10));
        assert_eq!(
            option_value(&json!({"type": "array"}), r#"["a"]"#),
            json!(["a"])
        );
        assert_eq!(
            option_value(&json!({"type": "integer"}), "ten"),
            json!("ten")
        );
        assert_eq!(
            option_value(&json!({"type": "boolean"}), "true"),
            json!(true)
        );
    }

    #[test]
    fn tags_are_lines_of_key_and_value() {
        let t = tags("env = prod\n\nteam=payments=core\n").expect("tags");
        assert_eq!(t["env"], "prod");
        assert_eq!(t["team"], "payments=core");
        assert_eq!(tags("oops").expect_err("no ="), "`oops` is not key=value");
    }
}
