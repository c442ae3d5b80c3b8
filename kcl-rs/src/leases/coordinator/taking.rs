//! Taking: list the workers (and, when something may have changed, the lease table),
//! plan with [`plan_takes`] and perform the planned conditional writes; wait for a
//! previous owner's handoff before announcing a lease.

use std::collections::HashMap;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{LeaseCoordinator, LeaseEvent};
use crate::leases::handle::{HandleError, LeaseHandle, LeasePhase, LostReason};
use crate::leases::lease::Lease;
use crate::leases::retry;
use crate::leases::scan::{LastScan, scan_due};
use crate::leases::store::{Change, Expect, LeaseError};
use crate::leases::taker::{TakeAction, TakerInput, plan_takes};

impl LeaseCoordinator {
    pub(super) async fn taking_loop(
        self: Arc<Self>,
        cancel: CancellationToken,
    ) -> Result<(), LeaseError> {
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
    pub(super) async fn taking_cycle(
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
    pub(super) fn lease_scan_due(&self, live: &[String], now: Instant) -> bool {
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
    pub(super) async fn notice_changes(&self, leases: &[Lease]) {
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

    pub(super) async fn perform(self: Arc<Self>, action: TakeAction) -> Result<(), LeaseError> {
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
    pub(super) async fn await_previous_owner(&self, handle: Arc<LeaseHandle>, asked_at: Instant) {
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
}
