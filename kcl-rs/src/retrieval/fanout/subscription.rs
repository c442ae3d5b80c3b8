//! Reading one shard through enhanced fan-out: SubscribeToShard sessions, one after the
//! other, each delivering events until it ends (5 minutes on real Kinesis).

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::primitives::event_stream::EventReceiver;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ShardIteratorType, StartingPosition, SubscribeToShardEvent, SubscribeToShardEventStream,
};
use tokio::time::Instant;

use crate::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use crate::metrics::ShardMetrics;
use crate::retrieval::backoff::sleep_backoff;
use crate::retrieval::error::{Failure, RetrievalError, classify_with};
use crate::retrieval::polling::{Batch, ChildShardRef, RetrievalConfig, ShardReader};
use crate::retrieval::record::{Deaggregated, deaggregate_records, skip_through};

/// SubscribeToShard allows one call per second per consumer and shard.
pub const SUBSCRIBE_INTERVAL: Duration = Duration::from_secs(1);

/// How a [`FanOutReader`] reads, besides what it shares with polling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanOutConfig {
    /// The registered consumer's ARN.
    pub consumer_arn: String,
    /// The watchdog: a subscription that delivers no event for this long is torn down
    /// and a new one starts from the last delivered position. Real Kinesis sends an
    /// event at least every 5 seconds even on an idle shard. Default 30 s.
    pub event_timeout: Duration,
    /// A shard that delivers no record for this long is checked for its end with one
    /// GetShardIterator and GetRecords, for services that do not send `ChildShards`
    /// at the end of a closed shard (real Kinesis does; kinesis-mock does not).
    /// Default 30 s.
    pub end_check_after: Duration,
}

impl FanOutConfig {
    /// The defaults, with the consumer's ARN.
    pub fn new(consumer_arn: impl Into<String>) -> FanOutConfig {
        FanOutConfig {
            consumer_arn: consumer_arn.into(),
            event_timeout: Duration::from_secs(30),
            end_check_after: Duration::from_secs(30),
        }
    }
}

/// What a reader has done so far, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanOutStats {
    /// SubscribeToShard calls that opened a subscription.
    pub subscriptions: u64,
    /// Subscriptions that ended by themselves (the 5-minute session) and were renewed.
    pub sessions_ended: u64,
    /// Subscriptions the watchdog tore down for delivering nothing.
    pub watchdog_resets: u64,
    /// Failed SubscribeToShard calls and broken streams, retried.
    pub retries: u64,
    /// Shard-end checks by polling.
    pub end_checks: u64,
}

