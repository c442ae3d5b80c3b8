//! Reading one shard by polling: GetShardIterator once, then GetRecords with each
//! response's `NextShardIterator`, until the shard ends.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::time::Instant;

use super::backoff::sleep_backoff;
use super::error::{Failure, RetrievalError, classify};
use super::gone;
use super::record::{Deaggregated, KinesisClientRecord, deaggregate_records, skip_through};
use crate::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use crate::metrics::ShardMetrics;

/// The most records one GetRecords call may return.
pub const GET_RECORDS_MAX: i32 = 10_000;

/// How a [`ShardReader`] polls. Every field has a documented default.
///
/// ```
/// use std::time::Duration;
/// use kcl::internals::RetrievalConfig;
///
/// let config = RetrievalConfig {
///     max_records: 500,
///     ..RetrievalConfig::default()
/// };
/// assert_eq!(config.idle_time_between_reads, Duration::from_millis(200));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrievalConfig {
    /// `Limit` of each GetRecords call, 1 to 10,000. Default: 10,000 (the service's
    /// maximum; a call also stops at 10 MB).
    pub max_records: i32,
    /// How long to wait before the next GetRecords once the reader has caught up (a
    /// call returned no records and `MillisBehindLatest` 0). A reader that is behind
    /// does not wait. Default: 200 ms, which keeps an idle reader at the service's limit
    /// of 5 GetRecords per second per shard. The Java KCL waits
    /// `idleTimeBetweenReadsInMillis` (1,000 ms in KCL 1.x, 1,500 ms in 2.x) between
    /// every call, which costs latency and throughput when behind; here a reader that
    /// is behind and exceeds the limit is throttled and backs off instead.
    pub idle_time_between_reads: Duration,
    /// The least time from the start of one GetRecords call to the start of the next,
    /// unless the call returned a full batch (`max_records` records: the shard holds
    /// more, and a reader that is behind reads on at once; real Kinesis throttles it
    /// past the limit and the backoff paces it). Default: 200 ms, so a reader on a
    /// trickling shard, whose every call returns a few records, stays within the
    /// service's 5 GetRecords per second per shard instead of looping at round-trip
    /// speed. The Java KCL waits its idle time between every call.
    pub min_time_between_get_records: Duration,
    /// Where an `AT_TIMESTAMP` start position starts. Required for that position,
    /// ignored for the others. Default: `None`.
    pub at_timestamp: Option<SystemTime>,
    /// Upper bound of the first retry delay after a throttled or failed call; each
    /// further consecutive failure doubles it. Default: 100 ms.
    pub initial_backoff: Duration,
    /// The largest retry delay bound. Default: 5 s.
    pub max_backoff: Duration,
    /// The shard's hash key range, when known: a KPL aggregate holding a user record
    /// outside it is left out whole (see [`deaggregate_records`]). Default: `None`
    /// (every aggregate delivered). The worker sets it from the lease.
    pub hash_key_range: Option<(u128, u128)>,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        RetrievalConfig {
            max_records: GET_RECORDS_MAX,
            idle_time_between_reads: Duration::from_millis(200),
            min_time_between_get_records: Duration::from_millis(200),
            at_timestamp: None,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            hash_key_range: None,
        }
    }
}

/// A child of the shard, named by GetRecords once a closed shard is read to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShardRef {
    /// The child shard.
    pub shard_id: String,
    /// Its parents: the shard being read, plus the other parent of a merge.
    pub parent_shard_ids: Vec<String>,
    /// Its hash key range, when the response carried a parseable one.
    pub hash_key_range: Option<(u128, u128)>,
}

impl From<aws_sdk_kinesis::types::ChildShard> for ChildShardRef {
    fn from(child: aws_sdk_kinesis::types::ChildShard) -> ChildShardRef {
        ChildShardRef {
            hash_key_range: child.hash_key_range.as_ref().and_then(|r| {
                Some((
                    r.starting_hash_key.parse().ok()?,
                    r.ending_hash_key.parse().ok()?,
                ))
            }),
            shard_id: child.shard_id,
            parent_shard_ids: child.parent_shards,
        }
    }
}

