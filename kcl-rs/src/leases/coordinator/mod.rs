//! The lease coordinator: one per worker. It renews the leases the worker holds, takes
//! free and expired ones, balances with other workers by graceful handoff, and tells
//! the worker which leases it may process.
//!
//! These run until cancelled:
//! - **renewal**, every `renewal_interval` (failover/3 by default), one task per held
//!   lease and one for the worker heartbeat, so that a slow or hung call delays nothing
//!   but itself; transient errors (throttling, transaction conflicts, timeouts) are
//!   retried with backoff until the lease would expire, and then it is given up
//!   (`Lost(ExpiredLocally)`).
//! - **membership**: the heartbeat (in the group item of the worker table) returns the
//!   whole group, so every worker sees who joined, left or died without a read. A
//!   worker whose heartbeat has not changed for the failover time is evicted, and its
//!   leases may be taken at once: every worker gives up its leases when its own
//!   heartbeat has not succeeded for the failover time.
//! - **taking**, every `taking_interval`: the two *watchers* (the live workers with the
//!   smallest ids; the first is the *leader*) read the group (one small read) and evict
//!   the dead; then, only when
//!   something may have changed (see `scan::scan_due`: leases created or deleted, a
//!   worker gone, this worker below its share, or for the leader `lease_scan_interval`
//!   passed), the lease table is listed, the expiry tracker updated, a plan made with
//!   [`plan_takes`](super::taker::plan_takes) and the planned conditional writes
//!   performed. After a departure the leader takes every free or orphaned lease it sees
//!   (others then ask it for handoffs), so the departure is covered within about a
//!   cycle.
//!
//! Acquired leases are announced on a channel as [`LeaseEvent::Acquired`] once they may
//! be processed (after any previous owner has handed over). Everything after that is
//! seen through the [`LeaseHandle`]'s phase.

use crate::leases::Balance;
use crate::metrics::WorkerMetrics;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod membership;
mod renewal;
mod taking;

use super::expiry::ExpiryTracker;
use super::handle::{HandleError, LeaseHandle};
use super::lease::Lease;
use super::retry;
use super::scan::LastScan;
use super::store::{LeaseError, LeaseStore};
use membership::Group;

/// Lease coordination settings. Build with [`LeaseConfig::new`] and adjust fields.
///
/// ```
/// use std::time::Duration;
/// let config = kcl::internals::LeaseConfig::new("worker-1");
/// assert_eq!(config.failover_time, Duration::from_secs(10));
/// assert_eq!(config.renewal_interval(), Duration::from_secs(10) / 3);
/// ```
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// This worker's id; unique per process (two processes must never share one).
    pub worker_id: String,
    /// A lease whose counter does not change for this long is expired and may be
    /// taken. Default 10 s, as in the Java KCL.
    pub failover_time: Duration,
    /// How often held leases are renewed; default `failover_time / 3`.
    pub renewal_interval: Option<Duration>,
    /// How often a taking cycle runs; default 750 ms, so a released lease is picked up
    /// within a second. In each cycle the two *watchers* (the live workers with the
    /// smallest ids) read the group (one GetItem of half a read unit), so a departure is
    /// noticed within a cycle even when one of them is the worker leaving; the lease
    /// table (an eventually consistent Scan) is listed only when something may have
    /// changed.
    pub taking_interval: Duration,
    /// Upper bound on leases held by this worker.
    pub max_leases_per_worker: Option<usize>,
    /// How long a graceful handoff may take before the new owner takes the lease by
    /// force; default `failover_time`.
    pub handoff_timeout: Option<Duration>,
    /// How often the leader lists the whole lease table when nothing prompts it; default
    /// `6 × failover_time`. This is the slow path for a lease whose owner still
    /// heartbeats but stopped renewing that one lease (it is taken once two listings
    /// a failover time apart show the same counter). Workers leaving, dying, joining
    /// and leases being created are noticed without it.
    pub lease_scan_interval: Option<Duration>,
    /// Share leases by count (default) or by load.
    pub balance: Balance,
}

