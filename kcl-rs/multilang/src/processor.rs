//! The kcl-rs [`RecordProcessor`] that drives one child per shard lease.
//!
//! A child that exits, answers out of turn or exceeds `timeoutInSeconds` fails its
//! shard: the child is killed, and after a backoff (growing with the shard's recent
//! failures) the lease is released so that this or another worker takes the shard
//! again with a fresh child, resuming at the last checkpoint. (The Java daemon exits
//! the whole JVM instead.)

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl::checkpoint::Checkpointer;
use kcl::leases::LeaseStore;
use kcl::leases::store::{Change, Expect};
use kcl::processor::{InitializationInput, ProcessRecordsInput, RecordProcessor};
use kinesis_core::backoff::backoff_cap;
use tokio_util::sync::CancellationToken;

use crate::child::ChildSpec;
use crate::session::{Session, SessionError};

/// The backoff before a failed shard's lease is released: 1 s, doubling with each
/// consecutive failure of that shard, at most 30 s.
pub fn restart_backoff(consecutive_failures: u32) -> Duration {
    backoff_cap(
        Duration::from_secs(1),
        Duration::from_secs(30),
        consecutive_failures,
    )
}

/// What every shard's processor of one daemon shares.
pub struct DaemonContext {
    /// How children start.
    pub child: ChildSpec,
    /// Per-message timeout.
    pub timeout: Option<Duration>,
    /// How long a graceful shutdown waits for a child.
    pub shutdown_grace: Duration,
    /// The lease table, to give up the lease of a failed shard.
    pub store: Arc<dyn LeaseStore>,
    /// This worker's id (the lease owner).
    pub worker_id: String,
    /// Cancelled when the daemon stops: cuts backoffs short.
    pub cancel: CancellationToken,
    failures: Mutex<HashMap<String, u32>>,
}

