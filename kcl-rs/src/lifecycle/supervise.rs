//! Supervision of a shard consumer: whatever way it ends, its lease is not left held
//! and renewed with nobody reading the shard.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::leases::Lease;
use crate::leases::handle::{HandleError, LeaseHandle, LostReason};
use crate::processor::RecordProcessorFactory;

use super::consumer::{ConsumerContext, ConsumerOutcome, ConsumerState, run_shard_consumer};
use tokio_util::sync::CancellationToken;

/// Runs one shard consumer and, if it panics (a processor callback panicked), lets its
/// lease go: otherwise the coordinator would keep renewing a lease nobody reads and the
/// shard (and its children) would stall for as long as the worker lives.
pub(crate) async fn run_supervised<F: RecordProcessorFactory>(
    ctx: Arc<ConsumerContext>,
    handle: Arc<LeaseHandle>,
    lease: Lease,
    factory: Arc<F>,
    shutdown: CancellationToken,
) -> ConsumerOutcome {
    let limit = let_go_limit(ctx.config.failover_time);
    let consumer = run_shard_consumer(ctx, Arc::clone(&handle), lease, factory, shutdown);
    match CatchUnwind(Box::pin(consumer)).await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(shard = %handle.key(), panic = %message, "shard consumer panicked; letting the lease go");
            let_go(&handle, limit).await;
            ConsumerOutcome::Failed(format!("the record processor panicked: {message}"))
        }
    }
}

/// How long releasing a lease may take before the consumer gives it up locally. A
/// third of the failover time: the lease then expires within one more failover time,
/// so the shard is read again within twice the failover time.
pub(crate) fn let_go_limit(failover_time: Duration) -> Duration {
    failover_time / 3
}

/// Releases the lease of a consumer that stopped reading. When the release write
/// fails or does not answer within `limit`, the handle is marked lost locally: the
/// coordinator then stops renewing it, the lease expires after the failover time and
/// any worker (this one included) takes it and reads the shard again from its
/// checkpoint. Returns whether the release was written.
pub(crate) async fn let_go(handle: &LeaseHandle, limit: Duration) -> bool {
    let error = match tokio::time::timeout(limit, handle.hand_over()).await {
        Ok(Ok(())) => return true,
        // Already someone else's (or already released): nothing is renewed any more.
        Ok(Err(HandleError::Lost { .. })) => return false,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {limit:?}"),
    };
    tracing::warn!(shard = %handle.key(), %error, "could not release the lease; it stops being renewed and expires");
    handle.mark_lost(LostReason::Released);
    false
}

/// Holds a lease that must not be read (its stream is gone) without processing it,
/// until the lease is lost (deleted, taken), handed off or the worker stops; a handoff
/// or a stop releases it.
pub(crate) async fn park(
    handle: &LeaseHandle,
    shutdown: &CancellationToken,
    limit: Duration,
) -> ConsumerOutcome {
    let mut phase = handle.watch_phase();
    loop {
        let state = ConsumerState::interrupted(shutdown.is_cancelled(), &phase.borrow_and_update());
        match state {
            Some(ConsumerState::LeaseLost) => return ConsumerOutcome::LeaseLost,
            Some(stopping @ (ConsumerState::ShutdownRequested | ConsumerState::HandingOff)) => {
                let released = let_go(handle, limit).await;
                return stopping.stopped(released);
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    return ConsumerOutcome::LeaseLost;
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// A future that turns a panic while polling into an `Err`, like
/// `futures::FutureExt::catch_unwind` (without the dependency).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        // Unwind safety: after a panic the consumer's state is dropped, never used again.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
