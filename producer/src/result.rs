//! What a user record's future resolves to: where it was written and every attempt.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::PutError;

/// [`AttemptError::code`] of an attempt that Kinesis accepted, but into a shard whose
/// hash key range does not hold the user record's hash key (the stream was resharded
/// after the record was aggregated). The record is put again; see the crate docs.
pub const WRONG_SHARD: &str = "WrongShard";

/// [`AttemptError::code`] of the last attempt of a user record that failed as
/// [`Expired`](crate::PutError::Expired) although Kinesis accepted it: it landed in a
/// shard the producer's shard map did not know (the stream was resharded), and no
/// refreshed map came within the record's time to live to confirm that the shard's
/// hash key range holds every user record stored with it. The record is in the stream,
/// but a consumer that filters by hash key range (the Java KCL) may drop it.
pub const UNCONFIRMED_SHARD: &str = "UnconfirmedShard";

/// Where a user record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecordResult {
    /// The shard that holds the record, e.g. `shardId-000000000001`.
    pub shard_id: String,
    /// The sequence number of the Kinesis record that carries it.
    pub sequence_number: String,
    /// The user record's position inside an aggregated Kinesis record; `None` when it
    /// was sent as a plain Kinesis record of its own.
    pub sub_sequence_number: Option<u64>,
    /// Every PutRecords attempt, in order; the last one succeeded.
    pub attempts: Vec<Attempt>,
}

/// One PutRecords attempt for a user record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Time from the record's `put` (or the end of its previous attempt) to the start of
    /// this one: buffering, backoff and rate limiting together.
    pub delay: Duration,
    /// How long the PutRecords call took.
    pub duration: Duration,
    /// Why the attempt failed; `None` when it succeeded.
    pub error: Option<AttemptError>,
}

impl Attempt {
    /// Whether Kinesis accepted the record in this attempt.
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

/// The error of a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// The Kinesis error code (`ProvisionedThroughputExceededException`,
    /// `InternalFailure`, ...), an SDK failure kind (`TimeoutError`, `DispatchFailure`,
    /// `ResponseError`), [`WRONG_SHARD`] or [`UNCONFIRMED_SHARD`].
    pub code: String,
    /// The message that came with it.
    pub message: String,
}

/// The result of one accepted user record, from [`Producer::put`](crate::Producer::put).
///
/// It resolves once Kinesis has accepted the record or the producer has given up on it
/// (see [`PutError`]). Dropping it does not withdraw the record.
#[derive(Debug)]
#[must_use = "dropping the future does not withdraw the record, but its result is lost"]
pub struct RecordFuture {
    receiver: oneshot::Receiver<Result<UserRecordResult, PutError>>,
}

impl RecordFuture {
    pub(crate) fn new(receiver: oneshot::Receiver<Result<UserRecordResult, PutError>>) -> Self {
        RecordFuture { receiver }
    }
}

impl Future for RecordFuture {
    type Output = Result<UserRecordResult, PutError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(PutError::Stopped)))
    }
}