struct Subscription {
    events: EventReceiver<SubscribeToShardEventStream, SubscribeToShardEventStreamError>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// Reads one shard through enhanced fan-out, with the same contract as the polling
/// [`ShardReader`]: [`next_batch`](Self::next_batch) returns batches in shard order,
/// KPL aggregates split, records at or before the start checkpoint left out, and a last
/// `shard_end` batch with the children.
///
/// Positions. The first subscription starts at the checkpoint (`AT_SEQUENCE_NUMBER`
/// with the polling reader's in-aggregate skip) or at the start sentinel. Every later
/// one starts `AT_SEQUENCE_NUMBER` of the last delivered record and skips through it,
/// so nothing is lost or delivered twice whatever the service's
/// `ContinuationSequenceNumber` means (real Kinesis and kinesis-mock give the last
/// record's sequence number, ferrokinesis's own SubscribeToShard the next position).
/// Before any record is delivered, the last non-empty `ContinuationSequenceNumber` is
/// used instead, so a reader that started at `LATEST` misses nothing between two
/// sessions where the service names a position (real Kinesis always does).
///
/// Shard end: an event with `ChildShards` and no records (real Kinesis sends one at
/// the end of a closed shard; ferrokinesis's own SubscribeToShard sends children with
/// every event once the shard is closed, and ends the stream after the last records),
/// or a stream that ends after an event that named children. A shard that delivers nothing for
/// [`FanOutConfig::end_check_after`] is checked with one polling read, for services
/// that never name children.
///
/// Failures: `ResourceInUseException` (the previous subscription, perhaps another
/// worker's, is still open), `LimitExceededException` (1 call per second per consumer
/// and shard), throttling, 5xx answers and broken streams back off with jitter and
/// subscribe again; calls are at least [`SUBSCRIBE_INTERVAL`] apart.
/// `ResourceNotFoundException` is looked at: a deregistered consumer is a
/// [`RetrievalError`], a trimmed shard ends as in polling. Access denied, KMS and
/// invalid-argument failures are [`RetrievalError`]s.
///
/// Backpressure: events are read only when a batch is asked for, so a slow processor
/// leaves them in the connection (the prefetch channel holds at most its depth), and
/// the service waits.
#[derive(Debug)]
pub struct FanOutReader {
    client: Client,
    stream_name: String,
    shard_id: String,
    config: FanOutConfig,
    retrieval: RetrievalConfig,
    start: ExtendedSequenceNumber,
    last_delivered: Option<ExtendedSequenceNumber>,
    /// The last `ContinuationSequenceNumber`, while no record has been delivered.
    continuation: Option<String>,
    /// Records at or before this position are not delivered (the resume rule).
    skip: Option<ExtendedSequenceNumber>,
    /// Children named by an event that still carried records.
    children: Vec<ChildShardRef>,
    subscription: Option<Subscription>,
    last_subscribe: Option<Instant>,
    /// Since when no record arrived.
    quiet_since: Instant,
    failures: u32,
    ended: bool,
    stats: FanOutStats,
    metrics: ShardMetrics,
}

impl FanOutReader {
    /// A reader of `shard_id` starting after `start`. Sends nothing yet. The
    /// [`RetrievalConfig`] gives the backoff, the hash key range and the `AT_TIMESTAMP`
    /// time; its GetRecords settings serve only the shard-end check.
    pub fn new(
        client: Client,
        stream_name: impl Into<String>,
        shard_id: impl Into<String>,
        start: ExtendedSequenceNumber,
        retrieval: RetrievalConfig,
        config: FanOutConfig,
    ) -> FanOutReader {
        FanOutReader {
            client,
            stream_name: stream_name.into(),
            shard_id: shard_id.into(),
            ended: start.is_shard_end(),
            config,
            retrieval,
            start,
            last_delivered: None,
            continuation: None,
            skip: None,
            children: Vec::new(),
            subscription: None,
            last_subscribe: None,
            quiet_since: Instant::now(),
            failures: 0,
            stats: FanOutStats::default(),
            metrics: ShardMetrics::detached(),
        }
    }

    /// Records this reader's calls in `metrics` (a worker's shard consumer's).
    pub(crate) fn set_metrics(&mut self, metrics: ShardMetrics) {
        self.metrics = metrics;
    }

    /// The shard being read.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The position of the last record delivered, if any.
    pub fn last_delivered(&self) -> Option<&ExtendedSequenceNumber> {
        self.last_delivered.as_ref()
    }

    /// What the reader has done so far.
    pub fn stats(&self) -> FanOutStats {
        self.stats
    }

