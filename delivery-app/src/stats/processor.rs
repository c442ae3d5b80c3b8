//! The record processor: one per shard lease, applying the shard's events to the
//! statistics exactly once.
//!
//! Per batch: drop the records at or before the shard's watermark (applied already,
//! by this or an earlier owner: a replay), parse the rest, plan transactions of at
//! most 100 items and apply them in shard order, each advancing the watermark it is
//! conditioned on; then checkpoint. A crash between a transaction and the checkpoint
//! only causes a replay that the watermark drops. Every transaction also checks that
//! this worker still holds the shard's lease: a worker that lost it (a zombie after a
//! pause) has its transaction refused and abandons the batch. A transaction cancelled
//! otherwise (an order changed elsewhere) is re-read and re-planned, never forced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl::checkpoint::{CheckpointError, Checkpointer, ExtendedSequenceNumber, LeaseOwnership};
use kcl::processor::{InitializationInput, ProcessRecordsInput, RecordProcessor};
use kcl::retrieval::KinesisClientRecord;

use super::plan::{OrderState, ParsedRecord, plan_chunk, referenced_orders};
use super::store::{StatsStore, StoreError, now_ms};
use crate::audit::{AttemptResult, AuditLog};
use crate::events::{Event, Region, parse};

/// Orders kept in a processor's cache before it is emptied.
const CACHE_LIMIT: usize = 200_000;
/// Longest pause between retries of a failed DynamoDB call.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The hash key ranges of a stream's shards, shared by a worker's processors.
#[derive(Debug)]
pub struct ShardRanges {
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    known: Mutex<HashMap<String, (u128, u128)>>,
}

