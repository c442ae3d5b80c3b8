//! What a Kinesis consumer and a Kinesis producer share, and nothing else: kcl-rs (the
//! consumer framework) and the producer both build on this crate, so the producer
//! compiles no lease table, no DynamoDB client and no consumer.
//!
//! - [`kpl`]: the KPL aggregated record format: [`kpl::deaggregate`] for consumers,
//!   [`kpl::Aggregator`] (with exact encoded sizes) for producers.
//! - [`hash`]: how Kinesis routes a record: the hash key of a partition key, explicit
//!   hash keys.
//! - [`backoff`]: retry delays, exponential with full jitter.
//! - [`stream`]: shards with their lineage and hash key ranges, listed from the service,
//!   and stream administration (create, wait for ACTIVE, split, merge).
//!
//! kcl-rs re-exports the three modules, so `kcl::kpl`, `kcl::stream` and their items
//! are these.
//!
//! ```
//! use kinesis_core::hash::partition_key_hash;
//! use kinesis_core::kpl::{Aggregator, deaggregate};
//!
//! let mut aggregator = Aggregator::new();
//! aggregator.add("order-17", None, b"created".to_vec());
//! let record = aggregator.encode();
//! assert_eq!(deaggregate(&record).unwrap()[0].data, b"created");
//! // A two-shard stream splits the hash key space at 2^127: MD5("") starts with 0xd4.
//! assert!(partition_key_hash("") >= 1 << 127);
//! ```

pub mod backoff;
pub mod digest;
pub mod hash;
pub mod kpl;
pub mod metrics;
pub mod stream;
