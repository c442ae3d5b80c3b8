//! The record processor: one per shard lease, applying the shard's events to the
//! statistics exactly once.
//!
//! Per batch: set aside the records at or before the shard's watermark (applied
//! already, by this or an earlier owner: a replay, which only holds again the orders
//! that were held, see [`hold`](super::hold)), parse the rest, plan transactions of at
//! most 100 items and apply them in shard order, each advancing the watermark it is
//! conditioned on; write the orders held too long; then checkpoint, never past a held
//! order. A crash between a transaction and the checkpoint only causes a replay that
//! the watermark keeps from counting twice. Every transaction also checks that
//! this worker still holds the shard's lease: a worker that lost it (a zombie after a
//! pause) has its transaction refused and abandons the batch. A transaction cancelled
//! otherwise is re-read: if the watermark is now its end, its own earlier try was
//! applied and only the answer lost, so it goes on as applied; if not (an order changed
//! elsewhere), it is re-planned, never forced.
//!
//! Every record ends somewhere: applied, skipped (a replay, a redelivery) or a dead
//! letter, whether the parser, the plan (a sum that would
//! overflow) or DynamoDB itself (a refused transaction, isolated by
//! [`isolate`](super::isolate)) rejects it. Every retry names what ends it: success,
//! the lease moving (the transaction's check), an error retrying cannot fix (which stops
//! the worker through [`Halt`]) or cancellation (shutdown).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kcl::checkpoint::{
    CheckpointError, Checkpointer, ExtendedSequenceNumber, LeaseOwnership, SequencePosition,
};
use kcl::processor::{InitializationInput, ProcessRecordsInput, RecordProcessor};
use tokio_util::sync::CancellationToken;

use super::halt::Halt;
use super::hold::{Held, HeldOrders, Settled};
use super::isolate::{AfterRefusal, after_refusal};

use super::plan::{Chunk, OrderState, ParsedRecord, PlanLimits, referenced_orders};
use super::store::{StatsStore, StoreError};
use super::summary::Summary;
use crate::audit::{AttemptResult, AuditLog, conflict_outcome};
use crate::clock::now_ms;
use crate::events::{Reason, Region, Rejection, parse};
use crate::metrics::ShardMetrics;

/// Orders kept in a processor's cache before it is emptied.
const CACHE_LIMIT: usize = 200_000;
/// Orders held in memory (see [`hold`](super::hold)) beyond which the oldest are
/// written.
const HELD_LIMIT: usize = 100_000;
/// How long an order is held before it is written, so that the checkpoint (held back
/// to the oldest held order) moves on and a replay stays short.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);
/// Held orders written per transaction (with the statistics item and the lease
/// check: DynamoDB's 100 items).
const HELD_PER_TRANSACTION: usize = 98;
/// Longest pause between retries of a failed DynamoDB call.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a call already sent may still take once the worker stops: with DynamoDB
/// answering, a batch in flight finishes (and is checkpointed); with DynamoDB silent,
/// the SDK's own timeouts would take a minute.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

/// Completes [`IN_FLIGHT_GRACE`] after `cancel` fires.
async fn in_flight_grace_over(cancel: &CancellationToken) {
    cancel.cancelled().await;
    tokio::time::sleep(IN_FLIGHT_GRACE).await;
}

/// Sleeps `pause`; false if `cancel` fired first.
async fn pause_unless_cancelled(pause: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = cancel.cancelled() => false,
    }
}

/// For each order the records refer to, the position of the record before its first
/// one (`previous` before the first record): where a replay that rebuilds it starts.
fn first_seen(
    records: &[ParsedRecord],
    mut previous: Option<ExtendedSequenceNumber>,
) -> HashMap<String, Option<ExtendedSequenceNumber>> {
    let mut first = HashMap::new();
    for record in records {
        if let Ok(event) = &record.parsed {
            first
                .entry(event.order_id().to_string())
                .or_insert_with(|| previous.clone());
        }
        previous = Some(record.position.clone());
    }
    first
}

