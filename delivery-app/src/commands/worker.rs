//! `delivery-app worker`: one statistics consumer worker, until Ctrl-C or SIGTERM.

use delivery_app::connect::{AwsArgs, NameArgs};
use delivery_app::worker::{WorkerFlags, run_worker};
use tokio_util::sync::CancellationToken;

use super::{CommandError, SHUTDOWN_GRACE, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    names: NameArgs,
    #[command(flatten)]
    flags: WorkerFlags,
}

pub async fn run(args: WorkerArgs) -> Result<(), CommandError> {
    let options = args.flags.options(&args.names);
    let cancel = CancellationToken::new();
    if let Some(addr) = args.flags.metrics_addr {
        let bound = delivery_app::metrics::serve(
            addr,
            Some(delivery_app::metrics::gauge_idle_timeout(options.failover)),
            cancel.child_token(),
        )
        .await?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    // Connecting is inside the task too: a signal while the endpoints do not answer
    // stops the worker as well.
    let mut running = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let clients = args
                .aws
                .clients(Some(&args.names.stream), Some(&args.names.app))
                .await?;
            run_worker(&clients, &options, cancel).await
        }
    });
    tokio::select! {
        result = &mut running => return result?,
        _ = shutdown_signal() => {}
    }
    tracing::info!("stopping: checkpointing and releasing leases");
    cancel.cancel();
    // A clean stop writes checkpoints and releases leases; with DynamoDB unreachable
    // those calls only time out. Past the grace the process exits anyway: what was not
    // checkpointed is replayed by the next owner, and the statistics' watermark drops
    // what was already applied.
    match tokio::time::timeout(SHUTDOWN_GRACE, running).await {
        Ok(result) => result?,
        Err(_) => Err(format!(
            "the worker did not stop cleanly within {} s (DynamoDB or Kinesis not \
             answering?); its leases expire after the failover time and the next owner \
             resumes from the last checkpoint",
            SHUTDOWN_GRACE.as_secs()
        )
        .into()),
    }
}
