//! The KPL aggregated record format: many user records packed into one Kinesis record.
//!
//! The Kinesis Producer Library packs user records into a single Kinesis record laid out
//! as the 4 [`MAGIC`] bytes, a protobuf `AggregatedRecord`, and the 16-byte MD5 digest of
//! that protobuf (magic excluded):
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! message Tag {
//!   required string key   = 1;
//!   optional string value = 2;
//! }
//! ```
//!
//! Both sides of the toolkit use this one module: the consumer [`deaggregate`]s, the
//! producer fills an [`Aggregator`]. The protobuf subset is written by hand because it is
//! this small; names follow the `.proto` above.
//!
//! ```
//! use kinesis_core::kpl::{Aggregator, deaggregate, is_aggregated};
//!
//! let mut aggregator = Aggregator::new();
//! aggregator.add("user-1", None, b"first".to_vec());
//! aggregator.add("user-1", Some("42"), b"second".to_vec());
//! let bytes = aggregator.encode();
//! assert_eq!(bytes.len(), aggregator.encoded_len());
//! assert!(is_aggregated(&bytes));
//!
//! let records = deaggregate(&bytes).unwrap();
//! assert_eq!(records[1].partition_key, "user-1");
//! assert_eq!(records[1].explicit_hash_key.as_deref(), Some("42"));
//! assert_eq!(records[1].data, b"second");
//! ```
//!
//! The module is split by concern: wire constants and protobuf primitives,
//! decoding, encoding. Hash-key routing is in [`crate::hash`] and re-exported here.

mod decode;
mod encode;
mod wire;

pub use decode::{DeaggregationError, UserRecord, deaggregate, deaggregate_each, is_aggregated};
pub use encode::{Aggregator, fill_digests};
pub use wire::MAGIC;

pub use crate::hash::{parse_explicit_hash_key, partition_key_hash};

#[cfg(test)]
mod tests;
