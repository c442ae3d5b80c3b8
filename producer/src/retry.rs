//! Which failures are retried, and after how long.
//!
//! Delays are computed here and scheduled on the producer task's timer rather than slept
//! in a `backon` retry loop: a retry is not one future to re-run but user records going
//! back into the buffers, possibly into other aggregates. Computing them also gives
//! "full jitter" — a uniform delay in `0..=cap` — which spreads the retries of a burst of
//! throttled records best (`backon`'s jitter adds up to one delay on top instead).

use std::time::Duration;

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;

use crate::result::AttemptError;

/// The cap of the `failures`-th retry delay (1 for the first): `base × 2^(failures−1)`,
/// at most `max`.
pub(crate) fn backoff_cap(base: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1 << doublings).min(max)
}

/// A "full jitter" delay: uniform in `0..=cap`, with `unit` uniform in `0..=1`.
pub(crate) fn full_jitter(cap: Duration, unit: f64) -> Duration {
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

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
    fn backoff_doubles_up_to_the_maximum() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let caps: Vec<_> = (1..=8)
            .map(|n| backoff_cap(base, max, n).as_millis())
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_cap(base, max, 0), base);
        assert_eq!(backoff_cap(base, max, u32::MAX), max);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        let cap = Duration::from_millis(800);
        assert_eq!(full_jitter(cap, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(cap, 0.5), Duration::from_millis(400));
        assert_eq!(full_jitter(cap, 1.0), cap);
        assert_eq!(full_jitter(cap, 7.0), cap);
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
