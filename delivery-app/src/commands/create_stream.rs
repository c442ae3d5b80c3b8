//! `delivery-app create-stream`: the stream the simulator writes and the workers read.

use std::time::Duration;

use delivery_app::connect::{AwsArgs, NameArgs};

use super::CommandError;

#[derive(clap::Args, Debug)]
pub struct CreateStreamArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    names: NameArgs,
    /// Shards to create (each takes 1 MiB/s or 1,000 records/s of writes).
    #[arg(long, default_value_t = 4)]
    shards: i32,
}

pub async fn run(args: CreateStreamArgs) -> Result<(), CommandError> {
    let clients = args.aws.clients(Some(&args.names.stream), None).await?;
    let stream = &args.names.stream;
    kcl::stream::create_stream(
        &clients.kinesis,
        stream,
        args.shards,
        Duration::from_secs(120),
    )
    .await?;
    let shards = kcl::stream::list_shards(&clients.kinesis, stream).await?;
    let open = shards.iter().filter(|s| s.is_open()).count();
    println!("stream {stream} is ACTIVE with {open} open shard(s):");
    for s in shards.iter().filter(|s| s.is_open()) {
        println!(
            "  {}  hash keys {}..={}",
            s.shard_id, s.starting_hash_key, s.ending_hash_key
        );
    }
    Ok(())
}
