//! Shard sync against a real Kinesis protocol (embedded, or kinesis-mock via
//! `KCL_TEST_KINESIS_ENDPOINT`) and the embedded DynamoDB.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::internals::ShardSyncer;
use kcl::leases::{DynamoLeaseStore, Lease, LeaseStore};
use kcl::stream;

mod common;
use common::strict;
use kcl_local::testing::unique;

const WAIT: Duration = Duration::from_secs(30);

async fn leases_by_key(store: &Arc<dyn LeaseStore>) -> BTreeMap<String, Lease> {
    store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.key.clone(), l))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_follow_splits_and_merges_with_lineage() {
    let aws = strict::local_aws().await;
    let clients = strict::admin(&aws).await;
    let name = unique("sync");
    let app = unique("sync-leases");
    // The syncer and its store call as a worker does.
    let worker = strict::worker_clients(&aws, &name, &app).await;
    stream::create_stream(&clients.kinesis, &name, 2, WAIT)
        .await
        .unwrap();
    let store: Arc<dyn LeaseStore> = Arc::new(DynamoLeaseStore::new(worker.dynamodb.clone(), app));
    store.ensure_tables().await.unwrap();
    let syncer = ShardSyncer::new(
        worker.kinesis.clone(),
        &name,
        Arc::clone(&store),
        ExtendedSequenceNumber::new(SequencePosition::Latest),
    );

    let report = syncer.sync_once().await.unwrap();
    assert_eq!(report.created.len(), 2);
    let leases = leases_by_key(&store).await;
    for lease in leases.values() {
        assert_eq!(lease.checkpoint.position, SequencePosition::Latest);
        assert!(lease.parent_shard_ids.is_empty());
    }
    // A second worker syncing the same shards creates nothing.
    assert!(syncer.sync_once().await.unwrap().created.is_empty());

    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    let (low, high) = if shards[0].starting_hash_key < shards[1].starting_hash_key {
        (shards[0].clone(), shards[1].clone())
    } else {
        (shards[1].clone(), shards[0].clone())
    };
    stream::split_shard(&clients.kinesis, &name, &low.shard_id, None, WAIT)
        .await
        .unwrap();
    let report = syncer.sync_once().await.unwrap();
    assert_eq!(report.created.len(), 2, "{report:?}");
    let leases = leases_by_key(&store).await;
    for child in &report.created {
        let lease = &leases[child];
        assert_eq!(lease.parent_shard_ids, vec![low.shard_id.clone()]);
        assert_eq!(
            lease.checkpoint.position,
            SequencePosition::TrimHorizon,
            "a child reads from its start"
        );
    }
    let mut children = report.created.clone();
    children.sort();
    assert_eq!(leases[&low.shard_id].child_shard_ids, children);

    // Merge the upper child with the untouched upper shard: two parents.
    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    let upper_child = shards
        .iter()
        .filter(|s| s.is_open() && s.parents() == vec![low.shard_id.clone()])
        .max_by_key(|s| s.starting_hash_key)
        .unwrap()
        .clone();
    stream::merge_shards(
        &clients.kinesis,
        &name,
        &upper_child.shard_id,
        &high.shard_id,
        WAIT,
    )
    .await
    .unwrap();
    let report = syncer.sync_once().await.unwrap();
    assert_eq!(report.created.len(), 1, "{report:?}");
    let merged = &leases_by_key(&store).await[&report.created[0]];
    let mut parents = merged.parent_shard_ids.clone();
    parents.sort();
    let mut expected = vec![upper_child.shard_id.clone(), high.shard_id.clone()];
    expected.sort();
    assert_eq!(parents, expected);
    assert_eq!(merged.checkpoint.position, SequencePosition::TrimHorizon);
    aws.shutdown().await;
}