/// Why a batch was left unfinished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abandoned {
    /// The worker stops (shutdown, or an error that stops it).
    Stopping,
    /// The transaction's lease check failed.
    LeaseLost,
}

/// Why a processor stops working on a batch before its end.
#[derive(Debug)]
enum Stop {
    /// The worker is shutting down.
    Cancelled,
    /// The lease moved: the new owner resumes from the checkpoint.
    LeaseLost,
    /// An error retrying cannot fix and no record explains: the worker stops.
    Fatal(StoreError),
}

/// Applies one shard's events to the statistics. Made by [`StatsProcessor::factory`].
pub struct StatsProcessor {
    shard_id: String,
    store: Arc<StatsStore>,
    audit: Option<Arc<AuditLog>>,
    halt: Halt,
    /// The last record applied, once read from the statistics item.
    watermark: Option<Option<ExtendedSequenceNumber>>,
    /// The shard's orders per pickup region, as stored with `watermark`.
    regions: BTreeMap<Region, u64>,
    /// The shard's sums, as stored with `watermark`: what overflow is checked against.
    sums: Summary,
    /// Why a batch was left unfinished, once one was: from then on this processor
    /// applies and checkpoints nothing (a later batch would leave a gap behind it), and
    /// the next owner replays from the last checkpoint.
    abandoned: Option<Abandoned>,
    /// Created orders as this processor last wrote or read them. Only a hint: every
    /// write is conditioned on the state, so a stale entry costs a retry, not a count.
    cache: HashMap<String, OrderState>,
    /// Orders created here and not written yet: their states are these.
    held: HeldOrders,
    /// The position of the last record delivered (where a replay that rebuilds an
    /// order first seen in the next batch starts).
    previous: Option<ExtendedSequenceNumber>,
    /// The clock of `held`.
    started: std::time::Instant,
    metrics: ShardMetrics,
}

impl StatsProcessor {
    /// A processor for `shard_id`, recording its writes in `audit` if given, stopping
    /// its retries when `halt`'s token is cancelled and stopping the worker through
    /// `halt` on an error no record explains.
    pub fn new(
        shard_id: &str,
        store: Arc<StatsStore>,
        audit: Option<Arc<AuditLog>>,
        halt: Halt,
    ) -> Self {
        StatsProcessor {
            shard_id: shard_id.to_string(),
            store,
            audit,
            halt,
            watermark: None,
            regions: BTreeMap::new(),
            sums: Summary::default(),
            abandoned: None,
            cache: HashMap::new(),
            held: HeldOrders::default(),
            previous: None,
            started: std::time::Instant::now(),
            metrics: ShardMetrics::new(shard_id),
        }
    }

