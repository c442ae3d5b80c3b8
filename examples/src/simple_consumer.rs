//! A complete kcl-rs consumer in one file: prints every record of a stream, checkpoints
//! after each batch, and shuts down gracefully on Ctrl-C. Run several copies to see them
//! share the shards.
//!
//! Against the local AWS of `delivery-app local` (Kinesis :4567, DynamoDB :8000):
//!   cargo run -p kcl-examples --bin simple-consumer -- DeliveryStream http://127.0.0.1:4567 http://127.0.0.1:8000
//! Against real AWS (credentials and region from the usual AWS chain):
//!   cargo run -p kcl-examples --bin simple-consumer -- DeliveryStream

use kcl::{
    CancellationToken, Checkpointer, Clients, Endpoints, InitialPosition, InitializationInput,
    ProcessRecordsInput, RecordProcessor, Worker, WorkerConfig,
};

/// One instance per shard lease.
struct PrintProcessor {
    shard_id: String,
}

impl RecordProcessor for PrintProcessor {
    async fn initialize(&mut self, input: InitializationInput) {
        println!("{}: starting after {}", input.shard_id, input.checkpoint);
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        for record in &input.records {
            println!(
                "{} {}.{} key={} {}",
                self.shard_id,
                record.sequence_number,
                record.sub_sequence_number,
                record.partition_key,
                String::from_utf8_lossy(&record.data)
            );
        }
        // Checkpoint everything delivered so far; fails only if the lease moved on.
        if let Err(e) = checkpointer.checkpoint().await {
            eprintln!("{}: {e}", self.shard_id);
        }
    }

    async fn shard_ended(&mut self, _checkpointer: &mut Checkpointer) {
        println!("{}: shard ended (its children take over)", self.shard_id);
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
    let (stream, endpoints) = match args.as_slice() {
        [stream] => (stream.clone(), Endpoints::default()),
        [stream, kinesis, dynamodb] => (stream.clone(), Endpoints::local(kinesis, dynamodb)),
        _ => {
            eprintln!("usage: simple-consumer <stream> [<kinesis-url> <dynamodb-url>]");
            std::process::exit(2);
        }
    };
    let clients = Clients::connect(&endpoints).await;
    clients.verify().await?; // a clear error naming the endpoint if it is unreachable

    let config = WorkerConfig::builder(&stream, format!("{stream}-simple-consumer"))
        .initial_position(InitialPosition::TrimHorizon)
        .build()?;
    let worker = Worker::new(config, &clients, |shard_id: &str| PrintProcessor {
        shard_id: shard_id.to_string(),
    });

    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    worker.run(cancel).await?; // returns after processors checkpointed and leases were released
    Ok(())
}