    /// The next batch: the records of the next event (possibly none: an idle shard
    /// gets events too), after subscribing when needed. See the type's documentation.
    pub async fn next_batch(&mut self) -> Result<Batch, RetrievalError> {
        if self.ended {
            return Ok(shard_end(Vec::new()));
        }
        if self.start.position == SequencePosition::AtTimestamp
            && self.retrieval.at_timestamp.is_none()
        {
            return Err(RetrievalError::MissingTimestamp {
                shard_id: self.shard_id.clone(),
            });
        }
        loop {
            if self.subscription.is_none() {
                match self.subscribe().await {
                    Ok(subscription) => {
                        self.subscription = Some(subscription);
                        self.stats.subscriptions += 1;
                    }
                    Err(failure) => {
                        if let Some(batch) = self.recover(failure).await? {
                            return Ok(batch);
                        }
                    }
                }
                continue;
            }
            let events = &mut self.subscription.as_mut().expect("subscribed").events;
            let received = tokio::time::timeout(self.config.event_timeout, events.recv()).await;
            match received {
                Err(_) => {
                    self.subscription = None;
                    self.stats.watchdog_resets += 1;
                    self.metrics.subscription_timeouts.increment(1);
                    tracing::warn!(
                        shard_id = %self.shard_id,
                        timeout = ?self.config.event_timeout,
                        resume_after = ?self.last_delivered,
                        "subscription delivered no event in time; subscribing again"
                    );
                }
                Ok(Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)))) => {
                    self.failures = 0;
                    let batch = self.deliver(event);
                    if batch.records.is_empty()
                        && !batch.shard_end
                        && self.quiet_since.elapsed() >= self.config.end_check_after
                        && let Some(end) = self.check_end().await?
                    {
                        return Ok(end);
                    }
                    return Ok(batch);
                }
                Ok(Ok(Some(_))) => {} // an event type this SDK does not know
                Ok(Ok(None)) => {
                    self.subscription = None;
                    if !self.children.is_empty() {
                        self.ended = true;
                        return Ok(shard_end(std::mem::take(&mut self.children)));
                    }
                    self.stats.sessions_ended += 1;
                    tracing::debug!(shard_id = %self.shard_id, "subscription ended; renewing it");
                }
                Ok(Err(err)) => {
                    self.subscription = None;
                    let code = err.as_service_error().and_then(stream_error_code);
                    let failure =
                        classify_with(&err, "SubscribeToShard", &self.shard_id, |_| None, code);
                    self.metrics.calls.failure(failure.is_throttled());
                    if let Some(batch) = self.recover(failure).await? {
                        return Ok(batch);
                    }
                }
            }
        }
    }

    /// Where the next subscription starts, and the skip rule that goes with it.
    fn resume(&self) -> (StartingPosition, Option<ExtendedSequenceNumber>) {
        let at = |sequence: &str| {
            StartingPosition::builder()
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(sequence)
        };
        let start_skip = matches!(self.start.position, SequencePosition::Sequence(_))
            .then(|| self.start.clone());
        let builder = match (
            &self.last_delivered,
            &self.continuation,
            &self.start.position,
        ) {
            (Some(last), _, _) => match &last.position {
                SequencePosition::Sequence(s) => return (build(at(s)), Some(last.clone())),
                _ => unreachable!("delivered records have sequence numbers"),
            },
            (None, Some(continuation), _) => at(continuation),
            (None, None, SequencePosition::Sequence(s)) => at(s),
            (None, None, SequencePosition::TrimHorizon | SequencePosition::ShardEnd) => {
                StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon)
            }
            (None, None, SequencePosition::Latest) => {
                StartingPosition::builder().r#type(ShardIteratorType::Latest)
            }
            (None, None, SequencePosition::AtTimestamp) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtTimestamp)
                .set_timestamp(self.retrieval.at_timestamp.map(DateTime::from)),
        };
        (build(builder), start_skip)
    }

    async fn subscribe(&mut self) -> Result<Subscription, Failure> {
        if let Some(last) = self.last_subscribe {
            tokio::time::sleep_until(last + SUBSCRIBE_INTERVAL).await;
        }
        let started = Instant::now();
        self.last_subscribe = Some(started);
        let (position, skip) = self.resume();
        tracing::debug!(shard_id = %self.shard_id, ?position, "subscribing");
        let call = self
            .client
            .subscribe_to_shard()
            .consumer_arn(&self.config.consumer_arn)
            .shard_id(&self.shard_id)
            .starting_position(position)
            .send();
        // The watchdog covers the call too: a service that accepts the connection and
        // never answers is a stall like any other.
        let Ok(answer) = tokio::time::timeout(self.config.event_timeout, call).await else {
            self.stats.watchdog_resets += 1;
            self.metrics.subscription_timeouts.increment(1);
            self.metrics.calls.failure(false);
            return Err(Failure::Retry {
                throttled: false,
                message: format!("SubscribeToShard on {}: no answer in time", self.shard_id),
            });
        };
        let output = answer.map_err(|e| {
            let code = e.as_service_error().and_then(subscribe_error_code);
            classify_with(
                &e,
                "SubscribeToShard",
                &self.shard_id,
                |raw| Some(raw.status().as_u16()),
                code,
            )
        });
        let output = match output {
            Ok(output) => output,
            Err(failure) => {
                self.metrics.calls.failure(failure.is_throttled());
                return Err(failure);
            }
        };
        self.metrics.calls.succeeded.increment(1);
        self.metrics
            .calls
            .seconds
            .record(started.elapsed().as_secs_f64());
        self.skip = skip;
        Ok(Subscription {
            events: output.event_stream,
        })
    }

    /// Turns an event into a batch and advances the reader (no await: all at once).
    fn deliver(&mut self, event: SubscribeToShardEvent) -> Batch {
        let SubscribeToShardEvent {
            records,
            continuation_sequence_number,
            millis_behind_latest,
            child_shards,
            ..
        } = event;
        let fetched = records.len();
        let bytes = records.iter().map(|r| r.data.as_ref().len()).sum();
        let Deaggregated {
            records,
            undecodable_aggregates,
            foreign_records_dropped,
        } = deaggregate_records(records, self.retrieval.hash_key_range);
        let records = skip_through(records, &mut self.skip);
        if let Some(last) = records.last() {
            self.last_delivered = Some(last.extended_sequence_number());
            self.continuation = None;
        } else if self.last_delivered.is_none() && !continuation_sequence_number.is_empty() {
            self.continuation = Some(continuation_sequence_number);
        }
        if fetched > 0 {
            self.quiet_since = Instant::now();
        }
        let children: Vec<ChildShardRef> = child_shards
            .unwrap_or_default()
            .into_iter()
            .map(ChildShardRef::from)
            .collect();
        let shard_end = !children.is_empty() && fetched == 0
            || children.is_empty() && fetched == 0 && !self.children.is_empty();
        let children = if children.is_empty() {
            std::mem::take(&mut self.children)
        } else {
            children
        };
        if shard_end {
            self.ended = true;
            self.subscription = None;
            tracing::debug!(shard_id = %self.shard_id, "shard end reached");
        } else if !children.is_empty() {
            self.children = children.clone();
        }
        Batch {
            records,
            millis_behind_latest: Some(millis_behind_latest),
            child_shards: if shard_end { children } else { Vec::new() },
            shard_end,
            undecodable_aggregates,
            foreign_records_dropped,
            bytes,
        }
    }

    /// Checks by polling whether the shard is closed and read to its end: for services
    /// that do not name children at the end. `None` if not (the subscription goes on).
    async fn check_end(&mut self) -> Result<Option<Batch>, RetrievalError> {
        self.quiet_since = Instant::now();
        let from = match (&self.last_delivered, &self.start.position) {
            (Some(last), _) => last.clone(),
            // Polling LATEST would look at a later position than the subscription's.
            (None, SequencePosition::Latest) => return Ok(None),
            (None, _) => self.start.clone(),
        };
        self.stats.end_checks += 1;
        let mut reader = ShardReader::new(
            self.client.clone(),
            &self.stream_name,
            &self.shard_id,
            from,
            self.retrieval.clone(),
        );
        // A closed shard read to its end answers an empty batch without a next
        // iterator; reading at the last record may take one more call to say so.
        for _ in 0..3 {
            let batch = reader.next_batch().await?;
            if batch.shard_end && batch.records.is_empty() {
                tracing::debug!(shard_id = %self.shard_id, "shard end found by polling");
                self.ended = true;
                self.subscription = None;
                return Ok(Some(batch));
            }
            if batch.shard_end || !batch.records.is_empty() {
                break; // records left: the subscription delivers them
            }
        }
        Ok(None)
    }

    /// Handles a failed subscription: a missing consumer is fatal, a trimmed shard
    /// ends (see the polling reader), the rest backs off or is returned.
    async fn recover(&mut self, failure: Failure) -> Result<Option<Batch>, RetrievalError> {
        self.failures = self.failures.saturating_add(1);
        self.stats.retries += 1;
        let message = match failure {
            Failure::Fatal(error @ RetrievalError::ResourceNotFound { .. }) => {
                if !self.consumer_exists().await {
                    return Err(error);
                }
                // The stream or the shard: the polling reader tells which.
                if let Some(end) = self.check_end().await? {
                    return Ok(Some(end));
                }
                error.to_string()
            }
            Failure::Fatal(error) => {
                tracing::error!(shard_id = %self.shard_id, %error, "cannot subscribe to shard");
                return Err(error);
            }
            Failure::ExpiredIterator => "expired iterator".to_string(),
            Failure::Retry { throttled, message } => {
                if throttled {
                    tracing::debug!(shard_id = %self.shard_id, %message, "subscription throttled; backing off");
                } else {
                    tracing::warn!(shard_id = %self.shard_id, %message, "subscription failed; retrying");
                }
                message
            }
        };
        sleep_backoff(
            &self.shard_id,
            self.retrieval.initial_backoff,
            self.retrieval.max_backoff,
            self.failures,
            &message,
        )
        .await;
        Ok(None)
    }

    /// Whether the consumer is still registered (on doubt, yes: the retry decides).
    async fn consumer_exists(&self) -> bool {
        match self
            .client
            .describe_stream_consumer()
            .consumer_arn(&self.config.consumer_arn)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) => e.code() != Some("ResourceNotFoundException"),
        }
    }
}

