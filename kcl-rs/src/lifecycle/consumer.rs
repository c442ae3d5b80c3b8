//! The shard consumer: reads one shard for the lease it holds and drives the user's
//! processor through the lifecycle in the module docs.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointError, Checkpointer, ExtendedSequenceNumber, SequencePosition};
use crate::config::{InitialPosition, WorkerConfig};
use crate::leases::handle::{LeaseHandle, LeasePhase};
use crate::leases::{Lease, LeaseError, LeaseStore};
use crate::metrics::ShardMetrics;
use crate::processor::{
    InitializationInput, ProcessRecordsInput, RecordProcessor, RecordProcessorFactory,
};
use crate::retrieval::fanout::{ConsumerError, FanOutConfig, FanOutReader, register_consumer};
use crate::retrieval::{
    ChildShardRef, Prefetcher, RetrievalConfig, ShardReader, ShardSource, spawn_prefetcher,
};
use crate::shard_sync::ShardSyncer;
use crate::stream::list_shards;
use crate::worker::CONSUMER_REGISTRATION_TIMEOUT;

use super::load::LoadMeter;
use super::parents::{Listing, ParentLease, ParentStep, parent_step};
use super::supervise::{let_go, let_go_limit};

/// The states of a shard consumer; the final one, `Done`, carries how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerState {
    /// A child shard waits until every parent is checkpointed at SHARD_END.
    WaitingOnParents,
    /// The processor is created and initialized; reading starts.
    Initializing,
    /// Batches are delivered to the processor.
    Processing,
    /// The shard is fully read: `shard_ended`, then the SHARD_END checkpoint.
    ShardEnded,
    /// The lease is gone: `lease_lost`, no checkpoint.
    LeaseLost,
    /// The worker stops: `shutdown_requested`, then the lease is released.
    ShutdownRequested,
    /// Another worker asked for the lease: `shutdown_requested`, then hand over.
    HandingOff,
    /// The consumer cannot go on (reading failed for good): `shutdown_requested`, then
    /// the lease is let go; ends `Failed` with this reason.
    Failing(String),
    /// Finished, with the outcome.
    Done(ConsumerOutcome),
}

impl ConsumerState {
    /// The state an interruption leads to, if any: the worker stopping comes first,
    /// then what the lease's phase says.
    pub(crate) fn interrupted(shutdown: bool, phase: &LeasePhase) -> Option<ConsumerState> {
        if shutdown {
            return Some(ConsumerState::ShutdownRequested);
        }
        match phase {
            LeasePhase::HandingOff { .. } => Some(ConsumerState::HandingOff),
            LeasePhase::Lost(_) => Some(ConsumerState::LeaseLost),
            LeasePhase::Held | LeasePhase::AwaitingPrevious { .. } => None,
        }
    }

    /// How a consumer that stops from `self` (ShutdownRequested, HandingOff or
    /// Failing) ends, by whether its lease was released (or handed over).
    pub(crate) fn stopped(&self, released: bool) -> ConsumerOutcome {
        match (self, released) {
            (ConsumerState::Failing(reason), _) => ConsumerOutcome::Failed(reason.clone()),
            (ConsumerState::HandingOff, true) => ConsumerOutcome::HandedOver,
            (_, true) => ConsumerOutcome::ShutDown,
            (_, false) => ConsumerOutcome::LeaseLost,
        }
    }
}

/// How a shard consumer ended (reported as
/// [`WorkerEvent::ShardStopped`](crate::WorkerEvent::ShardStopped)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerOutcome {
    /// The shard was closed and fully processed; SHARD_END is checkpointed.
    ShardEnded,
    /// The lease was lost to another worker.
    LeaseLost,
    /// The worker shut down; the lease was released.
    ShutDown,
    /// The lease was handed over to the worker that asked.
    HandedOver,
    /// The consumer could not go on: reading failed for good (e.g. the stream was
    /// deleted), the SHARD_END checkpoint could not be written, or the processor
    /// panicked. The lease was released (or, if that failed, left to expire), so the
    /// shard is read again from its checkpoint.
    Failed(String),
}

/// Whether this worker leads the fleet now.
pub(crate) type Leader = Arc<dyn Fn() -> bool + Send + Sync>;

