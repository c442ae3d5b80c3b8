//! The worker's streams: one consumer context per stream (its name, its lease-table
//! view, its shard syncer, its stream consumer in fan-out mode), and in multi-stream
//! mode the loop that polls the provider and applies [`plan_streams`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scoped::ScopedStore;
use super::{DynProvider, Lookup, StreamIdentifier, look_up, plan_streams};
use crate::config::{InitialPosition, WorkerConfig};
use crate::leases::{Expect, Lease, LeaseError, LeaseStore};
use crate::lifecycle::{ConsumerContext, Leader};

/// Where a lease is processed.
pub(crate) enum Placement {
    /// In this context, the lease as its stream sees it (keyed by shard id).
    Process(Arc<ConsumerContext>, Box<Lease>),
    /// Not at all: its stream is gone (deleted, or deleted and created again under its
    /// name). The lease is held without reading until the leader deletes it after the
    /// grace (or the worker stops): read, it would fail, or read the new stream's
    /// records as the old one's.
    Park(String),
}

/// The streams of a worker.
pub(crate) enum Streams {
    /// Single-stream mode: leases are keyed by shard id.
    Single(Arc<ConsumerContext>),
    /// Multi-stream mode.
    Multi(Box<Tracker>),
}

impl Streams {
    /// Where `lease` is processed.
    pub(crate) async fn place(&self, lease: Lease) -> Result<Placement, String> {
        match self {
            Streams::Single(ctx) => Ok(Placement::Process(Arc::clone(ctx), Box::new(lease))),
            Streams::Multi(tracker) => tracker.place(lease).await,
        }
    }
}

struct Entry {
    ctx: Arc<ConsumerContext>,
    /// Stops the stream's shard-sync loop; `None` when not synced here (a former
    /// stream whose leases are still processed, or one this worker's provider does not
    /// name yet).
    syncing: Option<CancellationToken>,
}

/// What the last poll learnt (behind a plain mutex, never held across a call).
#[derive(Default)]
struct PollState {
    /// Each listed name's initial position.
    positions: HashMap<String, InitialPosition>,
    /// The identifier each listed name last resolved to (absent: the stream is
    /// missing or not readable).
    known: HashMap<String, StreamIdentifier>,
    /// Listed names whose look-up failed and that never resolved: nothing of theirs is
    /// judged gone.
    unsure: BTreeSet<String>,
    gone_since: BTreeMap<StreamIdentifier, Instant>,
}

