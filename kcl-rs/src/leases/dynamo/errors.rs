//! Which DynamoDB errors a lease write retries: the classification of SDK failures.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::leases::store::LeaseError;
use crate::leases::table::TableError;

/// Error codes the DynamoDB developer guide ("Error handling with DynamoDB") marks
/// "OK to retry", as far as lease-table calls can meet them: throttling, quotas, its
/// own failures, and transaction conflicts. `TransactionConflictException` is what a
/// lease write gets while a processor's `TransactWriteItems` fenced by
/// [`ownership_check`] holds the item: nothing was written, so the same write may be
/// repeated. Left out although documented as retryable:
/// `ItemCollectionSizeLimitExceededException` (a lease table has no local secondary
/// index; retrying cannot shrink a collection) and `UnrecognizedClientException`
/// (bad credentials stay bad within a failover time; better reported at once).
/// `InternalFailure` is the AWS-wide name of a 500 some endpoints answer instead of
/// `InternalServerError`.
///
/// Public so that applications writing their own DynamoDB tables beside the lease table
/// (fenced by [`ownership_check`]) retry exactly what the lease store retries.
///
/// [`ownership_check`]: super::ownership_check
pub const TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
];

/// Sorts an SDK failure into the three kinds callers act on: the condition did not
/// hold (`key` is the lease or worker), retry later, or give up. `context` names the
/// operation and table for the message.
pub(super) fn classify<E>(err: SdkError<E>, context: &str, key: &str) -> LeaseError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = match &err {
        SdkError::ServiceError(service) => {
            if err.code() == Some("ConditionalCheckFailedException") {
                return LeaseError::ConditionFailed {
                    key: key.to_string(),
                };
            }
            let status = service.raw().status().as_u16();
            err.code()
                .is_some_and(|code| TRANSIENT_CODES.contains(&code))
                || status >= 500
                || status == 429
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        // A request the connector refuses to send (a malformed endpoint URL) will be
        // refused again; anything else is the network.
        SdkError::DispatchFailure(failure) => !failure.is_user(),
        _ => false,
    };
    let message = format!("{context}: {}", DisplayErrorContext(&err));
    if transient {
        LeaseError::Transient { message }
    } else {
        LeaseError::Fatal { message }
    }
}

impl From<TableError> for LeaseError {
    fn from(err: TableError) -> LeaseError {
        match err {
            TableError::Describe { table, source } => {
                classify(*source, &format!("DescribeTable {table}"), "")
            }
            TableError::Create { table, source } => {
                classify(*source, &format!("CreateTable {table}"), "")
            }
            TableError::KeySchema { .. } => LeaseError::Fatal {
                message: err.to_string(),
            },
            TableError::NotActive { .. } => LeaseError::Transient {
                message: err.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;

    use super::*;

    fn service_error(code: &str, status: u16) -> SdkError<UpdateItemError> {
        let err =
            UpdateItemError::generic(ErrorMetadata::builder().code(code).message("m").build());
        SdkError::service_error(
            err,
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    fn kind(err: LeaseError) -> &'static str {
        match err {
            LeaseError::ConditionFailed { .. } => "condition",
            LeaseError::Transient { .. } => "transient",
            LeaseError::Fatal { .. } => "fatal",
            LeaseError::Malformed { .. } => "malformed",
        }
    }

    #[test]
    fn errors_are_classified_by_code_status_and_kind() {
        let cases = [
            (
                service_error("ConditionalCheckFailedException", 400),
                "condition",
            ),
            (
                service_error("ProvisionedThroughputExceededException", 400),
                "transient",
            ),
            (service_error("ThrottlingException", 400), "transient"),
            (service_error("RequestLimitExceeded", 400), "transient"),
            (service_error("InternalServerError", 500), "transient"),
            (service_error("InternalFailure", 500), "transient"),
            (service_error("ServiceUnavailable", 503), "transient"),
            (
                service_error("TransactionConflictException", 400),
                "transient",
            ),
            (
                service_error("TransactionInProgressException", 400),
                "transient",
            ),
            (service_error("LimitExceededException", 400), "transient"),
            (
                service_error("ItemCollectionSizeLimitExceededException", 400),
                "fatal",
            ),
            (service_error("UnrecognizedClientException", 400), "fatal"),
            (service_error("SomethingNew", 502), "transient"),
            (service_error("SomethingNew", 429), "transient"),
            (service_error("ResourceNotFoundException", 400), "fatal"),
            (service_error("AccessDeniedException", 400), "fatal"),
            (service_error("ValidationException", 400), "fatal"),
            (SdkError::timeout_error("slow"), "transient"),
            (
                SdkError::dispatch_failure(ConnectorError::io("reset".into())),
                "transient",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::timeout("connect".into())),
                "transient",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::user("bad uri".into())),
                "fatal",
            ),
            (
                SdkError::response_error(
                    "truncated",
                    HttpResponse::new(200.try_into().unwrap(), "".into()),
                ),
                "transient",
            ),
            (SdkError::construction_failure("missing key"), "fatal"),
        ];
        for (err, expected) in cases {
            let shown = format!("{err:?}");
            assert_eq!(
                kind(classify(err, "UpdateItem t", "shardId-1")),
                expected,
                "{shown}"
            );
        }
        match classify(
            service_error("ConditionalCheckFailedException", 400),
            "x",
            "shardId-1",
        ) {
            LeaseError::ConditionFailed { key } => assert_eq!(key, "shardId-1"),
            other => panic!("{other:?}"),
        }
        let message = classify(
            service_error("ThrottlingException", 400),
            "UpdateItem leases",
            "k",
        )
        .to_string();
        assert!(
            message.contains("UpdateItem leases") && message.contains("ThrottlingException"),
            "{message}"
        );
    }
}
