//! `delivery-app`: a food-delivery event simulation on Amazon Kinesis, produced with
//! `producer` and consumed with `kcl-rs`, on an embedded local AWS by default.

mod commands;

use clap::{Parser, Subcommand};

/// A food-delivery event simulation on Amazon Kinesis (local AWS by default).
#[derive(Parser, Debug)]
#[command(name = "delivery-app", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a local AWS (Kinesis and DynamoDB) on fixed loopback ports until Ctrl-C,
    /// so several processes and the AWS CLI can share it.
    Local(commands::local::LocalArgs),
    /// Start a local AWS in-process and prove it with a round trip: create a stream,
    /// put and read back records, and do a conditional DynamoDB write.
    Smoke(commands::smoke::SmokeArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ferrokinesis=warn,dynoxide=error,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Local(args) => commands::local::run(args).await,
        Command::Smoke(args) => commands::smoke::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
