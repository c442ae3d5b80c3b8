//! `delivery-app local`: a long-running local AWS on fixed ports.

use std::path::PathBuf;

use kcl::local::{LocalAws, LocalAwsOptions};

use super::{CommandError, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Kinesis port on 127.0.0.1.
    #[arg(long, default_value_t = 4567)]
    kinesis_port: u16,
    /// DynamoDB port on 127.0.0.1.
    #[arg(long, default_value_t = 8000)]
    dynamodb_port: u16,
    /// Keep streams, records, tables and items in this folder so a restart loses
    /// nothing. Without it everything lives in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Throttle writes like real Kinesis (1 MiB/s and 1,000 records/s per shard).
    #[arg(long)]
    enforce_limits: bool,
    /// Maximum open shards across all streams.
    #[arg(long, default_value_t = 512)]
    shard_limit: u32,
    /// Milliseconds a stream stays CREATING/UPDATING after CreateStream, SplitShard,
    /// MergeShards.
    #[arg(long, default_value_t = 500)]
    transition_ms: u64,
}

pub async fn run(args: LocalArgs) -> Result<(), CommandError> {
    let aws = LocalAws::start(LocalAwsOptions {
        kinesis_port: args.kinesis_port,
        dynamodb_port: args.dynamodb_port,
        data_dir: args.data_dir.clone(),
        shard_limit: args.shard_limit,
        enforce_limits: args.enforce_limits,
        stream_transition_ms: args.transition_ms,
        ..LocalAwsOptions::default()
    })
    .await?;
    let endpoints = aws.endpoints();
    println!(
        "local AWS ready: Kinesis {} DynamoDB {} (region {}, any credentials){}",
        endpoints.kinesis.as_deref().unwrap_or_default(),
        endpoints.dynamodb.as_deref().unwrap_or_default(),
        kcl::aws::LOCAL_REGION,
        match &args.data_dir {
            Some(dir) => format!(", state in {}", dir.display()),
            None => ", in memory".to_string(),
        }
    );
    shutdown_signal().await;
    println!("shutting down local AWS");
    aws.shutdown().await;
    Ok(())
}
