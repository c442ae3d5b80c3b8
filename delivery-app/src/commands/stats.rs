//! `delivery-app stats`: the statistics as the workers have stored them so far.

use std::path::PathBuf;

use delivery_app::connect::{AwsArgs, NameArgs};
use delivery_app::report::{to_json, to_table};
use delivery_app::sim::GroundTruth;
use delivery_app::stats::StatsStore;

use super::CommandError;

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    names: NameArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Compare with a ground truth file written by `produce` (exit status 1 when they
    /// differ).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Also list up to this many dead letters with their reason and raw bytes.
    #[arg(long, default_value_t = 0)]
    dead_letters: usize,
}

pub async fn run(args: StatsArgs) -> Result<(), CommandError> {
    let truth: Option<GroundTruth> = match &args.truth {
        Some(path) => {
            let text =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Some(
                serde_json::from_slice(&text)
                    .map_err(|e| format!("{} is not a ground truth file: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let stats_table = format!("{}-Stats", args.names.app);
    let clients = args.aws.clients(None, Some(&stats_table)).await?;
    let store = StatsStore::new(clients.dynamodb.clone(), &args.names.app);
    let stats = store.read().await.map_err(|e| {
        format!(
            "{e}\n(no statistics yet? start a worker: delivery-app worker --app {})",
            args.names.app
        )
    })?;
    let dead = if args.dead_letters > 0 {
        store.dead_letters(args.dead_letters).await?
    } else {
        Vec::new()
    };
    if args.json {
        let mut doc = serde_json::to_value(to_json(&stats, truth.as_ref()))?;
        if args.dead_letters > 0 {
            doc["dead_letter_samples"] = serde_json::to_value(&dead)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "Statistics of application {} (tables {}, {}, {})\n",
            args.names.app,
            store.tables().orders,
            store.tables().stats,
            store.tables().dead_letters
        );
        print!("{}", to_table(&stats, truth.as_ref()));
        for d in &dead {
            println!(
                "\n{} at {} (record {}) [{}] {}\n  raw ({} bytes): {}",
                d.shard_id, d.position, d.id, d.reason, d.detail, d.raw_len, d.raw
            );
        }
    }
    if let Some(truth) = &truth
        && !delivery_app::report::compare(&stats, truth).matches
    {
        std::process::exit(1);
    }
    Ok(())
}
