//! Extractors whose rejections are problem+json naming the field, instead of axum's plain text.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use gleaner_common::id::{DomainId, ProjectId};
use gleaner_common::store::api_key::Caller;
use serde::de::DeserializeOwned;

use crate::problem::{ApiError, Code};

/// PostgreSQL's `text` and `jsonb` cannot hold U+0000, so no string the API takes may: one
/// carrying it is refused at the edge, naming where it is, the same in both modes, rather than
/// failing in PostgreSQL as a 500 (SQLite, in the standalone mode, would store it).
const NUL_DETAIL: &str = "must not contain the NUL character (U+0000)";

/// Where the body's first string (or key) holding U+0000 is, as a field path; `None` when it has
/// none, or is not JSON (which deserializing then reports).
fn nul_in_body(bytes: &[u8]) -> Option<String> {
    // JSON writes U+0000 as an escape only; most bodies have none, and are not parsed twice.
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let field = nul_in(&value, String::new())?;
    Some(if field.is_empty() {
        "body".into()
    } else {
        field
    })
}

/// The path of the first string in `value` holding U+0000, written as serde_path_to_error
/// writes paths (`tags.env`, `args[0]`); a key holding it is reported at its object.
fn nul_in(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0').then_some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(at.clone());
            }
            nul_in(
                v,
                if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                },
            )
        }),
        _ => None,
    }
}

/// A JSON object body, deserialized with the path of any offending field; a string holding
/// U+0000 is refused ([`NUL_DETAIL`]).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == "application"
                    && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
        if !is_json {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(unread_body)?;
        // Every body of this API is an object, but serde's derived `Deserialize` also reads a
        // struct from an array of its fields in order: `[null, null]` would be a PATCH with
        // nothing in it, answered 200.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::field(
                Code::InvalidInput,
                "body",
                "invalid type: array, expected a JSON object",
            ));
        }
        if let Some(field) = nul_in_body(&bytes) {
            return Err(ApiError::field(Code::InvalidInput, field, NUL_DETAIL));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| body_error(&e))?;
        // Trailing bytes after the JSON value make the body malformed, not silently ignored.
        de.end().map_err(|e| {
            ApiError::new(
                Code::MalformedBody,
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        Ok(Self(value))
    }
}

/// A JSON body that may be left out: `None` for an empty body or `null`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(unread_body)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        // `null` is no body too.
        let ApiJson(value) = ApiJson::<Option<T>>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// A body that could not be read: too large (413), or cut off.
fn unread_body(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            Code::BodyTooLarge,
            "the body is larger than this API accepts (GLEANER_API__MAX_BODY_BYTES)",
        )
    } else {
        ApiError::new(Code::MalformedBody, e.body_text())
    }
}

fn body_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::new(
            Code::MalformedBody,
            format!("the body is not valid JSON: {inner}"),
        );
    }
    let (field, detail) = field_of(&e.path().to_string(), &inner.to_string());
    ApiError::field(Code::InvalidInput, field, detail)
}

/// Turns serde's path and message into a field name and a message without position noise.
/// A missing field is reported by serde at its parent's path, with the name in the message.
fn field_of(path: &str, message: &str) -> (String, String) {
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned();
    let parent = if path == "." {
        String::new()
    } else {
        path.to_owned()
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let field = if parent.is_empty() {
            name.to_owned()
        } else {
            format!("{parent}.{name}")
        };
        return (field, "is required".into());
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        // serde_path_to_error's path of an unknown field may already end with its name.
        let field = if parent.is_empty() {
            name.to_owned()
        } else if parent == name || parent.ends_with(&format!(".{name}")) {
            parent
        } else {
            format!("{parent}.{name}")
        };
        return (field, "unknown field".into());
    }
    (
        if parent.is_empty() {
            "body".to_owned()
        } else {
            parent
        },
        message,
    )
}

/// Query parameters, deserialized with the name of any offending parameter; a value holding
/// U+0000 is refused ([`NUL_DETAIL`]).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        if let Some((name, _)) =
            form_urlencoded::parse(query.as_bytes()).find(|(_, value)| value.contains('\0'))
        {
            return Err(ApiError::field(Code::InvalidInput, name, NUL_DETAIL));
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(Self).map_err(|e| {
            let (field, detail) = field_of(&e.path().to_string(), &e.inner().to_string());
            ApiError::field(Code::InvalidInput, field, detail)
        })
    }
}

/// The domain a request acts for: its API key's ([`crate::auth`]). Every read and write of a
/// handler is scoped by it, so another domain's object is not found.
#[derive(Clone, Copy, Debug)]
pub struct Tenant(pub DomainId);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Auth(caller) = Auth::from_request_parts(parts, state).await?;
        Ok(Self(caller.domain))
    }
}

