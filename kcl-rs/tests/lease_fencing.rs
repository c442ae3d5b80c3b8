//! Fencing by ownership epoch: a consumer instance from before its worker lost and
//! re-took the same lease is refused, by the lease handle and by
//! [`ownership_check`] in a processor's own transaction.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, TransactWriteItem,
};
use kcl::checkpoint::{ExtendedSequenceNumber, LeaseOwnership, SequencePosition};
use kcl::internals::{HandleError, LeaseHandle};
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::leases::dynamo::{DynamoLeaseStore, ownership_check};
use kcl::leases::{Lease, LeaseStore};
use kcl_local::testing::{unique, wait_for};
use tokio_util::sync::CancellationToken;

mod common;
use common::strict;

const DEADLINE: Duration = Duration::from_secs(60);
const SHARD: &str = "shardId-000000000000";

struct Coordinator {
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<()>,
    acquired: tokio::sync::mpsc::UnboundedReceiver<LeaseEvent>,
}

async fn start(store: Arc<dyn LeaseStore>, id: &str, failover: Duration) -> Coordinator {
    let mut config = LeaseConfig::new(id);
    config.failover_time = failover;
    let (coordinator, acquired) = LeaseCoordinator::new(store, config);
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let cancel = cancel.clone();
        async move { coordinator.run(cancel).await.unwrap() }
    });
    Coordinator {
        cancel,
        run,
        acquired,
    }
}

async fn acquired(coordinator: &mut Coordinator) -> Arc<LeaseHandle> {
    match tokio::time::timeout(DEADLINE, coordinator.acquired.recv()).await {
        Ok(Some(LeaseEvent::Acquired { handle, .. })) => handle,
        other => panic!("no lease acquired: {other:?}"),
    }
}

fn ownership(handle: &LeaseHandle) -> LeaseOwnership {
    LeaseOwnership {
        worker_id: handle.worker_id().to_string(),
        epoch: handle.epoch(),
    }
}

/// Puts a side-effect item fenced by `owner`'s hold on the lease, as a processor would.
async fn fenced_put(
    client: &aws_sdk_dynamodb::Client,
    leases: &str,
    effects: &str,
    owner: &LeaseOwnership,
) -> bool {
    let put = Put::builder()
        .table_name(effects)
        .item(
            "id",
            AttributeValue::S(format!("{}-{}", owner.worker_id, owner.epoch)),
        )
        .build()
        .unwrap();
    client
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().put(put).build())
        .transact_items(
            TransactWriteItem::builder()
                .condition_check(ownership_check(leases, SHARD, owner))
                .build(),
        )
        .send()
        .await
        .is_ok()
}

/// The same worker loses its lease (its renewals stop past the failover time) and takes
/// it again: the consumer instance of the first ownership must not write any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_from_before_its_worker_retook_the_lease_is_refused() {
    // Through the strict proxies: fencing transactions meet transaction conflicts.
    let aws = strict::local_aws().await;
    let client = aws.clients().await.dynamodb;
    let table = unique("leases");
    let effects = unique("effects");
    client
        .create_table()
        .table_name(&effects)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let store: Arc<dyn LeaseStore> = Arc::new(DynamoLeaseStore::new(client.clone(), &table));
    store.ensure_tables().await.unwrap();
    store
        .create_lease(&Lease::new(
            SHARD,
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        ))
        .await
        .unwrap();

    let mut first = start(Arc::clone(&store), "worker-w", Duration::from_secs(1)).await;
    let old = acquired(&mut first).await;
    let old_owner = ownership(&old);
    assert!(fenced_put(&client, &table, &effects, &old_owner).await);

    // The worker stalls (no renewals) past the failover time; it comes back and takes
    // its own expired lease again while the old consumer instance still runs.
    first.cancel.cancel();
    first.run.await.unwrap();
    let mut second = start(Arc::clone(&store), "worker-w", Duration::from_secs(1)).await;
    let new = acquired(&mut second).await;
    let new_owner = ownership(&new);
    assert!(
        new_owner.epoch > old_owner.epoch,
        "{new_owner:?} after {old_owner:?}"
    );

    assert!(
        !fenced_put(&client, &table, &effects, &old_owner).await,
        "a transaction fenced by the old ownership was accepted"
    );
    let checkpoint = old.checkpoint(ExtendedSequenceNumber::at("100", 0)).await;
    assert!(
        matches!(checkpoint, Err(HandleError::Lost { .. })),
        "{checkpoint:?}"
    );
    assert!(fenced_put(&client, &table, &effects, &new_owner).await);
    new.checkpoint(ExtendedSequenceNumber::at("200", 0))
        .await
        .unwrap();
    wait_for("the checkpoint to be stored", DEADLINE, || async {
        let lease = store.get_lease(SHARD).await.unwrap().unwrap();
        (lease.checkpoint == ExtendedSequenceNumber::at("200", 0)).then_some(())
    })
    .await;

    second.cancel.cancel();
    second.run.await.unwrap();
    aws.shutdown().await;
}

