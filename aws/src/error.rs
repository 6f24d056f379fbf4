//! What an AWS error means for a collection.
//!
//! The SDK has retried throttling, 5xx and network errors already (with backoff and jitter,
//! `GLEANER_AWS__MAX_ATTEMPTS` times): one that still reaches here fails the task transiently,
//! so that it is tried again later as a whole. A call the credentials may not make (a missing
//! permission, a region not enabled for the account) is the user's to fix, and becomes an item
//! error naming the region and the call while the rest is collected.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;

/// An AWS call's failure, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not allowed for these credentials, or not in this region.
    Denied(String),
    /// Still throttled, unavailable or unreachable after the SDK's retries.
    Transient(String),
    /// What was listed a moment ago no longer exists (deleted between the list and the
    /// describe call).
    Gone(String),
    /// Anything else: a bad request, a service this endpoint lacks.
    Other(String),
}

/// Error codes that mean the credentials may not make the call, in the services collected.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "AuthorizationError",
    "OptInRequired",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SubscriptionRequiredException",
];

/// Error codes of a resource that no longer exists, in the describe calls made after a list.
const GONE: &[&str] = &[
    "NoSuchBucket",
    "ResourceNotFoundException",
    "NotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NotFound",
];

/// Error codes of throttling and of a service that is not answering for now.
const TRANSIENT: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
];

/// Sorts an SDK error.
pub fn classify<E>(error: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = error.code().map(str::to_owned);
    let words = match (&code, error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        _ => DisplayErrorContext(&error).to_string(),
    };
    match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            return Failure::Transient(words);
        }
        // The request could not be built: its credentials could not be resolved (STS refused
        // the role) or a parameter is wrong.
        SdkError::ConstructionFailure(_) => return Failure::Denied(words),
        _ => {}
    }
    let status = error.raw_response().map(|raw| raw.status().as_u16());
    match code.as_deref() {
        Some(c) if DENIED.contains(&c) => Failure::Denied(words),
        Some(c) if TRANSIENT.contains(&c) => Failure::Transient(words),
        Some(c) if GONE.contains(&c) => Failure::Gone(words),
        _ if status == Some(403) => Failure::Denied(words),
        _ if status.is_some_and(|s| s >= 500 || s == 429) => Failure::Transient(words),
        _ => Failure::Other(words),
    }
}

impl Failure {
    /// The words of the failure.
    #[must_use]
    pub fn words(&self) -> &str {
        match self {
            Failure::Denied(w) | Failure::Transient(w) | Failure::Gone(w) | Failure::Other(w) => w,
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::config::http::HttpResponse;
    use aws_sdk_ec2::error::{ErrorMetadata, SdkError};
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn answered(status: u16, code: &str) -> SdkError<DescribeInstancesError, HttpResponse> {
        let raw = HttpResponse::new(status.try_into().expect("a status"), SdkBody::empty());
        let error = ErrorMetadata::builder()
            .code(code)
            .message("said AWS")
            .build();
        SdkError::service_error(DescribeInstancesError::generic(error), raw)
    }

    #[test]
    fn errors_are_sorted_by_code_then_by_status() {
        let cases = [
            (400, "ThrottlingException", "transient"),
            (503, "RequestLimitExceeded", "transient"),
            (500, "SomethingNew", "transient"),
            (429, "SomethingNew", "transient"),
            (403, "UnauthorizedOperation", "denied"),
            (400, "OptInRequired", "denied"),
            (403, "SomethingNew", "denied"),
            (404, "ResourceNotFoundException", "gone"),
            (400, "InvalidParameterValue", "other"),
        ];
        for (status, code, want) in cases {
            let got = classify(answered(status, code));
            let kind = match &got {
                Failure::Transient(_) => "transient",
                Failure::Denied(_) => "denied",
                Failure::Gone(_) => "gone",
                Failure::Other(_) => "other",
            };
            assert_eq!(kind, want, "{status} {code}");
            assert_eq!(got.words(), format!("{code}: said AWS"));
        }
    }
}