/// What every consumer of a worker shares.
pub(crate) struct ConsumerContext {
    pub kinesis: aws_sdk_kinesis::Client,
    pub store: Arc<dyn LeaseStore>,
    pub config: Arc<WorkerConfig>,
    pub syncer: Arc<ShardSyncer>,
    /// The stream consumer's ARN in fan-out mode; `None` when polling.
    pub consumer_arn: Option<String>,
    /// The stream the leases of this context belong to.
    pub stream_name: String,
    /// Where the stream's shards without a checkpoint start.
    pub initial_position: InitialPosition,
}

impl ConsumerContext {
    /// The context of one stream whose leases `store` holds (keyed by shard id): in
    /// fan-out mode its stream consumer registered (or reused), and its shard syncer,
    /// periodic only while `leader` says this worker leads (one listing of the stream
    /// and of the lease table per interval for the fleet, not one per worker).
    pub(crate) async fn for_stream(
        kinesis: &aws_sdk_kinesis::Client,
        store: Arc<dyn LeaseStore>,
        config: &Arc<WorkerConfig>,
        stream_name: &str,
        initial_position: InitialPosition,
        leader: Leader,
    ) -> Result<ConsumerContext, ConsumerError> {
        let consumer_arn = match config.consumer_name() {
            Some(name) => Some(
                register_consumer(kinesis, stream_name, name, CONSUMER_REGISTRATION_TIMEOUT)
                    .await?
                    .arn,
            ),
            None => None,
        };
        let syncer = ShardSyncer::new(
            kinesis.clone(),
            stream_name,
            Arc::clone(&store),
            initial_position.checkpoint(),
        )
        .for_worker(&config.worker_id)
        .periodic_when(move || leader());
        Ok(ConsumerContext {
            kinesis: kinesis.clone(),
            store,
            config: Arc::clone(config),
            syncer: Arc::new(syncer),
            consumer_arn,
            stream_name: stream_name.to_string(),
            initial_position,
        })
    }
}

struct ShardConsumer<P: RecordProcessor> {
    ctx: Arc<ConsumerContext>,
    handle: Arc<LeaseHandle>,
    lease: Lease,
    shutdown: CancellationToken,
    phase: watch::Receiver<LeasePhase>,
    processor: Option<P>,
    checkpointer: Checkpointer,
    prefetcher: Option<Prefetcher>,
    reader_cancel: CancellationToken,
    /// Stops the prefetcher however the consumer ends, a panic included.
    _reader_guard: tokio_util::sync::DropGuard,
    load: LoadMeter,
    metrics: ShardMetrics,
}

/// Runs one shard consumer to its end.
pub(crate) async fn run_shard_consumer<F: RecordProcessorFactory>(
    ctx: Arc<ConsumerContext>,
    handle: Arc<LeaseHandle>,
    lease: Lease,
    factory: Arc<F>,
    shutdown: CancellationToken,
) -> ConsumerOutcome {
    let reader_cancel = CancellationToken::new();
    let mut consumer = ShardConsumer::<F::Processor> {
        checkpointer: Checkpointer::new(&lease.key, Arc::clone(&handle), lease.checkpoint.clone()),
        phase: handle.watch_phase(),
        ctx,
        handle,
        lease,
        shutdown,
        processor: None,
        prefetcher: None,
        _reader_guard: reader_cancel.clone().drop_guard(),
        reader_cancel,
        load: LoadMeter::new(Instant::now()),
        metrics: ShardMetrics::detached(),
    };
    let mut state = ConsumerState::WaitingOnParents;
    let outcome = loop {
        tracing::debug!(shard = %consumer.lease.key, ?state, "shard consumer");
        state = match state {
            ConsumerState::WaitingOnParents => consumer.wait_on_parents().await,
            ConsumerState::Initializing => consumer.initialize(&*factory).await,
            ConsumerState::Processing => consumer.process().await,
            ConsumerState::ShardEnded => consumer.shard_ended().await,
            ConsumerState::LeaseLost => consumer.lease_lost().await,
            ConsumerState::ShutdownRequested
            | ConsumerState::HandingOff
            | ConsumerState::Failing(_) => consumer.shut_down(state).await,
            ConsumerState::Done(outcome) => break outcome,
        };
    };
    consumer.reader_cancel.cancel();
    outcome
}

