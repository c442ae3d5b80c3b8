//! What a user record's future resolves to: where it was written and every attempt.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
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
///
/// The user records of one aggregated Kinesis record share its shard id and sequence
/// number (`Arc<str>`: cloning one costs no allocation).
///
/// ```
/// # use std::sync::Arc;
/// # use producer::{Attempt, Attempts, UserRecordResult};
/// # let result = UserRecordResult {
/// #     shard_id: Arc::from("shardId-000000000001"),
/// #     sequence_number: Arc::from("4960"),
/// #     sub_sequence_number: Some(3),
/// #     attempts: Attempts::from(vec![Attempt {
/// #         delay: Default::default(),
/// #         duration: Default::default(),
/// #         error: None,
/// #     }]),
/// # };
/// let shard: &str = &result.shard_id;
/// assert_eq!(shard, "shardId-000000000001");
/// assert!(result.attempts.len() == 1 && result.attempts[0].is_success());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecordResult {
    /// The shard that holds the record, e.g. `shardId-000000000001`.
    pub shard_id: Arc<str>,
    /// The sequence number of the Kinesis record that carries it.
    pub sequence_number: Arc<str>,
    /// The user record's position inside an aggregated Kinesis record; `None` when it
    /// was sent as a plain Kinesis record of its own.
    pub sub_sequence_number: Option<u64>,
    /// Every PutRecords attempt, in order; the last one succeeded.
    pub attempts: Attempts,
}

/// The PutRecords attempts of a user record, in order: a slice of [`Attempt`]s
/// (through `Deref`) that holds a single attempt inline, so that a record written at
/// its first attempt costs no allocation for it.
///
/// ```
/// use producer::{Attempt, Attempts};
///
/// let first = Attempt { delay: Default::default(), duration: Default::default(), error: None };
/// let attempts = Attempts::from(vec![first.clone()]);
/// assert_eq!(attempts.len(), 1);
/// assert!(attempts.last().is_some_and(Attempt::is_success));
/// assert_eq!(attempts, [first]);
/// assert_eq!(attempts.into_vec().len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct Attempts(AttemptsRepr);

#[derive(Clone)]
enum AttemptsRepr {
    One(Attempt),
    /// None (empty, no allocation) or several.
    Many(Vec<Attempt>),
}

impl Default for AttemptsRepr {
    fn default() -> Self {
        AttemptsRepr::Many(Vec::new())
    }
}

impl Attempts {
    /// `earlier` attempts followed by `last`; allocates only if `earlier` is not empty.
    pub(crate) fn with_last(mut earlier: Vec<Attempt>, last: Attempt) -> Attempts {
        if earlier.is_empty() {
            Attempts(AttemptsRepr::One(last))
        } else {
            earlier.push(last);
            Attempts(AttemptsRepr::Many(earlier))
        }
    }

    /// The attempts as a `Vec`.
    pub fn into_vec(self) -> Vec<Attempt> {
        match self.0 {
            AttemptsRepr::One(attempt) => vec![attempt],
            AttemptsRepr::Many(attempts) => attempts,
        }
    }
}

impl Deref for Attempts {
    type Target = [Attempt];

    fn deref(&self) -> &[Attempt] {
        match &self.0 {
            AttemptsRepr::One(attempt) => std::slice::from_ref(attempt),
            AttemptsRepr::Many(attempts) => attempts,
        }
    }
}

impl AsRef<[Attempt]> for Attempts {
    fn as_ref(&self) -> &[Attempt] {
        self
    }
}

impl From<Vec<Attempt>> for Attempts {
    fn from(mut attempts: Vec<Attempt>) -> Self {
        match attempts.len() {
            1 => Attempts(AttemptsRepr::One(attempts.pop().expect("one attempt"))),
            _ => Attempts(AttemptsRepr::Many(attempts)),
        }
    }
}

impl From<Attempts> for Vec<Attempt> {
    fn from(attempts: Attempts) -> Self {
        attempts.into_vec()
    }
}

impl<'a> IntoIterator for &'a Attempts {
    type Item = &'a Attempt;
    type IntoIter = std::slice::Iter<'a, Attempt>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Attempts {
    fn eq(&self, other: &Attempts) -> bool {
        **self == **other
    }
}

impl Eq for Attempts {}

impl PartialEq<[Attempt]> for Attempts {
    fn eq(&self, other: &[Attempt]) -> bool {
        **self == *other
    }
}

impl<const N: usize> PartialEq<[Attempt; N]> for Attempts {
    fn eq(&self, other: &[Attempt; N]) -> bool {
        **self == *other
    }
}

impl PartialEq<Vec<Attempt>> for Attempts {
    fn eq(&self, other: &Vec<Attempt>) -> bool {
        **self == **other
    }
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
