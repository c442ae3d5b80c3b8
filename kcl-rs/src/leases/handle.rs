//! A held lease, as one worker sees it: an explicit state machine whose every
//! transition is a conditional write on the lease item.
//!
//! ```text
//!                take (free/expired)
//!   (none) ───────────────────────────────> Held ──release──> Lost(Released)
//!      │ request handoff                     ^  │  │
//!      v                                     │  │  └─ write rejected, now someone
//!   AwaitingPrevious ──previous owner done───┘  │     else's ──> Lost(TakenOver)
//!      │  or handoff timeout (force)            │
//!      │                                        │ another worker asks
//!      └─ rejected ──> Lost(TakenOver)          v
//!                                          HandingOff ──hand_over──> Lost(HandedOver)
//! ```
//!
//! `Held` is also left for `Lost(ExpiredLocally)` when renewals have failed for longer
//! than the failover time: others may already have taken the lease, so processing stops
//! even before a write is rejected (a paused "zombie" worker resumes into this state).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};

use crate::checkpoint::ExtendedSequenceNumber;

use super::lease::{Lease, ShardLoad};
use super::retry;
use super::store::{Change, Expect, LeaseError, LeaseStore};

/// Why a lease is no longer held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Another worker took it (a conditional write of ours was rejected).
    TakenOver,
    /// Renewals failed for a whole failover time; others may have taken it.
    ExpiredLocally,
    /// We handed it over gracefully to the worker that asked.
    HandedOver,
    /// We released it (graceful shutdown).
    Released,
    /// The lease item no longer exists.
    Deleted,
}

/// The lifecycle phase of a held lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeasePhase {
    /// We asked `from` to hand the lease over and wait for it to let go; do not process.
    AwaitingPrevious {
        /// The previous owner.
        from: String,
    },
    /// Ours: process and checkpoint.
    Held,
    /// `to` asked for the lease: finish the batch in flight, checkpoint, then
    /// [`LeaseHandle::hand_over`]. Checkpoints are still accepted.
    HandingOff {
        /// The worker taking over.
        to: String,
    },
    /// Not ours any more: stop at once and do not checkpoint.
    Lost(LostReason),
}

impl LeasePhase {
    /// Whether records may be processed in this phase.
    pub fn may_process(&self) -> bool {
        matches!(self, LeasePhase::Held | LeasePhase::HandingOff { .. })
    }
}

/// Errors of lease operations through a handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The lease is not ours any more.
    #[error("lease {key} lost ({reason:?})")]
    Lost {
        /// The lease.
        key: String,
        /// Why.
        reason: LostReason,
    },
    /// The operation is not allowed in the current phase (e.g. checkpoint while
    /// still awaiting the previous owner).
    #[error("lease {key}: not allowed while {phase:?}")]
    WrongPhase {
        /// The lease.
        key: String,
        /// The phase.
        phase: LeasePhase,
    },
    /// The store failed (after retries, for transient errors).
    #[error(transparent)]
    Store(#[from] LeaseError),
}

struct Inner {
    counter: u64,
    /// Until when nobody else can have judged the lease expired: the send time of our
    /// last successful renewal plus the failover time (less a margin).
    valid_until: Instant,
    load: Option<ShardLoad>,
}

/// One lease held (or being acquired) by this worker. Shared by the coordinator, which
/// renews it, and the shard's consumer, which checkpoints through it.
pub struct LeaseHandle {
    key: String,
    worker_id: String,
    /// The lease counter our acquiring write left (see [`LeaseHandle::epoch`]).
    epoch: u64,
    store: Arc<dyn LeaseStore>,
    failover_time: Duration,
    /// The timeout of one lease-table request (see [`retry::attempt_timeout`]).
    attempt_timeout: Duration,
    inner: Mutex<Inner>,
    phase: watch::Sender<LeasePhase>,
}

impl std::fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("key", &self.key)
            .field("phase", &*self.phase.borrow())
            .finish()
    }
}

