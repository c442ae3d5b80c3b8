//! kcl-rs: a KCL-style consumer framework for Amazon Kinesis Data Streams.
//!
//! Workers of one application share a stream's shards through a DynamoDB lease table;
//! each held lease runs your [`RecordProcessor`], which checkpoints its progress
//! through a [`Checkpointer`]. KPL aggregates arrive already split into user records,
//! and after a reshard a child shard is read only once its parents are finished.
//!
//! # Quick start
//!
//! Everything a consumer needs is at the crate root:
//!
//! ```
//! use kcl::{
//!     CancellationToken, Checkpointer, Clients, Endpoints, InitialPosition,
//!     ProcessRecordsInput, RecordProcessor, Worker, WorkerConfig,
//! };
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # static SEEN: AtomicUsize = AtomicUsize::new(0);
//!
//! /// One instance per shard lease.
//! struct Printer {
//!     shard_id: String,
//! }
//!
//! impl RecordProcessor for Printer {
//!     async fn process_records(&mut self, input: ProcessRecordsInput, checkpointer: &mut Checkpointer) {
//!         for record in &input.records {
//!             println!("{} {}: {}", self.shard_id, record.partition_key, String::from_utf8_lossy(&record.data));
//!         }
//! #       SEEN.fetch_add(input.records.len(), Ordering::SeqCst);
//!         // Fails only if another worker took the lease; the records are then its job.
//!         if let Err(e) = checkpointer.checkpoint().await {
//!             eprintln!("{}: {e}", self.shard_id);
//!         }
//!     }
//!
//!     async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
//!         let _ = checkpointer.checkpoint().await; // hand over exactly where we are
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Real AWS: credentials and region from the usual AWS chain.
//!     let endpoints = Endpoints::default();
//! #   // The doctest runs against the embedded local AWS instead, with a stream to read.
//! #   let aws = kcl_local::LocalAws::start(kcl_local::LocalAwsOptions::from_env()).await?;
//! #   let endpoints = aws.endpoints();
//!     let clients = Clients::connect(&endpoints).await;
//!     clients.verify().await?; // one clear error if an endpoint is unreachable
//! #   let timeout = std::time::Duration::from_secs(30);
//! #   kcl::stream::create_stream(&clients.kinesis, "Orders", 2, timeout).await?;
//! #   for i in 0..10 {
//! #       let data = aws_sdk_kinesis::primitives::Blob::new(format!("order {i}"));
//! #       let put = clients.kinesis.put_record().stream_name("Orders");
//! #       put.partition_key(format!("k{i}")).data(data).send().await?;
//! #   }
//!
//!     // The application name is also the lease table's name.
//!     let config = WorkerConfig::builder("Orders", "OrdersApp")
//!         .initial_position(InitialPosition::TrimHorizon)
//!         .build()?;
//!     let worker = Worker::new(config, &clients, |shard_id: &str| Printer {
//!         shard_id: shard_id.to_string(),
//!     });
//!
//!     // Cancel the token (on Ctrl-C, say) to stop: processors checkpoint, leases are
//!     // released, and `run` returns.
//!     let cancel = CancellationToken::new();
//! #   let stop = cancel.clone();
//! #   tokio::spawn(async move {
//! #       let seen = || async { (SEEN.load(Ordering::SeqCst) >= 10).then_some(()) };
//! #       kcl_local::testing::wait_for("all ten records", timeout, seen).await;
//! #       stop.cancel();
//! #   });
//!     worker.run(cancel).await?;
//! #   aws.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! For tests, demos and local development, the `kcl-local` crate (library
//! `kcl_local`) embeds Kinesis and DynamoDB emulators on loopback; this crate compiles
//! none of it.
//!
//! The engine behind the [`Worker`] (lease coordination, lease handles, the shard
//! reader) is not part of the API: a processor cannot renew or release a lease
//! behind the worker's back.
//!
//! ```compile_fail
//! use kcl::leases::handle::LeaseHandle; // private: does not compile
//! ```
//!
//! Modules, one per concern:
//! - [`aws`]: SDK clients for real AWS or a local endpoint.
//! - [`stream`]: stream administration and shard listing.
//! - [`checkpoint`]: checkpoint positions and the [`Checkpointer`].
//! - [`config`]: the worker configuration builder.
//! - [`processor`]: the record-processor trait you implement.
//! - [`worker`]: the worker that runs everything until cancelled.
//! - [`multi_stream`]: one worker on several streams, from a [`StreamProvider`].
//! - [`lifecycle`]: the per-shard consumer state machine.
//! - [`leases`]: the lease record, its storage and the decisions about it.
//! - `shard_sync` (internal): which leases to create and delete from the shard list.
//! - [`kpl`]: the KPL aggregated record format, deaggregation and aggregation.
//! - [`retrieval`]: reading a shard by polling GetRecords, with a prefetching task.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aws;
pub mod checkpoint;
pub mod config;
pub mod leases;
pub mod lifecycle;
pub mod metrics;
pub mod multi_stream;
pub mod processor;
pub mod retrieval;
// Some of it only `kcl::internals` uses.
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod shard_sync;
pub mod worker;