impl<P: RecordProcessor> ShardConsumer<P> {
    /// The state an interruption leads to, if any.
    fn interruption(&mut self) -> Option<ConsumerState> {
        let shutdown = self.shutdown.is_cancelled();
        ConsumerState::interrupted(shutdown, &self.phase.borrow_and_update())
    }

    async fn wait_on_parents(&mut self) -> ConsumerState {
        let mut pending = self.lease.parent_shard_ids.clone();
        loop {
            if let Some(next) = self.interruption() {
                return next;
            }
            let mut still = Vec::new();
            // Listed at most once per round, and only when a parent lease is missing.
            let mut listing = None;
            for parent in pending {
                if !self.parent_done(&parent, &mut listing).await {
                    still.push(parent);
                }
            }
            if still.is_empty() {
                return ConsumerState::Initializing;
            }
            pending = still;
            tokio::select! {
                _ = self.shutdown.cancelled() => {}
                _ = self.phase.changed() => {}
                _ = tokio::time::sleep(self.ctx.config.parent_poll_interval) => {}
            }
        }
    }

    /// One look at one parent (see `parents::parent_step`); `false` means wait.
    async fn parent_done(&mut self, parent: &str, listing: &mut Option<Listing>) -> bool {
        let lease = match self.ctx.store.get_lease(parent).await {
            Ok(None) => ParentLease::Missing,
            Ok(Some(lease)) if lease.checkpoint.is_shard_end() => ParentLease::Ended,
            Ok(Some(_)) => ParentLease::InProgress,
            Err(e) => {
                tracing::warn!(shard = %self.lease.key, parent = %parent, error = %e, "cannot read parent lease");
                ParentLease::Unreadable
            }
        };
        loop {
            match parent_step(parent, lease, &self.lease.checkpoint, listing.as_ref()) {
                ParentStep::Done => return true,
                ParentStep::Wait => return false,
                ParentStep::ListShards => {
                    let stream = &self.ctx.stream_name;
                    *listing = Some(match list_shards(&self.ctx.kinesis, stream).await {
                        Ok(shards) => Listing::Listed(shards),
                        Err(e) => {
                            tracing::warn!(shard = %self.lease.key, parent = %parent, error = %e, "cannot list shards for a missing parent lease");
                            Listing::Failed
                        }
                    });
                }
                ParentStep::Create(lease) => {
                    match self.ctx.store.create_lease(&lease).await {
                        Ok(()) => {
                            tracing::info!(shard = %self.lease.key, parent = %parent, "created the missing parent lease");
                            if let Err(e) = self.ctx.store.note_leases_changed().await {
                                tracing::warn!(shard = %self.lease.key, error = %e, "could not announce the parent lease");
                            }
                        }
                        Err(LeaseError::ConditionFailed { .. }) => {}
                        // Retried at the next look.
                        Err(e) => {
                            tracing::warn!(shard = %self.lease.key, parent = %parent, error = %e, "cannot create the missing parent lease")
                        }
                    }
                    return false;
                }
            }
        }
    }

