//! The producer task: the one owner of the buffers, the shard map and the calls in flight.
//!
//! It is fed by a channel from [`Producer`](crate::Producer), bounded by the buffer's
//! room (which the task gives back as records are resolved), and wakes on
//! whichever comes first: a command, a finished PutRecords or ListShards call, or the
//! next deadline (an aggregate's buffered time, a retry's backoff, a rate-limit wait).
//! Each pass then releases due retries, seals due aggregates and sends due calls.
//! PutRecords calls run as tasks of their own, but the records they carry stay here, so
//! whatever happens to a call, every record is accounted for.

mod outcome;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use kinesis_core::backoff::{backoff_cap, full_jitter};
use kinesis_core::stream::{ShardInfo, StreamError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::aggregation::{AggregationLimits, KinesisRecord, take_entries};
use crate::collector::{CollectionLimits, Queues, ShardKey};
use crate::config::ProducerConfig;
use crate::metrics::ProducerMetrics;
use crate::record::{Pending, Room, hash_partition_keys};
use crate::result::{AttemptError, UNCONFIRMED_SHARD};
use crate::retry::classify_request_error;
use crate::shard_map::ShardMap;

/// Shortest time between two ListShards refreshes: mispredictions come in bursts (every
/// record of a resharded range), one refresh answers them all.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// Retries of a failed shard-map refresh, and their full-jitter pauses (100 ms doubling,
/// at most 2 s): below 100, 200 and 400 ms, so a refresh gives up after 0.7 s of pauses
/// at most (0.35 s on average).
const REFRESH_RETRIES: u32 = 3;
const REFRESH_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// ListShards, retried [`REFRESH_RETRIES`] times; the last error if every try failed
/// (records then go out by the last map).
async fn list_shards_with_retries(
    client: &Client,
    stream: &str,
) -> Result<Vec<ShardInfo>, StreamError> {
    let mut failures = 0;
    loop {
        match kinesis_core::stream::list_shards(client, stream).await {
            Err(e) if failures < REFRESH_RETRIES => {
                failures += 1;
                let (base, max) = REFRESH_BACKOFF;
                let cap = backoff_cap(base, max, failures);
                tracing::debug!(error = %e, failures, "shard map refresh failed; retrying");
                tokio::time::sleep(full_jitter(cap, rand::random::<f64>())).await;
            }
            result => return result,
        }
    }
}

/// How often a shutting-down task checks whether the last records are resolved.
const CLOSING_POLL: Duration = Duration::from_millis(50);

/// How often an idle producer sets its gauges again, so that an exporter dropping
/// gauges left unset (an idle timeout) keeps the pending ones of a live producer.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// Commands per wake-up taken from the channel before the buffers are looked at.
const COMMANDS_PER_PASS: usize = 256;

/// What [`Producer`](crate::Producer) sends the task.
pub(crate) enum Command {
    /// A validated user record, holding its room in the buffer.
    Put(Pending),
    /// Resolve the sender once every record received before is resolved.
    Flush(oneshot::Sender<()>),
}

/// What the task's own subtasks return.
enum TaskOutput {
    /// A PutRecords answer (or its classified error) and when it came.
    Put(Result<PutRecordsOutput, (AttemptError, bool)>, Instant),
    /// A ListShards answer.
    ShardMap(Result<Vec<ShardInfo>, StreamError>),
}

/// A PutRecords call in flight: its records stay with the task.
struct InFlight {
    records: Vec<KinesisRecord>,
    shards: Vec<ShardKey>,
    started: Instant,
}

/// A flush waiting for the records numbered below `barrier`.
struct FlushWaiter {
    barrier: u64,
    remaining: usize,
    done: Option<oneshot::Sender<()>>,
}

/// Shard map refreshes: tickets `wanted` are handed to records waiting for a map newer
/// than what they saw; `served` is the newest ticket a finished refresh covers.
struct Refresh {
    wanted: u64,
    served: u64,
    running: Option<(Id, u64)>,
    not_before: Instant,
    /// Whether a refresh has failed yet.
    failed: bool,
}

/// Where Kinesis wrote a Kinesis record, and the attempt that wrote it.
struct Written {
    aggregated: bool,
    /// Shared by the results of its user records.
    shard: Arc<str>,
    sequence_number: Arc<str>,
    started: Instant,
    ended: Instant,
}

/// A Kinesis record accepted into a shard the map could not judge; decided once a
/// refresh newer than `ticket` is in, or its user records expire meanwhile.
struct Held {
    /// Its user records not resolved yet, each with its index in the Kinesis record
    /// (its sub-sequence number when aggregated).
    members: Vec<(usize, Pending)>,
    written: Written,
    /// The hash key of every user record stored in the Kinesis record, expired ones
    /// included: consumers judge the record as it is stored.
    hash_keys: Vec<u128>,
    ticket: u64,
}

impl Held {
    /// When its next user record expires.
    fn expires_at(&self) -> Option<Instant> {
        self.members.iter().map(|(_, m)| m.expires_at).min()
    }
}

/// The producer task's state.
pub(crate) struct Engine {
    config: Arc<ProducerConfig>,
    client: Client,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    cancel: CancellationToken,
    closing: bool,
    /// The bounded buffer, also to know when no record is between `put` and the channel.
    room: Arc<Room>,
    /// Records resolved and their bytes, whose room is not given back yet.
    freed: (usize, usize),
    stopped: watch::Sender<bool>,
    map: Option<ShardMap>,
    queues: Queues,
    tasks: JoinSet<TaskOutput>,
    in_flight: HashMap<Id, InFlight>,
    retries: BTreeMap<(Instant, u64), Vec<Pending>>,
    retry_seq: u64,
    held: Vec<Held>,
    refresh: Refresh,
    flushes: Vec<FlushWaiter>,
    flush_barrier: u64,
    next_id: u64,
    outstanding: usize,
    outstanding_bytes: usize,
    metrics: ProducerMetrics,
}

impl Drop for Engine {
    /// The room of records dropped unresolved (the task panicked, or its runtime shut
    /// down under it) never comes back: fail the `put`s that would wait for it.
    fn drop(&mut self) {
        self.room.close();
    }
}

impl Engine {
    pub(crate) fn new(
        config: Arc<ProducerConfig>,
        client: Client,
        commands: mpsc::UnboundedReceiver<Command>,
        cancel: CancellationToken,
        room: Arc<Room>,
        stopped: watch::Sender<bool>,
    ) -> Self {
        let metrics = ProducerMetrics::new(&config.stream_name);
        Engine {
            config,
            client,
            commands,
            commands_open: true,
            cancel,
            closing: false,
            room,
            freed: (0, 0),
            stopped,
            map: None,
            queues: Queues::default(),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            retries: BTreeMap::new(),
            retry_seq: 0,
            held: Vec::new(),
            // The first map is wanted at once.
            refresh: Refresh {
                wanted: 1,
                served: 0,
                running: None,
                not_before: Instant::now(),
                failed: false,
            },
            flushes: Vec::new(),
            flush_barrier: 0,
            next_id: 0,
            outstanding: 0,
            outstanding_bytes: 0,
            metrics,
        }
    }

    /// Runs until shut down (cancelled, or every [`Producer`](crate::Producer) dropped)
    /// and every accepted record is resolved.
    pub(crate) async fn run(mut self) {
        let mut commands = Vec::with_capacity(COMMANDS_PER_PASS);
        loop {
            let now = Instant::now();
            // Once per pass rather than per record: a gauge is a snapshot anyway.
            self.note_pending();
            self.maybe_refresh(now);
            self.release_due(now);
            self.seal_due(now);
            self.dispatch(now);
            // Before anything can wait: room is given back once per pass, not per record.
            self.give_back_room();
            if self.is_done() {
                break;
            }
            let wake = self.next_wake(now);
            tokio::select! {
                biased;
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_task(joined);
                }
                received = self.commands.recv_many(&mut commands, COMMANDS_PER_PASS),
                    if self.commands_open =>
                {
                    if received == 0 {
                        self.commands_open = false;
                        self.closing = true;
                    }
                    let now = Instant::now();
                    hash_partition_keys(commands.iter_mut().filter_map(|c| match c {
                        Command::Put(record) => Some(record),
                        Command::Flush(_) => None,
                    }));
                    for command in commands.drain(..) {
                        self.on_command(command, now);
                    }
                }
                _ = self.cancel.cancelled(), if !self.closing => self.closing = true,
                _ = sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            }
        }
        // Only a ListShards read can be left: nothing to lose by stopping it.
        self.tasks.shutdown().await;
        let _ = self.stopped.send(true);
    }

    fn is_done(&self) -> bool {
        self.closing
            && self.outstanding == 0
            && self.in_flight.is_empty()
            && self.room.records.available_permits() == self.config.max_outstanding_records
    }

    fn give_back_room(&mut self) {
        let (records, bytes) = std::mem::take(&mut self.freed);
        self.room.give_back(records, bytes);
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Put(mut record) => {
                record.id = self.next_id;
                self.next_id += 1;
                self.outstanding += 1;
                self.outstanding_bytes += record.data.len();
                self.route(record, now);
            }
            Command::Flush(done) => {
                if self.outstanding == 0 {
                    let _ = done.send(());
                    return;
                }
                self.flush_barrier = self.next_id;
                self.flushes.push(FlushWaiter {
                    barrier: self.next_id,
                    remaining: self.outstanding,
                    done: Some(done),
                });
            }
        }
    }

    /// Puts a user record into the buffer of its predicted shard.
    fn route(&mut self, record: Pending, now: Instant) {
        let predicted = self
            .map
            .as_ref()
            .and_then(|m| m.predict_with_range(record.hash_key));
        let (key, range): (ShardKey, _) = match predicted {
            Some((id, range)) => (Some(Arc::clone(id)), Some(range)),
            None => (None, None),
        };
        let aggregate = self.config.aggregation_enabled && key.is_some();
        let limits = AggregationLimits {
            max_size: self.config.aggregation_max_size,
            max_count: self.config.aggregation_max_count,
        };
        let queue = self.queues.entry(key, range, self.config.rate_limit, now);
        if aggregate {
            let (sealed, alone) = queue.aggregator.add(record, limits);
            for record in sealed.into_iter().chain(alone) {
                queue.push_ready(record);
            }
        } else {
            queue.push_ready(KinesisRecord::plain(record));
        }
    }

    /// Resolves a record and counts it off the flushes waiting for it.
    fn finish(
        &mut self,
        record: Pending,
        result: Result<crate::UserRecordResult, crate::PutError>,
    ) {
        self.outstanding -= 1;
        self.outstanding_bytes -= record.data.len();
        self.freed.0 += 1;
        self.freed.1 += record.size();
        match &result {
            Ok(_) => self.metrics.user_records_put.increment(1),
            Err(crate::PutError::Expired { .. }) => self.metrics.user_records_expired.increment(1),
            Err(_) => {}
        }
        let id = record.id;
        record.resolve(result);
        // Resolved, and its room given back, before any flush waiting for it returns.
        if self
            .flushes
            .iter()
            .any(|waiter| id < waiter.barrier && waiter.remaining == 1)
        {
            self.give_back_room();
        }
        self.flushes.retain_mut(|waiter| {
            if id < waiter.barrier {
                waiter.remaining -= 1;
                if waiter.remaining == 0
                    && let Some(done) = waiter.done.take()
                {
                    let _ = done.send(());
                }
            }
            waiter.remaining > 0
        });
    }

    fn note_pending(&self) {
        self.metrics.pending_records.set(self.outstanding as f64);
        self.metrics
            .pending_bytes
            .set(self.outstanding_bytes as f64);
    }

    fn expire(&mut self, mut record: Pending) {
        let attempts = std::mem::take(&mut record.attempts);
        self.finish(record, Err(crate::PutError::Expired { attempts }));
    }

    /// Retries whose backoff is over go back into the buffers, due at once; held
    /// records past their TTL fail as expired.
    fn release_due(&mut self, now: Instant) {
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            for mut record in entry.remove() {
                record.deadline = now;
                self.route(record, now);
            }
        }
        self.expire_held(now);
    }

    /// User records held for a shard map that did not come within their time to live
    /// fail as expired: Kinesis has them, but the producer cannot tell whether consumers
    /// keep them (a range-filtering consumer drops an aggregate stored in a shard that
    /// does not hold every one of its hash keys). The rest of their Kinesis record
    /// waits on.
    fn expire_held(&mut self, now: Instant) {
        if !self
            .held
            .iter()
            .any(|h| h.expires_at().is_some_and(|at| at <= now))
        {
            return;
        }
        let mut expired = Vec::new();
        for held in &mut self.held {
            let (dead, live): (Vec<_>, Vec<_>) = std::mem::take(&mut held.members)
                .into_iter()
                .partition(|(_, m)| m.expires_at <= now);
            held.members = live;
            if dead.is_empty() {
                continue;
            }
            let written = &held.written;
            tracing::warn!(shard = %written.shard, records = dead.len(), "shard map not refreshed within the records' TTL; they are in the stream but not known to be kept there");
            let error = AttemptError {
                code: UNCONFIRMED_SHARD.to_string(),
                message: format!(
                    "written to shard {}, but no shard map came within the record's time to live to confirm that the shard's hash key range holds every user record of the Kinesis record",
                    written.shard
                ),
            };
            for (_, mut member) in dead {
                member.attempt(written.started, written.ended, error.clone());
                expired.push(member);
            }
        }
        self.held.retain(|h| !h.members.is_empty());
        for member in expired {
            self.expire(member);
        }
    }

    fn seal_due(&mut self, now: Instant) {
        let (barrier, closing) = (self.flush_barrier, self.closing);
        for queue in self.queues.iter_mut() {
            if queue.aggregator.is_due(now, barrier, closing)
                && let Some(record) = queue.aggregator.seal()
            {
                queue.push_ready(record);
            }
        }
    }

    /// Sends every call that is due, up to the connection limit.
    fn dispatch(&mut self, now: Instant) {
        // Until the first ListShards is answered, records wait to be aggregated by it
        // (flushes and shutdown too: the wait is bounded by that call's own retries);
        // if it fails they go out unaggregated rather than wait for the next one.
        self.queues.hold_unpredicted = self.map.is_none() && !self.refresh.failed;
        let limits = CollectionLimits {
            max_count: self.config.collection_max_count,
            max_size: self.config.collection_max_size,
        };
        while self.in_flight.len() < self.config.max_connections {
            let mut expired = Vec::new();
            let batch =
                self.queues
                    .next_batch(now, limits, self.flush_barrier, self.closing, &mut expired);
            for record in expired {
                self.expire(record);
            }
            let Some(mut batch) = batch else { break };
            for record in &batch.records {
                if let Some(oldest) = record.members.iter().map(|m| m.last_event).min() {
                    self.metrics
                        .buffering_seconds
                        .record(now.saturating_duration_since(oldest).as_secs_f64());
                }
            }
            let entries = take_entries(&mut batch.records);
            let request = self
                .client
                .put_records()
                .stream_name(&self.config.stream_name)
                .set_records(Some(entries));
            let handle = self.tasks.spawn(async move {
                let result = request.send().await.map_err(|e| classify_request_error(&e));
                TaskOutput::Put(result, Instant::now())
            });
            self.in_flight.insert(
                handle.id(),
                InFlight {
                    records: batch.records,
                    shards: batch.shards,
                    started: now,
                },
            );
        }
    }

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let can_send = self.in_flight.len() < self.config.max_connections;
        let refresh = (self.refresh.running.is_none() && self.refresh.wanted > self.refresh.served)
            .then_some(self.refresh.not_before);
        self.queues
            .next_wake(can_send)
            .into_iter()
            .chain(self.retries.keys().next().map(|(at, _)| *at))
            .chain(self.held.iter().filter_map(Held::expires_at))
            .chain(refresh)
            .chain(self.closing.then(|| now + CLOSING_POLL))
            .chain(cfg!(feature = "metrics").then(|| now + GAUGE_REFRESH))
            .min()
    }

    fn on_task(&mut self, joined: Result<(Id, TaskOutput), JoinError>) {
        match joined {
            Ok((id, TaskOutput::Put(result, ended))) => self.on_put_done(id, result, ended),
            Ok((_, TaskOutput::ShardMap(result))) => self.on_shard_map(result),
            Err(e) if self.in_flight.contains_key(&e.id()) => {
                let error = AttemptError {
                    code: "TaskFailed".into(),
                    message: format!("the PutRecords task failed: {e}"),
                };
                self.on_put_done(e.id(), Err((error, true)), Instant::now());
            }
            Err(e) => self.on_shard_map(Err(StreamError::Malformed {
                what: format!("ListShards task failed: {e}"),
            })),
        }
    }

    /// Hands out a ticket for a shard map newer than the current one.
    fn want_refresh(&mut self) -> u64 {
        self.refresh.wanted += 1;
        self.refresh.wanted
    }

    fn maybe_refresh(&mut self, now: Instant) {
        let r = &self.refresh;
        if r.running.is_some() || r.wanted <= r.served || now < r.not_before {
            return;
        }
        let ticket = r.wanted;
        let (client, stream) = (self.client.clone(), self.config.stream_name.clone());
        let handle = self.tasks.spawn(async move {
            TaskOutput::ShardMap(list_shards_with_retries(&client, &stream).await)
        });
        self.refresh.running = Some((handle.id(), ticket));
        self.refresh.not_before = now + MIN_REFRESH_INTERVAL;
    }

    fn on_shard_map(&mut self, result: Result<Vec<ShardInfo>, StreamError>) {
        let Some((_, ticket)) = self.refresh.running.take() else {
            return;
        };
        match result {
            Ok(shards) => {
                self.refresh.served = ticket;
                self.apply_map(ShardMap::new(&shards));
                self.release_held();
            }
            Err(e) => {
                self.refresh.failed = true;
                tracing::warn!(error = %e, stream = %self.config.stream_name, "shard map refresh failed; records go out by the last map");
            }
        }
    }

    /// Installs a new map; records buffered for shards that are no longer open (or for
    /// no shard) are predicted and aggregated again. They, and every record routed to a
    /// shard whose range overlaps such a shard's, wait until its call in flight (if any)
    /// is answered, so that no record overtakes an earlier one of its key.
    fn apply_map(&mut self, map: ShardMap) {
        let stale: Vec<ShardKey> = self
            .queues
            .keys()
            .filter(|key| key.as_ref().is_none_or(|id| !map.is_open(id)))
            .cloned()
            .collect();
        self.map = Some(map);
        let mut moved = Vec::new();
        for key in &stale {
            if let Some(queue) = self.queues.get_mut(key) {
                // A call of it still in flight holds back the shards taking its keys now.
                queue.retire();
                moved.extend(queue.take_members());
            }
            self.queues.remove_if_idle(key);
        }
        let now = Instant::now();
        for record in moved {
            self.route(record, now);
        }
    }
}
