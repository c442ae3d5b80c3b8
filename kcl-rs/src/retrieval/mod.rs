//! Retrieval: reading a shard's records by polling or enhanced fan-out, ahead of the
//! processor.
//!
//! - `ShardReader` (`polling`, internal): GetShardIterator from a checkpoint or start sentinel,
//!   then GetRecords until the shard ends, with pacing, backoff and iterator renewal.
//! - [`KinesisClientRecord`] (`record`): what a processor sees — KPL aggregates split
//!   into user records addressed by (sequence number, sub-sequence number).
//! - `spawn_prefetcher` (`prefetch`, internal): a task that keeps the next batches ready so
//!   GetRecords overlaps processing.
//! - [`fanout`]: enhanced fan-out — stream consumers and SubscribeToShard reading
//!   (`FanOutReader`, internal), behind the same batches as polling (`source`).
//! - [`RetrievalError`] (`error`): the failures retrying cannot fix.
//! - `gone`: a shard Kinesis answers ResourceNotFound for is read as ended when the
//!   stream exists (trimmed past retention), as the Java KCL does.
//!
//! Resuming follows the Java KCL: a checkpoint `(S, n)` reads `AT_SEQUENCE_NUMBER S`
//! and skips every user record at or before `(S, n)`, so a checkpoint in the middle of
//! an aggregate loses none of its remaining sub-records.

mod backoff;
mod error;
pub mod fanout;
mod gone;
// Some of it only `kcl::internals` uses.
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod polling;
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod prefetch;
mod record;
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod source;

pub use error::RetrievalError;
pub(crate) use polling::{ChildShardRef, RetrievalConfig, ShardReader};
pub(crate) use prefetch::{Prefetcher, spawn_prefetcher};
pub use record::{Deaggregated, KinesisClientRecord, deaggregate_records};
pub(crate) use source::ShardSource;