/// What a renewal found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    /// Renewed; still ours.
    Renewed,
    /// Nothing to renew in this phase (handing off or lost).
    Skipped,
    /// The phase changed (handoff requested, lost, ...).
    PhaseChanged(LeasePhase),
}

impl LeaseHandle {
    pub(crate) fn new(
        lease: &Lease,
        worker_id: &str,
        store: Arc<dyn LeaseStore>,
        failover_time: Duration,
        written_at: Instant,
        phase: LeasePhase,
    ) -> Arc<LeaseHandle> {
        Arc::new(LeaseHandle {
            key: lease.key.clone(),
            worker_id: worker_id.to_string(),
            epoch: lease.counter,
            store,
            failover_time,
            attempt_timeout: retry::attempt_timeout(failover_time),
            inner: Mutex::new(Inner {
                counter: lease.counter,
                valid_until: valid_until(written_at, failover_time),
                load: None,
            }),
            phase: watch::channel(phase).0,
        })
    }

    /// The lease key (shard id).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The worker this handle writes as (`leaseOwner`, `checkpointOwner`).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// This ownership's epoch: the `leaseCounter` our acquiring write (take or handoff
    /// request) left. Every write bumps the counter, so a later acquisition by anyone,
    /// this worker included, has a larger epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The current phase.
    pub fn phase(&self) -> LeasePhase {
        self.phase.borrow().clone()
    }

    /// A receiver that sees every phase change (for `select!` in a consumer loop).
    pub fn watch_phase(&self) -> watch::Receiver<LeasePhase> {
        self.phase.subscribe()
    }

    /// Whether records may be processed now: the phase allows it and, when we hold the
    /// lease, our last renewal is recent enough that nobody can have taken it.
    pub async fn may_process(&self) -> bool {
        let phase = self.phase();
        if phase == LeasePhase::Held {
            let inner = self.inner.lock().await;
            if Instant::now() >= inner.valid_until {
                drop(inner);
                self.set_phase(LeasePhase::Lost(LostReason::ExpiredLocally));
                return false;
            }
        }
        phase.may_process()
    }

    /// Records the shard's observed load, written with the next renewal.
    pub async fn set_load(&self, load: ShardLoad) {
        self.inner.lock().await.load = Some(load);
    }

    fn set_phase(&self, phase: LeasePhase) {
        self.phase.send_if_modified(|current| {
            // Lost is final.
            if matches!(current, LeasePhase::Lost(_)) || *current == phase {
                return false;
            }
            *current = phase;
            true
        });
    }

    /// The fencing condition of a write while held: the counter as last seen, and this
    /// ownership (a later one of this same worker has another epoch).
    fn expect_held(&self, counter: u64) -> Expect {
        Expect {
            epoch: Some(self.epoch),
            ..Expect::held(counter, Some(&self.worker_id))
        }
    }

    fn lost(&self, reason: LostReason) -> HandleError {
        self.set_phase(LeasePhase::Lost(reason));
        HandleError::Lost {
            key: self.key.clone(),
            reason,
        }
    }

