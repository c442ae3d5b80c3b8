//! The worker's streams: one consumer context per stream (its name, its lease-table
//! view, its shard syncer, its stream consumer in fan-out mode), and in multi-stream
//! mode the loop that polls the provider and applies [`plan_streams`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scoped::ScopedStore;
use super::{DynProvider, Lookup, StreamIdentifier, look_up, plan_streams};
use crate::config::{InitialPosition, WorkerConfig};
use crate::leases::{Expect, Lease, LeaseError, LeaseStore};
use crate::lifecycle::ConsumerContext;
use crate::retrieval::fanout::register_consumer;
use crate::shard_sync::ShardSyncer;
use crate::worker::CONSUMER_REGISTRATION_TIMEOUT;

/// Whether this worker leads the fleet now.
pub(crate) type Leader = Arc<dyn Fn() -> bool + Send + Sync>;

/// The streams of a worker.
pub(crate) enum Streams {
    /// Single-stream mode: leases are keyed by shard id.
    Single(Arc<ConsumerContext>),
    /// Multi-stream mode.
    Multi(Box<Tracker>),
}

impl Streams {
    /// The context a lease is processed in, and the lease as its stream sees it (keyed
    /// by shard id).
    pub(crate) async fn context_for(
        &self,
        lease: Lease,
    ) -> Result<(Arc<ConsumerContext>, Lease), String> {
        match self {
            Streams::Single(ctx) => Ok((Arc::clone(ctx), lease)),
            Streams::Multi(tracker) => tracker.context_for(lease).await,
        }
    }
}

struct Entry {
    ctx: Arc<ConsumerContext>,
    /// Stops the stream's shard-sync loop; `None` when not synced here (a former
    /// stream whose leases are still processed, or one this worker's provider does not
    /// name).
    syncing: Option<CancellationToken>,
}

#[derive(Default)]
struct PollState {
    /// The identifier each listed name last resolved to.
    known: HashMap<String, StreamIdentifier>,
    gone_since: BTreeMap<StreamIdentifier, Instant>,
    positions: HashMap<String, InitialPosition>,
}

/// Multi-stream mode: polls the provider and keeps one context per stream.
pub(crate) struct Tracker {
    kinesis: aws_sdk_kinesis::Client,
    store: Arc<dyn LeaseStore>,
    config: Arc<WorkerConfig>,
    provider: Arc<dyn DynProvider>,
    leader: Leader,
    entries: Mutex<BTreeMap<StreamIdentifier, Entry>>,
    state: Mutex<PollState>,
    /// Cancelled when the worker stops: ends every stream's sync loop.
    stop: CancellationToken,
}

impl Tracker {
    pub(crate) fn new(
        kinesis: aws_sdk_kinesis::Client,
        store: Arc<dyn LeaseStore>,
        config: Arc<WorkerConfig>,
        provider: Arc<dyn DynProvider>,
        leader: Leader,
        stop: CancellationToken,
    ) -> Tracker {
        Tracker {
            kinesis,
            store,
            config,
            provider,
            leader,
            entries: Mutex::new(BTreeMap::new()),
            state: Mutex::new(PollState::default()),
            stop,
        }
    }

