//! The lease store in memory, with the semantics of [`super::dynamo::DynamoLeaseStore`]
//! (same conditions, same counter and owner-switch rules, same normalisation of sets
//! and load figures), so lease decisions can be tested without DynamoDB.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::item;
use super::lease::Lease;
use super::store::{
    BoxFuture, Change, Expect, LeaseError, LeaseStore, Membership, WorkerHeartbeat,
};

/// A [`LeaseStore`] held in memory. Clones share the same leases and workers, so one
/// store can stand for the lease table seen by several workers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
/// use kcl::leases::memory::MemoryLeaseStore;
/// use kcl::leases::{Change, Expect, Lease, LeaseError, LeaseStore};
///
/// let store = MemoryLeaseStore::new();
/// let lease = Lease::new("shardId-0", ExtendedSequenceNumber::new(SequencePosition::TrimHorizon));
/// store.create_lease(&lease).await.unwrap();
/// let take = Change {
///     bump_counter: true,
///     owner: Some(Some("worker-a".into())),
///     ..Change::default()
/// };
/// let taken = store.update_lease("shardId-0", Expect::held(0, None), take.clone()).await.unwrap();
/// assert_eq!((taken.owner.as_deref(), taken.counter), (Some("worker-a"), 1));
/// // A second taker that saw the same counter loses.
/// let lost = store.update_lease("shardId-0", Expect::held(0, None), take).await;
/// assert!(matches!(lost, Err(LeaseError::ConditionFailed { .. })));
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryLeaseStore {
    tables: Arc<Mutex<Tables>>,
}

#[derive(Debug, Default)]
struct Tables {
    leases: BTreeMap<String, Lease>,
    /// Each member's heartbeat and lease count.
    workers: BTreeMap<String, (u64, u64)>,
    lease_generation: u64,
}

impl Tables {
    fn membership(&self) -> Membership {
        Membership {
            workers: self
                .workers
                .iter()
                .map(|(worker_id, &(heartbeat, leases))| WorkerHeartbeat {
                    worker_id: worker_id.clone(),
                    heartbeat,
                    leases: Some(leases),
                })
                .collect(),
            lease_generation: self.lease_generation,
        }
    }
}

impl MemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A heartbeat of `worker_id`; `member` requires it to be a member already (a
    /// heartbeat), otherwise it joins.
    fn beat(&self, worker_id: &str, member: bool, leases: u64) -> Result<Membership, LeaseError> {
        let mut tables = self.tables();
        if member && !tables.workers.contains_key(worker_id) {
            return Err(condition_failed(worker_id));
        }
        let (beat, held) = tables
            .workers
            .entry(worker_id.to_string())
            .or_insert((0, 0));
        *beat = beat.saturating_add(1);
        *held = leases;
        Ok(tables.membership())
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // Every operation leaves the maps consistent before it could panic, so a
        // poisoned lock still guards valid data.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `lease` satisfies `expect` (the item's existence is checked by the caller).
fn matches(expect: &Expect, lease: &Lease) -> bool {
    expect.counter.is_none_or(|c| c == lease.counter)
        && expect.owner.as_ref().is_none_or(|o| *o == lease.owner)
        && expect
            .checkpoint_owner
            .as_ref()
            .is_none_or(|o| *o == lease.checkpoint_owner)
        && expect.epoch.is_none_or(|e| Some(e) == lease.epoch)
        && expect
            .checkpoint_owner_epoch
            .is_none_or(|e| Some(e) == lease.checkpoint_owner_epoch)
}

/// `change` applied to `lease`, as the UpdateItem the DynamoDB store sends would.
fn apply(change: Change, mut lease: Lease) -> Lease {
    if change.bump_counter {
        lease.counter = lease.counter.saturating_add(1);
    }
    if let Some(owner) = change.owner {
        lease.owner = owner;
    }
    if change.keep_epoch_for_checkpoint_owner {
        lease.checkpoint_owner_epoch = Some(lease.epoch.unwrap_or(0));
    }
    if let Some(epoch) = change.epoch {
        lease.epoch = Some(epoch);
    }
    if let Some(owner) = change.checkpoint_owner {
        if owner.is_none() {
            lease.checkpoint_owner_epoch = None;
        }
        lease.checkpoint_owner = owner;
    }
    if let Some(checkpoint) = change.checkpoint {
        lease.checkpoint = checkpoint;
        lease.owner_switches_since_checkpoint = 0;
    } else if change.owner_switch {
        lease.owner_switches_since_checkpoint =
            lease.owner_switches_since_checkpoint.saturating_add(1);
    }
    if let Some(pending) = change.pending_checkpoint {
        lease.pending_checkpoint = pending;
    }
    if let Some(load) = change.load {
        lease.load = Some(load);
    }
    if let Some(children) = change.child_shard_ids {
        lease.child_shard_ids = children;
    }
    item::canonical(lease)
}

fn condition_failed(key: &str) -> LeaseError {
    LeaseError::ConditionFailed {
        key: key.to_string(),
    }
}

impl LeaseStore for MemoryLeaseStore {
    fn ensure_tables(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }

    fn list_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>> {
        Box::pin(async move { Ok(self.tables().leases.values().cloned().collect()) })
    }

    fn get_lease<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        Box::pin(async move { Ok(self.tables().leases.get(key).cloned()) })
    }

    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut tables = self.tables();
            if tables.leases.contains_key(&lease.key) {
                return Err(condition_failed(&lease.key));
            }
            tables
                .leases
                .insert(lease.key.clone(), item::canonical(lease.clone()));
            Ok(())
        })
    }

    fn update_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        change: Change,
    ) -> BoxFuture<'a, Result<Lease, LeaseError>> {
        Box::pin(async move {
            let mut tables = self.tables();
            let stored = tables
                .leases
                .get_mut(key)
                .filter(|lease| matches(&expect, lease))
                .ok_or_else(|| condition_failed(key))?;
            *stored = apply(change, stored.clone());
            Ok(stored.clone())
        })
    }

    fn delete_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut tables = self.tables();
            if !tables
                .leases
                .get(key)
                .is_some_and(|lease| matches(&expect, lease))
            {
                return Err(condition_failed(key));
            }
            tables.leases.remove(key);
            Ok(())
        })
    }

    fn join<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        Box::pin(async move { self.beat(worker_id, false, 0) })
    }

    fn heartbeat<'a>(
        &'a self,
        worker_id: &'a str,
        leases: u64,
    ) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        Box::pin(async move { self.beat(worker_id, true, leases) })
    }

    fn evict_worker<'a>(
        &'a self,
        worker_id: &'a str,
        heartbeat: u64,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut tables = self.tables();
            if tables.workers.get(worker_id).map(|&(beat, _)| beat) != Some(heartbeat) {
                return Err(condition_failed(worker_id));
            }
            tables.workers.remove(worker_id);
            Ok(())
        })
    }

    fn remove_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            self.tables().workers.remove(worker_id);
            Ok(())
        })
    }

    fn membership(&self) -> BoxFuture<'_, Result<Membership, LeaseError>> {
        Box::pin(async move { Ok(self.tables().membership()) })
    }

    fn note_leases_changed(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut tables = self.tables();
            tables.lease_generation = tables.lease_generation.saturating_add(1);
            Ok(())
        })
    }
}
