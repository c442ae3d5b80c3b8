//! Renewal: one task per held lease and one for the worker heartbeat (in
//! `membership`), each on its own timer, so that a slow or hung call delays nothing but
//! itself.

use crate::metrics::WorkerMetrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::LeaseCoordinator;
use crate::leases::handle::{HandleError, LeaseHandle, LeasePhase, LostReason, RenewOutcome};

impl LeaseCoordinator {
    /// Keeps one renewal task running per held lease, and the heartbeat task, until
    /// cancelled; then waits for them (each ends at once on cancellation).
    pub(super) async fn renewal_loop(self: Arc<Self>, cancel: CancellationToken) {
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
                    let task = tokio::spawn(renew_lease(
                        Arc::clone(&handle),
                        interval,
                        self.metrics.clone(),
                        cancel.clone(),
                    ));
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

    pub(super) fn forget_lost(&self) {
        let (mut lost, mut released) = (0, 0);
        let mut held = self.held.lock().unwrap();
        held.retain(|_, handle| match handle.phase() {
            LeasePhase::Lost(LostReason::HandedOver | LostReason::Released) => {
                released += 1;
                false
            }
            LeasePhase::Lost(_) => {
                lost += 1;
                false
            }
            _ => true,
        });
        self.stats.leases_lost.fetch_add(lost, Ordering::Relaxed);
        self.metrics.leases_lost.increment(lost);
        self.metrics.leases_released.increment(released);
        self.metrics.current_leases.set(held.len() as f64);
    }
}

/// Renews `handle` every `interval` until it is lost or `cancel` is cancelled. Each
/// renewal retries transient errors itself until the lease would expire.
async fn renew_lease(
    handle: Arc<LeaseHandle>,
    interval: Duration,
    metrics: WorkerMetrics,
    cancel: CancellationToken,
) {
    let mut next = tokio::time::Instant::now() + interval;
    while tick(&mut next, interval, &cancel).await {
        let started = tokio::time::Instant::now();
        let renewed = tokio::select! {
            _ = cancel.cancelled() => return,
            renewed = handle.renew() => renewed,
        };
        metrics
            .renewal_seconds
            .record(started.elapsed().as_secs_f64());
        if renewed.is_err() {
            metrics.renewal_failures.increment(1);
        }
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

/// Waits for the tick of a fixed-rate timer due at `next`, then moves `next` an
/// `interval` on (to now at the earliest, so a late tick is not followed by a burst);
/// false, at once, when `cancel` is cancelled.
pub(super) async fn tick(
    next: &mut tokio::time::Instant,
    interval: Duration,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => return false,
        _ = tokio::time::sleep_until(*next) => {}
    }
    *next = (*next + interval).max(tokio::time::Instant::now());
    true
}