/// During a graceful handoff the previous owner may still write (its last
/// checkpoint), fenced by its own epoch; the new owner only once it holds the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ownership_check_follows_a_graceful_handoff() {
    // Through the strict proxies: fencing transactions meet transaction conflicts.
    let aws = strict::local_aws().await;
    let client = aws.clients().await.dynamodb;
    let table = unique("leases");
    let store: Arc<dyn LeaseStore> = Arc::new(DynamoLeaseStore::new(client.clone(), &table));
    store.ensure_tables().await.unwrap();
    store
        .create_lease(&Lease::new(
            SHARD,
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        ))
        .await
        .unwrap();
    let mut a = start(Arc::clone(&store), "worker-a", Duration::from_secs(10)).await;
    let a_handle = acquired(&mut a).await;
    let a_owner = ownership(&a_handle);
    let check = |owner: &LeaseOwnership| {
        let owner = owner.clone();
        let client = client.clone();
        let table = table.clone();
        async move {
            client
                .transact_write_items()
                .transact_items(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&table)
                                // Any item but the lease: a processor's own write.
                                .item("leaseKey", AttributeValue::S(unique("effect")))
                                .build()
                                .unwrap(),
                        )
                        .build(),
                )
                .transact_items(
                    TransactWriteItem::builder()
                        .condition_check(ownership_check(&table, SHARD, &owner))
                        .build(),
                )
                .send()
                .await
                .is_ok()
        }
    };
    assert!(check(&a_owner).await);

    // worker-b asks for the lease (what balancing does), without a coordinator.
    let lease = store.get_lease(SHARD).await.unwrap().unwrap();
    let asked = store
        .update_lease(
            SHARD,
            kcl::leases::Expect::held(lease.counter, Some("worker-a")),
            kcl::leases::Change {
                bump_counter: true,
                owner: Some(Some("worker-b".into())),
                checkpoint_owner: Some(Some("worker-a".into())),
                epoch: Some(lease.counter + 1),
                keep_epoch_for_checkpoint_owner: true,
                ..kcl::leases::Change::default()
            },
        )
        .await
        .unwrap();
    let b_owner = LeaseOwnership {
        worker_id: "worker-b".into(),
        epoch: asked.counter,
    };
    assert_eq!(asked.checkpoint_owner_epoch, Some(a_owner.epoch));
    assert!(
        check(&a_owner).await,
        "the previous owner finishes its batch"
    );
    assert!(
        !check(&b_owner).await,
        "the new owner waits for the handoff"
    );
    wait_for("worker-a to notice the request", DEADLINE, || async {
        matches!(
            a_handle.phase(),
            kcl::internals::LeasePhase::HandingOff { .. }
        )
        .then_some(())
    })
    .await;
    a_handle
        .checkpoint(ExtendedSequenceNumber::at("300", 0))
        .await
        .unwrap();
    a_handle.hand_over().await.unwrap();
    assert!(!check(&a_owner).await, "handed over");
    assert!(check(&b_owner).await);

    a.cancel.cancel();
    a.run.await.unwrap();
    aws.shutdown().await;
}
