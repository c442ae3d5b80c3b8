//! `delivery-app reshard`: list shards with their observed load, split or merge by
//! hand, or run the auto-scaler.

use std::sync::Arc;
use std::time::Duration;

use delivery_app::autoscaler::{self, Action, ScalerConfig, utilisation};
use delivery_app::connect::{AwsArgs, NameArgs};
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use tokio_util::sync::CancellationToken;

use super::{CommandError, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct ReshardArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    names: NameArgs,
    #[command(subcommand)]
    action: ReshardAction,
}

#[derive(clap::Subcommand, Debug)]
enum ReshardAction {
    /// List the shards: open ones with their hash key range and the load their worker
    /// observes, closed ones with their parents.
    List,
    /// Split an open shard in two (SplitShard), by default in the middle of its range.
    Split {
        /// The shard, e.g. `shardId-000000000001` or just `1`.
        shard: String,
        /// The new shard's starting hash key (decimal); default: the middle.
        #[arg(long)]
        at: Option<u128>,
    },
    /// Merge two adjacent open shards into one (MergeShards).
    Merge {
        /// One shard, e.g. `shardId-000000000001` or `1`.
        shard: String,
        /// The other; its hash key range must touch the first's.
        adjacent: String,
    },
    /// Run the auto-scaler until Ctrl-C: split shards that stay hot, merge adjacent
    /// ones that stay cold, judged from the load workers report on the leases.
    Auto {
        /// Split above this share of a shard's write limit (1 MiB/s or 1,000 records/s).
        #[arg(long, default_value_t = 0.8)]
        split_share: f64,
        /// Merge two neighbours that both stay below this share.
        #[arg(long, default_value_t = 0.1)]
        merge_share: f64,
        /// Seconds a shard must stay hot or cold before acting.
        #[arg(long, default_value_t = 30)]
        sustain_secs: u64,
        /// Seconds without action after each split or merge.
        #[arg(long, default_value_t = 60)]
        cooldown_secs: u64,
        /// Never merge below this many open shards.
        #[arg(long, default_value_t = 1)]
        min_shards: usize,
        /// Never split above this many open shards.
        #[arg(long, default_value_t = 16)]
        max_shards: usize,
    },
}

/// `7` → `shardId-000000000007`; anything else unchanged.
fn shard_id(text: &str) -> String {
    match text.parse::<u64>() {
        Ok(n) => format!("shardId-{n:012}"),
        Err(_) => text.to_string(),
    }
}

pub async fn run(args: ReshardArgs) -> Result<(), CommandError> {
    let clients = args
        .aws
        .clients(Some(&args.names.stream), Some(&args.names.app))
        .await?;
    let stream = args.names.stream.clone();
    let leases: Arc<dyn LeaseStore> = Arc::new(DynamoLeaseStore::new(
        clients.dynamodb.clone(),
        &args.names.app,
    ));
    let timeout = Duration::from_secs(120);
    match args.action {
        ReshardAction::List => {
            let shards = kcl::stream::list_shards(&clients.kinesis, &stream).await?;
            let views = autoscaler::shard_views(&clients.kinesis, leases.as_ref(), &stream).await?;
            let owners: std::collections::HashMap<String, String> = leases
                .list_leases()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|l| l.owner.map(|o| (l.key, o)))
                .collect();
            println!("open shards of {stream}:");
            for v in &views {
                let share = (v.range.1 - v.range.0) as f64 / u128::MAX as f64 * 100.0;
                let load = match &v.load {
                    Some(l) => format!(
                        "{:>8.1} records/s {:>10.0} bytes/s ({:>5.1}% of the limit)",
                        l.records_per_sec,
                        l.bytes_per_sec,
                        utilisation(l) * 100.0
                    ),
                    None => "no load reported (no worker reads it)".to_string(),
                };
                println!(
                    "  {}  {:>5.1}% of the key space  {load}  {}",
                    v.shard_id,
                    share,
                    owners.get(&v.shard_id).map_or("", String::as_str)
                );
            }
            for s in shards.iter().filter(|s| !s.is_open()) {
                println!("  {} (closed; parents: {:?})", s.shard_id, s.parents());
            }
        }
        ReshardAction::Split { shard, at } => {
            let shard = shard_id(&shard);
            kcl::stream::split_shard(&clients.kinesis, &stream, &shard, at, timeout).await?;
            println!("split {shard}; the stream is ACTIVE again");
        }
        ReshardAction::Merge { shard, adjacent } => {
            let (a, b) = (shard_id(&shard), shard_id(&adjacent));
            kcl::stream::merge_shards(&clients.kinesis, &stream, &a, &b, timeout).await?;
            println!("merged {a} and {b}; the stream is ACTIVE again");
        }
        ReshardAction::Auto {
            split_share,
            merge_share,
            sustain_secs,
            cooldown_secs,
            min_shards,
            max_shards,
        } => {
            if !(0.0..=1.0).contains(&split_share) || !(0.0..split_share).contains(&merge_share) {
                return Err("need 0 <= merge-share < split-share <= 1".into());
            }
            let config = ScalerConfig {
                split_share,
                merge_share,
                sustain: Duration::from_secs(sustain_secs),
                cooldown: Duration::from_secs(cooldown_secs),
                min_shards,
                max_shards,
                ..ScalerConfig::default()
            };
            println!("auto-scaling {stream} until Ctrl-C: {config:?}");
            let cancel = CancellationToken::new();
            let scaling = tokio::spawn(autoscaler::run(
                clients.kinesis.clone(),
                leases,
                stream,
                config,
                cancel.clone(),
                |action: &Action, _: &[autoscaler::ShardView]| println!("{action:?}"),
            ));
            shutdown_signal().await;
            cancel.cancel();
            scaling.await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_shard_ids() {
        assert_eq!(super::shard_id("3"), "shardId-000000000003");
        assert_eq!(
            super::shard_id("shardId-000000000003"),
            "shardId-000000000003"
        );
    }
}
