//! Errors at the HTTP edge, as RFC 9457 problem details.
//!
//! Policy:
//! - Every error response is `application/problem+json`, built from the one [`Code`] table below
//!   (code → status, title, `type`), so clients can branch on `type` and show `title`.
//! - Input errors name the offending fields in `errors: [{field, detail}]`; a body that is not
//!   JSON, or JSON of the wrong shape, is reported the same way (our extractors wrap axum's).
//! - 5xx bodies stay generic; the cause is logged once, here, inside the request's span. The
//!   one exception is 504 `/problems/verification-timed-out`, which names the plugin that did
//!   not answer: the fault is the plugin's, not the server's, and there is no cause to hide.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gleaner_common::model::Invalid;
use gleaner_common::store;
use serde::Serialize;
use utoipa::ToSchema;

/// The kinds of error the API returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    MalformedBody,
    InvalidInput,
    NotFound,
    DuplicateName,
    Conflict,
    /// A plugin being registered failed its `init` call.
    PluginFailed,
    /// No plugin can check a service account's credentials.
    NoPlugin,
    /// A plugin refused a service account's credentials or a collector's options.
    VerificationFailed,
    /// A plugin did not finish checking credentials in time.
    VerificationTimedOut,
    /// No API key, or one that is unknown, revoked or expired.
    Unauthorized,
    /// The key's role, or its projects, do not allow this (or the deployment does not).
    Forbidden,
    /// The key made too many requests, or holds too many streams open.
    TooManyRequests,
    /// An `Idempotency-Key` (or a queue request's `request_id`) given again with another
    /// request.
    IdempotencyKeyReused,
    /// The route does not take the request's method; `Allow` lists those it does.
    MethodNotAllowed,
    /// The request's body is larger than `GLEANER_API__MAX_BODY_BYTES`.
    BodyTooLarge,
    UnsupportedMediaType,
    Unavailable,
    Internal,
}

impl Code {
    /// Status, title and the `type` URI path.
    const fn meta(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Code::MalformedBody => (
                StatusCode::BAD_REQUEST,
                "Malformed request body",
                "/problems/malformed-body",
            ),
            Code::InvalidInput => (
                StatusCode::BAD_REQUEST,
                "Invalid input",
                "/problems/invalid-input",
            ),
            Code::NotFound => (StatusCode::NOT_FOUND, "Not found", "/problems/not-found"),
            Code::DuplicateName => (
                StatusCode::CONFLICT,
                "Name already in use",
                "/problems/duplicate-name",
            ),
            Code::Conflict => (
                StatusCode::CONFLICT,
                "Conflicts with the current state",
                "/problems/conflict",
            ),
            Code::PluginFailed => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "The plugin failed",
                "/problems/plugin-failed",
            ),
            Code::NoPlugin => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "No plugin for the provider",
                "/problems/no-plugin",
            ),
            Code::VerificationFailed => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Verification failed",
                "/problems/verification-failed",
            ),
            Code::VerificationTimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                "Verification timed out",
                "/problems/verification-timed-out",
            ),
            Code::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "/problems/unauthorized",
            ),
            Code::Forbidden => (StatusCode::FORBIDDEN, "Forbidden", "/problems/forbidden"),
            Code::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency key reused",
                "/problems/idempotency-key-reused",
            ),
            Code::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "/problems/too-many-requests",
            ),
            Code::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "/problems/method-not-allowed",
            ),
            Code::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                "/problems/body-too-large",
            ),
            Code::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "/problems/unsupported-media-type",
            ),
            Code::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
                "/problems/unavailable",
            ),
            Code::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "/problems/internal",
            ),
        }
    }
}

/// The media type of every error response.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One offending field; for a failed verification, one service account
/// (`service_accounts.<id>`) with the plugin's reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the body or the query parameter's name: `name`, `options.resources`,
    /// `credentials.aws_access_key_id`, `limit`; `service_accounts.<id>` for an account a
    /// plugin did not verify.
    #[schema(example = "name")]
    pub field: String,
    #[schema(example = "must not be empty")]
    pub detail: String,
}

