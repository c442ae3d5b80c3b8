//! `delivery-app worker`: one statistics consumer worker, until Ctrl-C or SIGTERM.

use std::time::Duration;

use delivery_app::connect::{AwsArgs, NameArgs};
use delivery_app::worker::{WorkerOptions, run_worker};
use tokio_util::sync::CancellationToken;

use super::{CommandError, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    names: NameArgs,
    /// This worker's id, unique among the running workers (default: generated).
    #[arg(long)]
    worker_id: Option<String>,
    /// Lease failover time: a crashed worker's shards move to the others after about
    /// this long.
    #[arg(long, default_value_t = 10_000)]
    failover_ms: u64,
    /// Pause between reads of a shard that is caught up (real Kinesis allows five reads
    /// per second per shard).
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Append a JSON line per statistics transaction and per checkpoint to this file
    /// (what `chaos` checks).
    #[arg(long)]
    audit_file: Option<std::path::PathBuf>,
}

pub async fn run(args: WorkerArgs) -> Result<(), CommandError> {
    let clients = args.aws.clients().await?;
    let options = WorkerOptions {
        stream: args.names.stream.clone(),
        app: args.names.app.clone(),
        worker_id: args.worker_id.clone(),
        failover: Duration::from_millis(args.failover_ms),
        poll: Duration::from_millis(args.poll_ms),
        audit_file: args.audit_file.clone(),
    };
    let cancel = CancellationToken::new();
    let mut running = tokio::spawn({
        let cancel = cancel.clone();
        async move { run_worker(&clients, &options, cancel).await }
    });
    tokio::select! {
        result = &mut running => return result?,
        _ = shutdown_signal() => {}
    }
    tracing::info!("stopping: checkpointing and releasing leases");
    cancel.cancel();
    running.await?
}
