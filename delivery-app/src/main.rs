//! `delivery-app`: a food-delivery event simulation on Amazon Kinesis, produced with
//! `producer` and consumed with `kcl-rs`, on an embedded local AWS by default.

mod commands;

use clap::{Parser, Subcommand};

/// A food-delivery platform on Amazon Kinesis: a simulated city produces order events,
/// workers turn them into exact statistics in DynamoDB.
///
/// Start with `delivery-app demo`: it does everything on a local AWS in about a minute.
/// To run the pieces yourself: `local` in one terminal, then `create-stream`, a few
/// `worker`s, `produce`, and `stats` (all default to the `local` endpoints; add
/// `--real-aws` for your AWS account).
#[derive(Parser, Debug)]
#[command(name = "delivery-app", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole application in about a minute: local AWS in-process, the stream, the
    /// simulator, 3 worker processes, a worker crash and restart, a split and a merge,
    /// live statistics, and the final statistics checked against the ground truth.
    Demo(commands::demo::DemoArgs),
    /// Serve a local AWS (Kinesis and DynamoDB) on fixed loopback ports until Ctrl-C,
    /// so several processes and the AWS CLI can share it.
    Local(commands::local::LocalArgs),
    /// Create the Kinesis stream (and wait until it is ACTIVE).
    CreateStream(commands::create_stream::CreateStreamArgs),
    /// Run the simulator: put order events on the stream at a chosen speed, show
    /// progress, and write the ground truth to a file.
    Produce(commands::produce::ProduceArgs),
    /// Run one statistics worker (consumer) until Ctrl-C; start several, in separate
    /// terminals, to share the shards.
    Worker(commands::worker::WorkerArgs),
    /// List shards with their load, split or merge them, or run the auto-scaler.
    Reshard(commands::reshard::ReshardArgs),
    /// Print the statistics the workers have computed so far (table or --json),
    /// optionally beside a ground truth file.
    Stats(commands::stats::StatsArgs),
    /// Start a local AWS in-process and prove it with a round trip: create a stream,
    /// put and read back records, and do a conditional DynamoDB write.
    Smoke(commands::smoke::SmokeArgs),
    /// Run everything under seeded faults (worker kills, zombies, graceful restarts,
    /// splits, merges, local AWS restarts) and check that every record was applied
    /// once, in order, by lease holders only, and that the statistics are exact.
    Chaos(commands::chaos::ChaosArgs),
    /// List the stream's enhanced fan-out consumers, or deregister one.
    Consumers(commands::consumers::ConsumersArgs),
    /// Serve a live web page of the running application: shard lineage with owners,
    /// checkpoints and lag, workers and their leases, the statistics, a heatmap of
    /// pickups, recent splits, merges and lease moves.
    Dashboard(commands::dashboard::DashboardArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story on stdout; only problems go to stderr.
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Chaos(_) => "warn,dynoxide=error",
        _ => "info,ferrokinesis=warn,dynoxide=error,tower_http=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Local(args) => commands::local::run(args).await,
        Command::CreateStream(args) => commands::create_stream::run(args).await,
        Command::Produce(args) => commands::produce::run(args).await,
        Command::Worker(args) => commands::worker::run(args).await,
        Command::Reshard(args) => commands::reshard::run(args).await,
        Command::Stats(args) => commands::stats::run(args).await,
        Command::Smoke(args) => commands::smoke::run(args).await,
        Command::Chaos(args) => commands::chaos::run(args).await,
        Command::Consumers(args) => commands::consumers::run(args).await,
        Command::Dashboard(args) => commands::dashboard::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", commands::failure::report(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