/// What one GetRecords call (or one SubscribeToShard event) delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// User records after the last delivered one, in shard order (KPL aggregates split;
    /// records at or before the start checkpoint left out).
    pub records: Vec<KinesisClientRecord>,
    /// How far the reader is behind the tip of the shard, as Kinesis reports it.
    pub millis_behind_latest: Option<i64>,
    /// The shard's children when the service names them at shard end (real Kinesis and
    /// kinesis-mock do; ferrokinesis does not, so callers fall back to ListShards).
    pub child_shards: Vec<ChildShardRef>,
    /// The shard is closed and has been read to its end: there will be no more records.
    pub shard_end: bool,
    /// Records that began with the KPL magic but did not decode; each is in `records`
    /// as one plain record with its original bytes.
    pub undecodable_aggregates: usize,
    /// User records left out because their aggregate was stored in a shard that does
    /// not own all of them ([`RetrievalConfig::hash_key_range`]).
    pub foreign_records_dropped: usize,
    /// Data bytes GetRecords returned, before deaggregation and the resume skip: what
    /// counts against the shard's read limit of 2 MB/s.
    pub bytes: usize,
}

impl Batch {
    fn shard_end() -> Batch {
        Batch {
            shard_end: true,
            ..Batch::default()
        }
    }
}

/// Reads one shard by polling GetRecords, from a checkpoint or a start sentinel.
///
/// Start positions:
/// - `TRIM_HORIZON`, `LATEST`: the iterator types of the same name. `LATEST` is
///   resolved by the first [`next_batch`](Self::next_batch), not by [`new`](Self::new).
/// - `AT_TIMESTAMP`: [`RetrievalConfig::at_timestamp`]; the first batch is an error
///   without it.
/// - A sequence number `(S, n)`: `AT_SEQUENCE_NUMBER S`, then every user record at or
///   before `(S, n)` is skipped. Reading *at* S rather than *after* it is how a
///   checkpoint inside a KPL aggregate resumes: the aggregate is read again and only
///   its sub-records after `n` are delivered (the Java KCL does the same). For a plain
///   record this is the same as `AFTER_SEQUENCE_NUMBER S`.
/// - `SHARD_END`: the shard was already finished; the first batch reports `shard_end`
///   without calling Kinesis.
///
/// Failures: throttling (`ProvisionedThroughputExceeded`, KMS throttling,
/// `LimitExceeded`), 5xx answers, timeouts and network failures are retried without
/// limit, with exponential backoff and full jitter. An expired iterator (a reader that
/// did not call for 5 minutes) is re-acquired at the last delivered record with the
/// same skip rule, or at the start position if nothing was delivered yet (for `LATEST`
/// that means latest as of the re-acquisition, as in the Java KCL). Anything else
/// (stream not found, access denied, invalid argument) is a [`RetrievalError`].
///
/// Pacing: calls start at least [`RetrievalConfig::min_time_between_get_records`]
/// apart (200 ms: 5 per second) unless the last one returned a full batch; after a call
/// that returns nothing while caught up, the next one also waits
/// [`RetrievalConfig::idle_time_between_reads`]. A reader that is behind (full
/// batches) calls again at once. Real Kinesis allows 5 GetRecords per second per
/// shard, shared by every polling consumer of the shard.
///
/// A shard Kinesis answers `ResourceNotFoundException` for while its stream exists
/// (a closed shard trimmed past the retention period) is read as ended: the next batch
/// reports `shard_end`, with the children ListShards shows. A missing stream stays a
/// [`RetrievalError::ResourceNotFound`].
///
/// [`next_batch`](Self::next_batch) is cancel-safe: dropping its future (for example in
/// `tokio::select!`) loses no record and delivers none twice; the next call carries on.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use aws_sdk_kinesis::primitives::Blob;
/// use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
/// use kcl_local::{LocalAws, LocalAwsOptions};
/// use kcl::internals::{RetrievalConfig, ShardReader};
///
/// let aws = LocalAws::start(LocalAwsOptions::default()).await?;
/// let kinesis = aws.clients().await.kinesis;
/// kcl::stream::create_stream(&kinesis, "orders", 1, Duration::from_secs(10)).await?;
/// for i in 0..3 {
///     kinesis.put_record().stream_name("orders").partition_key("k")
///         .data(Blob::new(format!("order-{i}"))).send().await?;
/// }
/// let shard_id = kcl::stream::list_shards(&kinesis, "orders").await?[0].shard_id.clone();
///
/// let mut reader = ShardReader::new(
///     kinesis,
///     "orders",
///     shard_id,
///     ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
///     RetrievalConfig::default(),
/// );
/// let batch = reader.next_batch().await?;
/// let data: Vec<_> = batch.records.iter().map(|r| r.data.clone()).collect();
/// assert_eq!(data, [b"order-0".to_vec(), b"order-1".to_vec(), b"order-2".to_vec()]);
/// assert!(!batch.shard_end);
/// # aws.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ShardReader {
    client: Client,
    stream_name: String,
    shard_id: String,
    config: RetrievalConfig,
    start: ExtendedSequenceNumber,
    /// The iterator for the next GetRecords; `None` until acquired and after expiry.
    iterator: Option<String>,
    /// Records at or before this position are not delivered (the resume rule).
    skip: Option<ExtendedSequenceNumber>,
    last_delivered: Option<ExtendedSequenceNumber>,
    ended: bool,
    /// When caught up, the next GetRecords waits until then.
    next_call_at: Option<Instant>,
    /// Consecutive failed calls, for the backoff.
    failures: u32,
    expired_iterators: u64,
    metrics: ShardMetrics,
}

