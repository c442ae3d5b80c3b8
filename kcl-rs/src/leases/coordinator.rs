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
//! - **taking**, every `taking_interval` and also exactly when an observed lease is due
//!   to expire: list the workers and, when something may have changed (a worker came
//!   or went, a lease is due to expire, this worker is below its share, or
//!   `lease_scan_interval` passed), the lease table; update the expiry tracker, plan
//!   with [`plan_takes`] and perform the planned conditional
//!   writes.
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
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::expiry::ExpiryTracker;
use super::handle::{HandleError, LeaseHandle, LeasePhase, LostReason, RenewOutcome};
use super::lease::Lease;
use super::retry;
use super::scan::{LastScan, scan_due};
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
    /// How often a taking cycle runs; default 500 ms, so a released lease is picked up
    /// within about a second. Each cycle lists the worker table (a consistent Scan of
    /// one small item per worker) and, only when
    /// [`lease_scan_interval`](LeaseConfig::lease_scan_interval) says so, the lease
    /// table (an eventually consistent Scan).
    pub taking_interval: Duration,
    /// Upper bound on leases held by this worker.
    pub max_leases_per_worker: Option<usize>,
    /// How long a graceful handoff may take before the new owner takes the lease by
    /// force; default `failover_time`.
    pub handoff_timeout: Option<Duration>,
    /// The longest time between two listings of the whole lease table; default
    /// `failover_time / 4`. Between them a taking cycle lists only the worker table,
    /// and lists the lease table too when a worker joined or left, when an observed
    /// lease is due to expire, or while this worker holds fewer than its share.
    pub lease_scan_interval: Option<Duration>,
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
            lease_scan_interval: None,
        }
    }

    /// The effective renewal interval.
    pub fn renewal_interval(&self) -> Duration {
        self.renewal_interval.unwrap_or(self.failover_time / 3)
    }

    /// The effective longest interval between two listings of the lease table.
    pub fn lease_scan_interval(&self) -> Duration {
        self.lease_scan_interval.unwrap_or(self.failover_time / 4)
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

    /// Keeps one renewal task running per held lease, and the heartbeat task, until
    /// cancelled; then waits for them (each ends at once on cancellation).
    async fn renewal_loop(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.config.renewal_interval();
        let heartbeat = tokio::spawn(Arc::clone(&self).heartbeat_loop(cancel.clone()));
        // A new lease was written at its take; its first renewal is due an interval
        // later, so noticing it within a fraction of that is soon enough.
        let tick = (interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut renewers: HashMap<String, (Arc<LeaseHandle>, JoinHandle<()>)> = HashMap::new();
        loop {
            for handle in self.held() {
                let running = renewers.get(handle.key()).is_some_and(|(renewed, task)| {
                    Arc::ptr_eq(renewed, &handle) && !task.is_finished()
                });
                if !running {
                    let task =
                        tokio::spawn(renew_lease(Arc::clone(&handle), interval, cancel.clone()));
                    renewers.insert(handle.key().to_string(), (handle, task));
                }
            }
            renewers.retain(|_, (_, task)| !task.is_finished());
            self.forget_lost();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
        for (_, (_, task)) in renewers {
            let _ = task.await;
        }
        let _ = heartbeat.await;
        self.forget_lost();
    }

    /// Heartbeats the worker record every renewal interval, each call bounded by the
    /// interval, independently of the lease renewals.
    async fn heartbeat_loop(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.config.renewal_interval();
        let attempt = retry::attempt_timeout(self.config.failover_time);
        let mut next = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            next = (next + interval).max(tokio::time::Instant::now());
            if self.taking_stopped.load(Ordering::SeqCst) {
                // Leaving: the worker record is gone and must stay gone.
                continue;
            }
            let deadline = tokio::time::Instant::now() + interval;
            let beat = retry::until_deadline(deadline, attempt, || {
                self.store.heartbeat(&self.config.worker_id)
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                result = beat => if let Err(e) = result {
                    tracing::warn!(worker = %self.config.worker_id, error = %e, "heartbeat failed");
                }
            }
        }
    }

    fn forget_lost(&self) {
        let mut lost = 0;
        self.held
            .lock()
            .unwrap()
            .retain(|_, handle| match handle.phase() {
                LeasePhase::Lost(LostReason::HandedOver | LostReason::Released) => false,
                LeasePhase::Lost(_) => {
                    lost += 1;
                    false
                }
                _ => true,
            });
        self.stats.leases_lost.fetch_add(lost, Ordering::Relaxed);
    }

    async fn taking_loop(self: Arc<Self>, cancel: CancellationToken) -> Result<(), LeaseError> {
        loop {
            // A cycle stuck on a slow listing must not hold up shutdown; a take cut
            // off here is at worst a lease owned but not held, free after expiry.
            let cycle = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                cycle = self.taking_cycle(&cancel) => cycle,
            };
            let next_expiry = match cycle {
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
        let workers = self.store.list_workers().await?;
        let now = Instant::now();
        let live = {
            let mut expiry = self.expiry.lock().unwrap();
            expiry.observe_workers(&workers, now);
            expiry.live_workers(now)
        };
        if !self.lease_scan_due(&live, now) {
            return Ok(self.expiry.lock().unwrap().next_expiry(now));
        }
        let leases = self.store.scan_leases().await?;
        self.stats.lease_scans.fetch_add(1, Ordering::Relaxed);
        self.stats
            .malformed_items
            .store(self.store.malformed_items(), Ordering::Relaxed);
        *self.last_scan.lock().unwrap() = LastScan {
            at: Some(now),
            live_workers: live.clone(),
            leases: leases.len(),
        };
        let (expired, next_expiry) = {
            let mut expiry = self.expiry.lock().unwrap();
            expiry.observe_leases(&leases, now);
            let mut expired = expiry.expired_leases(now);
            let held = self.held.lock().unwrap();
            // Our own renewals are fresh whatever the listing's timing says.
            expired.retain(|key| !held.contains_key(key));
            (expired, expiry.next_expiry(now))
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

    /// Whether this taking cycle must list the whole lease table (see [`scan_due`]).
    fn lease_scan_due(&self, live: &[String], now: Instant) -> bool {
        let last = self.last_scan.lock().unwrap();
        let expiry_due = last
            .at
            .is_some_and(|at| self.expiry.lock().unwrap().expiry_between(at, now));
        scan_due(
            &last,
            live,
            self.held.lock().unwrap().len(),
            expiry_due,
            &self.config,
            now,
        )
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
                // Ours by name, but a later ownership of this worker.
                Some(lease) if lease.epoch != Some(handle.epoch()) => {
                    handle.mark_lost(LostReason::TakenOver)
                }
                Some(_) => {}
            }
        }
        self.forget_lost();
    }

    async fn perform(self: Arc<Self>, action: TakeAction) -> Result<(), LeaseError> {
        let me = self.config.worker_id.clone();
        let (expect, change, from) = match &action {
            TakeAction::Take {
                counter,
                previous_owner,
                ..
            } => (
                Expect {
                    counter: Some(*counter),
                    owner: Some(previous_owner.clone()),
                    ..Expect::default()
                },
                Change {
                    bump_counter: true,
                    owner: Some(Some(me.clone())),
                    checkpoint_owner: Some(None),
                    // A new ownership, even when the previous owner was this worker.
                    epoch: Some(counter + 1),
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
                    epoch: Some(counter + 1),
                    keep_epoch_for_checkpoint_owner: true,
                    owner_switch: true,
                    ..Change::default()
                },
                Some(from.clone()),
            ),
        };
        // A transient failure (a transaction conflict with the previous owner's fenced
        // transaction, throttling) is retried briefly; beyond that the next cycle
        // plans afresh.
        let attempt = retry::attempt_timeout(self.config.failover_time);
        let deadline = tokio::time::Instant::now() + attempt * 2;
        let written = retry::update_lease(
            self.store.as_ref(),
            action.key(),
            expect,
            change,
            deadline,
            attempt,
        )
        .await;
        let (lease, sent) = match written {
            Ok(written) => written,
            Err(LeaseError::ConditionFailed { .. }) => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.expiry
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

    /// Leaves the group: stops taking and heartbeating and removes this worker's record
    /// (so others count one worker fewer at once), once; later calls do nothing. The
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

/// Renews `handle` every `interval` until it is lost or `cancel` is cancelled. Each
/// renewal retries transient errors itself until the lease would expire.
async fn renew_lease(handle: Arc<LeaseHandle>, interval: Duration, cancel: CancellationToken) {
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = (next + interval).max(tokio::time::Instant::now());
        let renewed = tokio::select! {
            _ = cancel.cancelled() => return,
            renewed = handle.renew() => renewed,
        };
        match renewed {
            Ok(RenewOutcome::PhaseChanged(phase)) => {
                tracing::info!(lease = %handle.key(), ?phase, "lease phase changed at renewal");
            }
            Ok(_) => {}
            Err(HandleError::Lost { reason, .. }) => {
                tracing::warn!(lease = %handle.key(), ?reason, "lease lost");
            }
            Err(e) => {
                tracing::warn!(lease = %handle.key(), error = %e, "renewal failed");
            }
        }
        if matches!(handle.phase(), LeasePhase::Lost(_)) {
            return;
        }
    }
}
