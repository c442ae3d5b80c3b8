//! `delivery-app local`: a long-running local AWS on fixed ports.

use std::path::PathBuf;

use delivery_app::connect::NameArgs;
use delivery_app::principals::{self, POLICY_DOC, Role};
use kcl_local::strict::{KinesisLimits, StrictOptions};
use kcl_local::{LocalAws, LocalAwsOptions};

use super::{CommandError, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Strict mode: the stream (`STREAM`) and application (`APP`) the IAM policies
    /// name.
    #[command(flatten)]
    names: NameArgs,
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
    /// Strict mode: read the IAM policies from this file instead of the
    /// docs/iam-policy.md built into the program (same `## delivery-app <command>`
    /// sections). Requests signed with the access key id `delivery-worker`,
    /// `delivery-produce`, `delivery-stats`, `delivery-reshard` or
    /// `delivery-create-stream` are allowed only what that command's policy allows (for
    /// --stream and --app); other keys are unrestricted.
    #[arg(long, requires = "strict")]
    iam_policy: Option<PathBuf>,
}

impl LocalArgs {
    fn strict_options(&self) -> Result<Option<StrictOptions>, CommandError> {
        if !self.strict {
            return Ok(None);
        }
        let doc = match &self.iam_policy {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the IAM policies {}: {e}", path.display()))?,
            None => POLICY_DOC.to_string(),
        };
        let bound = principals::principals(&doc, &self.names.stream, &self.names.app)
            .map_err(|e| format!("the IAM policies do not parse: {e}"))?;
        Ok(Some(StrictOptions {
            kinesis: KinesisLimits {
                retention: std::time::Duration::from_secs(self.retention_secs),
                get_records_per_shard: self.get_records_per_shard,
                read_bytes_per_shard: self.read_kib_per_shard * 1024,
                ..KinesisLimits::default()
            },
            principals: bound,
            ..StrictOptions::default()
        }))
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
        strict: args.strict_options()?,
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
    if args.strict {
        let keys: Vec<&str> = Role::ALL.iter().map(|r| r.access_key_id()).collect();
        println!(
            "IAM: access keys {} restricted to their command's policy for stream {} and app {}; \
             other keys unrestricted",
            keys.join(", "),
            args.names.stream,
            args.names.app
        );
    }
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
