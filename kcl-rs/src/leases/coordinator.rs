//! The lease coordinator: one per worker. It renews the leases the worker holds, takes
//! free and expired ones, balances with other workers by graceful handoff, and tells
//! the worker which leases it may process.
//!
//! Two loops run until cancelled:
//! - **renewal**, every `renewal_interval` (failover/3 by default): heartbeat the worker
//!   record and renew each held lease; transient errors are retried until the lease
//!   would expire, and then it is given up (`Lost(ExpiredLocally)`).
//! - **taking**, every `taking_interval` and also exactly when an observed lease is due
//!   to expire: list the table, update the [`Observer`], plan with
//!   [`plan_takes`] and perform the planned conditional writes.
//!
//! Acquired leases are announced on a channel as [`LeaseEvent::Acquired`] once they may
//! be processed (after any previous owner has handed over). Everything after that is
//! seen through the [`LeaseHandle`]'s phase.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::handle::{HandleError, LeaseHandle, LeasePhase, LostReason, RenewOutcome};
use super::lease::Lease;
use super::observer::Observer;
use super::store::{Change, Expect, LeaseError, LeaseStore};
use super::taker::{TakeAction, TakerInput, plan_takes};

/// Lease coordination settings. Build with [`LeaseConfig::new`] and adjust fields.
///
/// ```
/// use std::time::Duration;
/// let config = kcl::leases::coordinator::LeaseConfig::new("worker-1");
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
    /// How often the lease table is scanned for leases to take; default 500 ms, so a
    /// released lease is picked up within about a second. Each scan is one consistent
    /// Scan of the lease table and one of the worker table (reads, no writes).
    pub taking_interval: Duration,
    /// Upper bound on leases held by this worker.
    pub max_leases_per_worker: Option<usize>,
    /// How long a graceful handoff may take before the new owner takes the lease by
    /// force; default `failover_time`.
    pub handoff_timeout: Option<Duration>,
}

impl LeaseConfig {
    /// Defaults for `worker_id`.
    pub fn new(worker_id: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            worker_id: worker_id.into(),
            failover_time: Duration::from_secs(10),
            renewal_interval: None,
            taking_interval: Duration::from_millis(500),
            max_leases_per_worker: None,
            handoff_timeout: None,
        }
    }

    /// The effective renewal interval.
    pub fn renewal_interval(&self) -> Duration {
        self.renewal_interval.unwrap_or(self.failover_time / 3)
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
}

/// One worker's lease coordinator.
pub struct LeaseCoordinator {
    store: Arc<dyn LeaseStore>,
    config: LeaseConfig,
    held: Mutex<HashMap<String, Arc<LeaseHandle>>>,
    observer: Mutex<Observer>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    stats: CoordinatorStats,
    seed: u64,
    taking_stopped: AtomicBool,
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
            observer: Mutex::new(Observer::new(config.failover_time)),
            store,
            held: Mutex::new(HashMap::new()),
            events,
            stats: CoordinatorStats::default(),
            seed: hasher.finish(),
            taking_stopped: AtomicBool::new(false),
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

    /// Handles of leases currently held or being acquired.
    pub fn held(&self) -> Vec<Arc<LeaseHandle>> {
        self.held.lock().unwrap().values().cloned().collect()
    }

    /// Runs renewal and taking until `cancel` is cancelled. Leases stay held on return;
    /// call [`LeaseCoordinator::release_all`] after the processors have checkpointed.
    pub async fn run(self: &Arc<Self>, cancel: CancellationToken) -> Result<(), LeaseError> {
        self.store.ensure_tables().await?;
        self.store.heartbeat(&self.config.worker_id).await?;
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

    async fn renewal_loop(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.config.renewal_interval();
        let mut next = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            next += interval;
            if self.taking_stopped.load(Ordering::SeqCst) {
                // Leaving: the worker record is gone and must stay gone.
            } else if let Err(e) = self.store.heartbeat(&self.config.worker_id).await {
                tracing::warn!(worker = %self.config.worker_id, error = %e, "heartbeat failed");
            }
            let mut renewals = JoinSet::new();
            for handle in self.held() {
                let retry_pause = (interval / 8).max(Duration::from_millis(50));
                renewals.spawn(renew_until_expiry(handle, retry_pause));
            }
            while renewals.join_next().await.is_some() {}
            self.forget_lost();
        }
    }

