//! Shard sync: keeps the lease table in step with the stream's shards.
//!
//! [`plan`] decides (a pure function of ListShards output and the lease table);
//! [`ShardSyncer`] lists, plans and performs the writes. Creates are conditional
//! (`attribute_not_exists`) and deletes are conditional on the counter seen, so any
//! number of workers may sync concurrently.

pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use plan::{SyncPlan, plan_sync};

use crate::checkpoint::ExtendedSequenceNumber;
use crate::leases::{Change, Expect, LeaseError, LeaseStore};
use crate::metrics::SyncMetrics;
use crate::stream::{StreamError, list_shards};

/// The first retry delay after a failed sync.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Leases created by this sync (not counting ones another worker created first).
    pub created: Vec<String>,
    /// Leases annotated with their children.
    pub children_set: Vec<String>,
    /// Leases deleted.
    pub deleted: Vec<String>,
}

/// Errors of a shard sync.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardSyncError {
    /// ListShards failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The lease table failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Lists a stream's shards and brings the lease table in line.
///
/// ```no_run
/// # async fn demo(clients: kcl::aws::Clients) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
/// use kcl::leases::dynamo::DynamoLeaseStore;
/// use kcl::internals::ShardSyncer;
///
/// let store = Arc::new(DynamoLeaseStore::new(clients.dynamodb.clone(), "MyApp"));
/// let syncer = ShardSyncer::new(
///     clients.kinesis.clone(),
///     "MyStream",
///     store,
///     ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
/// );
/// let report = syncer.sync_once().await?;
/// println!("created leases {:?}", report.created);
/// # Ok(()) }
/// ```
pub struct ShardSyncer {
    kinesis: Client,
    stream: String,
    store: Arc<dyn LeaseStore>,
    initial: ExtendedSequenceNumber,
    wake: Notify,
    periodic: Box<dyn Fn() -> bool + Send + Sync>,
    metrics: SyncMetrics,
}

impl ShardSyncer {
    /// A syncer for `stream`, creating brand-new leases at `initial`.
    pub fn new(
        kinesis: Client,
        stream: impl Into<String>,
        store: Arc<dyn LeaseStore>,
        initial: ExtendedSequenceNumber,
    ) -> ShardSyncer {
        let stream = stream.into();
        ShardSyncer {
            kinesis,
            metrics: SyncMetrics::new(&stream, ""),
            stream,
            store,
            initial,
            wake: Notify::new(),
            periodic: Box::new(|| true),
        }
    }

    /// Labels this syncer's metrics with the worker running it.
    pub(crate) fn for_worker(mut self, worker_id: &str) -> Self {
        self.metrics = SyncMetrics::new(&self.stream, worker_id);
        self
    }

    /// Makes [`ShardSyncer::run`]'s periodic syncs conditional on `gate` (requested
    /// syncs and retries always run). A worker passes "this worker leads", so one
    /// worker of the fleet lists the stream and the lease table every interval, not
    /// every worker.
    pub fn periodic_when(mut self, gate: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.periodic = Box::new(gate);
        self
    }

    /// One sync: ListShards (paginated), read the lease table, apply the plan.
    pub async fn sync_once(&self) -> Result<SyncReport, ShardSyncError> {
        let synced = self.sync().await;
        self.metrics.runs.increment(1);
        if let Ok(report) = &synced {
            self.metrics
                .leases_created
                .increment(report.created.len() as u64);
            self.metrics
                .leases_deleted
                .increment(report.deleted.len() as u64);
        }
        synced
    }

    async fn sync(&self) -> Result<SyncReport, ShardSyncError> {
        let shards = list_shards(&self.kinesis, &self.stream).await?;
        // Eventually consistent: every write of the plan is conditional.
        let leases = self.store.scan_leases().await?;
        let plan = plan_sync(&shards, &leases, &self.initial);
        let mut report = SyncReport::default();
        for lease in &plan.create {
            match self.store.create_lease(lease).await {
                Ok(()) => report.created.push(lease.key.clone()),
                // Another worker created it first: the same lease, nothing to do.
                Err(LeaseError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for (key, children) in &plan.set_children {
            // Lineage only: no counter bump, so the holder's renewals are undisturbed.
            let change = Change {
                child_shard_ids: Some(children.clone()),
                ..Change::default()
            };
            match self
                .store
                .update_lease(key, Expect::default(), change)
                .await
            {
                Ok(_) => report.children_set.push(key.clone()),
                Err(LeaseError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for key in &plan.delete {
            let Some(lease) = leases.iter().find(|l| &l.key == key) else {
                continue;
            };
            let expect = Expect {
                counter: Some(lease.counter),
                ..Expect::default()
            };
            match self.store.delete_lease(key, expect).await {
                Ok(()) => report.deleted.push(key.clone()),
                Err(LeaseError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !report.created.is_empty() || !report.deleted.is_empty() {
            // Every worker lists the lease table again at its next heartbeat. Best
            // effort: the leader's periodic listing finds the leases anyway.
            if let Err(e) = self.store.note_leases_changed().await {
                tracing::warn!(error = %e, "could not announce the lease changes");
            }
            tracing::info!(stream = %self.stream, created = ?report.created, deleted = ?report.deleted, "shard sync");
        }
        Ok(report)
    }

    /// Asks the running [`ShardSyncer::run`] loop to sync now (a shard reached its end).
    pub fn request_sync(&self) {
        self.wake.notify_one();
    }

    /// Syncs at once, then every `interval` (when the gate of
    /// [`ShardSyncer::periodic_when`] allows) and whenever [`ShardSyncer::request_sync`]
    /// is called, until `cancel`. A failed sync is retried sooner, after 1 s doubling up to
    /// `interval`: it may be the creation of a child lease that a finished parent's
    /// children are waiting for. Ends only with `cancel`.
    pub async fn run(&self, interval: Duration, cancel: CancellationToken) {
        let mut retry = FIRST_RETRY;
        let mut due = true;
        loop {
            let (wait, failed) = if !due {
                (interval, false)
            } else {
                match self.sync_once().await {
                    Ok(_) => {
                        retry = FIRST_RETRY;
                        (interval, false)
                    }
                    Err(e) => {
                        let wait = retry.min(interval);
                        tracing::warn!(stream = %self.stream, error = %e, retry_in = ?wait, "shard sync failed; will retry");
                        retry = (retry * 2).min(interval);
                        (wait, true)
                    }
                }
            };
            due = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => failed || (self.periodic)(),
                _ = self.wake.notified() => true,
            };
        }
    }
}
