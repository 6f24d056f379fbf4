//! What a plugin's gRPC status means for Gleaner.
//!
//! spaceone-core turns every exception into `abort(<status>, "<ERROR_CODE>: <message>")`, so
//! the code is the text before the first `:`. Two answers mean "this plugin does not have the
//! method": gRPC's own UNIMPLEMENTED (the service is not registered), and INTERNAL
//! `ERROR_UNKNOWN: Method not implemented!` (in the proto, not overridden by the plugin).

use tonic::{Code, Status};

/// Why a call to a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin lacks the method.
    #[error("the plugin does not implement {method}")]
    Unsupported { method: &'static str },
    /// The plugin answered with an error status.
    #[error("{method} failed: {}", describe(.code, .error_code.as_deref(), .message))]
    Failed {
        method: &'static str,
        code: Code,
        /// spaceone's `ERROR_…` code, when the details carry one.
        error_code: Option<String>,
        message: String,
    },
    /// The plugin did not answer in time.
    #[error("{method} did not answer within {seconds} s")]
    Timeout { method: &'static str, seconds: u64 },
    /// The connection failed or broke (the process died, the port closed).
    #[error("{method}: the plugin is unreachable: {reason}")]
    Unreachable {
        method: &'static str,
        reason: String,
    },
    /// The plugin answered something Gleaner cannot use.
    #[error("{method}: {reason}")]
    Invalid {
        method: &'static str,
        reason: String,
    },
}

fn describe(code: &Code, error_code: Option<&str>, message: &str) -> String {
    match error_code {
        Some(e) => format!("{e} ({code:?}): {message}"),
        None => format!("{code:?}: {message}"),
    }
}

impl CallError {
    /// The error a failed call's status makes.
    #[must_use]
    pub fn from_status(method: &'static str, status: &Status) -> Self {
        let details = status.message().trim();
        let (error_code, message) = match details.split_once(':') {
            Some((code, rest)) if code.starts_with("ERROR_") && !code.contains(' ') => {
                (Some(code.to_owned()), rest.trim().to_owned())
            }
            _ => (None, details.to_owned()),
        };
        let unsupported = status.code() == Code::Unimplemented
            || (status.code() == Code::Internal
                && error_code.as_deref() == Some("ERROR_UNKNOWN")
                && message == "Method not implemented!");
        if unsupported {
            return Self::Unsupported { method };
        }
        // spaceone answers every failure with an ERROR_ code; UNKNOWN without one is tonic's
        // word for a connection that broke mid-call (the process died).
        if matches!(status.code(), Code::Unavailable | Code::Unknown) && error_code.is_none() {
            return Self::Unreachable {
                method,
                reason: details.to_owned(),
            };
        }
        Self::Failed {
            method,
            code: status.code(),
            error_code,
            message,
        }
    }

    /// Whether a later attempt may succeed: the plugin was unreachable or slow, or it said so
    /// (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, DEADLINE_EXCEEDED). Bad credentials, bad
    /// options and plugin bugs fail the same way again.
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Failed { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::DeadlineExceeded
            ),
            Self::Unsupported { .. } | Self::Invalid { .. } => false,
        }
    }

    /// The spaceone error code (`ERROR_…`), if the plugin sent one.
    #[must_use]
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Failed { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaceone_codes_are_read_from_the_details() {
        let e = CallError::from_status(
            "collect",
            &Status::invalid_argument(
                "ERROR_REQUIRED_PARAMETER: Required parameter. (key = secret_data)",
            ),
        );
        assert_eq!(e.error_code(), Some("ERROR_REQUIRED_PARAMETER"));
        assert!(!e.is_temporary());
        assert_eq!(
            e.to_string(),
            "collect failed: ERROR_REQUIRED_PARAMETER (InvalidArgument): Required parameter. (key = secret_data)"
        );
        let plain = CallError::from_status("verify", &Status::internal("boom: it broke"));
        assert_eq!(plain.error_code(), None);
        assert_eq!(plain.to_string(), "verify failed: Internal: boom: it broke");
    }

    #[test]
    fn both_forms_of_a_missing_method_are_unsupported() {
        for status in [
            Status::unimplemented("Method not found!"),
            Status::internal("ERROR_UNKNOWN: Method not implemented!"),
        ] {
            assert!(matches!(
                CallError::from_status("get_tasks", &status),
                CallError::Unsupported { .. }
            ));
        }
        // Any other ERROR_UNKNOWN is a plugin failure.
        assert!(matches!(
            CallError::from_status(
                "get_tasks",
                &Status::internal("ERROR_UNKNOWN: 'vulnerable_ports'")
            ),
            CallError::Failed { .. }
        ));
    }

    #[test]
    fn only_what_may_pass_is_temporary() {
        assert!(
            CallError::from_status("x", &Status::unavailable("connection refused")).is_temporary()
        );
        assert!(
            CallError::from_status("x", &Status::resource_exhausted("ERROR_QUOTA: slow down"))
                .is_temporary()
        );
        assert!(
            !CallError::from_status("x", &Status::permission_denied("ERROR_AUTH: no"))
                .is_temporary()
        );
    }
}
