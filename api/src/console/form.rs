//! Form fields with their label, hint and the API's error beside them.
//!
//! A refused form is shown again with what was typed (never a secret) and each of the
//! problem's `errors` on its field: marked `aria-invalid`, the message in red below it and
//! named by `aria-describedby`, so a screen reader reads it with the field.

use std::collections::HashMap;

use maud::{Markup, html};
use serde_json::Value;

use super::Refusal;

/// The errors of a refused form, by the API's field name (`name`, `credentials.secret`, ...).
#[derive(Debug, Default)]
pub(crate) struct Errors {
    by_field: HashMap<String, String>,
    /// The problem's detail, when no field holds it.
    pub general: Option<String>,
}

impl Errors {
    /// The errors the API's refusal names; its detail as the general error when it names none
    /// of `shown` (the fields this form has).
    pub(crate) fn of(r: &Refusal, shown: &[String]) -> Self {
        let mut by_field = HashMap::new();
        for e in r.problem["errors"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
        {
            if let (Some(f), Some(d)) = (e["field"].as_str(), e["detail"].as_str()) {
                // A nested path (options.sub.key) belongs to the form's field that holds it.
                let field = shown
                    .iter()
                    .filter(|s| f == s.as_str() || f.starts_with(&format!("{s}.")))
                    .max_by_key(|s| s.len())
                    .cloned()
                    .unwrap_or_else(|| f.to_owned());
                by_field
                    .entry(field)
                    .and_modify(|d0: &mut String| {
                        d0.push_str("; ");
                        d0.push_str(d);
                    })
                    .or_insert_with(|| d.to_owned());
            }
        }
        let placed = by_field.keys().any(|k| shown.contains(k));
        Self {
            general: (!placed).then(|| r.detail()),
            by_field,
        }
    }

    pub(crate) fn get(&self, field: &str) -> Option<&str> {
        self.by_field.get(field).map(String::as_str)
    }
}

/// The kind of an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    /// Never filled in again: a secret is shown once, when typed.
    Secret,
    Number,
    /// A JSON value or a list, typed as text over several lines.
    Area,
}

/// One labelled field.
pub(crate) struct Field<'a> {
    /// The API's name for it, which errors use; the input's `name` too.
    pub name: &'a str,
    pub label: &'a str,
    pub kind: Kind,
    pub value: &'a str,
    pub required: bool,
    pub hint: Option<&'a str>,
}

/// An element id for a field name (`credentials.key` → `f-credentials-key`) in a form whose
/// ids start with `scope`.
pub(crate) fn id_of(scope: &str, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{scope}-{safe}")
}

impl Field<'_> {
    pub(crate) fn render(&self, errors: &Errors) -> Markup {
        self.render_in("f", errors)
    }

    /// The field with ids starting `scope`, for a page with two forms of the same field names.
    pub(crate) fn render_in(&self, scope: &str, errors: &Errors) -> Markup {
        let id = id_of(scope, self.name);
        let error = errors.get(self.name);
        let error_id = format!("{id}-error");
        let hint_id = format!("{id}-hint");
        let described: Vec<&str> = [
            error.map(|_| error_id.as_str()),
            self.hint.map(|_| hint_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let described = (!described.is_empty()).then(|| described.join(" "));
        let invalid = error.map(|_| "true");
        html! {
            div class="field" {
                label for=(id) {
                    (self.label)
                    @if self.required { " " span class="hint" { "(required)" } }
                }
                @match self.kind {
                    Kind::Area => {
                        textarea id=(id) name=(self.name) rows="4" required[self.required]
                            aria-invalid=[invalid] aria-describedby=[described.as_deref()] { (self.value) }
                    }
                    Kind::Secret => {
                        input id=(id) name=(self.name) type="password" autocomplete="off"
                            required[self.required] aria-invalid=[invalid]
                            aria-describedby=[described.as_deref()];
                    }
                    Kind::Number => {
                        input id=(id) name=(self.name) type="number" step="any" value=(self.value)
                            required[self.required] aria-invalid=[invalid]
                            aria-describedby=[described.as_deref()];
                    }
                    Kind::Text => {
                        input id=(id) name=(self.name) type="text" value=(self.value)
                            required[self.required] aria-invalid=[invalid]
                            aria-describedby=[described.as_deref()];
                    }
                }
                @if let Some(e) = error {
                    p id=(error_id) class="error" { (e) }
                }
                @if let Some(h) = self.hint {
                    p id=(hint_id) class="hint" { (h) }
                }
            }
        }
    }
}

/// The general error of a refused form, at its top.
pub(crate) fn general(errors: &Errors) -> Markup {
    html! {
        @if let Some(g) = &errors.general {
            p class="error" role="alert" id="form-error" { (g) }
        } @else if !errors.by_field.is_empty() {
            p class="error" role="alert" id="form-error" { "Please correct the fields marked below." }
        }
    }
}

/// A JSON value as the text of an input.
pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;

    use super::*;

    #[test]
    fn errors_land_on_the_field_that_holds_them() {
        let r = Refusal {
            status: StatusCode::BAD_REQUEST,
            problem: json!({"detail": "bad", "errors": [
                {"field": "name", "detail": "must be unique"},
                {"field": "options.filter.regions", "detail": "must be an array"},
                {"field": "options.resources", "detail": "must be ≥ 0"},
            ]}),
        };
        let shown = [
            "name".to_owned(),
            "options".to_owned(),
            "options.resources".to_owned(),
        ];
        let e = Errors::of(&r, &shown);
        assert_eq!(e.get("name"), Some("must be unique"));
        assert_eq!(e.get("options"), Some("must be an array"));
        assert_eq!(e.get("options.resources"), Some("must be ≥ 0"));
        assert!(e.general.is_none());
        let elsewhere = Errors::of(&r, &["project_id".to_owned()]);
        assert_eq!(elsewhere.general.as_deref(), Some("bad"));
    }

    #[test]
    fn a_field_in_error_is_marked_and_described() {
        let r = Refusal {
            status: StatusCode::CONFLICT,
            problem: json!({"detail": "taken", "errors": [{"field": "name", "detail": "must be unique"}]}),
        };
        let e = Errors::of(&r, &["name".to_owned()]);
        let html = Field {
            name: "name",
            label: "Name",
            kind: Kind::Text,
            value: "<b>x",
            required: true,
            hint: Some("unique"),
        }
        .render(&e)
        .into_string();
        assert!(html.contains(r#"aria-invalid="true""#), "{html}");
        assert!(
            html.contains(r#"aria-describedby="f-name-error f-name-hint""#),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;x"), "values are escaped: {html}");
        let secret = Field {
            name: "credentials.key",
            label: "Key",
            kind: Kind::Secret,
            value: "hunter2",
            required: false,
            hint: None,
        }
        .render(&Errors::default())
        .into_string();
        assert!(
            !secret.contains("hunter2"),
            "a secret is never shown again: {secret}"
        );
    }
}