impl LeaseConfig {
    /// Defaults for `worker_id`.
    pub fn new(worker_id: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            worker_id: worker_id.into(),
            failover_time: Duration::from_secs(10),
            renewal_interval: None,
            taking_interval: Duration::from_millis(750),
            max_leases_per_worker: None,
            handoff_timeout: None,
            lease_scan_interval: None,
            balance: Balance::Count,
        }
    }

    /// The effective renewal interval.
    pub fn renewal_interval(&self) -> Duration {
        self.renewal_interval.unwrap_or(self.failover_time / 3)
    }

    /// The effective interval of the leader's periodic listings of the lease table.
    pub fn lease_scan_interval(&self) -> Duration {
        self.lease_scan_interval.unwrap_or(self.failover_time * 6)
    }

    /// The effective handoff timeout.
    pub fn handoff_timeout(&self) -> Duration {
        self.handoff_timeout.unwrap_or(self.failover_time)
    }
}

/// Announcements of the coordinator.
#[derive(Debug)]
pub enum LeaseEvent {
    /// The lease is now this worker's to process, starting from `lease.checkpoint`.
    Acquired {
        /// Renewed by the coordinator; checkpoint and hand over through it.
        handle: Arc<LeaseHandle>,
        /// The lease as read when it became ours.
        lease: Lease,
    },
}

/// Counters for tests, benchmarks and operators.
#[derive(Debug, Default)]
pub struct CoordinatorStats {
    /// Completed taking cycles.
    pub taking_cycles: AtomicU64,
    /// Taking cycles that planned at least one take or handoff: how many rounds of
    /// decisions balancing needed.
    pub active_cycles: AtomicU64,
    /// Leases taken (free or expired).
    pub takes: AtomicU64,
    /// Handoffs requested of other workers.
    pub handoffs_requested: AtomicU64,
    /// Conditional writes that lost a race.
    pub conflicts: AtomicU64,
    /// Listings of the whole lease table (the expensive read of a taking cycle).
    pub lease_scans: AtomicU64,
    /// Workers this worker evicted from the group (their heartbeat had stopped).
    pub evictions: AtomicU64,
    /// Leases lost other than by a graceful handoff or release: taken over, expired
    /// locally because renewals kept failing, or deleted.
    pub leases_lost: AtomicU64,
    /// Items of the lease table skipped because they are not valid leases (as the
    /// store last reported; see [`LeaseStore::malformed_items`]).
    pub malformed_items: AtomicU64,
}

/// One worker's lease coordinator.
pub struct LeaseCoordinator {
    store: Arc<dyn LeaseStore>,
    config: LeaseConfig,
    held: Mutex<HashMap<String, Arc<LeaseHandle>>>,
    expiry: Mutex<ExpiryTracker>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    stats: CoordinatorStats,
    seed: u64,
    taking_stopped: AtomicBool,
    worker_removed: AtomicBool,
    last_scan: Mutex<LastScan>,
    group: Mutex<Group>,
    metrics: WorkerMetrics,
}