    /// A processor factory for [`kcl::worker::Worker::new`].
    pub fn factory(
        store: Arc<StatsStore>,
        audit: Option<Arc<AuditLog>>,
        halt: Halt,
    ) -> impl Fn(&str) -> StatsProcessor + Send + Sync + 'static {
        move |shard: &str| {
            StatsProcessor::new(shard, Arc::clone(&store), audit.clone(), halt.clone())
        }
    }

    /// Calls `call` until it succeeds, pausing longer after each transient failure.
    /// Ends with the value, with [`Stop::Fatal`] on an error retrying cannot fix, or
    /// with [`Stop::Cancelled`] when the worker stops: no retry after that, and a call
    /// in flight gets [`IN_FLIGHT_GRACE`] (a call to a silent DynamoDB can take the
    /// SDK's whole timeout).
    async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let cancel = self.halt.token().clone();
        let mut pause = Duration::from_millis(50);
        loop {
            let result = tokio::select! {
                result = call() => result,
                _ = in_flight_grace_over(&cancel) => return Err(Stop::Cancelled),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "{what} failed; retrying")
                }
                Err(e) => return Err(Stop::Fatal(e)),
            }
            if !pause_unless_cancelled(pause, &cancel).await {
                return Err(Stop::Cancelled);
            }
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads the shard's statistics item: the watermark, the sums and the region counts.
    async fn reload_watermark(&mut self) -> Result<Option<ExtendedSequenceNumber>, Stop> {
        let store = Arc::clone(&self.store);
        let shard = self.shard_id.clone();
        let stats = self
            .retry("reading the watermark", || store.shard_stats(&shard))
            .await?
            .unwrap_or_default();
        self.regions = stats.totals.regions;
        self.sums = stats.totals.sums;
        self.watermark = Some(stats.watermark.clone());
        Ok(stats.watermark)
    }

    /// The states of the orders `records` refer to: held ones as held, others from the
    /// cache, or read (those `forced` always). A creation is never assumed absent: a
    /// held creation has no condition in any transaction, so a copy of an order
    /// written long ago must meet its stored state here.
    async fn states_for(
        &mut self,
        records: &[ParsedRecord],
        forced: &HashSet<String>,
    ) -> Result<HashMap<String, Option<OrderState>>, Stop> {
        let mut states = HashMap::new();
        let mut to_read = Vec::new();
        for id in referenced_orders(records) {
            let known = (!forced.contains(&id))
                .then(|| self.held.state(&id).or_else(|| self.cache.get(&id)))
                .flatten();
            match known {
                Some(state) => {
                    states.insert(id, Some(state.clone()));
                }
                None => to_read.push(id),
            }
        }
        if !to_read.is_empty() {
            let store = Arc::clone(&self.store);
            let read = self
                .retry("reading orders", || store.order_states(&to_read))
                .await?;
            states.extend(read);
        }
        Ok(states)
    }

    /// Applies `records` (after the watermark, in shard order) transaction by
    /// transaction, as `owner`. Ends when every record is applied or dead-lettered, or
    /// with why it stopped before (the rest of the batch is then left to the next
    /// owner of the lease).
    async fn apply(
        &mut self,
        mut records: Vec<ParsedRecord>,
        first_seen: &HashMap<String, Option<ExtendedSequenceNumber>>,
        owner: &LeaseOwnership,
    ) -> Result<(), Stop> {
        let started = std::time::Instant::now();
        let count = records.len();
        let mut transactions = 0;
        let mut forced = HashSet::new();
        let mut states = self.states_for(&records, &forced).await?;
        let read = started.elapsed();
        let mut pause = Duration::from_millis(50);
        // Lowered while a refused transaction is bisected (see `isolate`).
        let mut max_records = usize::MAX;
        // Records found dead-lettered already (copies of them are redeliveries).
        let mut dead_lettered = HashSet::new();
        while !records.is_empty() {
            transactions += 1;
            let limits = PlanLimits {
                stored: self.sums.clone(),
                max_records,
                dead_lettered: dead_lettered.clone(),
            };
            let (chunk, settled) =
                self.held
                    .plan_chunk(&self.shard_id, &records, &states, &limits, first_seen);
            if !chunk.dead_letters.is_empty() {
                let ids: Vec<String> = chunk.dead_letters.iter().map(|d| d.id.clone()).collect();
                let store = Arc::clone(&self.store);
                let stored = self
                    .retry("reading dead letters", || store.stored_dead_letters(&ids))
                    .await?;
                if !stored.is_empty() {
                    tracing::info!(shard = %self.shard_id, copies = stored.len(), "records already dead-lettered read again; skipped as redeliveries");
                    dead_lettered.extend(
                        chunk
                            .dead_letters
                            .iter()
                            .filter(|d| stored.contains(&d.id))
                            .map(|d| d.digest),
                    );
                    continue;
                }
            }
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
            let sent = std::time::Instant::now();
            let applied = tokio::select! {
                applied = self.store.apply(
                    &self.shard_id,
                    previous.as_ref(),
                    &regions,
                    &chunk,
                    owner,
                ) => applied,
                // A transaction abandoned mid-flight may still commit; its watermark
                // condition makes the next owner's replay of it harmless.
                _ = in_flight_grace_over(self.halt.token()) => return Err(Stop::Cancelled),
            };
            self.metrics.transaction(sent.elapsed());
            // A conflict's outcome is known only once the watermark is read again.
            let outcome = match &applied {
                Ok(()) => Some(AttemptResult::Applied),
                Err(StoreError::LeaseLost) => Some(AttemptResult::LeaseLost),
                Err(StoreError::Conflict { .. }) => None,
                Err(_) => Some(AttemptResult::Failed),
            };
            if let (Some(log), Some(id), Some(result)) = (&self.audit, attempt, outcome) {
                log.outcome(id, result);
            }
            match applied {
                Ok(()) => {
                    pause = Duration::from_millis(50);
                    self.regions = regions;
                    self.sums.add(&chunk.delta.sums);
                    self.watermark = Some(Some(chunk.last.clone()));
                    records.drain(..chunk.records);
                    self.committed(chunk, settled, &mut states);
                }
                Err(StoreError::LeaseLost) => {
                    tracing::info!(shard = %self.shard_id, "lease lost: transaction refused, batch abandoned");
                    self.cache.clear();
                    self.held.clear();
                    self.watermark = None;
                    return Err(Stop::LeaseLost);
                }
                Err(StoreError::Conflict { reasons }) => {
                    self.metrics.conflict();
                    tracing::info!(shard = %self.shard_id, %reasons, "transaction cancelled by a condition; re-reading");
                    let watermark = self.reload_watermark().await?;
                    let outcome = conflict_outcome(watermark.as_ref(), &chunk.last);
                    if let (Some(log), Some(id)) = (&self.audit, attempt) {
                        log.outcome(id, outcome);
                    }
                    if outcome == AttemptResult::Applied {
                        // This transaction's own earlier try, its answer lost: with the
                        // lease held nobody else moves the watermark to exactly its end.
                        // The sums and regions were just read back with the watermark.
                        tracing::info!(shard = %self.shard_id, "the transaction was applied by an earlier try whose answer was lost");
                        records.drain(..chunk.records);
                        self.committed(chunk, settled, &mut states);
                        continue;
                    }
                    if let Some(w) = &watermark {
                        records.retain(|r| r.position.compare(w).is_gt());
                    }
                    for order in &chunk.orders {
                        self.cache.remove(&order.order_id);
                        // A held order found written elsewhere: its stored state wins.
                        self.held.forget(&order.order_id);
                        forced.insert(order.order_id.clone());
                    }
                    states = self.states_for(&records, &forced).await?;
                }
                Err(StoreError::Refused { operation, message }) => {
                    let first_is_dead_letter = chunk
                        .dead_letters
                        .first()
                        .is_some_and(|d| d.position == records[0].position);
                    match after_refusal(chunk.records, first_is_dead_letter) {
                        AfterRefusal::Bisect { max_records: limit } => {
                            tracing::warn!(shard = %self.shard_id, %message, records = chunk.records, "transaction refused; retrying with {limit} records to find the record DynamoDB refuses");
                            max_records = limit;
                        }
                        AfterRefusal::DeadLetterFirst => {
                            let record = &mut records[0];
                            tracing::warn!(shard = %self.shard_id, position = ?record.position, %message, "DynamoDB refuses this record's writes; dead-lettering it");
                            let order_id = record
                                .parsed
                                .as_ref()
                                .ok()
                                .map(|event| event.order_id().to_string());
                            record.parsed = Err(Rejection::new(
                                Reason::RejectedByDynamodb,
                                message,
                                order_id.as_deref(),
                            ));
                            max_records = usize::MAX;
                        }
                        AfterRefusal::Stop => {
                            return Err(Stop::Fatal(StoreError::Fatal(format!(
                                "DynamoDB refused {operation} even with nothing but a \
                                 dead letter in it, so no record explains it: {message}"
                            ))));
                        }
                    }
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "applying a transaction failed; retrying");
                    if !pause_unless_cancelled(pause, self.halt.token()).await {
                        return Err(Stop::Cancelled);
                    }
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(Stop::Fatal(e)),
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
        Ok(())
    }

    /// What follows a committed `chunk` (the watermark, sums and regions already moved
    /// with it): its held orders change by `settled`, its orders' states are known.
    fn committed(
        &mut self,
        chunk: Chunk,
        settled: Settled,
        states: &mut HashMap<String, Option<OrderState>>,
    ) {
        self.metrics.applied(
            chunk.delta.sums.events,
            chunk.delta.redeliveries_skipped,
            &chunk.delta.dead_letters,
        );
        self.held.commit(settled);
        if self.cache.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        for (id, state) in chunk.after {
            match &state {
                _ if self.held.contains(&id) => {
                    self.cache.remove(&id);
                }
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

    /// Replays records at or before the watermark (applied already, by this or an
    /// earlier owner): planned again against the stored states, nothing written, only
    /// to hold again the orders that were held and not written (see
    /// [`hold`](super::hold)).
    async fn replay(
        &mut self,
        records: Vec<ParsedRecord>,
        first_seen: &HashMap<String, Option<ExtendedSequenceNumber>>,
    ) -> Result<(), Stop> {
        let mut states = self.states_for(&records, &HashSet::new()).await?;
        let limits = PlanLimits {
            stored: self.sums.clone(),
            ..PlanLimits::default()
        };
        let mut rest = records.as_slice();
        while !rest.is_empty() {
            let (chunk, settled) =
                self.held
                    .plan_chunk(&self.shard_id, rest, &states, &limits, first_seen);
            self.held.commit(settled);
            states.extend(chunk.after);
            rest = &rest[chunk.records..];
        }
        Ok(())
    }

    /// Writes the orders held longer than [`HOLD_AT_MOST`], or beyond [`HELD_LIMIT`]
    /// (`all`: every held order, at the shard's end), in transactions that also check
    /// the watermark and the lease. Written orders are no longer held.
    async fn write_held(&mut self, owner: &LeaseOwnership, all: bool) -> Result<(), Stop> {
        let now = self.started.elapsed().as_secs();
        self.held.tick(now);
        let cutoff = if all {
            Some(u64::MAX)
        } else {
            now.checked_sub(HOLD_AT_MOST.as_secs())
        };
        // After a refusal, half as many orders per transaction until the one refused is
        // alone (a handful of transactions for a full one), then full ones again.
        let mut per_transaction = HELD_PER_TRANSACTION;
        loop {
            let mut batch = cutoff.map_or_else(Vec::new, |cutoff| {
                self.held.take_where(cutoff, per_transaction)
            });
            let over = self.held.len().saturating_sub(HELD_LIMIT);
            let room = per_transaction - batch.len();
            if over > 0 && room > 0 {
                batch.extend(self.held.take_where(u64::MAX, over.min(room)));
            }
            if batch.is_empty() {
                return Ok(());
            }
            match self.write_held_batch(&batch, owner).await {
                Ok(()) => {
                    for Held { write, state, .. } in batch {
                        self.cache.insert(write.order_id, state);
                    }
                }
                Err(Stop::Fatal(StoreError::Refused { message, .. })) if batch.len() > 1 => {
                    tracing::warn!(shard = %self.shard_id, %message, orders = batch.len(), "writing held orders refused; halving the transaction to find the order refused");
                    per_transaction = batch.len() / 2;
                    self.held.put_back(batch);
                }
                Err(Stop::Fatal(StoreError::Refused { message, .. })) => {
                    // Its events are counted; with no stored state, its later events
                    // are dead letters rather than a worker stopped for good.
                    tracing::error!(shard = %self.shard_id, order = %batch[0].write.order_id, %message, "DynamoDB refuses a held order's write; the order is dropped");
                    per_transaction = HELD_PER_TRANSACTION;
                }
                Err(Stop::Fatal(StoreError::Conflict { reasons })) => {
                    // An order of the batch is stored already: this write's own earlier
                    // try, its answer lost (the lease and the watermark are unchanged
                    // while the lease is held). The stored states win; the rest are
                    // written again.
                    let ids: Vec<String> = batch.iter().map(|h| h.write.order_id.clone()).collect();
                    let store = Arc::clone(&self.store);
                    let stored = match self
                        .retry("reading held orders", || store.order_states(&ids))
                        .await
                    {
                        Ok(stored) => stored,
                        Err(stop) => {
                            self.held.put_back(batch);
                            return Err(stop);
                        }
                    };
                    let (written, unwritten): (Vec<Held>, Vec<Held>) = batch
                        .into_iter()
                        .partition(|h| matches!(stored.get(&h.write.order_id), Some(Some(_))));
                    tracing::info!(shard = %self.shard_id, %reasons, written = written.len(), "writing held orders cancelled by a condition; the orders stored already are no longer held");
                    self.held.put_back(unwritten);
                    if written.is_empty() {
                        return Err(Stop::Fatal(StoreError::Fatal(format!(
                            "writing held orders was cancelled ({reasons}) with none of \
                             them stored"
                        ))));
                    }
                    for held in written {
                        if let Some(Some(state)) = stored.get(&held.write.order_id) {
                            self.cache.insert(held.write.order_id, state.clone());
                        }
                    }
                }
                Err(stop) => {
                    self.held.put_back(batch);
                    return Err(stop);
                }
            }
        }
    }

    /// One transaction writing held orders, at the current watermark.
    async fn write_held_batch(&self, batch: &[Held], owner: &LeaseOwnership) -> Result<(), Stop> {
        let Some(Some(watermark)) = self.watermark.clone() else {
            return Err(Stop::Fatal(StoreError::Fatal(
                "orders held before any transaction applied".into(),
            )));
        };
        let chunk = Chunk {
            records: 0,
            last: watermark.clone(),
            orders: batch.iter().map(|h| h.write.clone()).collect(),
            dead_letters: Vec::new(),
            delta: Default::default(),
            after: HashMap::new(),
        };
        let store = Arc::clone(&self.store);
        let result = self
            .retry("writing held orders", || {
                store.apply(
                    &self.shard_id,
                    Some(&watermark),
                    &self.regions,
                    &chunk,
                    owner,
                )
            })
            .await;
        match result {
            Err(Stop::Fatal(StoreError::LeaseLost)) => Err(Stop::LeaseLost),
            other => other,
        }
    }

    /// Checkpoints everything delivered, or with orders held, just before the oldest
    /// one's first record (nothing, when that is the shard's first), recording an
    /// accepted checkpoint in the audit log.
    async fn checkpoint(&self, checkpointer: &mut Checkpointer, what: &str) {
        let before = checkpointer.last_checkpoint().clone();
        let start_ms = now_ms();
        let written = match self.held.resume_after() {
            None => checkpointer.checkpoint().await,
            Some(None) => return,
            Some(Some(position)) if position.compare(&before).is_gt() => {
                checkpointer.checkpoint_at(position.clone()).await
            }
            Some(Some(_)) => return,
        };
        match written {
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

impl StatsProcessor {
    /// Replays the batch's records at or before the watermark, applies those after it
    /// and writes the orders held too long.
    async fn process(
        &mut self,
        input: ProcessRecordsInput,
        owner: &LeaseOwnership,
    ) -> Result<(), Stop> {
        let watermark = match self.watermark.clone() {
            Some(w) => w,
            None => self.reload_watermark().await?,
        };
        let records: Vec<ParsedRecord> = input
            .records
            .into_iter()
            .map(|r| ParsedRecord {
                position: r.extended_sequence_number(),
                parsed: parse(&r.data),
                partition_key: r.partition_key,
                raw: r.data,
            })
            .collect();
        let first_seen = first_seen(&records, self.previous.clone());
        if let Some(last) = records.last() {
            self.previous = Some(last.position.clone());
        }
        let (replayed, records): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
            watermark
                .as_ref()
                .is_some_and(|w| r.position.compare(w).is_le())
        });
        if !replayed.is_empty() {
            self.replay(replayed, &first_seen).await?;
        }
        if !records.is_empty() {
            self.apply(records, &first_seen, owner).await?;
        }
        self.write_held(owner, false).await
    }

    /// A batch left unfinished: nothing is checkpointed, so the next owner of the lease
    /// replays it (the watermark drops what was applied). A fatal error stops the
    /// worker.
    fn stopped(&mut self, stop: Stop) {
        self.abandoned = Some(match stop {
            Stop::Cancelled => {
                tracing::info!(shard = %self.shard_id, "stopping mid-batch; the next owner replays it");
                Abandoned::Stopping
            }
            Stop::LeaseLost => Abandoned::LeaseLost,
            Stop::Fatal(error) => {
                self.watermark = None;
                self.halt.fail(&self.shard_id, &error);
                Abandoned::Stopping
            }
        });
    }
}

impl RecordProcessor for StatsProcessor {
    async fn initialize(&mut self, input: InitializationInput) {
        if input.shard_id != self.shard_id {
            self.metrics = ShardMetrics::new(&input.shard_id);
        }
        self.shard_id = input.shard_id;
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        if self.abandoned.is_some() {
            return;
        }
        let owner = checkpointer.ownership();
        let newest_arrival = input
            .records
            .iter()
            .filter_map(|r| r.approximate_arrival_timestamp)
            .max();
        if self.previous.is_none() {
            self.previous = Some(checkpointer.last_checkpoint().clone())
                .filter(|c| matches!(c.position, SequencePosition::Sequence(_)));
        }
        match self.process(input, &owner).await {
            Ok(()) => {
                self.metrics.applied_up_to(newest_arrival);
                self.checkpoint(checkpointer, "checkpoint").await
            }
            // Not checkpointed: the next owner replays the batch.
            Err(stop) => self.stopped(stop),
        }
    }

    async fn lease_lost(&mut self) {
        self.cache.clear();
        self.held.clear();
    }

    async fn shard_ended(&mut self, checkpointer: &mut Checkpointer) {
        // The children need the held orders' states in the table.
        if self.abandoned.is_none()
            && !self.held.is_empty()
            && let Err(stop) = self.write_held(&checkpointer.ownership(), true).await
        {
            self.stopped(stop);
        }
        // kcl-rs writes SHARD_END when this returns, whatever the processor did; after
        // the shard's last batch was left unfinished because the worker is stopping,
        // that would skip its records for good (the children start, nobody replays the
        // parent). Never returning keeps the lease's checkpoint where it is; the
        // worker's shutdown is bounded (`run_worker`), the lease expires and the next
        // owner replays the batch. After a refused lease check, the framework's
        // SHARD_END write is refused by the same lease condition.
        if self.abandoned == Some(Abandoned::Stopping) {
            tracing::info!(shard = %self.shard_id, "last batch unfinished: leaving SHARD_END to the next owner");
            std::future::pending::<()>().await;
        }
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        // A checkpoint covers every record delivered; after an unfinished batch only
        // the watermark knows how far the statistics got.
        if self.abandoned.is_none() {
            self.checkpoint(checkpointer, "final checkpoint").await;
        }
    }
}
