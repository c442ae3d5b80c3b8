//! What can go wrong reading a shard, and which failures are worth retrying.

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// A failure reading a shard (the shard reader's `next_batch`) cannot retry
/// its way out of. Throttling, 5xx answers, timeouts and network failures are retried
/// inside the reader and never surface here; an expired iterator is re-acquired.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalError {
    /// The stream or shard does not exist (deleted, or a wrong name).
    #[error("{operation} on shard {shard_id}: stream or shard not found: {message}")]
    ResourceNotFound {
        /// The Kinesis operation.
        operation: &'static str,
        /// The shard being read.
        shard_id: String,
        /// The service's message.
        message: String,
    },
    /// The credentials may not read the stream or decrypt it with its KMS key.
    #[error("{operation} on shard {shard_id}: access denied: {message}")]
    AccessDenied {
        /// The Kinesis operation.
        operation: &'static str,
        /// The shard being read.
        shard_id: String,
        /// The service's message.
        message: String,
    },
    /// The stream's KMS key is disabled, missing, in an invalid state or not opted in.
    #[error("{operation} on shard {shard_id}: KMS key unusable: {message}")]
    Kms {
        /// The Kinesis operation.
        operation: &'static str,
        /// The shard being read.
        shard_id: String,
        /// The service's message.
        message: String,
    },
    /// The service rejected the request as malformed (for example a sequence number
    /// that does not belong to the shard, or a timestamp in the future).
    #[error("{operation} on shard {shard_id}: invalid argument: {message}")]
    InvalidArgument {
        /// The Kinesis operation.
        operation: &'static str,
        /// The shard being read.
        shard_id: String,
        /// The service's message.
        message: String,
    },
    /// Any other failure that retrying will not fix (an unknown client error, a
    /// request the SDK refuses to build or send).
    #[error("{operation} on shard {shard_id} failed: {message}")]
    Other {
        /// The Kinesis operation.
        operation: &'static str,
        /// The shard being read.
        shard_id: String,
        /// The SDK's error with its context.
        message: String,
    },
    /// The start position is `AT_TIMESTAMP` but
    /// no timestamp is configured (a worker gets it from
    /// [`InitialPosition::AtTimestamp`](crate::InitialPosition::AtTimestamp)).
    #[error("shard {shard_id} starts AT_TIMESTAMP but no timestamp is configured")]
    MissingTimestamp {
        /// The shard being read.
        shard_id: String,
    },
    /// A retrieval setting out of range.
    #[error("invalid retrieval config: {field} {problem}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// How the reader reacts to a failed Kinesis call.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The shard iterator is too old (5 minutes on real Kinesis): get a new one.
    ExpiredIterator,
    /// Throttling or a transient service or network failure: back off and retry.
    /// `throttled` separates the expected case (logged at debug) from the rest.
    Retry { throttled: bool, message: String },
    /// Give up and report to the caller.
    Fatal(RetrievalError),
}

impl Failure {
    /// Whether the service throttled the call.
    pub(crate) fn is_throttled(&self) -> bool {
        matches!(
            self,
            Failure::Retry {
                throttled: true,
                ..
            }
        )
    }
}

/// Throttling codes: the shard's read limits (5 GetRecords/s, 2 MB/s; 5
/// GetShardIterator/s), the account's control-plane limits and KMS's own limits.
const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "KMSThrottlingException",
    "LimitExceededException",
    "ThrottlingException",
    // SubscribeToShard while the previous subscription of the consumer and shard
    // (perhaps the last owner's) is still open: wait until the service closes it.
    "ResourceInUseException",
];

/// The service's own transient failures that arrive with a 4xx-looking shape.
const TRANSIENT_CODES: &[&str] = &["InternalFailureException", "ServiceUnavailable"];

const KMS_CODES: &[&str] = &[
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "KMSOptInRequired",
];

/// Sorts a failed GetRecords, GetShardIterator or SubscribeToShard call by what the
/// reader should do.
pub(crate) fn classify<E>(err: &SdkError<E>, operation: &'static str, shard_id: &str) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    classify_with(
        err,
        operation,
        shard_id,
        |raw| Some(raw.status().as_u16()),
        None,
    )
}

/// [`classify`] for any raw answer: `status` reads its HTTP status if it has one (an
/// exception inside an event stream has none), and `typed_code` is the code of the
/// error's modelled variant, for errors whose metadata carries none (the SDK parses
/// event-stream exceptions into typed errors without a `code`).
pub(crate) fn classify_with<E, R>(
    err: &SdkError<E, R>,
    operation: &'static str,
    shard_id: &str,
    status: impl Fn(&R) -> Option<u16>,
    typed_code: Option<&'static str>,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let message = format!("{operation} on {shard_id}: {}", DisplayErrorContext(err));
    let SdkError::ServiceError(service) = err else {
        return match err {
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Failure::Retry {
                throttled: false,
                message,
            },
            // A request the connector refuses to send (a malformed endpoint URL) will be
            // refused again; anything else is the network.
            SdkError::DispatchFailure(failure) if !failure.is_user() => Failure::Retry {
                throttled: false,
                message,
            },
            _ => Failure::Fatal(RetrievalError::Other {
                operation,
                shard_id: shard_id.to_string(),
                message,
            }),
        };
    };
    classify_code(
        err.code().or(typed_code).unwrap_or_default(),
        status(service.raw()),
        operation,
        shard_id,
        message,
    )
}