/// Who a request comes from: its API key's domain, role and projects, as [`crate::auth`]
/// checked them.
#[derive(Clone, Debug)]
pub struct Auth(pub Caller);

impl Auth {
    /// The domain the request acts for.
    #[must_use]
    pub fn domain(&self) -> DomainId {
        self.0.domain
    }

    /// The projects the key is limited to; `None`: the whole domain.
    #[must_use]
    pub fn projects(&self) -> Option<&[ProjectId]> {
        self.0.projects.as_deref()
    }

    /// Whether the key sees what belongs to `project`: a key limited to projects sees nothing
    /// outside them, nor what belongs to no project.
    #[must_use]
    pub fn sees(&self, project: Option<ProjectId>) -> bool {
        match &self.0.projects {
            None => true,
            Some(allowed) => project.is_some_and(|p| allowed.contains(&p)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Self)
            .ok_or_else(|| {
                // A handler asked for its caller on a route whose rule checks none.
                ApiError::internal("no caller on a route that needs one")
            })
    }
}

/// Parses an id from a path segment; a malformed id is a resource that does not exist.
///
/// # Errors
/// 404 naming what was looked for.
pub fn parse_id<T: FromStr>(what: &str, raw: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what, raw))
}

/// A comma-separated list of ids in a query parameter (`a,b,c`), at most [`MAX_LIMIT`] of them.
///
/// # Errors
/// A 400 naming `field` when the list is empty, too long, or an item is not an id.
pub fn id_list<T: FromStr>(field: &str, raw: &str) -> Result<Vec<T>, ApiError> {
    let items: Vec<&str> = raw.split(',').map(str::trim).collect();
    if items.len() > usize::try_from(MAX_LIMIT).unwrap_or(usize::MAX) {
        return Err(ApiError::field(
            Code::InvalidInput,
            field,
            format!("lists more than {MAX_LIMIT} ids"),
        ));
    }
    items
        .into_iter()
        .map(|item| {
            item.parse().map_err(|_| {
                ApiError::field(
                    Code::InvalidInput,
                    field,
                    format!("`{item}` is not an id: give comma-separated UUIDs"),
                )
            })
        })
        .collect()
}

/// Largest page of any listing; larger requests are refused rather than silently cut.
pub const MAX_LIMIT: u64 = 1000;

/// A listing's `limit` query parameter: `default` when absent, otherwise within
/// 1..=[`MAX_LIMIT`] or a 400 naming `limit`.
///
/// # Errors
/// The limit is out of range.
pub fn page_limit(limit: Option<u64>, default: u64) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::field(
            Code::InvalidInput,
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_unknown_fields_are_named() {
        assert_eq!(
            field_of(".", "missing field `name` at line 1 column 2"),
            ("name".into(), "is required".into())
        );
        assert_eq!(
            field_of("credentials", "missing field `key`"),
            ("credentials.key".into(), "is required".into())
        );
        assert_eq!(
            field_of(
                "priority",
                "invalid type: string \"x\", expected i64 at line 1 column 20"
            ),
            (
                "priority".into(),
                "invalid type: string \"x\", expected i64".into()
            )
        );
        assert_eq!(
            field_of(".", "unknown field `nmae`, expected `name`"),
            ("nmae".into(), "unknown field".into())
        );
    }

    #[test]
    fn a_nul_in_a_body_is_found_naming_its_field() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"name": "a"}"#, None),
            // An escaped backslash, then the characters `u0000`: no NUL.
            (r#"{"name": "a\\u0000"}"#, None),
            (r#"{"name": "a\u0000"}"#, Some("name")),
            (
                r#"{"tags": {"env": "x", "team": "\u0000"}}"#,
                Some("tags.team"),
            ),
            (r#"{"tags": {"\u0000": "x"}}"#, Some("tags")),
            (r#"{"args": ["a", "b\u0000"]}"#, Some("args[1]")),
            (r#""\u0000""#, Some("body")),
            (r#"{"name": "\u0000"#, None),
        ];
        for (body, field) in cases {
            assert_eq!(nul_in_body(body.as_bytes()).as_deref(), *field, "{body}");
        }
    }

    #[test]
    fn id_lists_are_comma_separated_and_name_their_field() {
        let a = "01a207cc-0000-7000-8000-000000000001";
        let b = "01a207cc-0000-7000-8000-000000000002";
        let ids: Vec<uuid::Uuid> = id_list("ids", &format!("{a}, {b}")).expect("two ids");
        assert_eq!(ids.len(), 2);
        for bad in ["", "x", &format!("{a},"), &format!("{a},,{b}")] {
            let e = id_list::<uuid::Uuid>("ids", bad).expect_err(bad);
            assert_eq!(e.field_names(), vec!["ids"], "{bad}");
        }
    }
}