impl LeaseCoordinator {
    /// A coordinator over `store`, and the receiver of its events.
    pub fn new(
        store: Arc<dyn LeaseStore>,
        config: LeaseConfig,
    ) -> (Arc<LeaseCoordinator>, mpsc::UnboundedReceiver<LeaseEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let mut hasher = DefaultHasher::new();
        config.worker_id.hash(&mut hasher);
        let coordinator = LeaseCoordinator {
            expiry: Mutex::new(ExpiryTracker::new(config.failover_time)),
            store,
            held: Mutex::new(HashMap::new()),
            events,
            stats: CoordinatorStats::default(),
            seed: hasher.finish(),
            taking_stopped: AtomicBool::new(false),
            worker_removed: AtomicBool::new(false),
            last_scan: Mutex::new(LastScan::default()),
            group: Mutex::new(Group::default()),
            metrics: WorkerMetrics::new(&config.worker_id),
            config,
        };
        (Arc::new(coordinator), receiver)
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &CoordinatorStats {
        &self.stats
    }

    /// Stops taking leases and heartbeating (first step of a graceful shutdown);
    /// renewal of held leases goes on until `run` is cancelled.
    pub fn stop_taking(&self) {
        self.taking_stopped.store(true, Ordering::SeqCst);
    }

    /// Whether this worker leads the group now: it is the live worker with the
    /// smallest id, as far as it can tell. The leader lists the lease table
    /// periodically and runs the periodic shard sync; two workers may both believe it
    /// for a moment, which costs a read, never correctness.
    pub fn is_leader(&self) -> bool {
        self.rank(std::time::Instant::now()) == 0
    }

    /// Handles of leases currently held or being acquired.
    pub fn held(&self) -> Vec<Arc<LeaseHandle>> {
        self.held.lock().unwrap().values().cloned().collect()
    }

    /// Runs renewal and taking until `cancel` is cancelled. Leases stay held on return;
    /// call [`LeaseCoordinator::release_all`] after the processors have checkpointed.
    pub async fn run(self: &Arc<Self>, cancel: CancellationToken) -> Result<(), LeaseError> {
        self.store.ensure_tables().await?;
        self.join().await?;
        // Workers that start together see each other's heartbeats before planning, so
        // they do not all aim for the same too-high target.
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(self.config.taking_interval.min(Duration::from_millis(500))) => {}
        }
        let renewal = tokio::spawn(Arc::clone(self).renewal_loop(cancel.clone()));
        let taking = Arc::clone(self).taking_loop(cancel.clone()).await;
        cancel.cancel();
        let _ = renewal.await;
        taking
    }

    /// Leaves the group: stops taking and heartbeating and removes this worker from the
    /// group (so others count one worker fewer at once), once; later calls do nothing. The
    /// removal is retried while transient for at most a failover time.
    pub async fn leave(&self) -> Result<(), LeaseError> {
        self.stop_taking();
        if self.worker_removed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let attempt = retry::attempt_timeout(self.config.failover_time);
        let deadline = tokio::time::Instant::now() + self.config.failover_time;
        let removed = retry::until_deadline(deadline, attempt, || {
            self.store.remove_worker(&self.config.worker_id)
        })
        .await;
        if removed.is_err() {
            // Not gone: a later call may try again.
            self.worker_removed.store(false, Ordering::SeqCst);
        }
        removed
    }

    /// Graceful exit: releases every held lease and ends handoffs in progress, all at
    /// once, then leaves the group ([`LeaseCoordinator::leave`]). Call after `run`
    /// returned and processors checkpointed.
    ///
    /// Every step is bounded: a release retries transient errors (throttling, a
    /// transaction conflict) until the lease would expire anyway, each attempt within
    /// a fifth of the failover time, and the record's removal for at most a failover
    /// time, so with DynamoDB unreachable this returns within about two failover
    /// times. A release that failed is not an error of this call (the lease expires
    /// and is taken after the failover time); a failed removal is returned, after
    /// every release was tried.
    pub async fn release_all(&self) -> Result<(), LeaseError> {
        let mut releases = JoinSet::new();
        for handle in self.held() {
            releases.spawn(async move { (handle.key().to_string(), handle.hand_over().await) });
        }
        while let Some(done) = releases.join_next().await {
            match done {
                Ok((key, Ok(()))) => tracing::info!(lease = %key, "released lease"),
                Ok((_, Err(HandleError::Lost { .. }))) => {}
                Ok((key, Err(e))) => {
                    tracing::warn!(lease = %key, error = %e, "could not release lease")
                }
                Err(e) => tracing::warn!(error = %e, "lease release task failed"),
            }
        }
        self.forget_lost();
        self.leave().await
    }
}
