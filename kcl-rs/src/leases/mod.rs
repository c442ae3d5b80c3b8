//! Leases: who processes which shard.
//!
//! - [`lease`]: the lease record and its lifecycle states.
//! - [`store`]: the storage trait; [`dynamo`] over DynamoDB, [`memory`] in memory.
//! - [`taker`]: which leases a worker takes (a pure function of what it sees).
//! - [`table`]: creating a table unless it exists and waiting until it is ACTIVE.

pub mod coordinator;
pub mod dynamo;
pub mod expiry;
pub mod handle;
mod item;
pub mod lease;
pub mod memory;
mod retry;
mod scan;
pub mod store;
pub mod table;
pub mod taker;

pub use dynamo::DynamoLeaseStore;
pub use lease::{Lease, LeaseState, ShardLoad};
pub use memory::MemoryLeaseStore;
pub use store::{BoxFuture, Change, Expect, LeaseError, LeaseStore, Membership, WorkerHeartbeat};
