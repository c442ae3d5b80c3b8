//! What a failed DynamoDB call of the statistics store means for the caller: retry it
//! (throttling, a conflicting transaction, a 5xx, the network), re-plan (a condition
//! failed), stop writing for the shard (the lease moved), isolate a record (DynamoDB
//! refused the request as invalid) or stop the worker (anything no record explains:
//! access denied, a missing table, a wrong key schema).

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::connect::innermost;

/// Errors of the statistics store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A condition of the transaction failed: another writer applied these records or
    /// changed one of these orders. Nothing was written; re-read and plan again.
    #[error("transaction cancelled by a condition: {reasons}")]
    Conflict {
        /// The cancellation reasons DynamoDB gave, per item.
        reasons: String,
    },
    /// The writer no longer holds the shard's lease (the transaction's lease check
    /// failed): another worker processes the shard now. Nothing was written; stop.
    #[error("the shard's lease is no longer this worker's; nothing written")]
    LeaseLost,
    /// Throttling, a conflicting transaction in progress, a 5xx or the network.
    #[error("DynamoDB temporarily unavailable: {0}")]
    Transient(String),
    /// DynamoDB refused the request as invalid (a `ValidationException`, or a
    /// transaction cancelled with a `ValidationError` reason): something in what was
    /// sent, possibly one record's data. Nothing was written; retrying the same request
    /// cannot succeed.
    #[error("DynamoDB refused {operation}: {message}")]
    Refused {
        /// The call, e.g. `TransactWriteItems`.
        operation: String,
        /// DynamoDB's error code and message.
        message: String,
    },
    /// Anything else: a missing table, access denied, a wrong key schema, an answer
    /// not understood. Retrying cannot help; the message names the table, the call
    /// and, for access denied, the missing permission.
    #[error("{0}")]
    Fatal(String),
    /// A stored item that is not what this application writes.
    #[error("malformed item in {table}: {what}")]
    Malformed {
        /// The table.
        table: String,
        /// What is wrong.
        what: String,
    },
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

/// Error codes worth retrying: throttling, capacity, a transaction in the way, a 5xx.
/// The lease store's list: the statistics transactions meet the same DynamoDB errors
/// (and the same conflicts with lease writes) as the lease table.
pub use kcl::leases::dynamo::TRANSIENT_CODES;

/// What a `TransactionCanceledException` means, from its per-item reason codes
/// (`None` for an item that was fine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancellation {
    /// The lease check (the last item) failed.
    LeaseLost,
    /// Another condition failed: re-read and re-plan.
    Conflict,
    /// An item was invalid (`ValidationError`) or its collection too large.
    Refused,
    /// Only conflicts with other transactions, throttling or capacity: retry.
    Transient,
    /// A reason this code does not know: not retried blindly.
    Unknown,
}

/// Classifies a cancelled transaction by its reason codes, in item order.
///
/// ```
/// use delivery_app::stats::store::{Cancellation, cancellation};
/// assert_eq!(cancellation(&["None", "ConditionalCheckFailed"]), Cancellation::LeaseLost);
/// assert_eq!(cancellation(&["TransactionConflict", "None"]), Cancellation::Transient);
/// assert_eq!(cancellation(&["None", "ValidationError", "None"]), Cancellation::Refused);
/// ```
pub fn cancellation(codes: &[&str]) -> Cancellation {
    const TRANSIENT: &[&str] = &[
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
    ];
    if codes.last() == Some(&"ConditionalCheckFailed") {
        return Cancellation::LeaseLost;
    }
    if codes.contains(&"ConditionalCheckFailed") {
        return Cancellation::Conflict;
    }
    if codes
        .iter()
        .any(|c| *c == "ValidationError" || *c == "ItemCollectionSizeLimitExceeded")
    {
        return Cancellation::Refused;
    }
    let failed: Vec<&&str> = codes.iter().filter(|c| **c != "None").collect();
    if !failed.is_empty() && failed.iter().all(|c| TRANSIENT.contains(c)) {
        Cancellation::Transient
    } else {
        Cancellation::Unknown
    }
}

/// The IAM action an AWS access-denied message names (`... is not authorized to
/// perform: dynamodb:PutItem on resource: ...`), if it names one.
///
/// ```
/// use delivery_app::stats::store::denied_action;
/// let message = "User: arn:aws:sts::1:assumed-role/r/s is not authorized to perform: \
///                dynamodb:ConditionCheckItem on resource: arn:aws:dynamodb:eu-west-1:1:table/App";
/// assert_eq!(denied_action(message), Some("dynamodb:ConditionCheckItem"));
/// assert_eq!(denied_action("no"), None);
/// ```
pub fn denied_action(message: &str) -> Option<&str> {
    let rest = message.split_once("perform: ")?.1;
    let action = rest.split_whitespace().next()?;
    action.contains(':').then_some(action)
}

/// Classifies a failed call `operation` on `table` (several tables for a transaction,
/// separated by commas) into a [`StoreError`] whose text says what happened in words:
/// the service's error code and message, never a dump of the SDK's structures.
pub fn classify<E, R>(err: SdkError<E, R>, operation: &str, table: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("an unnamed error");
            let message = err.message().unwrap_or("no message");
            if TRANSIENT_CODES.contains(&code) {
                return StoreError::Transient(format!("{operation} on {table}: {code}: {message}"));
            }
            match code {
                "ValidationException" => StoreError::Refused {
                    operation: format!("{operation} on {table}"),
                    message: format!("{code}: {message}"),
                },
                "AccessDeniedException" => StoreError::Fatal(format!(
                    "{operation} on {table} was denied ({code}: {message}); the missing \
                     permission is {}",
                    denied_action(message)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("dynamodb:{operation} or an action it implies"))
                )),
                "ResourceNotFoundException" => StoreError::Fatal(format!(
                    "{operation} on {table}: a table does not exist ({code}: {message})"
                )),
                _ => StoreError::Fatal(format!("{operation} on {table} failed: {code}: {message}")),
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => StoreError::Transient(format!(
            "{operation} on {table}: no answer in time or an unreadable one"
        )),
        SdkError::DispatchFailure(f) if !f.is_user() => StoreError::Transient(format!(
            "{operation} on {table}: DynamoDB unreachable ({})",
            innermost(&err)
        )),
        _ => StoreError::Fatal(format!(
            "{operation} on {table} could not be sent: {}",
            innermost(&err)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellations_from_a_table() {
        use Cancellation::*;
        let cases: &[(&[&str], Cancellation)] = &[
            (&["None", "None", "ConditionalCheckFailed"], LeaseLost),
            (&["ConditionalCheckFailed", "None", "None"], Conflict),
            (
                &["None", "ConditionalCheckFailed", "ValidationError", "None"],
                Conflict,
            ),
            (&["None", "ValidationError", "None"], Refused),
            (&["ItemCollectionSizeLimitExceeded", "None"], Refused),
            (&["TransactionConflict", "None", "None"], Transient),
            (&["TransactionConflict", "ThrottlingError"], Transient),
            (&["None", "ProvisionedThroughputExceeded"], Transient),
            (&["None", "None"], Unknown),
            (&["SomethingNew", "TransactionConflict"], Unknown),
            (&[], Unknown),
        ];
        for (codes, expected) in cases {
            assert_eq!(cancellation(codes), *expected, "{codes:?}");
        }
    }
}