    async fn initialize<F: RecordProcessorFactory<Processor = P>>(
        &mut self,
        factory: &F,
    ) -> ConsumerState {
        if let Some(next) = self.interruption() {
            return next;
        }
        // Re-read: the lease may have been checkpointed by a previous owner after the
        // coordinator read it.
        match self.ctx.store.get_lease(&self.lease.key).await {
            Ok(Some(lease)) => self.lease = lease,
            Ok(None) => return ConsumerState::LeaseLost,
            Err(e) => {
                tracing::warn!(shard = %self.lease.key, error = %e, "cannot re-read lease; using the one taken")
            }
        }
        self.checkpointer = Checkpointer::new(
            &self.lease.key,
            Arc::clone(&self.handle),
            self.lease.checkpoint.clone(),
        );
        let config = &self.ctx.config;
        self.metrics = ShardMetrics::new(
            &self.ctx.stream_name,
            &self.lease.key,
            &config.worker_id,
            match self.ctx.consumer_arn {
                None => "GetRecords",
                Some(_) => "SubscribeToShard",
            },
        );
        self.checkpointer.set_metrics(self.metrics.clone());
        let mut processor = factory.create_processor(self.handle.key());
        processor
            .initialize(InitializationInput {
                shard_id: self.lease.key.clone(),
                stream_name: self.ctx.stream_name.clone(),
                checkpoint: self.lease.checkpoint.clone(),
                pending_checkpoint: self.lease.pending_checkpoint.clone(),
                parent_shard_ids: self.lease.parent_shard_ids.clone(),
                hash_key_range: self.lease.hash_key_range,
            })
            .await;
        self.processor = Some(processor);
        if self.lease.checkpoint.is_shard_end() {
            return ConsumerState::ShardEnded;
        }
        let config = &self.ctx.config;
        let retrieval = RetrievalConfig {
            max_records: config.max_records,
            idle_time_between_reads: config.idle_time_between_reads,
            min_time_between_get_records: config.min_time_between_get_records,
            at_timestamp: match self.ctx.initial_position {
                InitialPosition::AtTimestamp(at) => Some(at),
                _ => None,
            },
            hash_key_range: self.lease.hash_key_range,
            ..RetrievalConfig::default()
        };
        let mut reader: ShardSource = match &self.ctx.consumer_arn {
            None => ShardReader::new(
                self.ctx.kinesis.clone(),
                &self.ctx.stream_name,
                &self.lease.key,
                self.lease.checkpoint.clone(),
                retrieval,
            )
            .into(),
            Some(arn) => FanOutReader::new(
                self.ctx.kinesis.clone(),
                &self.ctx.stream_name,
                &self.lease.key,
                self.lease.checkpoint.clone(),
                retrieval,
                FanOutConfig {
                    event_timeout: config.subscription_timeout,
                    end_check_after: config.shard_end_check_after,
                    ..FanOutConfig::new(arn)
                },
            )
            .into(),
        };
        reader.set_metrics(self.metrics.clone());
        self.prefetcher = Some(spawn_prefetcher(
            reader,
            self.reader_cancel.clone(),
            config.prefetch_depth,
        ));
        ConsumerState::Processing
    }

