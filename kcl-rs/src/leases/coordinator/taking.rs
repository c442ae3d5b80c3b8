//! Taking: list the workers (and, when something may have changed, the lease table),
//! plan with [`plan_takes`] and perform the planned conditional writes; wait for a
//! previous owner's handoff before announcing a lease.

use std::collections::{HashMap, HashSet};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{LeaseCoordinator, LeaseEvent};
use crate::leases::handle::{HandleError, LeaseHandle, LeasePhase, LostReason};
use crate::leases::lease::{Lease, LeaseState};
use crate::leases::retry;
use crate::leases::scan::{LastScan, Seen, scan_due};
use crate::leases::store::{Change, Expect, LeaseError, Membership};
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
            match cycle {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "taking cycle failed; retrying next cycle");
                }
                Err(e) => return Err(e),
            }
            self.stats.taking_cycles.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.config.taking_interval) => {}
            }
        }
    }

    /// One taking cycle.
    pub(super) async fn taking_cycle(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Result<(), LeaseError> {
        if !self.membership_valid() {
            // Not a member in good standing: the heartbeat task gives up the leases
            // and joins again; nothing to take until then.
            return Ok(());
        }
        let rank = self.rank(Instant::now());
        // A watcher reads the group unless its own heartbeat just returned it.
        let fresh = self
            .group_age()
            .is_some_and(|age| age < self.config.taking_interval / 2);
        if rank < 2 && !fresh {
            let snapshot = self.store.membership().await?;
            self.observe(&snapshot);
            self.evict_dead().await;
        }
        let now = Instant::now();
        // Ranks move when a watcher sees the leader go.
        let leader = self.rank(now) == 0;
        let members = self.members();
        let generation = self.group.lock().unwrap().lease_generation;
        let live = self.expiry.lock().unwrap().live_workers(now);
        let busiest = self.most_held_by_another(&live);
        if !self.lease_scan_due(&members, live.len(), generation, busiest, leader, now) {
            // Nothing changed, so nothing to take: the gauges still say so every cycle
            // (an exporter may drop gauges left idle).
            self.metrics.leases_to_take.set(0.0);
            self.metrics.live_workers.set(live.len() as f64);
            return Ok(());
        }
        let leases = self.store.scan_leases().await?;
        self.stats.lease_scans.fetch_add(1, Ordering::Relaxed);
        self.stats
            .malformed_items
            .store(self.store.malformed_items(), Ordering::Relaxed);
        // The group read after the listing: every owner the listing shows joined before
        // it took its lease, so an owner missing here was evicted or left. It also
        // gives the plan the workers as they are now.
        let group = self.store.membership().await?;
        self.observe(&group);
        let departed = {
            let mut last = self.last_scan.lock().unwrap();
            let departed = last.members.iter().any(|w| !members.contains(w));
            *last = LastScan {
                at: Some(now),
                members,
                leases: leases
                    .iter()
                    .filter(|l| l.state() != LeaseState::Finished)
                    .count(),
                lease_generation: generation,
            };
            departed
        };
        let (expired, live_workers) = {
            let mut expiry = self.expiry.lock().unwrap();
            expiry.observe_leases(&leases, now);
            let mut expired = expiry.expired_leases(now);
            expired.extend(orphans(&leases, &group, &self.config.worker_id));
            let held = self.held.lock().unwrap();
            // Our own renewals are fresh whatever the listing's timing says.
            expired.retain(|key| !held.contains_key(key));
            (expired, expiry.live_workers(Instant::now()))
        };
        // The leader covers a departure at once: it takes every lease the worker that
        // left released or that an evicted worker left behind (others then ask it for
        // handoffs). Otherwise, at a cold start or for new leases, everyone takes up to
        // its share, so no lease moves twice.
        let absorb = departed && self.rank(Instant::now()) == 0;
        self.notice_changes(&leases).await;
        if cancel.is_cancelled()
            || self.taking_stopped.load(Ordering::SeqCst)
            || !self.membership_valid()
        {
            return Ok(());
        }
        let plan = plan_takes(&TakerInput {
            me: &self.config.worker_id,
            leases: &leases,
            expired: &expired,
            live_workers: &live_workers,
            max_leases_per_worker: self.config.max_leases_per_worker,
            seed: self.seed,
            absorb,
            balance: self.config.balance,
        });
        if !plan.is_empty() {
            self.stats.active_cycles.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.leases_to_take.set(plan.len() as f64);
        self.metrics.live_workers.set(live_workers.len() as f64);
        let mut writes = JoinSet::new();
        for action in plan {
            writes.spawn(Arc::clone(self).perform(action));
        }
        while let Some(done) = writes.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "lease take failed");
            }
        }
        Ok(())
    }

    /// Whether this taking cycle must list the whole lease table (see [`scan_due`]).
    pub(super) fn lease_scan_due(
        &self,
        members: &[String],
        live: usize,
        lease_generation: u64,
        busiest: u64,
        leader: bool,
        now: Instant,
    ) -> bool {
        let seen = Seen {
            at: now,
            members,
            live,
            lease_generation,
            held: self.held.lock().unwrap().len(),
            busiest,
            leader,
        };
        scan_due(&self.last_scan.lock().unwrap(), &seen, &self.config)
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
        let started = tokio::time::Instant::now();
        let deadline = started + attempt * 2;
        let written = retry::update_lease(
            self.store.as_ref(),
            action.key(),
            expect,
            change,
            deadline,
            attempt,
        )
        .await;
        self.metrics
            .take_seconds
            .record(started.elapsed().as_secs_f64());
        let (lease, sent) = match written {
            Ok(written) => written,
            Err(LeaseError::ConditionFailed { .. }) => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                self.metrics.take_failures.increment(1);
                return Ok(());
            }
            Err(e) => {
                self.metrics.take_failures.increment(1);
                return Err(e);
            }
        };
        self.metrics.leases_taken.increment(1);
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
        {
            let mut held = self.held.lock().unwrap();
            held.insert(lease.key.clone(), Arc::clone(&handle));
            self.metrics.current_leases.set(held.len() as f64);
        }
        if !self.membership_valid() {
            // The membership lapsed while the take was in flight: others may take
            // this worker's leases now, so this one is not ours to process.
            handle.mark_lost(LostReason::ExpiredLocally);
            self.forget_lost();
            return Ok(());
        }
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

