//! kcl-rs: a KCL-style consumer framework for Amazon Kinesis Data Streams.
//!
//! Modules, one per concern:
//! - [`aws`]: SDK clients for real AWS or a local endpoint.
//! - [`stream`]: stream administration and shard listing.
//! - [`checkpoint`]: checkpoint positions and the [`checkpoint::Checkpointer`].
//! - [`config`]: the worker configuration builder.
//! - [`processor`]: the record-processor trait you implement.
//! - [`worker`]: the worker that runs everything until cancelled.
//! - [`lifecycle`]: the per-shard consumer state machine.
//! - [`leases`]: the lease record, its storage and the decisions about it.
//! - [`shard_sync`]: which leases to create and delete from the shard list.
//! - [`kpl`]: the KPL aggregated record format, deaggregation and aggregation.
//! - [`retrieval`]: reading a shard by polling GetRecords, with a prefetching task.
//! - `local` (feature `local`): embedded Kinesis and DynamoDB emulators on loopback.

#![warn(missing_docs)]

pub mod aws;
pub mod checkpoint;
pub mod config;
pub mod kpl;
pub mod leases;
pub mod lifecycle;
#[cfg(feature = "local")]
pub mod local;
pub mod processor;
pub mod retrieval;
pub mod shard_sync;
pub mod stream;
pub mod worker;
