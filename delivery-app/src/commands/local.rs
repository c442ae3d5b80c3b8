//! `delivery-app local`: a long-running local AWS on fixed ports.

use std::path::PathBuf;

use kcl::local::strict::{KinesisLimits, StrictOptions};
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
    /// Strict mode: refuse what real AWS refuses (read and control-plane rate limits,
    /// retention), write limits on; the ports above are then strict proxies'.
    #[arg(long)]
    strict: bool,
    /// Strict mode: seconds records and closed shards are kept (AWS: 86400).
    #[arg(long, requires = "strict", default_value_t = 86_400)]
    retention_secs: u64,
    /// Strict mode: GetRecords calls per second per shard (AWS: 5; 0 for no limit).
    #[arg(long, requires = "strict", default_value_t = 5)]
    get_records_per_shard: u32,
    /// Strict mode: KiB of records GetRecords may return per second per shard (AWS:
    /// 2048; 0 for no limit).
    #[arg(long, requires = "strict", default_value_t = 2048)]
    read_kib_per_shard: u64,
}

impl LocalArgs {
    fn strict_options(&self) -> Option<StrictOptions> {
        self.strict.then(|| StrictOptions {
            kinesis: KinesisLimits {
                retention: std::time::Duration::from_secs(self.retention_secs),
                get_records_per_shard: self.get_records_per_shard,
                read_bytes_per_shard: self.read_kib_per_shard * 1024,
                ..KinesisLimits::default()
            },
            ..StrictOptions::default()
        })
    }
}

pub async fn run(args: LocalArgs) -> Result<(), CommandError> {
    let aws = LocalAws::start(LocalAwsOptions {
        kinesis_port: args.kinesis_port,
        dynamodb_port: args.dynamodb_port,
        data_dir: args.data_dir.clone(),
        shard_limit: args.shard_limit,
        enforce_limits: args.enforce_limits,
        stream_transition_ms: args.transition_ms,
        strict: args.strict_options(),
        ..LocalAwsOptions::default()
    })
    .await?;
    let endpoints = aws.endpoints();
    println!(
        "local AWS ready{}: Kinesis {} DynamoDB {} (region {}, any credentials){}",
        if args.strict { " (strict)" } else { "" },
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
    if let Some(strict) = aws.strict() {
        for ((operation, kind), count) in strict.refusal_counts().snapshot() {
            println!("strict refusals: {operation} {kind:?}: {count}");
        }
    }
    aws.shutdown().await;
    Ok(())
}