    async fn process(&mut self) -> ConsumerState {
        // Taken out of `self` for the loop; reading stops with `reader_cancel` on exit.
        let Some(mut prefetcher) = self.prefetcher.take() else {
            return ConsumerState::ShutdownRequested;
        };
        loop {
            if let Some(next) = self.interruption() {
                return next;
            }
            let batch = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => continue,
                _ = self.phase.changed() => continue,
                batch = prefetcher.recv() => batch,
            };
            let batch = match batch {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    tracing::error!(shard = %self.lease.key, error = %e, "reading the shard failed");
                    return ConsumerState::Failing(e.to_string());
                }
                None => return ConsumerState::ShutdownRequested,
            };
            // A zombie (paused past expiry) must not deliver: others may own the shard.
            if !self.handle.may_process().await {
                return ConsumerState::LeaseLost;
            }
            if let Some(load) = self.load.record(
                batch.records.len(),
                batch.bytes,
                batch.millis_behind_latest,
                Instant::now(),
            ) {
                self.handle.set_load(load).await;
            }
            if let Some(last) = batch.records.last() {
                self.checkpointer
                    .set_last_delivered(last.extended_sequence_number());
            }
            if let Some(behind) = batch.millis_behind_latest {
                self.metrics.millis_behind_latest.set(behind as f64);
            }
            if !batch.records.is_empty() || self.ctx.config.call_process_records_even_for_empty {
                self.metrics
                    .records_processed
                    .increment(batch.records.len() as u64);
                self.metrics.bytes_processed.increment(batch.bytes as u64);
                let started = Instant::now();
                let processor = self.processor.as_mut().expect("initialized");
                processor
                    .process_records(
                        ProcessRecordsInput {
                            records: batch.records,
                            millis_behind_latest: batch.millis_behind_latest,
                            undecodable_aggregates: batch.undecodable_aggregates,
                            foreign_records_dropped: batch.foreign_records_dropped,
                        },
                        &mut self.checkpointer,
                    )
                    .await;
                self.metrics
                    .process_records_seconds
                    .record(started.elapsed().as_secs_f64());
            }
            if batch.shard_end {
                self.create_child_leases(&batch.child_shards).await;
                return ConsumerState::ShardEnded;
            }
        }
    }

    /// Creates the children's leases straight from GetRecords' `ChildShards` (real
    /// Kinesis names them; emulators that don't are covered by the shard sync run at
    /// shard end), so children need not wait for the next ListShards.
    async fn create_child_leases(&mut self, children: &[ChildShardRef]) {
        if !children_consistent(&self.lease.key, self.lease.hash_key_range, children) {
            // A child that covers more than this shard but names no other parent
            // (ferrokinesis's SubscribeToShard does that for a merge's adjacent
            // parent): a lease with one parent would start before the other ends.
            // ListShards names both.
            tracing::warn!(shard = %self.lease.key, ?children, "ChildShards inconsistent with the shard's hash range; leaving the children to shard sync");
            self.ctx.syncer.request_sync();
            return;
        }
        let mut created = false;
        for child in children {
            let mut lease = Lease::new(
                child.shard_id.clone(),
                ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
            );
            lease.parent_shard_ids = child.parent_shard_ids.clone();
            lease.hash_key_range = child.hash_key_range;
            match self.ctx.store.create_lease(&lease).await {
                Ok(()) => {
                    created = true;
                    tracing::info!(shard = %child.shard_id, "created child lease from ChildShards")
                }
                Err(LeaseError::ConditionFailed { .. }) => {}
                Err(e) => {
                    // The shard sync retries it (with backoff while it fails).
                    tracing::warn!(shard = %child.shard_id, error = %e, "cannot create child lease; shard sync will");
                    self.ctx.syncer.request_sync();
                }
            }
        }
        if created && let Err(e) = self.ctx.store.note_leases_changed().await {
            // The leader's periodic listing finds them anyway.
            tracing::warn!(shard = %self.lease.key, error = %e, "could not announce the child leases");
        }
    }

    async fn shard_ended(&mut self) -> ConsumerState {
        if let Some(processor) = self.processor.as_mut() {
            processor.shard_ended(&mut self.checkpointer).await;
        }
        // Written by the framework, whatever the processor did: children wait on it.
        match self.checkpointer.checkpoint_shard_end().await {
            Ok(()) => {
                tracing::info!(shard = %self.lease.key, "shard ended; SHARD_END checkpointed");
                self.ctx.syncer.request_sync();
                // Nothing is left to read: let the lease go so nobody renews it.
                if let Err(e) = self.handle.hand_over().await {
                    tracing::debug!(shard = %self.lease.key, error = %e, "release after shard end");
                }
                ConsumerState::Done(ConsumerOutcome::ShardEnded)
            }
            Err(CheckpointError::LeaseLost { .. }) => {
                ConsumerState::Done(ConsumerOutcome::LeaseLost)
            }
            Err(e) => {
                // The children wait on this SHARD_END. Keeping the lease (renewed, with
                // nobody reading) would stall them for as long as this worker lives:
                // let it go, so a consumer reads the shard to its end again and writes
                // it. The sync creates the children's leases meanwhile.
                tracing::warn!(shard = %self.lease.key, error = %e, "SHARD_END checkpoint failed; letting the lease go");
                self.ctx.syncer.request_sync();
                let_go(&self.handle, let_go_limit(self.ctx.config.failover_time)).await;
                ConsumerState::Done(ConsumerOutcome::Failed(format!(
                    "SHARD_END checkpoint failed: {e}"
                )))
            }
        }
    }

    async fn lease_lost(&mut self) -> ConsumerState {
        self.reader_cancel.cancel();
        if let Some(processor) = self.processor.as_mut() {
            processor.lease_lost().await;
        }
        ConsumerState::Done(ConsumerOutcome::LeaseLost)
    }

    async fn shut_down(&mut self, state: ConsumerState) -> ConsumerState {
        self.reader_cancel.cancel();
        if let Some(processor) = self.processor.as_mut() {
            processor.shutdown_requested(&mut self.checkpointer).await;
        }
        let released = let_go(&self.handle, let_go_limit(self.ctx.config.failover_time)).await;
        ConsumerState::Done(state.stopped(released))
    }
}

