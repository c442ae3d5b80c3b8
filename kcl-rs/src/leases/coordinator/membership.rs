//! Membership: this worker's heartbeat in the group item, which returns the whole
//! group at no read cost; eviction of workers judged dead; and the promise eviction
//! rests on: a worker whose own heartbeat has not succeeded for the failover time gives
//! up every lease, so the leases of an evicted worker may be taken at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::LeaseCoordinator;
use super::renewal::tick;
use crate::leases::handle::{LeasePhase, LostReason};
use crate::leases::retry;
use crate::leases::store::{LeaseError, Membership};

/// The group as this worker last saw it, beyond the members' heartbeats (which the
/// expiry tracker keeps).
#[derive(Debug, Default)]
pub(super) struct Group {
    /// The lease generation of the last snapshot.
    pub(super) lease_generation: u64,
    /// When the last snapshot arrived.
    pub(super) observed_at: Option<Instant>,
    /// Until when this worker may hold leases as far as its membership goes: the send
    /// time of its last successful heartbeat plus the failover time. `None` before it
    /// joined.
    pub(super) valid_until: Option<Instant>,
    /// How many leases each member said it held at its last heartbeat.
    pub(super) leases_held: HashMap<String, u64>,
}

impl LeaseCoordinator {
    /// Joins the group (or, when this worker id is still a member, heartbeats it).
    pub(super) async fn join(&self) -> Result<(), LeaseError> {
        let sent = Instant::now();
        let group = self.store.join(&self.config.worker_id).await?;
        self.beat_succeeded(&group, sent);
        Ok(())
    }

    /// A join or heartbeat sent at `sent` succeeded with `snapshot`: this worker's
    /// membership holds until a failover time after `sent`.
    fn beat_succeeded(&self, snapshot: &Membership, sent: Instant) {
        self.observe(snapshot);
        self.group.lock().unwrap().valid_until = Some(sent + self.config.failover_time);
    }

    /// The members as last seen (less the workers this one evicted since).
    pub(super) fn members(&self) -> Vec<String> {
        self.expiry.lock().unwrap().workers()
    }

    /// Records a snapshot of the group, taken now.
    pub(super) fn observe(&self, snapshot: &Membership) {
        self.expiry
            .lock()
            .unwrap()
            .observe_workers(&snapshot.workers, Instant::now());
        let mut group = self.group.lock().unwrap();
        group.lease_generation = snapshot.lease_generation;
        group.observed_at = Some(Instant::now());
        group.leases_held = snapshot
            .workers
            .iter()
            .filter_map(|w| Some((w.worker_id.clone(), w.leases?)))
            .collect();
    }

    /// The most leases another of the `live` workers said it held (0 if none said).
    pub(super) fn most_held_by_another(&self, live: &[String]) -> u64 {
        let group = self.group.lock().unwrap();
        live.iter()
            .filter(|w| **w != self.config.worker_id)
            .filter_map(|w| group.leases_held.get(w).copied())
            .max()
            .unwrap_or(0)
    }

    /// How old the last snapshot of the group is (`None`: never seen).
    pub(super) fn group_age(&self) -> Option<std::time::Duration> {
        self.group
            .lock()
            .unwrap()
            .observed_at
            .map(|at| at.elapsed())
    }

    /// Whether this worker's membership is valid now (it may hold and take leases).
    pub(super) fn membership_valid(&self) -> bool {
        self.group
            .lock()
            .unwrap()
            .valid_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// This worker's rank among the live workers by id: 0 is the *leader*, 0 and 1
    /// are the *watchers*, which read the group every taking cycle so that a worker
    /// leaving (the leader included) is noticed within a cycle; the others see the
    /// group at each of their heartbeats.
    pub(super) fn rank(&self, now: Instant) -> usize {
        let me = self.config.worker_id.as_str();
        self.expiry
            .lock()
            .unwrap()
            .live_workers(now)
            .iter()
            .filter(|w| w.as_str() < me)
            .count()
    }

    /// Evicts every other worker whose heartbeat has not changed for the failover time
    /// (conditional on the heartbeat last seen).
    pub(super) async fn evict_dead(&self) {
        let dead = self.expiry.lock().unwrap().dead_workers(Instant::now());
        for (worker, heartbeat) in dead {
            if worker == self.config.worker_id {
                continue;
            }
            match self.store.evict_worker(&worker, heartbeat).await {
                Ok(()) => {
                    tracing::warn!(worker = %self.config.worker_id, evicted = %worker, "evicted a worker whose heartbeat stopped");
                    self.expiry.lock().unwrap().forget_worker(&worker);
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
                // It heartbeat since, or someone else evicted it: the next snapshot says.
                Err(LeaseError::ConditionFailed { .. }) => {}
                Err(e) => tracing::warn!(worker = %worker, error = %e, "eviction failed"),
            }
        }
    }

    /// Gives up every lease held or being acquired: this worker's membership lapsed or
    /// it was evicted, so others may take its leases now.
    pub(super) fn give_up_all(&self, why: &str) {
        let held = self.held();
        if !held.is_empty() {
            tracing::warn!(worker = %self.config.worker_id, leases = held.len(), "{why}: giving up every lease");
        }
        for handle in held {
            if !matches!(handle.phase(), LeasePhase::Lost(_)) {
                handle.mark_lost(LostReason::ExpiredLocally);
            }
        }
        self.forget_lost();
    }

    /// Heartbeats every renewal interval, independently of the lease renewals. A
    /// failing heartbeat is retried until the membership would lapse; then every lease
    /// is given up. Evicted (the heartbeat's condition fails): every lease is given up
    /// and the worker joins again.
    pub(super) async fn heartbeat_loop(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.config.renewal_interval();
        let attempt = retry::attempt_timeout(self.config.failover_time);
        let mut next = tokio::time::Instant::now() + interval;
        while tick(&mut next, interval, &cancel).await {
            if self.taking_stopped.load(Ordering::SeqCst) {
                // Leaving: the worker is out of the group and must stay out.
                continue;
            }
            let sent = Instant::now();
            let valid_until = self.group.lock().unwrap().valid_until.unwrap_or(sent);
            let deadline = valid_until.max(sent + interval);
            let held = self.held.lock().unwrap().len() as u64;
            let beat = retry::until_deadline(deadline.into(), attempt, || {
                self.store.heartbeat(&self.config.worker_id, held)
            });
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                result = beat => result,
            };
            match result {
                Ok(snapshot) => {
                    self.beat_succeeded(&snapshot, sent);
                    self.evict_dead().await;
                }
                Err(LeaseError::ConditionFailed { .. }) => {
                    self.give_up_all("evicted from the group");
                    if let Err(e) = self.join().await {
                        tracing::warn!(worker = %self.config.worker_id, error = %e, "joining again failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %self.config.worker_id, error = %e, "heartbeat failed");
                    if Instant::now() >= valid_until {
                        self.give_up_all("no heartbeat for the failover time");
                    }
                }
            }
        }
    }
}
