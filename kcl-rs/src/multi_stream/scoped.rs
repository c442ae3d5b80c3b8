//! One stream's view of a multi-stream lease table: the stream's leases under their
//! shard ids, so that shard sync, parent checks and child creation work on one stream
//! exactly as in single-stream mode.

use std::sync::Arc;

use crate::leases::{
    BoxFuture, Change, Expect, Lease, LeaseError, LeaseStore, Membership, WorkerHeartbeat,
};

/// Leases whose keys begin with `prefix`, seen with the prefix removed; writes add it.
pub(crate) struct ScopedStore {
    inner: Arc<dyn LeaseStore>,
    prefix: String,
}

impl ScopedStore {
    pub(crate) fn new(inner: Arc<dyn LeaseStore>, prefix: impl Into<String>) -> ScopedStore {
        ScopedStore {
            inner,
            prefix: prefix.into(),
        }
    }

    fn key(&self, shard_id: &str) -> String {
        format!("{}{shard_id}", self.prefix)
    }

    /// The lease as this stream sees it, or `None` if it is another stream's.
    fn strip(&self, mut lease: Lease) -> Option<Lease> {
        lease.key = lease.key.strip_prefix(&self.prefix)?.to_string();
        Some(lease)
    }

    fn strip_all(&self, leases: Vec<Lease>) -> Vec<Lease> {
        leases.into_iter().filter_map(|l| self.strip(l)).collect()
    }

    fn stripped(&self, lease: Lease) -> Lease {
        let key = lease.key.clone();
        self.strip(lease).unwrap_or_else(|| {
            unreachable!("the store answered for {key} outside the prefix it was asked about")
        })
    }
}

impl LeaseStore for ScopedStore {
    fn ensure_tables(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        self.inner.ensure_tables()
    }

    fn list_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>> {
        Box::pin(async move { Ok(self.strip_all(self.inner.list_leases().await?)) })
    }

    fn scan_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>> {
        Box::pin(async move { Ok(self.strip_all(self.inner.scan_leases().await?)) })
    }

    fn malformed_items(&self) -> u64 {
        self.inner.malformed_items()
    }

    fn get_lease<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        Box::pin(async move {
            let lease = self.inner.get_lease(&self.key(key)).await?;
            Ok(lease.map(|l| self.stripped(l)))
        })
    }

    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut full = lease.clone();
            full.key = self.key(&lease.key);
            self.inner.create_lease(&full).await
        })
    }

    fn update_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        change: Change,
    ) -> BoxFuture<'a, Result<Lease, LeaseError>> {
        Box::pin(async move {
            let lease = self
                .inner
                .update_lease(&self.key(key), expect, change)
                .await?;
            Ok(self.stripped(lease))
        })
    }

    fn delete_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move { self.inner.delete_lease(&self.key(key), expect).await })
    }

    fn join<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        self.inner.join(worker_id)
    }

    fn heartbeat<'a>(
        &'a self,
        worker_id: &'a str,
        leases: u64,
    ) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        self.inner.heartbeat(worker_id, leases)
    }

    fn evict_worker<'a>(
        &'a self,
        worker_id: &'a str,
        heartbeat: u64,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.inner.evict_worker(worker_id, heartbeat)
    }

    fn remove_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.inner.remove_worker(worker_id)
    }

    fn membership(&self) -> BoxFuture<'_, Result<Membership, LeaseError>> {
        self.inner.membership()
    }

    fn list_workers(&self) -> BoxFuture<'_, Result<Vec<WorkerHeartbeat>, LeaseError>> {
        self.inner.list_workers()
    }

    fn note_leases_changed(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        self.inner.note_leases_changed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{ExtendedSequenceNumber, SequencePosition};
    use crate::leases::MemoryLeaseStore;

    fn lease(key: &str) -> Lease {
        Lease::new(
            key,
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        )
    }

    #[tokio::test]
    async fn each_stream_sees_its_own_leases_by_shard_id() {
        let table: Arc<dyn LeaseStore> = Arc::new(MemoryLeaseStore::new());
        let a = ScopedStore::new(Arc::clone(&table), "1:a:5:");
        let b = ScopedStore::new(Arc::clone(&table), "1:b:5:");
        a.create_lease(&lease("shardId-0")).await.unwrap();
        b.create_lease(&lease("shardId-0")).await.unwrap();
        b.create_lease(&lease("shardId-1")).await.unwrap();
        table.create_lease(&lease("shardId-9")).await.unwrap();

        let mut keys: Vec<_> = table.list_leases().await.unwrap();
        keys.sort_by(|x, y| x.key.cmp(&y.key));
        let keys: Vec<_> = keys.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "1:a:5:shardId-0",
                "1:b:5:shardId-0",
                "1:b:5:shardId-1",
                "shardId-9"
            ]
        );
        let seen = |leases: Vec<Lease>| {
            let mut keys: Vec<_> = leases.into_iter().map(|l| l.key).collect();
            keys.sort();
            keys
        };
        assert_eq!(seen(a.list_leases().await.unwrap()), ["shardId-0"]);
        assert_eq!(
            seen(b.scan_leases().await.unwrap()),
            ["shardId-0", "shardId-1"]
        );
        assert_eq!(
            a.get_lease("shardId-0").await.unwrap().unwrap().key,
            "shardId-0"
        );
        assert!(a.get_lease("shardId-1").await.unwrap().is_none());

        let change = Change {
            child_shard_ids: Some(vec!["shardId-2".into()]),
            ..Change::default()
        };
        let updated = b.update_lease("shardId-1", Expect::default(), change).await;
        assert_eq!(updated.unwrap().key, "shardId-1");
        b.delete_lease("shardId-0", Expect::default())
            .await
            .unwrap();
        assert!(table.get_lease("1:b:5:shardId-0").await.unwrap().is_none());
        assert!(table.get_lease("1:a:5:shardId-0").await.unwrap().is_some());
        // A create of an existing lease fails as for the whole table.
        assert!(matches!(
            a.create_lease(&lease("shardId-0")).await,
            Err(LeaseError::ConditionFailed { .. })
        ));
    }
}
