//! The seam between lease decisions and lease storage: one small trait, implemented
//! over DynamoDB ([`super::DynamoLeaseStore`]) and in memory ([`super::MemoryLeaseStore`]).
//!
//! Every write is conditional. [`Expect`] says what the writer believes the item is;
//! when the item is different the write is rejected with [`LeaseError::ConditionFailed`]
//! and nothing changes.

use std::future::Future;
use std::pin::Pin;

use crate::checkpoint::ExtendedSequenceNumber;

use super::lease::{Lease, ShardLoad};

/// A boxed, sendable future (the trait is used as `Arc<dyn LeaseStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a conditional write requires of the stored lease. `None` fields are not
/// checked; `Some(None)` means "the attribute must be absent".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// `leaseCounter` must equal this.
    pub counter: Option<u64>,
    /// `leaseOwner` must be this (or absent).
    pub owner: Option<Option<String>>,
    /// `checkpointOwner` must be this (or absent).
    pub checkpoint_owner: Option<Option<String>>,
    /// `leaseEpoch` must be this.
    pub epoch: Option<u64>,
    /// `checkpointOwnerEpoch` must be this.
    pub checkpoint_owner_epoch: Option<u64>,
}

impl Expect {
    /// Counter and owner as last seen: the fencing condition of renew, take, release
    /// and checkpoint.
    pub fn held(counter: u64, owner: Option<&str>) -> Expect {
        Expect {
            counter: Some(counter),
            owner: Some(owner.map(str::to_string)),
            ..Expect::default()
        }
    }
}

/// What a write changes. `None` fields are left alone; `Some(None)` removes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    /// Increment `leaseCounter` by one.
    pub bump_counter: bool,
    /// Set or remove `leaseOwner`.
    pub owner: Option<Option<String>>,
    /// Set or remove `checkpointOwner`. Removing it also removes
    /// `checkpointOwnerEpoch`.
    pub checkpoint_owner: Option<Option<String>>,
    /// Begin a new ownership: set `leaseEpoch` to this (the counter the write leaves).
    pub epoch: Option<u64>,
    /// A handoff request: keep the current `leaseEpoch` as `checkpointOwnerEpoch` (the
    /// previous owner's, fencing its last checkpoints) before `epoch` replaces it.
    pub keep_epoch_for_checkpoint_owner: bool,
    /// Set `checkpoint` (and its sub-sequence); also resets
    /// `ownerSwitchesSinceCheckpoint` to 0.
    pub checkpoint: Option<ExtendedSequenceNumber>,
    /// Set or remove `pendingCheckpoint` (and its sub-sequence).
    pub pending_checkpoint: Option<Option<ExtendedSequenceNumber>>,
    /// Increment `ownerSwitchesSinceCheckpoint` by one.
    pub owner_switch: bool,
    /// Set the observed load attributes.
    pub load: Option<ShardLoad>,
    /// Set `childShardIds`.
    pub child_shard_ids: Option<Vec<String>>,
}

/// Lease storage errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The item was not as expected (or is missing): the write did nothing. For the
    /// holder of a lease this means the lease is lost or being handed off.
    #[error("lease {key}: conditional write rejected (changed by another writer)")]
    ConditionFailed {
        /// The lease.
        key: String,
    },
    /// Throttling, a 5xx, a timeout or a dropped connection: worth retrying.
    #[error("lease table temporarily unavailable: {message}")]
    Transient {
        /// What the service or SDK said.
        message: String,
    },
    /// A stored item that is not a valid lease.
    #[error("lease {key} is malformed: {what}")]
    Malformed {
        /// The item's key.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// Anything else: wrong table schema, access denied, bad configuration.
    #[error("lease table error: {message}")]
    Fatal {
        /// What went wrong.
        message: String,
    },
}

impl LeaseError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, LeaseError::Transient { .. })
    }
}

/// A worker's presence record, used to count live workers for balancing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerHeartbeat {
    /// The worker id.
    pub worker_id: String,
    /// Incremented by the worker at every heartbeat; observers judge liveness by when
    /// they last saw it change, never by comparing clocks across machines.
    pub heartbeat: u64,
    /// How many leases the worker held at its last heartbeat (`None` when it did not
    /// say): lets a worker below its share see that another one is above it, without
    /// listing the lease table.
    pub leases: Option<u64>,
}