    fn forget_lost(&self) {
        self.held
            .lock()
            .unwrap()
            .retain(|_, handle| !matches!(handle.phase(), LeasePhase::Lost(_)));
    }

    async fn taking_loop(self: Arc<Self>, cancel: CancellationToken) -> Result<(), LeaseError> {
        loop {
            let next_expiry = match self.taking_cycle(&cancel).await {
                Ok(next_expiry) => next_expiry,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "taking cycle failed; retrying next cycle");
                    None
                }
                Err(e) => return Err(e),
            };
            self.stats.taking_cycles.fetch_add(1, Ordering::Relaxed);
            let mut wake = Instant::now() + self.config.taking_interval;
            if let Some(expiry) = next_expiry {
                wake = wake.min(expiry + Duration::from_millis(1));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// One taking cycle; returns when the next observed lease would expire.
    async fn taking_cycle(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Result<Option<Instant>, LeaseError> {
        let leases = self.store.list_leases().await?;
        let workers = self.store.list_workers().await?;
        let now = Instant::now();
        let (expired, live, next_expiry) = {
            let mut observer = self.observer.lock().unwrap();
            observer.observe_leases(&leases, now);
            observer.observe_workers(&workers, now);
            let mut expired = observer.expired_leases(now);
            let held = self.held.lock().unwrap();
            // Our own renewals are fresh whatever the listing's timing says.
            expired.retain(|key| !held.contains_key(key));
            (
                expired,
                observer.live_workers(now),
                observer.next_expiry(now),
            )
        };
        self.notice_changes(&leases).await;
        if cancel.is_cancelled() || self.taking_stopped.load(Ordering::SeqCst) {
            return Ok(next_expiry);
        }
        let plan = plan_takes(&TakerInput {
            me: &self.config.worker_id,
            leases: &leases,
            expired: &expired,
            live_workers: &live,
            max_leases_per_worker: self.config.max_leases_per_worker,
            seed: self.seed,
        });
        if !plan.is_empty() {
            self.stats.active_cycles.fetch_add(1, Ordering::Relaxed);
        }
        let mut writes = JoinSet::new();
        for action in plan {
            writes.spawn(Arc::clone(self).perform(action));
        }
        while let Some(done) = writes.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "lease take failed");
            }
        }
        Ok(next_expiry)
    }

    /// Applies what a listing shows about leases we hold: a handoff request, or
    /// another owner (taken while we could not see it).
    async fn notice_changes(&self, leases: &[Lease]) {
        let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        for handle in self.held() {
            if handle.phase() != LeasePhase::Held {
                continue;
            }
            match by_key.get(handle.key()) {
                None => handle.mark_lost(LostReason::Deleted),
                Some(lease) if lease.owner.as_deref() != Some(self.config.worker_id.as_str()) => {
                    if lease.checkpoint_owner.as_deref() == Some(self.config.worker_id.as_str()) {
                        handle.note_handoff_request(lease).await;
                    } else {
                        handle.mark_lost(LostReason::TakenOver);
                    }
                }
                Some(_) => {}
            }
        }
        self.forget_lost();
    }

    async fn perform(self: Arc<Self>, action: TakeAction) -> Result<(), LeaseError> {
        let me = self.config.worker_id.clone();
        let sent = Instant::now();
        let (expect, change, from) = match &action {
            TakeAction::Take {
                counter,
                previous_owner,
                ..
            } => (
                Expect {
                    counter: Some(*counter),
                    owner: Some(previous_owner.clone()),
                    checkpoint_owner: None,
                },
                Change {
                    bump_counter: true,
                    owner: Some(Some(me.clone())),
                    checkpoint_owner: Some(None),
                    owner_switch: previous_owner.as_deref() != Some(me.as_str()),
                    ..Change::default()
                },
                None,
            ),
            TakeAction::RequestHandoff { counter, from, .. } => (
                Expect::held(*counter, Some(from)),
                Change {
                    bump_counter: true,
                    owner: Some(Some(me.clone())),
                    checkpoint_owner: Some(Some(from.clone())),
                    owner_switch: true,
                    ..Change::default()
                },
                Some(from.clone()),
            ),
        };
        let lease = match self.store.update_lease(action.key(), expect, change).await {
            Ok(lease) => lease,
            Err(LeaseError::ConditionFailed { .. }) => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.observer
            .lock()
            .unwrap()
            .note_write(&lease.key, lease.counter, sent);
        let phase = match &from {
            None => {
                self.stats.takes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(lease = %lease.key, worker = %me, "took lease");
                LeasePhase::Held
            }
            Some(from) => {
                self.stats
                    .handoffs_requested
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(lease = %lease.key, worker = %me, from = %from, "asked for lease");
                LeasePhase::AwaitingPrevious { from: from.clone() }
            }
        };
        let handle = LeaseHandle::new(
            &lease,
            &me,
            Arc::clone(&self.store),
            self.config.failover_time,
            sent,
            phase,
        );
        self.held
            .lock()
            .unwrap()
            .insert(lease.key.clone(), Arc::clone(&handle));
        if from.is_some() {
            self.await_previous_owner(handle, sent).await;
        } else {
            let _ = self.events.send(LeaseEvent::Acquired { handle, lease });
        }
        Ok(())
    }

    /// Polls until the previous owner has handed over (or the timeout forces it), then
    /// announces the lease.
    async fn await_previous_owner(&self, handle: Arc<LeaseHandle>, asked_at: Instant) {
        let timeout = self.config.handoff_timeout();
        let poll = (self.config.taking_interval / 5)
            .clamp(Duration::from_millis(20), Duration::from_millis(100));
        loop {
            match handle.poll_previous_owner(asked_at, timeout).await {
                Ok(LeasePhase::Held) => break,
                Ok(LeasePhase::AwaitingPrevious { .. }) => {}
                Ok(_) | Err(HandleError::Lost { .. }) => return,
                Err(e) => tracing::warn!(lease = %handle.key(), error = %e, "handoff poll failed"),
            }
            tokio::time::sleep(poll).await;
        }
        match self.store.get_lease(handle.key()).await {
            Ok(Some(lease)) => {
                let _ = self.events.send(LeaseEvent::Acquired { handle, lease });
            }
            Ok(None) => handle.mark_lost(LostReason::Deleted),
            Err(e) => {
                tracing::warn!(lease = %handle.key(), error = %e, "cannot read acquired lease; giving it up");
                let _ = handle.hand_over().await;
            }
        }
    }

    /// Graceful exit: removes this worker's record first (so others immediately count
    /// one worker fewer and have room to take), then releases every held lease and
    /// ends handoffs in progress. Call after `run` returned and processors checkpointed.
    pub async fn release_all(&self) -> Result<(), LeaseError> {
        self.store.remove_worker(&self.config.worker_id).await?;
        let mut releases = JoinSet::new();
        for handle in self.held() {
            releases.spawn(async move { (handle.key().to_string(), handle.hand_over().await) });
        }
        while let Some(Ok((key, result))) = releases.join_next().await {
            match result {
                Ok(()) => tracing::info!(lease = %key, "released lease"),
                Err(HandleError::Lost { .. }) => {}
                Err(e) => tracing::warn!(lease = %key, error = %e, "could not release lease"),
            }
        }
        self.forget_lost();
        Ok(())
    }
}

/// Renews once, retrying transient errors until the lease would expire.
async fn renew_until_expiry(handle: Arc<LeaseHandle>, retry_pause: Duration) {
    loop {
        match handle.renew().await {
            Ok(RenewOutcome::PhaseChanged(phase)) => {
                tracing::info!(lease = %handle.key(), ?phase, "lease phase changed at renewal");
                return;
            }
            Ok(_) => return,
            Err(HandleError::Store(e)) if e.is_transient() => {
                tracing::debug!(lease = %handle.key(), error = %e, "renewal failed; retrying");
                tokio::time::sleep(retry_pause).await;
            }
            Err(HandleError::Lost { reason, .. }) => {
                tracing::warn!(lease = %handle.key(), ?reason, "lease lost");
                return;
            }
            Err(e) => {
                tracing::warn!(lease = %handle.key(), error = %e, "renewal failed");
                return;
            }
        }
    }
}