/// Sorts a service error by its code (and HTTP status, when there is one).
fn classify_code(
    code: &str,
    status: Option<u16>,
    operation: &'static str,
    shard_id: &str,
    message: String,
) -> Failure {
    let shard_id = shard_id.to_string();
    let status = status.unwrap_or(400);
    let retry = |throttled: bool, message: String| Failure::Retry { throttled, message };
    Failure::Fatal(match code {
        "ExpiredIteratorException" => return Failure::ExpiredIterator,
        c if THROTTLING_CODES.contains(&c) || status == 429 => return retry(true, message),
        c if TRANSIENT_CODES.contains(&c) || status >= 500 => return retry(false, message),
        "ResourceNotFoundException" => RetrievalError::ResourceNotFound {
            operation,
            shard_id,
            message,
        },
        "AccessDeniedException" | "KMSAccessDeniedException" => RetrievalError::AccessDenied {
            operation,
            shard_id,
            message,
        },
        c if KMS_CODES.contains(&c) => RetrievalError::Kms {
            operation,
            shard_id,
            message,
        },
        "InvalidArgumentException" | "ValidationException" => RetrievalError::InvalidArgument {
            operation,
            shard_id,
            message,
        },
        _ => RetrievalError::Other {
            operation,
            shard_id,
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::config::http::HttpResponse;
    use aws_sdk_kinesis::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_kinesis::operation::get_records::GetRecordsError;

    use super::*;

    fn service_error(code: &str, status: u16) -> SdkError<GetRecordsError> {
        let err =
            GetRecordsError::generic(ErrorMetadata::builder().code(code).message("m").build());
        SdkError::service_error(
            err,
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    fn kind(failure: Failure) -> &'static str {
        match failure {
            Failure::ExpiredIterator => "expired",
            Failure::Retry {
                throttled: true, ..
            } => "throttled",
            Failure::Retry { .. } => "retry",
            Failure::Fatal(RetrievalError::ResourceNotFound { .. }) => "not-found",
            Failure::Fatal(RetrievalError::AccessDenied { .. }) => "access-denied",
            Failure::Fatal(RetrievalError::Kms { .. }) => "kms",
            Failure::Fatal(RetrievalError::InvalidArgument { .. }) => "invalid-argument",
            Failure::Fatal(RetrievalError::Other { .. }) => "other",
            Failure::Fatal(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn failures_are_classified_by_code_status_and_kind() {
        let cases = [
            (service_error("ExpiredIteratorException", 400), "expired"),
            (
                service_error("ProvisionedThroughputExceededException", 400),
                "throttled",
            ),
            (service_error("KMSThrottlingException", 400), "throttled"),
            (service_error("LimitExceededException", 400), "throttled"),
            (service_error("ResourceInUseException", 400), "throttled"),
            (service_error("SomethingNew", 429), "throttled"),
            (service_error("InternalFailureException", 500), "retry"),
            (service_error("InternalFailureException", 400), "retry"),
            (service_error("ServiceUnavailable", 503), "retry"),
            (service_error("SomethingNew", 502), "retry"),
            (service_error("ResourceNotFoundException", 400), "not-found"),
            (service_error("AccessDeniedException", 400), "access-denied"),
            (
                service_error("KMSAccessDeniedException", 400),
                "access-denied",
            ),
            (service_error("KMSDisabledException", 400), "kms"),
            (service_error("KMSNotFoundException", 400), "kms"),
            (
                service_error("InvalidArgumentException", 400),
                "invalid-argument",
            ),
            (service_error("SomethingNew", 400), "other"),
            (SdkError::timeout_error("slow"), "retry"),
            (
                SdkError::dispatch_failure(ConnectorError::io("reset".into())),
                "retry",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::timeout("connect".into())),
                "retry",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::user("bad uri".into())),
                "other",
            ),
            (
                SdkError::response_error(
                    "truncated",
                    HttpResponse::new(200.try_into().unwrap(), "".into()),
                ),
                "retry",
            ),
            (SdkError::construction_failure("no iterator"), "other"),
        ];
        for (err, expected) in cases {
            assert_eq!(
                kind(classify(&err, "GetRecords", "shardId-000000000001")),
                expected,
                "{err:?}"
            );
        }
    }

    #[test]
    fn fatal_errors_name_the_operation_shard_and_service_message() {
        let err = service_error("ResourceNotFoundException", 400);
        let Failure::Fatal(e) = classify(&err, "GetShardIterator", "shardId-000000000007") else {
            panic!("not fatal");
        };
        let shown = e.to_string();
        assert!(
            shown.contains("GetShardIterator")
                && shown.contains("shardId-000000000007")
                && shown.contains("ResourceNotFoundException"),
            "{shown}"
        );
    }
}