impl DaemonContext {
    /// A context for the daemon's processors.
    pub fn new(
        child: ChildSpec,
        timeout: Option<Duration>,
        shutdown_grace: Duration,
        store: Arc<dyn LeaseStore>,
        worker_id: String,
        cancel: CancellationToken,
    ) -> DaemonContext {
        DaemonContext {
            child,
            timeout,
            shutdown_grace,
            store,
            worker_id,
            cancel,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_failure(&self, shard_id: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap();
        let n = failures.entry(shard_id.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    fn record_success(&self, shard_id: &str) {
        self.failures.lock().unwrap().remove(shard_id);
    }

    /// Releases the lease if this worker still owns it. The worker's renewal then
    /// finds it gone and ends the shard's consumer (`leaseLost`); the lease, now
    /// unowned, is taken again by whichever worker has room.
    async fn release_lease(&self, shard_id: &str) {
        let expect = Expect {
            counter: None,
            owner: Some(Some(self.worker_id.clone())),
            ..Expect::default()
        };
        let change = Change {
            bump_counter: true,
            owner: Some(None),
            ..Change::default()
        };
        match self.store.update_lease(shard_id, expect, change).await {
            Ok(_) => tracing::info!(shard = %shard_id, "released the lease of the failed shard"),
            Err(e) => {
                tracing::warn!(shard = %shard_id, error = %e, "could not release the lease (it may have moved already)")
            }
        }
    }
}

/// Drives one child for one shard lease.
pub struct MultiLangProcessor {
    shard_id: String,
    ctx: Arc<DaemonContext>,
    session: Option<Session>,
    failed: bool,
}

impl MultiLangProcessor {
    /// A processor for `shard_id`; its child starts in `initialize`.
    pub fn new(shard_id: &str, ctx: Arc<DaemonContext>) -> MultiLangProcessor {
        MultiLangProcessor {
            shard_id: shard_id.to_string(),
            ctx,
            session: None,
            failed: false,
        }
    }

    async fn fail(&mut self, stage: &str, error: SessionError) {
        tracing::error!(shard = %self.shard_id, stage, %error, "child failed; giving the shard up");
        self.failed = true;
        if let Some(session) = self.session.take() {
            session.finish(Duration::ZERO).await;
        }
        let backoff = restart_backoff(self.ctx.record_failure(&self.shard_id));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => self.ctx.release_lease(&self.shard_id).await,
            // Stopping: the worker releases the lease itself.
            _ = self.ctx.cancel.cancelled() => {}
        }
    }

    /// The daemon is stopping and the child did not finish its message within the
    /// grace: kill it so the shutdown goes on.
    async fn abandon(&mut self, stage: &str) {
        tracing::warn!(shard = %self.shard_id, stage, grace = ?self.ctx.shutdown_grace,
            "stopping: the child did not answer within the shutdown grace; killing it");
        self.failed = true;
        if let Some(session) = self.session.take() {
            session.finish(Duration::ZERO).await;
        }
    }

    async fn end(&mut self) {
        if let Some(session) = self.session.take() {
            session.finish(self.ctx.shutdown_grace).await;
        }
    }
}

impl RecordProcessor for MultiLangProcessor {
    async fn initialize(&mut self, input: InitializationInput) {
        let started = Session::start(&self.ctx.child, &self.shard_id, self.ctx.timeout);
        let mut session = match started {
            Ok(session) => session,
            Err(e) => return self.fail("start", e).await,
        };
        let ctx = Arc::clone(&self.ctx);
        let result = until_stopped(&ctx, session.initialize(&input.checkpoint)).await;
        self.session = Some(session);
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => self.fail("initialize", e).await,
            None => self.abandon("initialize").await,
        }
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        // After a failure the lease is on its way out: whatever arrives until the
        // worker notices is read again by the next owner from the checkpoint.
        let Some(session) = self.session.as_mut().filter(|_| !self.failed) else {
            return;
        };
        let ctx = Arc::clone(&self.ctx);
        match until_stopped(&ctx, session.process_records(&input, checkpointer)).await {
            Some(Ok(())) => self.ctx.record_success(&self.shard_id),
            Some(Err(e)) => self.fail("processRecords", e).await,
            None => self.abandon("processRecords").await,
        }
    }

    async fn lease_lost(&mut self) {
        let ctx = Arc::clone(&self.ctx);
        if let Some(session) = self.session.as_mut() {
            match until_stopped(&ctx, session.lease_lost()).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "leaseLost not acknowledged")
                }
                None => return self.abandon("leaseLost").await,
            }
        }
        self.end().await;
    }

    async fn shard_ended(&mut self, checkpointer: &mut Checkpointer) {
        if self.failed {
            // kcl-rs writes SHARD_END after this returns, but the batches since the
            // child failed were never processed: give the lease up first so that
            // write is refused and the next owner reads them again.
            self.ctx.release_lease(&self.shard_id).await;
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        if let Some(session) = self.session.as_mut() {
            match until_stopped(&ctx, session.shard_ended(checkpointer)).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "shardEnded not acknowledged")
                }
                None => return self.abandon("shardEnded").await,
            }
        }
        self.end().await;
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        if let Some(session) = self.session.as_mut()
            && let Err(e) = session
                .shutdown_requested(checkpointer, self.ctx.shutdown_grace)
                .await
        {
            tracing::warn!(shard = %self.shard_id, error = %e, "shutdownRequested not acknowledged");
        }
        self.end().await;
    }
}

/// Runs one exchange with a child. Once the daemon is stopping, the exchange in flight
/// gets `shutdown_grace` more and is then abandoned (`None`): without a
/// `timeoutInSeconds` a hung child would otherwise hold the shutdown forever.
async fn until_stopped<T>(ctx: &DaemonContext, exchange: impl Future<Output = T>) -> Option<T> {
    let stopping = async {
        ctx.cancel.cancelled().await;
        tokio::time::sleep(ctx.shutdown_grace).await;
    };
    tokio::select! {
        result = exchange => Some(result),
        _ = stopping => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let table = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (6, 30),
            (7, 30),
            (100, 30),
        ];
        for (failures, seconds) in table {
            assert_eq!(
                restart_backoff(failures),
                Duration::from_secs(seconds),
                "{failures}"
            );
        }
    }
}
