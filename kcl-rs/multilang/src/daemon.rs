//! The daemon: a kcl-rs worker whose processors are child processes, run until
//! cancelled, with a bounded graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use kcl::aws::Clients;
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use kcl::worker::{Worker, WorkerError};
use tokio_util::sync::CancellationToken;

use crate::config::DaemonConfig;
use crate::processor::{DaemonContext, MultiLangProcessor};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The worker could not run (missing stream, lease table unusable).
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Shutdown took longer than its bound; children were killed.
    #[error("graceful shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    /// The worker task panicked.
    #[error("worker task failed: {0}")]
    Panicked(String),
}

/// Runs the daemon until `cancel` is cancelled, then shuts down: every child gets
/// `shutdownRequested` (and may checkpoint) within `shutdownGraceMillis`, leases are
/// released. The whole shutdown is bounded; past the bound the daemon gives up (its
/// children are killed when their handles drop).
pub async fn run(
    config: DaemonConfig,
    clients: &Clients,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    for key in &config.unknown_keys {
        tracing::warn!(key = %key, "unknown property ignored");
    }
    let store: Arc<dyn LeaseStore> = Arc::new(DynamoLeaseStore::new(
        clients.dynamodb.clone(),
        config.worker.application_name().to_string(),
    ));
    let ctx = Arc::new(DaemonContext::new(
        config.child.clone(),
        config.timeout,
        config.shutdown_grace,
        Arc::clone(&store),
        config.worker.worker_id().to_string(),
        cancel.clone(),
    ));
    // Grace for the children's shutdownRequested and exit, plus a failover time for
    // the lease-table writes of the release.
    let bound = config.shutdown_grace * 2 + config.worker.failover_time();
    tracing::info!(worker = %config.worker.worker_id(), stream = %config.worker.stream_name(),
        application = %config.worker.application_name(), "kcl-multilang starting");
    let worker = Worker::new(config.worker, clients, move |shard_id: &str| {
        MultiLangProcessor::new(shard_id, Arc::clone(&ctx))
    })
    .with_lease_store(store);
    let mut task = tokio::spawn(worker.run(cancel.clone()));
    let joined = tokio::select! {
        joined = &mut task => joined,
        _ = cancel.cancelled() => match tokio::time::timeout(bound, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                task.abort();
                return Err(DaemonError::ShutdownTimeout(bound));
            }
        },
    };
    match joined {
        Ok(result) => Ok(result?),
        Err(e) => Err(DaemonError::Panicked(e.to_string())),
    }
}