impl ShardReader {
    /// A reader of `shard_id` starting after `start`. Sends nothing yet.
    ///
    /// The configuration is checked by the first [`next_batch`](Self::next_batch),
    /// which fails with [`RetrievalError::MissingTimestamp`] when `start` is
    /// `AT_TIMESTAMP` without [`RetrievalConfig::at_timestamp`], and with
    /// [`RetrievalError::InvalidConfig`] when `max_records` is outside 1..=10,000 — so
    /// a prefetching consumer sees it where it sees every other fatal error.
    pub fn new(
        client: Client,
        stream_name: impl Into<String>,
        shard_id: impl Into<String>,
        start: ExtendedSequenceNumber,
        config: RetrievalConfig,
    ) -> ShardReader {
        ShardReader {
            client,
            stream_name: stream_name.into(),
            shard_id: shard_id.into(),
            ended: start.is_shard_end(),
            config,
            start,
            iterator: None,
            skip: None,
            last_delivered: None,
            next_call_at: None,
            failures: 0,
            expired_iterators: 0,
            metrics: ShardMetrics::detached(),
        }
    }

    /// Records this reader's calls in `metrics` (a worker's shard consumer's).
    pub(crate) fn set_metrics(&mut self, metrics: ShardMetrics) {
        self.metrics = metrics;
    }

    fn check_config(&self) -> Result<(), RetrievalError> {
        if !(1..=GET_RECORDS_MAX).contains(&self.config.max_records) {
            return Err(RetrievalError::InvalidConfig {
                field: "max_records",
                problem: format!("is {}; must be 1 to 10,000", self.config.max_records),
            });
        }
        if self.start.position == SequencePosition::AtTimestamp
            && self.config.at_timestamp.is_none()
        {
            return Err(RetrievalError::MissingTimestamp {
                shard_id: self.shard_id.clone(),
            });
        }
        Ok(())
    }

    /// The shard being read.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The stream the shard belongs to.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The position of the last record delivered, if any.
    pub fn last_delivered(&self) -> Option<&ExtendedSequenceNumber> {
        self.last_delivered.as_ref()
    }

    /// Whether the shard end has been reached (every later batch is an empty
    /// `shard_end` batch).
    pub fn is_shard_end(&self) -> bool {
        self.ended
    }

    /// How many times the shard iterator expired and was re-acquired.
    pub fn expired_iterators(&self) -> u64 {
        self.expired_iterators
    }

