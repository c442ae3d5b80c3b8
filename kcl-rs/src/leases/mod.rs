//! Leases: who processes which shard.
//!
//! - [`lease`]: the lease record and its lifecycle states.
//! - [`store`]: the storage trait; [`dynamo`] over DynamoDB, [`memory`] in memory.
//! - [`taker`]: which leases a worker takes (a pure function of what it sees).

pub mod dynamo;
pub mod lease;
pub mod memory;
pub mod store;
pub mod taker;

pub use lease::{Lease, LeaseState, ShardLoad};
pub use store::{BoxFuture, Change, Expect, LeaseError, LeaseStore, WorkerHeartbeat};
