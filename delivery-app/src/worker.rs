//! One consumer worker of the statistics application: a kcl-rs worker whose processors
//! are [`StatsProcessor`]s.

use std::sync::Arc;
use std::time::Duration;

use kcl::aws::Clients;
use kcl::config::{InitialPosition, WorkerConfig};
use kcl::worker::Worker;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::stats::{Halt, StatsProcessor, StatsStore};

/// Settings of a statistics worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The stream.
    pub stream: String,
    /// The application (lease table and statistics tables prefix).
    pub app: String,
    /// Unique per process; default `worker-<pid>-<random>`.
    pub worker_id: Option<String>,
    /// Lease expiry: a crashed worker's shards are taken over after about this long.
    pub failover: Duration,
    /// Pause between GetRecords calls on a caught-up shard.
    pub poll: Duration,
    /// Record every statistics transaction and checkpoint in this file (see
    /// [`crate::audit`]).
    pub audit_file: Option<std::path::PathBuf>,
}

/// How long a stopping worker may take to checkpoint and release its leases.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// Errors of a worker.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a worker until `cancel`, then shuts it down gracefully (processors
/// checkpoint, leases are released for the others to take at once). Returns an error
/// naming the table, the call and what is wrong when DynamoDB fails in a way retrying
/// cannot fix (access denied, a missing table, a refusal no record explains): the
/// worker then stops on its own, gracefully, instead of retrying for ever.
pub async fn run_worker(
    clients: &Clients,
    options: &WorkerOptions,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    let store = Arc::new(StatsStore::new(clients.dynamodb.clone(), &options.app));
    store.ensure_tables().await?;
    let audit = match &options.audit_file {
        Some(path) => Some(Arc::new(AuditLog::open(path).map_err(|e| {
            format!("cannot open the audit log {}: {e}", path.display())
        })?)),
        None => None,
    };
    let mut builder = WorkerConfig::builder(&options.stream, &options.app)
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(options.failover)
        .idle_time_between_reads(options.poll);
    if let Some(id) = &options.worker_id {
        builder = builder.worker_id(id.clone());
    }
    let config = builder.build()?;
    tracing::info!(worker = %config.worker_id, stream = %options.stream, app = %options.app, "statistics worker starting");
    // A child token: a processor's fatal error stops this worker, not the caller's
    // other tasks; the caller's cancellation still reaches every processor.
    let halt = Halt::new(cancel.child_token());
    let worker = Worker::new(
        config,
        clients,
        StatsProcessor::factory(store, audit, halt.clone()),
    );
    let stopping = halt.token().clone();
    tokio::select! {
        result = worker.run(halt.token().clone()) => result?,
        // A clean stop waits on DynamoDB (checkpoints, lease release) and, for a shard
        // whose last batch was left unfinished, never ends (see
        // `StatsProcessor::shard_ended`): past `STOP_GRACE` the worker is dropped; its
        // leases expire and their next owners replay what was not checkpointed.
        _ = async {
            stopping.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        } => {
            if halt.error().is_none() {
                return Err(format!(
                    "the worker did not stop cleanly within {} s; its leases expire after \
                     the failover time",
                    STOP_GRACE.as_secs()
                )
                .into());
            }
        }
    }
    match halt.error() {
        Some(error) => Err(format!("the statistics worker stopped: {error}").into()),
        None => Ok(()),
    }
}