/// Whether `children`, as a shard's reader reported them, can be trusted to create
/// their leases: each names `shard` as a parent, and one with a single parent lies
/// within `shard`'s hash range (a split's child, or a 1:1 successor); a child wider
/// than the shard must name its other parent (a merge). Without the shard's range
/// there is nothing to check against.
fn children_consistent(
    shard: &str,
    range: Option<(u128, u128)>,
    children: &[ChildShardRef],
) -> bool {
    children.iter().all(|child| {
        let names_shard = child.parent_shard_ids.iter().any(|p| p == shard);
        let within = match (range, child.hash_key_range) {
            (Some((start, end)), Some((child_start, child_end))) => {
                start <= child_start && child_end <= end
            }
            _ => true,
        };
        names_shard && (child.parent_shard_ids.len() > 1 || within)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::handle::LostReason;

    #[test]
    fn interruptions_lead_to_the_matching_state() {
        let handing_off = LeasePhase::HandingOff { to: "w2".into() };
        let awaiting = LeasePhase::AwaitingPrevious { from: "w1".into() };
        let lost = LeasePhase::Lost(LostReason::TakenOver);
        // (worker stopping, lease phase) → next state
        let cases = [
            (false, &LeasePhase::Held, None),
            (false, &awaiting, None),
            (false, &handing_off, Some(ConsumerState::HandingOff)),
            (false, &lost, Some(ConsumerState::LeaseLost)),
            (
                true,
                &LeasePhase::Held,
                Some(ConsumerState::ShutdownRequested),
            ),
            (true, &handing_off, Some(ConsumerState::ShutdownRequested)),
            (true, &lost, Some(ConsumerState::ShutdownRequested)),
        ];
        for (i, (shutdown, phase, next)) in cases.into_iter().enumerate() {
            assert_eq!(
                ConsumerState::interrupted(shutdown, phase),
                next,
                "case {i}"
            );
        }
    }

    #[test]
    fn a_stopping_consumer_ends_by_its_state_and_whether_the_lease_was_let_go() {
        let failing = ConsumerState::Failing("stream deleted".into());
        // (state, released) → outcome
        let cases = [
            (
                ConsumerState::ShutdownRequested,
                true,
                ConsumerOutcome::ShutDown,
            ),
            (
                ConsumerState::ShutdownRequested,
                false,
                ConsumerOutcome::LeaseLost,
            ),
            (ConsumerState::HandingOff, true, ConsumerOutcome::HandedOver),
            (ConsumerState::HandingOff, false, ConsumerOutcome::LeaseLost),
            (
                failing.clone(),
                true,
                ConsumerOutcome::Failed("stream deleted".into()),
            ),
            (
                failing,
                false,
                ConsumerOutcome::Failed("stream deleted".into()),
            ),
        ];
        for (state, released, outcome) in cases {
            assert_eq!(
                state.stopped(released),
                outcome,
                "{state:?}, released {released}"
            );
        }
    }

    #[test]
    fn child_shards_are_trusted_only_when_they_fit_the_hash_range() {
        let child = |id: &str, parents: &[&str], range: Option<(u128, u128)>| ChildShardRef {
            shard_id: id.to_string(),
            parent_shard_ids: parents.iter().map(|p| p.to_string()).collect(),
            hash_key_range: range,
        };
        let own = Some((100, 199));
        let cases = [
            // A split: two children inside the range, each naming the shard.
            (
                own,
                vec![
                    child("c1", &["s"], Some((100, 149))),
                    child("c2", &["s"], Some((150, 199))),
                ],
                true,
            ),
            // A merge named with both parents.
            (own, vec![child("m", &["s", "t"], Some((100, 299)))], true),
            // A merge naming only this parent: wider than the shard.
            (own, vec![child("m", &["s"], Some((100, 299)))], false),
            // A child that does not name the shard.
            (own, vec![child("c", &["t"], Some((100, 199)))], false),
            // Unknown ranges: nothing to check against.
            (None, vec![child("m", &["s"], Some((100, 299)))], true),
            (own, vec![child("m", &["s"], None)], true),
            (own, vec![], true),
        ];
        for (range, children, expected) in cases {
            assert_eq!(
                children_consistent("s", range, &children),
                expected,
                "{range:?} {children:?}"
            );
        }
    }
}