/// Multi-stream mode: polls the provider and keeps one context per stream.
pub(crate) struct Tracker {
    kinesis: aws_sdk_kinesis::Client,
    store: Arc<dyn LeaseStore>,
    config: Arc<WorkerConfig>,
    provider: Arc<dyn DynProvider>,
    leader: Leader,
    entries: tokio::sync::Mutex<BTreeMap<StreamIdentifier, Entry>>,
    state: Mutex<PollState>,
    /// Cancelled when the worker stops: ends every stream's sync loop.
    stop: CancellationToken,
    syncs: Mutex<JoinSet<()>>,
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
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
            state: Mutex::new(PollState::default()),
            stop,
            syncs: Mutex::new(JoinSet::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls every `stream_poll_interval` until `cancel` (the first poll is the
    /// worker's, at start). A failed poll (the provider failed) is logged; the streams
    /// stay as they were. On `cancel`, waits for the streams' sync loops to end.
    pub(crate) async fn run(&self, cancel: CancellationToken) {
        loop {
            // ±10% jitter: a fleet started together does not look its streams up in
            // step (DescribeStreamSummary allows 20 calls per second per account).
            let interval = self
                .config
                .stream_poll_interval
                .mul_f64(0.9 + rand::random::<f64>() * 0.2);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.poll().await {
                tracing::warn!(error = %e, "stream provider failed; streams unchanged");
            }
        }
        self.stop.cancel();
        let mut syncs = std::mem::take(&mut *self.syncs.lock().unwrap_or_else(|p| p.into_inner()));
        while syncs.join_next().await.is_some() {}
    }

    /// One poll: asks the provider, looks each stream up, starts and stops shard
    /// syncs and, on the leader, deletes the leases of streams gone for the grace.
    pub(crate) async fn poll(&self) -> Result<(), super::ProviderError> {
        let configs = self.provider.streams_boxed().await?;
        let mut looked_up = Vec::with_capacity(configs.len());
        for config in &configs {
            let lookup = look_up(&self.kinesis, &config.stream_name).await;
            looked_up.push((config.stream_name.clone(), lookup));
        }
        let mut listed = BTreeSet::new();
        let (gone_since, unsure) = {
            let mut state = self.state();
            state.positions = configs
                .iter()
                .map(|c| (c.stream_name.clone(), c.initial_position))
                .collect();
            let names: HashSet<&String> = state.positions.keys().collect();
            let forgotten: Vec<String> = state
                .known
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            for name in forgotten {
                state.known.remove(&name);
            }
            state.unsure.clear();
            for (name, lookup) in looked_up {
                match lookup {
                    Ok(Lookup::Readable(id)) => {
                        state.known.insert(name, id.clone());
                        listed.insert(id);
                    }
                    Ok(Lookup::Missing | Lookup::NotReadable) => {
                        state.known.remove(&name);
                    }
                    // Not gone for a failed look-up: as last seen, and never judged
                    // gone while unsure.
                    Err(e) => {
                        tracing::warn!(stream = %name, error = %e, "cannot look the stream up; keeping it as it was");
                        match state.known.get(&name) {
                            Some(id) => {
                                listed.insert(id.clone());
                            }
                            None => {
                                state.unsure.insert(name);
                            }
                        }
                    }
                }
            }
            (state.gone_since.clone(), state.unsure.clone())
        };
        let table = if (self.leader)() {
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
            &unsure,
            &running,
            in_table.as_ref(),
            &gone_since,
            Instant::now(),
            self.config.former_stream_grace,
        );
        self.state().gone_since = plan.gone_since;
        for id in &plan.stop {
            if let Some(entry) = self.entries.lock().await.get_mut(id)
                && let Some(syncing) = entry.syncing.take()
            {
                syncing.cancel();
            }
            tracing::info!(stream = %id, grace = ?self.config.former_stream_grace, "stream no longer listed or no longer exists; its leases are deleted after the grace");
        }
        for id in &plan.start {
            let position = self.position_of(&id.stream_name);
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

    fn position_of(&self, stream_name: &str) -> InitialPosition {
        self.state()
            .positions
            .get(stream_name)
            .copied()
            .unwrap_or(InitialPosition::Latest)
    }

    /// Starts syncing a stream (and, in fan-out mode, registers its consumer).
    async fn start(&self, id: &StreamIdentifier, position: InitialPosition) -> Result<(), String> {
        let made = {
            let entries = self.entries.lock().await;
            entries.get(id).map(|e| Arc::clone(&e.ctx))
        };
        let ctx = match made {
            // Made for a lease before it was listed, and with its position.
            Some(ctx) if ctx.initial_position == position => ctx,
            _ => Arc::new(self.context(id, position).await?),
        };
        if self.stop.is_cancelled() {
            return Ok(());
        }
        if let Err(e) = ctx.syncer.sync_once().await {
            // The loop retries it.
            tracing::warn!(stream = %id, error = %e, "first shard sync of a new stream failed");
        }
        let syncing = self.stop.child_token();
        self.syncs.lock().unwrap_or_else(|p| p.into_inner()).spawn({
            let ctx = Arc::clone(&ctx);
            let interval = self.config.shard_sync_interval;
            let syncing = syncing.clone();
            async move { ctx.syncer.run(interval, syncing).await }
        });
        tracing::info!(stream = %id, ?position, "stream added");
        let replaced = self.entries.lock().await.insert(
            id.clone(),
            Entry {
                ctx,
                syncing: Some(syncing),
            },
        );
        if let Some(syncing) = replaced.and_then(|e| e.syncing) {
            syncing.cancel();
        }
        Ok(())
    }

    async fn context(
        &self,
        id: &StreamIdentifier,
        position: InitialPosition,
    ) -> Result<ConsumerContext, String> {
        let store = Arc::new(ScopedStore::new(Arc::clone(&self.store), id.key_prefix()));
        ConsumerContext::for_stream(
            &self.kinesis,
            store,
            &self.config,
            &id.stream_name,
            position,
            Arc::clone(&self.leader),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Whether `id` is a former incarnation of a listed stream: the name is listed and
    /// resolves to another stream now, or to none.
    fn is_former(&self, id: &StreamIdentifier) -> bool {
        let state = self.state();
        state.positions.contains_key(&id.stream_name)
            && !state.unsure.contains(&id.stream_name)
            && state.known.get(&id.stream_name) != Some(id)
    }

    async fn place(&self, mut lease: Lease) -> Result<Placement, String> {
        let Some((id, shard_id)) = StreamIdentifier::split_lease_key(&lease.key) else {
            return Err(format!(
                "lease {} is not a multi-stream lease (account:stream:creationEpoch:shardId)",
                lease.key
            ));
        };
        if self.is_former(&id) {
            return Ok(Placement::Park(format!(
                "stream {id} no longer exists (deleted, or created again under its name)"
            )));
        }
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
                // it first, or it is no longer listed): processed all the same.
                let ctx = Arc::new(self.context(&id, self.position_of(&id.stream_name)).await?);
                let mut entries = self.entries.lock().await;
                let entry = entries.entry(id).or_insert(Entry { ctx, syncing: None });
                Arc::clone(&entry.ctx)
            }
        };
        lease.key = shard_id;
        Ok(Placement::Process(ctx, Box::new(lease)))
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
        if let Some(entry) = self.entries.lock().await.remove(id)
            && let Some(syncing) = entry.syncing
        {
            syncing.cancel();
        }
    }
}
