//! A KPL-like producer for Amazon Kinesis Data Streams.
//!
//! [`Producer::put`] takes user records; a background task packs them into KPL
//! aggregated records per predicted shard, collects those into PutRecords calls, keeps
//! each shard under its write limits and retries failures with backoff until each
//! record's time to live. Every accepted record's [`RecordFuture`] resolves: to where it
//! was written ([`UserRecordResult`]) or to why not ([`PutError`]), with its attempts.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use kcl_local::{LocalAws, LocalAwsOptions};
//! use producer::{Producer, ProducerConfig};
//!
//! let aws = LocalAws::start(LocalAwsOptions::default()).await?;
//! let kinesis = aws.clients().await.kinesis;
//! kinesis_core::stream::create_stream(&kinesis, "deliveries", 4, Duration::from_secs(10)).await?;
//!
//! let config = ProducerConfig::builder("deliveries").build()?;
//! let producer = Producer::new(config, kinesis);
//! let first = producer.put("truck-7", b"left the depot".to_vec()).await?;
//! let second = producer.put("truck-7", b"delivered".to_vec()).await?;
//! producer.flush().await;
//! let (first, second) = (first.await?, second.await?);
//! // Same key, same shard, one aggregated Kinesis record, in order.
//! assert_eq!(first.shard_id, second.shard_id); // shared: `Arc<str>`
//! assert_eq!(first.sequence_number, second.sequence_number);
//! assert_eq!((first.sub_sequence_number, second.sub_sequence_number), (Some(0), Some(1)));
//! producer.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # How records travel
//! - [`producer`](Producer): validation, then the bounded buffer — `put` waits for room
//!   (records and bytes), then hands the record to the producer task.
//! - `shard_map`: the stream's shards from ListShards. A record's hash key (MD5 of its
//!   partition key, or its explicit hash key) predicts its shard.
//! - `aggregation`: one KPL aggregate per predicted shard (see [`kinesis_core::kpl`]), sized
//!   exactly; its `ExplicitHashKey` is its first user record's hash key, inside the
//!   shard's range. A container of one user record goes out as that plain record.
//! - `collector`: sealed records queue per shard and leave in PutRecords calls of at
//!   most 500 entries and 5 MiB. A shard is in at most one call at a time, so a
//!   shard's records reach Kinesis in order.
//! - `limiter`: per-shard token buckets at [`ProducerConfig::rate_limit`] percent of
//!   1 MiB/s and 1,000 records/s.
//! - `engine`: the one background task that owns all of the above, fed by `put`
//!   through a channel (the buffer's room bounds it); it gives the room of resolved
//!   records back. PutRecords and ListShards calls run beside it.
//! - `retry`: failed records (per-record throttling and internal failures, or a failed
//!   call) come back after a full-jitter exponential backoff and are aggregated again.
//!
//! # Resharding
//! When Kinesis writes a record to a shard the map did not predict, the map is
//! refreshed and buffered records are aggregated again against it. An aggregate that
//! landed in a shard whose range does not hold every one of its user records' hash keys
//! (it was built before a split) is put again, all of it, as the KPL does: the Java
//! KCL drops every sub-record of such an aggregate, so its consumers then get them from
//! the new copies, in the right shards. Consumers that keep them, as kcl-rs does, see
//! them twice; Kinesis delivery is at least once anyway. Their attempts show a
//! [`WRONG_SHARD`] attempt.
//!
//! A future resolves `Ok` only for a record consumers keep: a Kinesis record that
//! landed in a shard the map did not know is judged against a refreshed map first. If
//! no map comes within a user record's time to live, it fails as
//! [`Expired`](PutError::Expired) with an [`UNCONFIRMED_SHARD`] attempt, although the
//! stream may hold it.
//!
//! Per key, order holds across a reshard too: a record that the new map routes to a
//! shard waits until every call still in flight for a shard whose range overlaps it
//! (the parent, or a merge's parents) has been answered.

#![warn(missing_docs)]

mod aggregation;
mod collector;
pub mod config;
mod engine;
mod error;
mod limiter;
pub mod metrics;
mod producer;
mod record;
mod result;
mod retry;
mod shard_map;

pub use config::{ProducerConfig, ProducerConfigBuilder};
pub use error::{ConfigError, PutError};
pub use producer::Producer;
pub use result::{
    Attempt, AttemptError, Attempts, RecordFuture, UNCONFIRMED_SHARD, UserRecordResult, WRONG_SHARD,
};