/// Leases owned by a worker that is not in the group (evicted or gone) other than `me`:
/// free to take at once, since a worker gives up its leases when its own heartbeat has
/// not succeeded for the failover time, which its eviction required.
fn orphans(leases: &[Lease], group: &Membership, me: &str) -> HashSet<String> {
    leases
        .iter()
        .filter(|l| {
            l.owner
                .as_deref()
                .is_some_and(|owner| owner != me && !group.contains(owner))
        })
        .map(|l| l.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ExtendedSequenceNumber;
    use crate::leases::store::WorkerHeartbeat;

    #[test]
    fn leases_of_workers_outside_the_group_are_orphans() {
        let lease = |key: &str, owner: Option<&str>| {
            let mut lease = Lease::new(key, ExtendedSequenceNumber::shard_end());
            lease.owner = owner.map(str::to_string);
            lease
        };
        let leases = [
            lease("free", None),
            lease("mine", Some("me")),
            lease("member", Some("a")),
            lease("evicted", Some("b")),
        ];
        let group = Membership {
            workers: ["a", "me"]
                .iter()
                .map(|id| WorkerHeartbeat {
                    worker_id: id.to_string(),
                    heartbeat: 1,
                    leases: None,
                })
                .collect(),
            lease_generation: 0,
        };
        assert_eq!(
            orphans(&leases, &group, "me"),
            HashSet::from(["evicted".to_string()])
        );
    }
}
