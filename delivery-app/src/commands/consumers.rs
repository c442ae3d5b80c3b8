//! `delivery-app consumers`: the stream consumers enhanced fan-out reads through.
//! Workers with `--retrieval fan-out` register one named after the application; it
//! stays (and costs on AWS, per shard-hour) until deregistered here.

use std::time::Duration;

use delivery_app::connect::{AwsArgs, NameArgs};
use kcl::retrieval::fanout::{deregister_consumer, list_consumers};

use super::CommandError;

#[derive(clap::Args, Debug)]
pub struct ConsumersArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List the stream's registered consumers.
    List {
        #[command(flatten)]
        aws: AwsArgs,
        #[command(flatten)]
        names: NameArgs,
    },
    /// Deregister a consumer (default: the application's) and wait until it is gone.
    /// Fan-out workers still running through it stop reading.
    Deregister {
        #[command(flatten)]
        aws: AwsArgs,
        #[command(flatten)]
        names: NameArgs,
        /// The consumer's name (default: the application name).
        #[arg(long)]
        consumer: Option<String>,
    },
}

pub async fn run(args: ConsumersArgs) -> Result<(), CommandError> {
    match args.action {
        Action::List { aws, names } => {
            let clients = aws.clients(Some(&names.stream), None).await?;
            let consumers = list_consumers(&clients.kinesis, &names.stream).await?;
            if consumers.is_empty() {
                println!("stream {} has no registered consumer", names.stream);
            }
            for c in consumers {
                println!("{}  {}  {}", c.name, c.status, c.arn);
            }
            Ok(())
        }
        Action::Deregister {
            aws,
            names,
            consumer,
        } => {
            let clients = aws.clients(Some(&names.stream), None).await?;
            let name = consumer.unwrap_or(names.app);
            let gone = deregister_consumer(
                &clients.kinesis,
                &names.stream,
                &name,
                Duration::from_secs(120),
            )
            .await?;
            if gone {
                println!("consumer {name} of stream {} deregistered", names.stream);
            } else {
                println!("stream {} has no consumer named {name}", names.stream);
            }
            Ok(())
        }
    }
}