    /// The next batch of records: one GetRecords call, plus the GetShardIterator,
    /// waits and retries it needs. See the type's documentation for the rules.
    pub async fn next_batch(&mut self) -> Result<Batch, RetrievalError> {
        if self.ended {
            return Ok(Batch::shard_end());
        }
        self.check_config()?;
        if let Some(at) = self.next_call_at {
            tokio::time::sleep_until(at).await;
            self.next_call_at = None;
        }
        loop {
            let iterator = match &self.iterator {
                Some(iterator) => iterator.clone(),
                None => match self.acquire_iterator().await {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.ended = true;
                        return Ok(Batch::shard_end());
                    }
                    Err(failure) => {
                        if let Some(batch) = self.recover(failure).await? {
                            return Ok(batch);
                        }
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let response = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(self.config.max_records)
                .send()
                .await;
            match response {
                Ok(output) => {
                    self.failures = 0;
                    self.metrics.calls.succeeded.increment(1);
                    self.metrics
                        .calls
                        .seconds
                        .record(started.elapsed().as_secs_f64());
                    return Ok(self.deliver(output, started));
                }
                Err(err) => {
                    let failure = classify(&err, "GetRecords", &self.shard_id);
                    self.metrics.calls.failure(failure.is_throttled());
                    if let Some(batch) = self.recover(failure).await? {
                        return Ok(batch);
                    }
                }
            }
        }
    }

    /// Gets an iterator at the resume position and arms the skip rule for it. `false`
    /// when Kinesis returns no iterator: the shard is closed and nothing is left.
    async fn acquire_iterator(&mut self) -> Result<bool, Failure> {
        let from = self.last_delivered.as_ref().unwrap_or(&self.start).clone();
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream_name)
            .shard_id(&self.shard_id);
        let request = match &from.position {
            SequencePosition::TrimHorizon => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            SequencePosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            SequencePosition::AtTimestamp => {
                let at = self.config.at_timestamp.ok_or_else(|| {
                    Failure::Fatal(RetrievalError::MissingTimestamp {
                        shard_id: self.shard_id.clone(),
                    })
                })?;
                request
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from(at))
            }
            SequencePosition::Sequence(sequence) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence),
            SequencePosition::ShardEnd => return Ok(false),
        };
        let output = request
            .send()
            .await
            .map_err(|e| classify(&e, "GetShardIterator", &self.shard_id))?;
        tracing::debug!(shard_id = %self.shard_id, from = %from, "acquired shard iterator");
        self.skip = matches!(from.position, SequencePosition::Sequence(_)).then_some(from);
        self.iterator = output.shard_iterator.filter(|i| !i.is_empty());
        Ok(self.iterator.is_some())
    }

    /// Backs off for a retryable failure (an expired iterator is re-acquired at once
    /// the first time), or returns a fatal one.
    async fn handle_failure(&mut self, failure: Failure) -> Result<(), RetrievalError> {
        self.failures = self.failures.saturating_add(1);
        let message = match failure {
            Failure::Fatal(e) => {
                tracing::error!(shard_id = %self.shard_id, error = %e, "cannot read shard");
                return Err(e);
            }
            Failure::ExpiredIterator => {
                self.iterator = None;
                self.expired_iterators += 1;
                self.metrics.expired_iterators.increment(1);
                tracing::warn!(
                    shard_id = %self.shard_id,
                    resume_after = ?self.last_delivered,
                    "shard iterator expired; re-acquiring it"
                );
                // Straight away, unless re-acquired iterators keep expiring.
                if self.failures == 1 {
                    return Ok(());
                }
                "the re-acquired iterator expired too".to_string()
            }
            Failure::Retry { throttled, message } => {
                if throttled {
                    tracing::debug!(shard_id = %self.shard_id, %message, "throttled; backing off");
                } else {
                    tracing::warn!(shard_id = %self.shard_id, %message, "retrying after failure");
                }
                message
            }
        };
        sleep_backoff(
            &self.shard_id,
            self.config.initial_backoff,
            self.config.max_backoff,
            self.failures,
            &message,
        )
        .await;
        Ok(())
    }

    /// Handles a failed call: a shard gone from an existing stream ends the shard (see
    /// the `gone` module); everything else goes to the backoff or is returned.
    async fn recover(&mut self, failure: Failure) -> Result<Option<Batch>, RetrievalError> {
        let Failure::Fatal(error @ RetrievalError::ResourceNotFound { .. }) = failure else {
            self.handle_failure(failure).await?;
            return Ok(None);
        };
        let view = gone::look(&self.client, &self.stream_name).await;
        match gone::judge(&self.shard_id, &view) {
            gone::Verdict::Ended(children) => {
                tracing::warn!(shard_id = %self.shard_id, %error, "shard gone from the stream (trimmed); reading it as ended");
                self.iterator = None;
                self.ended = true;
                Ok(Some(Batch {
                    child_shards: children,
                    ..Batch::shard_end()
                }))
            }
            gone::Verdict::Fatal => self
                .handle_failure(Failure::Fatal(error))
                .await
                .map(|()| None),
            gone::Verdict::Retry => {
                let message = match view {
                    gone::StreamView::Unknown(message) => message,
                    _ => error.to_string(),
                };
                // Ends with an answer either way, or with the reader's cancellation.
                self.handle_failure(Failure::Retry {
                    throttled: false,
                    message: format!("{error}; cannot look at the stream: {message}"),
                })
                .await
                .map(|()| None)
            }
        }
    }

    /// Turns a GetRecords answer into a batch and advances the reader. Runs without an
    /// await, so the reader's state moves all at once (cancel safety).
    fn deliver(&mut self, output: GetRecordsOutput, started: Instant) -> Batch {
        let GetRecordsOutput {
            records,
            next_shard_iterator,
            millis_behind_latest,
            child_shards,
            ..
        } = output;
        let fetched = records.len();
        let bytes = records.iter().map(|r| r.data.as_ref().len()).sum();
        let Deaggregated {
            records,
            undecodable_aggregates,
            foreign_records_dropped,
        } = deaggregate_records(records, self.config.hash_key_range);
        let records = skip_through(records, &mut self.skip);
        if let Some(last) = records.last() {
            self.last_delivered = Some(last.extended_sequence_number());
        }
        self.iterator = next_shard_iterator.filter(|i| !i.is_empty());
        let shard_end = self.iterator.is_none();
        self.ended = shard_end;
        let full = i32::try_from(fetched).is_ok_and(|n| n >= self.config.max_records);
        if !shard_end && !full {
            let mut next = started + self.config.min_time_between_get_records;
            if fetched == 0 && millis_behind_latest.unwrap_or(0) == 0 {
                next = next.max(Instant::now() + self.config.idle_time_between_reads);
            }
            self.next_call_at = Some(next);
        }
        if shard_end {
            tracing::debug!(shard_id = %self.shard_id, "shard end reached");
        }
        Batch {
            records,
            millis_behind_latest,
            child_shards: child_shards
                .unwrap_or_default()
                .into_iter()
                .map(ChildShardRef::from)
                .collect(),
            shard_end,
            undecodable_aggregates,
            foreign_records_dropped,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .build();
        Client::from_conf(config)
    }

    #[tokio::test]
    async fn config_is_checked_before_any_call() {
        // The client has no region or endpoint: a call would fail differently.
        let first_batch = |start: SequencePosition, config: RetrievalConfig| async move {
            ShardReader::new(
                client(),
                "s",
                "shardId-000000000000",
                ExtendedSequenceNumber::new(start),
                config,
            )
            .next_batch()
            .await
        };
        let err = first_batch(SequencePosition::AtTimestamp, RetrievalConfig::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, RetrievalError::MissingTimestamp { .. }),
            "{err}"
        );
        for max_records in [0, -1, 10_001] {
            let config = RetrievalConfig {
                max_records,
                ..RetrievalConfig::default()
            };
            let err = first_batch(SequencePosition::TrimHorizon, config)
                .await
                .unwrap_err();
            assert!(matches!(err, RetrievalError::InvalidConfig { .. }), "{err}");
        }
    }

    #[tokio::test]
    async fn shard_end_start_ends_without_calling_kinesis() {
        // The client has no region or endpoint: any call would fail.
        let mut reader = ShardReader::new(
            client(),
            "s",
            "shardId-000000000000",
            ExtendedSequenceNumber::shard_end(),
            RetrievalConfig::default(),
        );
        assert!(reader.is_shard_end());
        for _ in 0..2 {
            let batch = reader.next_batch().await.unwrap();
            assert!(batch.shard_end && batch.records.is_empty());
        }
    }
}
