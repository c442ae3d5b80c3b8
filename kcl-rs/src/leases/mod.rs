//! Leases: who processes which shard.
//!
//! - [`lease`]: the lease record and its lifecycle states.
//! - [`store`]: the storage trait; [`dynamo`] over DynamoDB, [`memory`] in memory.
//! - `coordinator`, `handle`, `expiry`, `taker` (internal): the worker group, lease
//!   renewal and taking; which leases a worker takes is a pure function of what it
//!   sees.
//! - [`table`]: creating a table unless it exists and waiting until it is ACTIVE.
//! - [`Balance`]: whether workers share leases by count or by load.

// Some of it only `kcl::internals` uses.
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod balance;
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod coordinator;
pub mod dynamo;
pub(crate) mod expiry;
// Some of it only `kcl::internals` uses.
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod handle;
mod item;
pub mod lease;
pub mod memory;
mod retry;
mod scan;
pub mod store;
pub mod table;
pub(crate) mod taker;

pub use balance::Balance;
pub use dynamo::DynamoLeaseStore;
pub use handle::LostReason;
pub use lease::{Lease, LeaseState, ShardLoad};
pub use memory::MemoryLeaseStore;
pub use store::{BoxFuture, Change, Expect, LeaseError, LeaseStore, Membership, WorkerHeartbeat};