    /// Renews the lease (held or awaiting the previous owner). Transient store errors
    /// (throttling, transaction conflicts, a hung connection) are retried with backoff
    /// until the lease would expire; only then is the last one returned.
    pub async fn renew(&self) -> Result<RenewOutcome, HandleError> {
        let mut inner = self.inner.lock().await;
        for _ in 0..3 {
            let phase = self.phase();
            if !matches!(
                phase,
                LeasePhase::Held | LeasePhase::AwaitingPrevious { .. }
            ) {
                return Ok(RenewOutcome::Skipped);
            }
            let now = Instant::now();
            if phase == LeasePhase::Held && now >= inner.valid_until {
                return Err(self.lost(LostReason::ExpiredLocally));
            }
            let change = Change {
                bump_counter: true,
                load: inner.load,
                ..Change::default()
            };
            let expect = self.expect_held(inner.counter);
            // Awaiting the previous owner, the lease is not ours to lose by expiry yet;
            // give the renewal a renewal interval at least.
            let deadline = match phase {
                LeasePhase::Held => inner.valid_until,
                _ => inner.valid_until.max(now + self.failover_time / 3),
            };
            let sent = self.write(deadline, expect, change).await;
            match sent {
                Ok((lease, sent_at)) => {
                    inner.counter = lease.counter;
                    inner.valid_until = valid_until(sent_at, self.failover_time);
                    return Ok(RenewOutcome::Renewed);
                }
                Err(LeaseError::ConditionFailed { .. }) => {
                    self.reconcile(&mut inner).await?;
                    let after = self.phase();
                    if after != phase {
                        return Ok(RenewOutcome::PhaseChanged(after));
                    }
                    // Only the counter moved (a predecessor's last checkpoint): retry.
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.lost(LostReason::TakenOver))
    }

    /// One conditional write, retried while transient until `deadline`; returns the
    /// lease as written and when the successful attempt was sent (observers start their
    /// expiry clock after that).
    async fn write(
        &self,
        deadline: Instant,
        expect: Expect,
        change: Change,
    ) -> Result<(Lease, Instant), LeaseError> {
        retry::update_lease(
            self.store.as_ref(),
            &self.key,
            expect,
            change,
            deadline.into(),
            self.attempt_timeout,
        )
        .await
    }

    /// One consistent read of the lease, retried while transient for an attempt
    /// timeout's worth of attempts at most.
    async fn read(&self) -> Result<Option<Lease>, LeaseError> {
        let deadline = Instant::now() + self.attempt_timeout * 2;
        retry::until_deadline(deadline.into(), self.attempt_timeout, || {
            self.store.get_lease(&self.key)
        })
        .await
    }

    /// After a rejected write: reads the lease and moves to the phase it implies.
    async fn reconcile(&self, inner: &mut Inner) -> Result<(), HandleError> {
        let Some(lease) = self.read().await? else {
            return Err(self.lost(LostReason::Deleted));
        };
        let me = Some(self.worker_id.as_str());
        match (lease.owner.as_deref(), lease.checkpoint_owner.as_deref()) {
            (owner, checkpoint_owner)
                if owner == me && checkpoint_owner != me && lease.epoch == Some(self.epoch) =>
            {
                inner.counter = lease.counter;
                if checkpoint_owner.is_none()
                    && matches!(self.phase(), LeasePhase::AwaitingPrevious { .. })
                {
                    self.set_phase(LeasePhase::Held);
                }
                Ok(())
            }
            (Some(to), checkpoint_owner)
                if checkpoint_owner == me
                    && Some(to) != me
                    && lease.checkpoint_owner_epoch == Some(self.epoch) =>
            {
                inner.counter = lease.counter;
                self.set_phase(LeasePhase::HandingOff { to: to.to_string() });
                Ok(())
            }
            _ => Err(self.lost(LostReason::TakenOver)),
        }
    }

    /// While awaiting the previous owner: checks whether it has let go and, once
    /// `timeout` has passed since we asked, takes the lease by force. Returns the phase.
    pub async fn poll_previous_owner(
        &self,
        asked_at: Instant,
        timeout: Duration,
    ) -> Result<LeasePhase, HandleError> {
        let mut inner = self.inner.lock().await;
        if !matches!(self.phase(), LeasePhase::AwaitingPrevious { .. }) {
            return Ok(self.phase());
        }
        let Some(lease) = self.read().await? else {
            return Err(self.lost(LostReason::Deleted));
        };
        if lease.owner.as_deref() != Some(self.worker_id.as_str())
            || lease.epoch != Some(self.epoch)
        {
            return Err(self.lost(LostReason::TakenOver));
        }
        inner.counter = lease.counter;
        if lease.checkpoint_owner.is_none() {
            self.set_phase(LeasePhase::Held);
        } else if asked_at.elapsed() >= timeout {
            let forced = self
                .write(
                    Instant::now() + self.attempt_timeout * 2,
                    self.expect_held(inner.counter),
                    Change {
                        bump_counter: true,
                        checkpoint_owner: Some(None),
                        ..Change::default()
                    },
                )
                .await;
            match forced {
                Ok((lease, sent_at)) => {
                    inner.counter = lease.counter;
                    inner.valid_until = valid_until(sent_at, self.failover_time);
                    tracing::info!(lease = %self.key, "previous owner did not hand over in time; taken by force");
                    self.set_phase(LeasePhase::Held);
                }
                // Raced with the previous owner's last checkpoint; look again next poll.
                Err(LeaseError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.phase())
    }

    /// Writes a checkpoint (and clears any pending checkpoint). Allowed while held and
    /// while handing off.
    pub async fn checkpoint(&self, position: ExtendedSequenceNumber) -> Result<Lease, HandleError> {
        self.write_progress(Change {
            checkpoint: Some(position),
            pending_checkpoint: Some(None),
            ..Change::default()
        })
        .await
    }

    /// First phase of a two-phase checkpoint: records `position` as pending.
    pub async fn prepare_checkpoint(
        &self,
        position: ExtendedSequenceNumber,
    ) -> Result<Lease, HandleError> {
        self.write_progress(Change {
            pending_checkpoint: Some(Some(position)),
            ..Change::default()
        })
        .await
    }

    async fn write_progress(&self, change: Change) -> Result<Lease, HandleError> {
        let change = Change {
            bump_counter: true,
            ..change
        };
        let mut inner = self.inner.lock().await;
        for _ in 0..3 {
            let expect = match self.phase() {
                LeasePhase::Held => self.expect_held(inner.counter),
                LeasePhase::HandingOff { to } => Expect {
                    counter: None,
                    owner: Some(Some(to)),
                    checkpoint_owner: Some(Some(self.worker_id.clone())),
                    checkpoint_owner_epoch: Some(self.epoch),
                    ..Expect::default()
                },
                LeasePhase::Lost(reason) => {
                    return Err(HandleError::Lost {
                        key: self.key.clone(),
                        reason,
                    });
                }
                phase => {
                    return Err(HandleError::WrongPhase {
                        key: self.key.clone(),
                        phase,
                    });
                }
            };
            // Retried for one attempt timeout at most: the lease's renewals wait for
            // this lock, so a checkpoint failing for longer must not hold them up (the
            // checkpointer retries on top). Held, never after the lease could expire.
            let deadline = Instant::now() + self.attempt_timeout;
            let deadline = match self.phase() {
                LeasePhase::Held if Instant::now() >= inner.valid_until => {
                    // Others may have judged it expired already: never write after that.
                    return Err(self.lost(LostReason::ExpiredLocally));
                }
                LeasePhase::Held => deadline.min(inner.valid_until),
                _ => deadline,
            };
            match self.write(deadline, expect, change.clone()).await {
                Ok((lease, _)) => {
                    if self.phase() == LeasePhase::Held {
                        inner.counter = lease.counter;
                    }
                    return Ok(lease);
                }
                Err(LeaseError::ConditionFailed { .. }) => self.reconcile(&mut inner).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.lost(LostReason::TakenOver))
    }

    /// Ends a graceful handoff: lets the new owner start. Call after the final
    /// checkpoint. Also used to release a lease on graceful shutdown when held; a
    /// release that finds the lease asked for by another worker (a request this worker
    /// had not noticed yet) completes that handoff instead.
    pub async fn hand_over(&self) -> Result<(), HandleError> {
        match self.hand_over_once().await? {
            // The lease changed under the release (asked for, or our own renewal):
            // once more, in the phase the lease now implies.
            Retry::Again => match self.hand_over_once().await? {
                Retry::Again => Err(self.lost(LostReason::TakenOver)),
                Retry::Done => Ok(()),
            },
            Retry::Done => Ok(()),
        }
    }

    async fn hand_over_once(&self) -> Result<Retry, HandleError> {
        let inner = self.inner.lock().await;
        // A release must not be skipped for a transient error (the lease would stay
        // blocked for a whole failover time), but nor may it outlive the lease.
        let deadline = inner
            .valid_until
            .max(Instant::now() + self.attempt_timeout * 2);
        let (expect, change, reason) = match self.phase() {
            LeasePhase::HandingOff { to } => (
                Expect {
                    counter: None,
                    owner: Some(Some(to)),
                    checkpoint_owner: Some(Some(self.worker_id.clone())),
                    checkpoint_owner_epoch: Some(self.epoch),
                    ..Expect::default()
                },
                Change {
                    bump_counter: true,
                    checkpoint_owner: Some(None),
                    ..Change::default()
                },
                LostReason::HandedOver,
            ),
            LeasePhase::Held | LeasePhase::AwaitingPrevious { .. } => (
                self.expect_held(inner.counter),
                Change {
                    bump_counter: true,
                    owner: Some(None),
                    checkpoint_owner: Some(None),
                    ..Change::default()
                },
                LostReason::Released,
            ),
            LeasePhase::Lost(reason) => {
                return Err(HandleError::Lost {
                    key: self.key.clone(),
                    reason,
                });
            }
        };
        drop(inner);
        match self.write(deadline, expect, change).await {
            Ok(_) => {
                self.set_phase(LeasePhase::Lost(reason));
                Ok(Retry::Done)
            }
            Err(LeaseError::ConditionFailed { .. }) if reason == LostReason::Released => {
                // Asked for meanwhile (then the lease moves to handing off), or renewed
                // by us since: reconcile tells, or that it is someone else's.
                let mut inner = self.inner.lock().await;
                self.reconcile(&mut inner).await?;
                Ok(Retry::Again)
            }
            Err(LeaseError::ConditionFailed { .. }) => Err(self.lost(LostReason::TakenOver)),
            Err(e) => Err(e.into()),
        }
    }

    /// For holders with nothing to checkpoint (lease-only tools, tests): answers every
    /// handoff request at once and returns why the lease was lost once it is.
    pub async fn hand_over_when_asked(&self) -> LostReason {
        let mut phase = self.watch_phase();
        loop {
            let current = phase.borrow_and_update().clone();
            match current {
                LeasePhase::HandingOff { .. } => {
                    if let Err(e) = self.hand_over().await {
                        tracing::debug!(lease = %self.key, error = %e, "hand over failed");
                    }
                }
                LeasePhase::Lost(reason) => return reason,
                _ => {}
            }
            // The sender lives in `self`, so this only waits for the next change.
            let _ = phase.changed().await;
        }
    }

    /// Marks the handle lost without writing (e.g. the coordinator saw another owner
    /// in a listing).
    pub(crate) fn mark_lost(&self, reason: LostReason) {
        self.set_phase(LeasePhase::Lost(reason));
    }

    /// Moves a held lease to handing off when a listing shows that `to` asked for it.
    pub(crate) async fn note_handoff_request(&self, lease: &Lease) {
        let mut inner = self.inner.lock().await;
        if lease.checkpoint_owner_epoch != Some(self.epoch) {
            // The request was made of another ownership of this worker, not this one.
            self.set_phase(LeasePhase::Lost(LostReason::TakenOver));
        } else if self.phase() == LeasePhase::Held
            && lease.checkpoint_owner.as_deref() == Some(self.worker_id.as_str())
            && let Some(to) = lease.owner.as_deref()
            && to != self.worker_id
        {
            inner.counter = lease.counter;
            self.set_phase(LeasePhase::HandingOff { to: to.to_string() });
        }
    }
}

/// Whether a release must be tried again after reconciling.
enum Retry {
    Done,
    Again,
}

fn valid_until(sent_at: Instant, failover_time: Duration) -> Instant {
    // Observers start their clock when they *see* our write, which is after we sent it;
    // a small margin covers scheduling delay between the check and the next write.
    sent_at + failover_time - (failover_time / 20).min(Duration::from_millis(500))
}