impl ShardRanges {
    /// Ranges of `stream`'s shards, listed on demand.
    pub fn new(kinesis: aws_sdk_kinesis::Client, stream: impl Into<String>) -> ShardRanges {
        ShardRanges {
            kinesis,
            stream: stream.into(),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The range of `shard_id`, listing the shards (again, with retries) when unknown.
    pub async fn range_of(&self, shard_id: &str) -> (u128, u128) {
        let mut pause = Duration::from_millis(100);
        loop {
            if let Some(range) = self.known.lock().expect("not poisoned").get(shard_id) {
                return *range;
            }
            match kcl::stream::list_shards(&self.kinesis, &self.stream).await {
                Ok(shards) => {
                    let mut known = self.known.lock().expect("not poisoned");
                    for s in shards {
                        known.insert(s.shard_id, (s.starting_hash_key, s.ending_hash_key));
                    }
                    if let Some(range) = known.get(shard_id) {
                        return *range;
                    }
                    tracing::warn!(shard = shard_id, "shard not listed yet");
                }
                Err(e) => tracing::warn!(error = %e, "cannot list shards"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

/// Whether a user record's hash key is in `range`. Kinesis routes a plain record by its
/// own key, so only sub-records of an aggregate can be outside.
pub fn in_range(record: &KinesisClientRecord, range: (u128, u128)) -> bool {
    if !record.aggregated {
        return true;
    }
    let hash = record
        .explicit_hash_key
        .as_deref()
        .and_then(kcl::kpl::parse_explicit_hash_key)
        .unwrap_or_else(|| kcl::kpl::partition_key_hash(&record.partition_key));
    (range.0..=range.1).contains(&hash)
}

/// The aggregates (by sequence number) stored in a shard that does not own all their
/// user records. A producer aggregating with a stale shard map after a split puts such
/// an aggregate in the wrong child, notices, and puts *all* its user records again,
/// routed right; the Java KCL drops the whole aggregate in the wrong shard, and so do
/// we, so each user record counts once. Every record of an aggregate is in the same
/// batch: a processor checkpoints only after whole batches, so a resumed shard starts
/// at an aggregate's first user record.
pub fn foreign_aggregates(records: &[KinesisClientRecord], range: (u128, u128)) -> HashSet<String> {
    records
        .iter()
        .filter(|r| !in_range(r, range))
        .map(|r| r.sequence_number.clone())
        .collect()
}

/// Applies one shard's events to the statistics. Made by [`StatsProcessor::factory`].
pub struct StatsProcessor {
    shard_id: String,
    store: Arc<StatsStore>,
    ranges: Arc<ShardRanges>,
    audit: Option<Arc<AuditLog>>,
    range: Option<(u128, u128)>,
    /// The last record applied, once read from the statistics item.
    watermark: Option<Option<ExtendedSequenceNumber>>,
    /// The shard's orders per pickup region, as stored with `watermark`.
    regions: BTreeMap<Region, u64>,
    /// Created orders as this processor last wrote or read them. Only a hint: every
    /// write is conditioned on the state, so a stale entry costs a retry, not a count.
    cache: HashMap<String, OrderState>,
}

impl StatsProcessor {
    /// A processor for `shard_id`, recording its writes in `audit` if given.
    pub fn new(
        shard_id: &str,
        store: Arc<StatsStore>,
        ranges: Arc<ShardRanges>,
        audit: Option<Arc<AuditLog>>,
    ) -> Self {
        StatsProcessor {
            shard_id: shard_id.to_string(),
            store,
            ranges,
            audit,
            range: None,
            watermark: None,
            regions: BTreeMap::new(),
            cache: HashMap::new(),
        }
    }

    /// A processor factory for [`kcl::worker::Worker::new`].
    pub fn factory(
        store: Arc<StatsStore>,
        ranges: Arc<ShardRanges>,
        audit: Option<Arc<AuditLog>>,
    ) -> impl Fn(&str) -> StatsProcessor + Send + Sync + 'static {
        move |shard: &str| {
            StatsProcessor::new(
                shard,
                Arc::clone(&store),
                Arc::clone(&ranges),
                audit.clone(),
            )
        }
    }

    /// Retries `call` until it succeeds, pausing longer each time.
    async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut pause = Duration::from_millis(50);
        loop {
            match call().await {
                Ok(v) => return v,
                Err(e) => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "{what} failed; retrying")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads the shard's statistics item: the watermark and the region counts.
    async fn reload_watermark(&mut self) -> Option<ExtendedSequenceNumber> {
        let store = Arc::clone(&self.store);
        let shard = self.shard_id.clone();
        let stats = self
            .retry("reading the watermark", || store.shard_stats(&shard))
            .await
            .unwrap_or_default();
        self.regions = stats.totals.regions;
        self.watermark = Some(stats.watermark.clone());
        stats.watermark
    }

    /// The states of the orders `records` refer to: from the cache, assumed absent for
    /// an order whose first event here is its creation (a duplicate is then caught by
    /// the transaction's condition and `forced` to be read), read otherwise.
    async fn states_for(
        &mut self,
        records: &[ParsedRecord],
        forced: &HashSet<String>,
    ) -> HashMap<String, Option<OrderState>> {
        let mut first_is_creation: HashMap<&str, bool> = HashMap::new();
        for r in records {
            if let Some(Ok(event)) = &r.parsed {
                first_is_creation
                    .entry(event.order_id())
                    .or_insert(matches!(event, Event::Created { .. }));
            }
        }
        let mut states = HashMap::new();
        let mut to_read = Vec::new();
        for id in referenced_orders(records) {
            if let Some(state) = self.cache.get(&id).filter(|_| !forced.contains(&id)) {
                states.insert(id, Some(state.clone()));
            } else if first_is_creation[id.as_str()] && !forced.contains(&id) {
                states.insert(id, None);
            } else {
                to_read.push(id);
            }
        }
        if !to_read.is_empty() {
            let store = Arc::clone(&self.store);
            let read = self
                .retry("reading orders", || store.order_states(&to_read))
                .await;
            states.extend(read);
        }
        states
    }

    /// Applies `records` (after the watermark, in shard order) transaction by
    /// transaction, as `owner`. Returns false if the lease turned out to be lost (the
    /// rest of the batch is then left to the new owner).
    async fn apply(&mut self, mut records: Vec<ParsedRecord>, owner: &LeaseOwnership) -> bool {
        let started = std::time::Instant::now();
        let count = records.len();
        let mut transactions = 0;
        let mut forced = HashSet::new();
        let mut states = self.states_for(&records, &forced).await;
        let read = started.elapsed();
        let mut pause = Duration::from_millis(50);
        while !records.is_empty() {
            transactions += 1;
            let chunk = plan_chunk(&self.shard_id, &records, &states);
            let previous = self.watermark.clone().flatten();
            let mut regions = self.regions.clone();
            for (region, n) in &chunk.delta.regions {
                *regions.entry(*region).or_default() += n;
            }
            let attempt = self.audit.as_ref().map(|log| {
                log.attempt(
                    &self.shard_id,
                    owner,
                    previous.as_ref(),
                    &chunk.last,
                    chunk.records,
                )
            });
            let applied = self
                .store
                .apply(&self.shard_id, previous.as_ref(), &regions, &chunk, owner)
                .await;
            if let (Some(log), Some(id)) = (&self.audit, attempt) {
                log.outcome(
                    id,
                    match &applied {
                        Ok(()) => AttemptResult::Applied,
                        Err(StoreError::LeaseLost) => AttemptResult::LeaseLost,
                        Err(StoreError::Conflict { .. }) => AttemptResult::Conflict,
                        Err(_) => AttemptResult::Failed,
                    },
                );
            }
            match applied {
                Ok(()) => {
                    pause = Duration::from_millis(50);
                    self.regions = regions;
                    self.watermark = Some(Some(chunk.last.clone()));
                    records.drain(..chunk.records);
                    if self.cache.len() > CACHE_LIMIT {
                        self.cache.clear();
                    }
                    for (id, state) in chunk.after {
                        match &state {
                            Some(s) if !s.completed => {
                                self.cache.insert(id.clone(), s.clone());
                            }
                            _ => {
                                self.cache.remove(&id);
                            }
                        }
                        states.insert(id, state);
                    }
                }
                Err(StoreError::LeaseLost) => {
                    tracing::info!(shard = %self.shard_id, "lease lost: transaction refused, batch abandoned");
                    self.cache.clear();
                    self.watermark = None;
                    return false;
                }
                Err(StoreError::Conflict { reasons }) => {
                    tracing::info!(shard = %self.shard_id, %reasons, "transaction cancelled by a condition; re-reading");
                    let watermark = self.reload_watermark().await;
                    if let Some(w) = &watermark {
                        records.retain(|r| r.position.compare(w).is_gt());
                    }
                    for order in &chunk.orders {
                        self.cache.remove(&order.order_id);
                        forced.insert(order.order_id.clone());
                    }
                    states = self.states_for(&records, &forced).await;
                }
                Err(e) => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "applying a transaction failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::debug!(
            shard = %self.shard_id,
            records = count,
            transactions,
            read_ms = read.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "batch applied"
        );
        true
    }

    /// Checkpoints everything delivered, recording an accepted checkpoint in the audit
    /// log.
    async fn checkpoint(&self, checkpointer: &mut Checkpointer, what: &str) {
        let before = checkpointer.last_checkpoint().clone();
        let start_ms = now_ms();
        match checkpointer.checkpoint().await {
            Ok(()) => {
                let after = checkpointer.last_checkpoint();
                if let Some(log) = self.audit.as_ref().filter(|_| *after != before) {
                    log.checkpoint(&self.shard_id, &checkpointer.ownership(), after, start_ms);
                }
            }
            Err(e) => {
                tracing::info!(shard = %self.shard_id, error = %e, "{what} not written");
                if let (Some(log), CheckpointError::LeaseLost { .. }) = (&self.audit, &e) {
                    log.checkpoint_refused(&self.shard_id, &checkpointer.ownership());
                }
            }
        }
    }
}

impl RecordProcessor for StatsProcessor {
    async fn initialize(&mut self, input: InitializationInput) {
        self.shard_id = input.shard_id;
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        let range = match self.range {
            Some(range) => range,
            None => {
                let range = self.ranges.range_of(&self.shard_id).await;
                self.range = Some(range);
                range
            }
        };
        let watermark = match self.watermark.clone() {
            Some(w) => w,
            None => self.reload_watermark().await,
        };
        // Judged on whole aggregates, before the watermark may cut one.
        let foreign = foreign_aggregates(&input.records, range);
        let records: Vec<ParsedRecord> = input
            .records
            .into_iter()
            .filter(|r| {
                watermark
                    .as_ref()
                    .is_none_or(|w| r.extended_sequence_number().compare(w).is_gt())
            })
            .map(|r| ParsedRecord {
                position: r.extended_sequence_number(),
                parsed: (!foreign.contains(&r.sequence_number)).then(|| parse(&r.data)),
                partition_key: r.partition_key,
                raw: r.data,
            })
            .collect();
        if !records.is_empty() && !self.apply(records, &checkpointer.ownership()).await {
            return;
        }
        self.checkpoint(checkpointer, "checkpoint").await;
    }

    async fn lease_lost(&mut self) {
        self.cache.clear();
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        self.checkpoint(checkpointer, "final checkpoint").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(aggregated: bool, key: &str, explicit: Option<&str>) -> KinesisClientRecord {
        KinesisClientRecord {
            sequence_number: format!("{}", 1 + u8::from(aggregated)),
            sub_sequence_number: 0,
            aggregated,
            partition_key: key.into(),
            explicit_hash_key: explicit.map(str::to_string),
            data: Vec::new(),
            approximate_arrival_timestamp: None,
        }
    }

    #[test]
    fn only_aggregated_records_outside_the_range_are_foreign() {
        let hash = kcl::kpl::partition_key_hash("k");
        let around = (hash - 1, hash + 1);
        let below = (0, hash - 1);
        let cases = [
            (record(false, "k", None), below, true),
            (record(true, "k", None), around, true),
            (record(true, "k", None), below, false),
            (record(true, "k", Some("5")), below, true),
            (record(true, "k", Some("5")), around, false),
        ];
        for (i, (r, range, expected)) in cases.into_iter().enumerate() {
            assert_eq!(in_range(&r, range), expected, "case {i}");
        }
    }

    #[test]
    fn one_foreign_sub_record_makes_its_whole_aggregate_foreign() {
        let hash = kcl::kpl::partition_key_hash("k");
        let range = (hash - 1, hash + 1);
        let mut inside = record(true, "k", None);
        inside.sequence_number = "7".into();
        let mut outside = record(true, "k", Some("5"));
        outside.sequence_number = "7".into();
        outside.sub_sequence_number = 1;
        let mut other = record(true, "k", None);
        other.sequence_number = "8".into();
        let plain = record(false, "x", None);
        let foreign = foreign_aggregates(&[inside, outside, other, plain], range);
        assert_eq!(foreign, HashSet::from(["7".to_string()]));
    }
}
