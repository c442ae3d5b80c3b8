//! Typed errors: a configuration out of range, and why a user record was not written.

use crate::result::Attempt;

/// A [`ProducerConfig`](crate::ProducerConfig) value out of range, from
/// [`ProducerConfigBuilder::build`](crate::ProducerConfigBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid producer configuration: {field} {problem}")]
pub struct ConfigError {
    /// The setting, named as its builder method.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Why a user record was refused or not written.
///
/// The first five variants come back at once from [`Producer::put`](crate::Producer::put)
/// (nothing is buffered and no other record is affected); the others resolve a
/// [`RecordFuture`](crate::RecordFuture) of a record that was accepted.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use kcl_local::{LocalAws, LocalAwsOptions};
/// # let aws = LocalAws::start(LocalAwsOptions::default()).await?;
/// # let kinesis = aws.clients().await.kinesis;
/// use producer::{Producer, ProducerConfig, PutError};
///
/// let producer = Producer::new(ProducerConfig::builder("orders").build()?, kinesis);
/// match producer.put("", b"data".to_vec()).await {
///     Err(PutError::EmptyPartitionKey) => {}
///     other => panic!("{other:?}"),
/// }
/// let bad = producer.put_with_hash_key("key", "0x10", b"data".to_vec()).await;
/// assert!(matches!(bad, Err(PutError::InvalidExplicitHashKey { .. })));
/// producer.shutdown().await;
/// assert!(matches!(producer.put("key", b"late".to_vec()).await, Err(PutError::ShutDown)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The partition key is the empty string; Kinesis requires 1 to 256 characters.
    #[error("partition key is empty")]
    EmptyPartitionKey,
    /// The partition key is longer than the 256 Unicode characters Kinesis allows.
    #[error("partition key has {chars} characters, more than the 256 Kinesis allows")]
    PartitionKeyTooLong {
        /// The key's length in characters.
        chars: usize,
    },
    /// Data plus partition key (UTF-8) exceed the 1 MiB Kinesis record limit.
    #[error("record of {bytes} bytes (data plus partition key) exceeds the 1 MiB Kinesis limit")]
    RecordTooLarge {
        /// Data plus partition key, in bytes.
        bytes: usize,
    },
    /// The explicit hash key is not a decimal integer in `0..=2^128-1` (ASCII digits only).
    #[error("explicit hash key {value:?} is not a decimal integer in 0..=2^128-1")]
    InvalidExplicitHashKey {
        /// The key as given.
        value: String,
    },
    /// [`Producer::shutdown`](crate::Producer::shutdown) was called: no new records.
    #[error("the producer is shut down and takes no new records")]
    ShutDown,
    /// The record's time to live ([`ProducerConfig::record_ttl`](crate::ProducerConfig))
    /// ran out before Kinesis accepted it. Its attempts say what went wrong meanwhile
    /// (none if it never left the buffer, for example behind a shard's rate limit).
    #[error("record expired after {} attempt(s){}", attempts.len(), last_error(attempts))]
    Expired {
        /// Every PutRecords attempt made for the record, in order.
        attempts: Vec<Attempt>,
    },
    /// Kinesis refused the request in a way retrying cannot fix: the stream does not
    /// exist, access or the stream's KMS key is denied, or the request is invalid.
    #[error("Kinesis rejected the record: {code}: {message}")]
    Rejected {
        /// The error code, e.g. `ResourceNotFoundException`.
        code: String,
        /// The service's or the SDK's message.
        message: String,
        /// Every attempt made, the last one being the rejection.
        attempts: Vec<Attempt>,
    },
    /// The producer's background task ended without resolving the record. It does not
    /// happen unless the task panicked or its runtime was shut down under it.
    #[error("the producer's background task stopped before the record was resolved")]
    Stopped,
}

fn last_error(attempts: &[Attempt]) -> String {
    match attempts.last().and_then(|a| a.error.as_ref()) {
        Some(e) => format!(", last error {}: {}", e.code, e.message),
        None => String::new(),
    }
}

impl PutError {
    /// The attempts made for the record: empty for the errors returned by `put`.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            PutError::Expired { attempts } | PutError::Rejected { attempts, .. } => attempts,
            _ => &[],
        }
    }
}
