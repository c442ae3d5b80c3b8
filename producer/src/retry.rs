//! Which failures are retried.
//!
//! Delays (`kinesis_core::backoff`: exponential, full jitter) are scheduled on the
//! producer task's timer rather than slept in a retry loop: a retry is not one
//! future to re-run but user records going back into the buffers, possibly into other
//! aggregates.

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;

use crate::result::AttemptError;

/// Whole-request error codes that retrying does not fix. Everything else — throttling,
/// the service's internal errors, 5xx, timeouts, network failures — is retried until the
/// records' time to live. `ResourceNotFoundException` is retried too: a stream that was
/// just created may not be visible to every front end yet, and the TTL bounds the cost.
const PERMANENT_CODES: &[&str] = &[
    "AccessDeniedException",
    "InvalidArgumentException",
    "ValidationException",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "KMSOptInRequired",
    "UnrecognizedClientException",
];

/// The attempt error of a failed PutRecords call, and whether to retry its records.
pub(crate) fn classify_request_error(err: &SdkError<PutRecordsError>) -> (AttemptError, bool) {
    let message = DisplayErrorContext(err).to_string();
    let (code, retry) = match err {
        SdkError::ServiceError(service) => {
            let code = err.code().unwrap_or("UnknownServiceError").to_string();
            let status = service.raw().status().as_u16();
            let retry = !PERMANENT_CODES.contains(&code.as_str()) || status >= 500;
            (code, retry)
        }
        SdkError::TimeoutError(_) => ("TimeoutError".to_string(), true),
        SdkError::ResponseError(_) => ("ResponseError".to_string(), true),
        // A request the connector refuses to send (a malformed endpoint) will be refused
        // again; anything else is the network.
        SdkError::DispatchFailure(failure) => ("DispatchFailure".to_string(), !failure.is_user()),
        SdkError::ConstructionFailure(_) => ("ConstructionFailure".to_string(), false),
        _ => ("SdkError".to_string(), true),
    };
    (AttemptError { code, message }, retry)
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::config::http::HttpResponse;
    use aws_sdk_kinesis::error::ErrorMetadata;

    use super::*;

    fn service_error(code: &str, status: u16) -> SdkError<PutRecordsError> {
        let err =
            PutRecordsError::generic(ErrorMetadata::builder().code(code).message("m").build());
        SdkError::service_error(
            err,
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    #[test]
    fn request_errors_are_classified() {
        let cases = [
            ("ProvisionedThroughputExceededException", 400, true),
            ("LimitExceededException", 400, true),
            ("KMSThrottlingException", 400, true),
            ("InternalFailure", 500, true),
            ("ServiceUnavailable", 503, true),
            ("ResourceNotFoundException", 400, true),
            ("AccessDeniedException", 400, false),
            ("InvalidArgumentException", 400, false),
            ("KMSDisabledException", 400, false),
        ];
        for (code, status, retry) in cases {
            let (error, retried) = classify_request_error(&service_error(code, status));
            assert_eq!(error.code, code);
            assert_eq!(retried, retry, "{code}");
        }
    }
}