    /// Polls now, then every `stream_poll_interval` until `cancel`. A failed poll
    /// (the provider failed) is logged; the streams stay as they were.
    pub(crate) async fn run(&self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.config.stream_poll_interval) => {}
            }
            if let Err(e) = self.poll().await {
                tracing::warn!(error = %e, "stream provider failed; streams unchanged");
            }
        }
    }

    /// One poll: asks the provider, looks each stream up, starts and stops shard
    /// syncs and, on the leader, deletes the leases of streams gone for the grace.
    pub(crate) async fn poll(&self) -> Result<(), super::ProviderError> {
        let configs = self.provider.streams_boxed().await?;
        let mut state = self.state.lock().await;
        let mut listed = BTreeSet::new();
        state.positions.clear();
        for config in configs {
            let name = config.stream_name;
            state
                .positions
                .insert(name.clone(), config.initial_position);
            match look_up(&self.kinesis, &name).await {
                Ok(Lookup::Readable(id)) => {
                    state.known.insert(name, id.clone());
                    listed.insert(id);
                }
                Ok(Lookup::Missing | Lookup::NotReadable) => {
                    state.known.remove(&name);
                }
                // Not gone for a failed look-up: as last seen.
                Err(e) => {
                    tracing::warn!(stream = %name, error = %e, "cannot look the stream up; keeping it as it was");
                    if let Some(id) = state.known.get(&name) {
                        listed.insert(id.clone());
                    }
                }
            }
        }
        let leader = (self.leader)();
        let table = if leader {
            match self.store.scan_leases().await {
                Ok(leases) => Some(leases),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list leases to find former streams");
                    None
                }
            }
        } else {
            None
        };
        let in_table: Option<BTreeSet<StreamIdentifier>> = table.as_ref().map(|leases| {
            leases
                .iter()
                .filter_map(|l| StreamIdentifier::split_lease_key(&l.key).map(|(id, _)| id))
                .collect()
        });
        let running: BTreeSet<StreamIdentifier> = self
            .entries
            .lock()
            .await
            .iter()
            .filter(|(_, e)| e.syncing.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let plan = plan_streams(
            &listed,
            &running,
            in_table.as_ref(),
            &state.gone_since,
            Instant::now(),
            self.config.former_stream_grace,
        );
        state.gone_since = plan.gone_since;
        for id in &plan.stop {
            if let Some(entry) = self.entries.lock().await.get_mut(id)
                && let Some(syncing) = entry.syncing.take()
            {
                syncing.cancel();
            }
            tracing::info!(stream = %id, grace = ?self.config.former_stream_grace, "stream no longer listed or no longer exists; its leases are deleted after the grace");
        }
        for id in &plan.start {
            let position = state
                .positions
                .get(&id.stream_name)
                .copied()
                .unwrap_or(InitialPosition::Latest);
            if let Err(e) = self.start(id, position).await {
                tracing::warn!(stream = %id, error = %e, "cannot start the stream; trying again at the next poll");
            }
        }
        if let Some(leases) = &table {
            for id in &plan.delete {
                self.delete_leases(id, leases).await;
            }
        }
        Ok(())
    }

    /// Starts syncing a stream (and, in fan-out mode, registers its consumer).
    async fn start(&self, id: &StreamIdentifier, position: InitialPosition) -> Result<(), String> {
        let ctx = {
            let entries = self.entries.lock().await;
            entries.get(id).map(|e| Arc::clone(&e.ctx))
        };
        let ctx = match ctx {
            // Made for a lease before it was listed: made again with its position.
            Some(ctx) if ctx.initial_position == position => ctx,
            _ => Arc::new(self.context(id, position).await?),
        };
        if let Err(e) = ctx.syncer.sync_once().await {
            // The loop retries it.
            tracing::warn!(stream = %id, error = %e, "first shard sync of a new stream failed");
        }
        let syncing = self.stop.child_token();
        tokio::spawn({
            let ctx = Arc::clone(&ctx);
            let interval = self.config.shard_sync_interval;
            let syncing = syncing.clone();
            async move { ctx.syncer.run(interval, syncing).await }
        });
        tracing::info!(stream = %id, ?position, "stream added");
        self.entries.lock().await.insert(
            id.clone(),
            Entry {
                ctx,
                syncing: Some(syncing),
            },
        );
        Ok(())
    }

    async fn context(
        &self,
        id: &StreamIdentifier,
        position: InitialPosition,
    ) -> Result<ConsumerContext, String> {
        let store: Arc<dyn LeaseStore> =
            Arc::new(ScopedStore::new(Arc::clone(&self.store), id.key_prefix()));
        let consumer_arn = match self.config.consumer_name() {
            Some(name) => Some(
                register_consumer(
                    &self.kinesis,
                    &id.stream_name,
                    name,
                    CONSUMER_REGISTRATION_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?
                .arn,
            ),
            None => None,
        };
        let leader = Arc::clone(&self.leader);
        let syncer = ShardSyncer::new(
            self.kinesis.clone(),
            &id.stream_name,
            Arc::clone(&store),
            position.checkpoint(),
        )
        .for_worker(&self.config.worker_id)
        .periodic_when(move || leader());
        Ok(ConsumerContext {
            kinesis: self.kinesis.clone(),
            store,
            config: Arc::clone(&self.config),
            syncer: Arc::new(syncer),
            consumer_arn,
            stream_name: id.stream_name.clone(),
            initial_position: position,
        })
    }

    async fn context_for(&self, mut lease: Lease) -> Result<(Arc<ConsumerContext>, Lease), String> {
        let Some((id, shard_id)) = StreamIdentifier::split_lease_key(&lease.key) else {
            return Err(format!(
                "lease {} is not a multi-stream lease (account:stream:creationEpoch:shardId)",
                lease.key
            ));
        };
        let shard_id = shard_id.to_string();
        let known = self
            .entries
            .lock()
            .await
            .get(&id)
            .map(|e| Arc::clone(&e.ctx));
        let ctx = match known {
            Some(ctx) => ctx,
            None => {
                // A stream this worker does not sync (another worker's provider named
                // it first, or it is a former stream): processed all the same.
                let position = self
                    .state
                    .lock()
                    .await
                    .positions
                    .get(&id.stream_name)
                    .copied()
                    .unwrap_or(InitialPosition::Latest);
                let ctx = Arc::new(self.context(&id, position).await?);
                let mut entries = self.entries.lock().await;
                let entry = entries.entry(id).or_insert(Entry { ctx, syncing: None });
                Arc::clone(&entry.ctx)
            }
        };
        lease.key = shard_id;
        Ok((ctx, lease))
    }

    /// Deletes every lease of a former stream (unconditionally: the stream is gone
    /// for good; a holder finds its lease lost at its next renewal).
    async fn delete_leases(&self, id: &StreamIdentifier, leases: &[Lease]) {
        let prefix = id.key_prefix();
        let mut deleted = 0;
        for lease in leases.iter().filter(|l| l.key.starts_with(&prefix)) {
            match self.store.delete_lease(&lease.key, Expect::default()).await {
                Ok(()) | Err(LeaseError::ConditionFailed { .. }) => deleted += 1,
                Err(e) => {
                    tracing::warn!(lease = %lease.key, error = %e, "cannot delete a former stream's lease; trying again at the next poll");
                }
            }
        }
        if deleted > 0 {
            if let Err(e) = self.store.note_leases_changed().await {
                tracing::warn!(error = %e, "could not announce the deleted leases");
            }
            tracing::info!(stream = %id, leases = deleted, "former stream's leases deleted");
        }
        self.entries.lock().await.remove(id);
    }
}