/// The problem+json body (RFC 9457) of every error response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// What went wrong, as a URI path to branch on: `/problems/invalid-input`,
    /// `/problems/not-found`, `/problems/duplicate-name`, ...
    #[serde(rename = "type")]
    #[schema(example = "/problems/invalid-input")]
    pub kind: &'static str,
    /// A short, fixed summary of `type`.
    #[schema(example = "Invalid input")]
    pub title: &'static str,
    /// The HTTP status, repeated.
    #[schema(example = 400)]
    pub status: u16,
    /// What went wrong in this request.
    #[schema(example = "name: must not be empty")]
    pub detail: String,
    /// The offending fields of an input error; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// What a failing plugin wrote on stderr (its end), with credential values redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

/// An error a handler returns.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    detail: String,
    errors: Vec<FieldError>,
    stderr: Option<String>,
    /// Logged for 5xx, never sent.
    cause: Option<String>,
    /// Seconds to wait before trying again (`Retry-After`), for a 429 or 503.
    retry_after: Option<u64>,
}

/// `Result` of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            stderr: None,
            cause: None,
            retry_after: None,
        }
    }

    /// Tells the client how many seconds to wait before trying again (`Retry-After`).
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Adds a plugin's stderr to the problem.
    #[must_use]
    pub fn with_stderr(mut self, stderr: String) -> Self {
        self.stderr = Some(stderr);
        self
    }

    /// Adds entries to the problem's `errors`.
    #[must_use]
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors.extend(errors);
        self
    }

    /// An input error naming one field.
    pub fn field(code: Code, field: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let field = field.into();
        Self {
            code,
            detail: format!("{field}: {detail}"),
            errors: vec![FieldError { field, detail }],
            stderr: None,
            cause: None,
            retry_after: None,
        }
    }

    /// Input errors naming several fields.
    #[must_use]
    pub fn invalid(errors: Vec<Invalid>) -> Self {
        let detail = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let errors = errors
            .into_iter()
            .map(|e| FieldError {
                field: e.field,
                detail: e.detail,
            })
            .collect();
        Self {
            code: Code::InvalidInput,
            detail,
            errors,
            stderr: None,
            cause: None,
            retry_after: None,
        }
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(Code::NotFound, format!("no {what} with id '{id}'"))
    }

    /// The fields the error names, for unit tests.
    #[cfg(test)]
    pub(crate) fn field_names(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.field.as_str()).collect()
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            code: Code::Internal,
            detail: "the server failed to handle the request; it has been logged".into(),
            errors: Vec::new(),
            stderr: None,
            cause: Some(cause.to_string()),
            retry_after: None,
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::invalid(vec![e])
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound { what, id } => Self::not_found(what, id),
            store::Error::Conflict { field, detail } => Self {
                code: if field == "name" {
                    Code::DuplicateName
                } else {
                    Code::Conflict
                },
                detail: detail.clone(),
                errors: vec![FieldError {
                    field: field.into(),
                    detail: "must be unique".into(),
                }],
                stderr: None,
                cause: None,
                retry_after: None,
            },
            store::Error::State(detail) => Self::new(Code::Conflict, detail),
            store::Error::KeyReused(detail) => Self::new(Code::IdempotencyKeyReused, detail),
            store::Error::Contended(detail) => {
                Self::new(Code::Unavailable, detail).with_retry_after(1)
            }
            store::Error::Invalid(errors) => Self::invalid(errors),
            e if e.is_transient() => Self {
                code: Code::Unavailable,
                detail: "the database is unavailable; retry shortly".into(),
                errors: Vec::new(),
                stderr: None,
                cause: Some(e.to_string()),
                retry_after: Some(1),
            },
            e => Self::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title, kind) = self.code.meta();
        if let Some(cause) = &self.cause {
            tracing::error!(status = status.as_u16(), error = %cause, "request failed");
        }
        let body = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: self.detail,
            errors: self.errors,
            stderr: self.stderr,
        };
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(CONTENT_TYPE),
        );
        if self.code == Code::Unauthorized {
            // RFC 6750: the scheme a client must use.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"gleaner\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}
