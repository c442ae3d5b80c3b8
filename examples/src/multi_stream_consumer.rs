//! One worker reading several streams from one lease table (multi-stream mode): prints
//! every record with its stream and shard, checkpoints after each batch, and re-reads
//! the stream list from a file every 10 s, so streams can be added or removed while it
//! runs (a removed or deleted stream's leases are cleaned up after the grace period).
//!
//! The file holds one stream name per line (`#` starts a comment). Against the local
//! AWS of `delivery-app local` (Kinesis :4567, DynamoDB :8000):
//!   printf 'DeliveryStream\n' > streams.txt
//!   cargo run -p kcl-examples --bin multi-stream-consumer -- streams.txt http://127.0.0.1:4567 http://127.0.0.1:8000
//! Against real AWS (credentials and region from the usual AWS chain):
//!   cargo run -p kcl-examples --bin multi-stream-consumer -- streams.txt

use std::path::PathBuf;
use std::time::Duration;

use kcl::multi_stream::ProviderError;
use kcl::{
    CancellationToken, Checkpointer, Clients, Endpoints, InitialPosition, InitializationInput,
    ProcessRecordsInput, RecordProcessor, StreamConfig, StreamProvider, Worker, WorkerConfig,
};

/// The streams named in a file, read again at every poll.
struct StreamFile(PathBuf);

impl StreamProvider for StreamFile {
    async fn streams(&self) -> Result<Vec<StreamConfig>, ProviderError> {
        let text = tokio::fs::read_to_string(&self.0).await?;
        Ok(parse_streams(&text))
    }
}

/// One stream per line; blank lines and `#` comments skipped.
fn parse_streams(text: &str) -> Vec<StreamConfig> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|name| !name.is_empty())
        .map(|name| StreamConfig::new(name, InitialPosition::TrimHorizon))
        .collect()
}

/// One instance per shard lease.
#[derive(Default)]
struct PrintProcessor {
    name: String,
}

impl RecordProcessor for PrintProcessor {
    async fn initialize(&mut self, input: InitializationInput) {
        // Shard ids repeat across streams: the stream tells them apart.
        self.name = format!("{}/{}", input.stream_name, input.shard_id);
        println!("{}: starting after {}", self.name, input.checkpoint);
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        for record in &input.records {
            println!(
                "{} key={} {}",
                self.name,
                record.partition_key,
                String::from_utf8_lossy(&record.data)
            );
        }
        if let Err(e) = checkpointer.checkpoint().await {
            eprintln!("{}: {e}", self.name);
        }
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        let _ = checkpointer.checkpoint().await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, endpoints) = match args.as_slice() {
        [file] => (file.clone(), Endpoints::default()),
        [file, kinesis, dynamodb] => (file.clone(), Endpoints::local(kinesis, dynamodb)),
        _ => {
            eprintln!("usage: multi-stream-consumer <streams-file> [<kinesis-url> <dynamodb-url>]");
            std::process::exit(2);
        }
    };
    let provider = StreamFile(file.into());
    // A clear error at start if the file cannot be read.
    let first = provider
        .streams()
        .await
        .map_err(|e| format!("cannot read the stream list: {e}"))?;
    println!(
        "streams: {:?}",
        first.iter().map(|s| &s.stream_name).collect::<Vec<_>>()
    );
    let clients = Clients::connect(&endpoints).await;
    clients.verify().await?;

    let config = WorkerConfig::multi_stream_builder("multi-stream-consumer")
        .stream_poll_interval(Duration::from_secs(10))
        .former_stream_grace(Duration::from_secs(300))
        .build()?;
    let worker = Worker::multi_stream(config, &clients, provider, |_: &str| {
        PrintProcessor::default()
    });
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    worker.run(cancel).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_names_one_stream_per_line() {
        let streams = parse_streams("Orders\n\n# old: Refunds\nPayments  # since May\n");
        let names: Vec<_> = streams.iter().map(|s| s.stream_name.as_str()).collect();
        assert_eq!(names, ["Orders", "Payments"]);
    }
}