/// The code of a SubscribeToShard error's modelled variant: the SDK leaves `code()`
/// empty for an exception sent as an event-stream frame (kinesis-mock sends every
/// error that way).
fn subscribe_error_code(e: &SubscribeToShardError) -> Option<&'static str> {
    use SubscribeToShardError as E;
    Some(match e {
        E::AccessDeniedException(_) => "AccessDeniedException",
        E::InvalidArgumentException(_) => "InvalidArgumentException",
        E::LimitExceededException(_) => "LimitExceededException",
        E::ResourceInUseException(_) => "ResourceInUseException",
        E::ResourceNotFoundException(_) => "ResourceNotFoundException",
        E::KmsAccessDeniedException(_) => "KMSAccessDeniedException",
        E::KmsThrottlingException(_) => "KMSThrottlingException",
        E::KmsDisabledException(_) => "KMSDisabledException",
        E::KmsInvalidStateException(_) => "KMSInvalidStateException",
        E::KmsNotFoundException(_) => "KMSNotFoundException",
        E::KmsOptInRequired(_) => "KMSOptInRequired",
        E::InternalFailureException(_) => "InternalFailureException",
        _ => return None,
    })
}

/// [`subscribe_error_code`] for an exception in the middle of the stream.
fn stream_error_code(e: &SubscribeToShardEventStreamError) -> Option<&'static str> {
    use SubscribeToShardEventStreamError as E;
    Some(match e {
        E::ResourceInUseException(_) => "ResourceInUseException",
        E::ResourceNotFoundException(_) => "ResourceNotFoundException",
        E::KmsAccessDeniedException(_) => "KMSAccessDeniedException",
        E::KmsThrottlingException(_) => "KMSThrottlingException",
        E::KmsDisabledException(_) => "KMSDisabledException",
        E::KmsInvalidStateException(_) => "KMSInvalidStateException",
        E::KmsNotFoundException(_) => "KMSNotFoundException",
        E::KmsOptInRequired(_) => "KMSOptInRequired",
        E::InternalFailureException(_) => "InternalFailureException",
        _ => return None,
    })
}

fn build(builder: aws_sdk_kinesis::types::builders::StartingPositionBuilder) -> StartingPosition {
    builder.build().expect("the starting position has its type")
}

fn shard_end(children: Vec<ChildShardRef>) -> Batch {
    Batch {
        shard_end: true,
        child_shards: children,
        ..Batch::default()
    }
}