/// The group of workers sharing a lease table, as one read (or one heartbeat) returns
/// it: every member's heartbeat, and a counter bumped whenever leases are created or
/// deleted.
///
/// Stored as one item, so that every heartbeat write returns the whole group at no read
/// cost: a worker learns who joined, left or died from its own heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Every member, sorted by worker id.
    pub workers: Vec<WorkerHeartbeat>,
    /// Bumped by [`LeaseStore::note_leases_changed`]: when it moves, the set of leases
    /// changed and workers list the lease table again.
    pub lease_generation: u64,
}

impl Membership {
    /// Whether `worker_id` is a member.
    pub fn contains(&self, worker_id: &str) -> bool {
        self.workers.iter().any(|w| w.worker_id == worker_id)
    }
}

/// Storage for leases and worker heartbeats.
pub trait LeaseStore: Send + Sync + 'static {
    /// Creates the lease table (and worker table) if absent and waits until usable. An
    /// existing table with the wrong key schema is a [`LeaseError::Fatal`].
    fn ensure_tables(&self) -> BoxFuture<'_, Result<(), LeaseError>>;

    /// Every lease, read consistently. An item that is not a valid lease is left out
    /// (logged once and counted in [`LeaseStore::malformed_items`]): one bad item,
    /// written by hand or by another tool, must not stop every worker.
    fn list_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>>;

    /// Every lease, for the coordinator's taking cycles: may be read eventually
    /// consistently (half the read cost on DynamoDB). Decisions made from it are only
    /// proposals: every take is a conditional write, and a stale counter only delays
    /// an expiry. Defaults to [`LeaseStore::list_leases`].
    fn scan_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>> {
        self.list_leases()
    }

    /// How many distinct items [`LeaseStore::list_leases`] has left out as malformed.
    fn malformed_items(&self) -> u64 {
        0
    }

    /// One lease, read consistently.
    fn get_lease<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>>;

    /// Creates a lease if no lease with its key exists (`attribute_not_exists`);
    /// otherwise [`LeaseError::ConditionFailed`].
    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Applies `change` if the lease exists and matches `expect`; returns the lease as
    /// stored after the write.
    fn update_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        change: Change,
    ) -> BoxFuture<'a, Result<Lease, LeaseError>>;

    /// Deletes a lease if it matches `expect`.
    fn delete_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Adds the worker to the group, holding no lease (or, when it is a member already,
    /// increments its heartbeat) and returns the group as it is after the write.
    fn join<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<Membership, LeaseError>>;

    /// Increments the worker's heartbeat, records that it holds `leases` leases, and
    /// returns the group after the write (no read cost on DynamoDB: the write returns
    /// the item). [`LeaseError::ConditionFailed`] when the worker is not a member: it
    /// was evicted (judged dead) or removed, and must give up its leases before it
    /// joins again.
    fn heartbeat<'a>(
        &'a self,
        worker_id: &'a str,
        leases: u64,
    ) -> BoxFuture<'a, Result<Membership, LeaseError>>;

    /// Removes a worker judged dead, if its heartbeat is still `heartbeat` (otherwise
    /// [`LeaseError::ConditionFailed`]). Its leases may then be taken at once: a worker
    /// gives up its leases when it has not heartbeaten for the failover time.
    fn evict_worker<'a>(
        &'a self,
        worker_id: &'a str,
        heartbeat: u64,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Removes the worker from the group (graceful shutdown).
    fn remove_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// The group, in one small read (eventually consistent on DynamoDB).
    fn membership(&self) -> BoxFuture<'_, Result<Membership, LeaseError>>;

    /// Every member's heartbeat (the workers of [`LeaseStore::membership`]).
    fn list_workers(&self) -> BoxFuture<'_, Result<Vec<WorkerHeartbeat>, LeaseError>> {
        Box::pin(async move { Ok(self.membership().await?.workers) })
    }

    /// Bumps [`Membership::lease_generation`]: call after creating or deleting leases,
    /// so that every worker lists the lease table again soon.
    fn note_leases_changed(&self) -> BoxFuture<'_, Result<(), LeaseError>>;
}
