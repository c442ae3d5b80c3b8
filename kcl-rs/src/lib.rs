//! kcl-rs: a KCL-style consumer framework for Amazon Kinesis Data Streams.
//!
//! Modules, one per concern:
//! - [`aws`]: SDK clients for real AWS or a local endpoint.
//! - [`stream`]: stream administration and shard listing.
//! - [`checkpoint`]: checkpoint positions (sequence numbers and sentinels).
//! - [`leases`]: the lease record, its storage and the decisions about it.
//! - [`shard_sync`]: which leases to create and delete from the shard list.
//! - `local` (feature `local`): embedded Kinesis and DynamoDB emulators on loopback.

#![warn(missing_docs)]

pub mod aws;
pub mod checkpoint;
pub mod leases;
#[cfg(feature = "local")]
pub mod local;
pub mod shard_sync;
pub mod stream;