// The KPL format, hash-key routing and stream administration live in the kinesis-core
// crate, which the producer shares without depending on the consumer.
#[doc(inline)]
pub use kinesis_core::{hash, kpl, stream};

// The API a consumer needs, at the crate root (the modules stay reachable for the
// less common pieces).
pub use aws::{Clients, Endpoints, UnreachableError};
pub use checkpoint::{CheckpointError, Checkpointer, ExtendedSequenceNumber};
pub use config::{ConfigError, InitialPosition, RetrievalMode, WorkerConfig, WorkerConfigBuilder};
pub use leases::LeaseError;
pub use lifecycle::ConsumerOutcome;
pub use multi_stream::{StreamConfig, StreamIdentifier, StreamList, StreamProvider};
pub use processor::{
    InitializationInput, ProcessRecordsInput, RecordProcessor, RecordProcessorFactory,
};
pub use retrieval::fanout::{ConsumerError, StreamConsumer};
pub use retrieval::{KinesisClientRecord, RetrievalError};
pub use shard_sync::ShardSyncError;
pub use stream::StreamError;
/// The token that stops a [`Worker`]: `Worker::run` returns after it is cancelled.
pub use tokio_util::sync::CancellationToken;

/// Engine internals, for this workspace's own tests, benchmarks and harness binaries
/// (feature `internals`): lease coordination, lease handles, expiry tracking, the
/// taking and shard-sync decisions, the shard reader and its prefetcher. No stability
/// promise; an application uses [`Worker`] and never needs them.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::leases::balance::lease_weight;
    pub use crate::leases::coordinator::{
        CoordinatorStats, LeaseConfig, LeaseCoordinator, LeaseEvent,
    };
    pub use crate::leases::expiry::ExpiryTracker;
    pub use crate::leases::handle::{HandleError, LeaseHandle, LeasePhase, RenewOutcome};
    pub use crate::leases::taker::{TakeAction, TakerInput, plan_takes, target_per_worker};
    pub use crate::retrieval::fanout::subscription::{
        FanOutConfig, FanOutReader, FanOutStats, SUBSCRIBE_INTERVAL,
    };
    pub use crate::retrieval::polling::{
        Batch, ChildShardRef, GET_RECORDS_MAX, RetrievalConfig, ShardReader,
    };
    pub use crate::retrieval::prefetch::{DEFAULT_PREFETCH_DEPTH, Prefetcher, spawn_prefetcher};
    pub use crate::retrieval::source::ShardSource;
    pub use crate::shard_sync::{ShardSyncer, SyncPlan, SyncReport, plan_sync};
}
pub use worker::{Worker, WorkerError, WorkerEvent};
