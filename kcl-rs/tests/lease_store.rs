//! The `LeaseStore` contract, written once and run against both stores: the DynamoDB
//! store on the embedded local DynamoDB, and the memory store. Whatever decision logic
//! is tested on the memory store then holds on DynamoDB too.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::leases::dynamo::DynamoLeaseStore;
use kcl::leases::memory::MemoryLeaseStore;
use kcl::leases::{Change, Expect, Lease, LeaseError, LeaseStore, Membership, ShardLoad};
use kcl_local::testing::unique;
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio::sync::Barrier;

fn trim_horizon(key: &str) -> Lease {
    Lease::new(
        key,
        ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
    )
}

fn take(worker: &str) -> Change {
    Change {
        bump_counter: true,
        owner: Some(Some(worker.into())),
        owner_switch: true,
        ..Change::default()
    }
}

fn renew() -> Change {
    Change {
        bump_counter: true,
        ..Change::default()
    }
}

fn release() -> Change {
    Change {
        bump_counter: true,
        owner: Some(None),
        ..Change::default()
    }
}

#[track_caller]
fn assert_condition_failed<T: std::fmt::Debug>(result: Result<T, LeaseError>, key: &str) {
    match result {
        Err(LeaseError::ConditionFailed { key: k }) => assert_eq!(k, key),
        other => panic!("expected ConditionFailed for {key}, got {other:?}"),
    }
}

async fn ready(store: &dyn LeaseStore) {
    store.ensure_tables().await.unwrap();
}

// ---------------------------------------------------------------------------------
// The contract scenarios. Each takes the store under test; the race also takes a
// second handle on the same table (its own SDK client for DynamoDB).
// ---------------------------------------------------------------------------------

async fn create_twice_is_rejected(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    let lease = trim_horizon("shardId-000000000000");
    store.create_lease(&lease).await.unwrap();
    let mut other = lease.clone();
    other.owner = Some("intruder".into());
    assert_condition_failed(store.create_lease(&other).await, &lease.key);
    assert_eq!(store.get_lease(&lease.key).await.unwrap(), Some(lease));
    assert_eq!(store.get_lease("shardId-missing").await.unwrap(), None);
}

async fn every_attribute_round_trips(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    let full = Lease {
        key: "shardId-000000000007".into(),
        owner: Some("worker-b".into()),
        counter: 41,
        checkpoint: ExtendedSequenceNumber::at(
            "49590338271490256608559692538361571095921575989136588898",
            3,
        ),
        pending_checkpoint: Some(ExtendedSequenceNumber::at(
            "49590338271490256608559692540925702759324208523137515618",
            7,
        )),
        owner_switches_since_checkpoint: 2,
        parent_shard_ids: vec!["shardId-000000000001".into(), "shardId-000000000002".into()],
        child_shard_ids: vec!["shardId-000000000009".into()],
        hash_key_range: Some((u128::MAX / 2 + 1, u128::MAX)),
        checkpoint_owner: Some("worker-a".into()),
        epoch: Some(40),
        checkpoint_owner_epoch: Some(37),
        load: Some(ShardLoad {
            records_per_sec: 812.25,
            bytes_per_sec: 1_234_567.125,
            millis_behind_latest: 1200,
        }),
    };
    store.create_lease(&full).await.unwrap();
    assert_eq!(
        store.get_lease(&full.key).await.unwrap().as_ref(),
        Some(&full)
    );

    // Every sentinel, and a lease with nothing optional.
    for (i, position) in [
        SequencePosition::TrimHorizon,
        SequencePosition::Latest,
        SequencePosition::AtTimestamp,
        SequencePosition::ShardEnd,
    ]
    .into_iter()
    .enumerate()
    {
        let lease = Lease::new(
            format!("shardId-sentinel-{i}"),
            ExtendedSequenceNumber::new(position),
        );
        store.create_lease(&lease).await.unwrap();
        assert_eq!(store.get_lease(&lease.key).await.unwrap(), Some(lease));
    }
    let zero_range = Lease {
        hash_key_range: Some((0, 0)),
        parent_shard_ids: vec!["shardId-000000000003".into()],
        ..trim_horizon("shardId-zero-range")
    };
    store.create_lease(&zero_range).await.unwrap();
    let listed = store.list_leases().await.unwrap();
    assert_eq!(listed.len(), 6);
    assert!(listed.contains(&full) && listed.contains(&zero_range));
}

async fn renew_needs_counter_and_owner(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    let key = "shardId-000000000001";
    store.create_lease(&trim_horizon(key)).await.unwrap();
    let taken = store
        .update_lease(key, Expect::held(0, None), take("worker-a"))
        .await
        .unwrap();
    assert_eq!(
        (taken.owner.as_deref(), taken.counter),
        (Some("worker-a"), 1)
    );

    let renewed = store
        .update_lease(key, Expect::held(1, Some("worker-a")), renew())
        .await
        .unwrap();
    assert_eq!(renewed.counter, 2);
    assert_eq!(renewed.owner.as_deref(), Some("worker-a"));
    assert_eq!(store.get_lease(key).await.unwrap(), Some(renewed.clone()));

    // A stale counter, a wrong owner, or expecting it free: rejected, nothing changed.
    for expect in [
        Expect::held(1, Some("worker-a")),
        Expect::held(2, Some("worker-b")),
        Expect::held(2, None),
        Expect {
            checkpoint_owner: Some(Some("worker-a".into())),
            ..Expect::held(2, Some("worker-a"))
        },
    ] {
        assert_condition_failed(
            store
                .update_lease(
                    key,
                    expect,
                    Change {
                        owner: Some(Some("worker-b".into())),
                        checkpoint: Some(ExtendedSequenceNumber::at("5", 0)),
                        ..renew()
                    },
                )
                .await,
            key,
        );
        assert_eq!(store.get_lease(key).await.unwrap().as_ref(), Some(&renewed));
    }

    // A missing lease is a failed condition, and is not created by the attempt.
    assert_condition_failed(
        store
            .update_lease("shardId-missing", Expect::default(), take("worker-a"))
            .await,
        "shardId-missing",
    );
    assert_eq!(store.get_lease("shardId-missing").await.unwrap(), None);

    // An empty change is a conditional read.
    let same = store
        .update_lease(key, Expect::held(2, Some("worker-a")), Change::default())
        .await
        .unwrap();
    assert_eq!(same, renewed);
    assert_condition_failed(
        store
            .update_lease(key, Expect::held(1, Some("worker-a")), Change::default())
            .await,
        key,
    );
}

async fn take_and_release(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    let key = "shardId-000000000002";
    store.create_lease(&trim_horizon(key)).await.unwrap();

    let taken = store
        .update_lease(key, Expect::held(0, None), take("worker-a"))
        .await
        .unwrap();
    assert_eq!(taken.owner.as_deref(), Some("worker-a"));
    assert_eq!(taken.owner_switches_since_checkpoint, 1);
    // Taking a held lease as if free fails.
    assert_condition_failed(
        store
            .update_lease(key, Expect::held(1, None), take("worker-b"))
            .await,
        key,
    );

    let released = store
        .update_lease(key, Expect::held(1, Some("worker-a")), release())
        .await
        .unwrap();
    assert_eq!((released.owner, released.counter), (None, 2));
    assert_eq!(store.get_lease(key).await.unwrap().unwrap().owner, None);

    // Free again: the next take sees no owner and counts another switch.
    let retaken = store
        .update_lease(key, Expect::held(2, None), take("worker-b"))
        .await
        .unwrap();
    assert_eq!(retaken.owner.as_deref(), Some("worker-b"));
    assert_eq!(retaken.owner_switches_since_checkpoint, 2);
    assert_eq!(retaken.counter, 3);
}

async fn graceful_handoff(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    let key = "shardId-000000000003";
    store.create_lease(&trim_horizon(key)).await.unwrap();
    store
        .update_lease(key, Expect::held(0, None), take("worker-a"))
        .await
        .unwrap();

    // worker-b asks for the lease: it becomes owner, worker-a stays checkpoint owner.
    let asked = store
        .update_lease(
            key,
            Expect {
                checkpoint_owner: Some(None),
                ..Expect::held(1, Some("worker-a"))
            },
            Change {
                checkpoint_owner: Some(Some("worker-a".into())),
                ..take("worker-b")
            },
        )
        .await
        .unwrap();
    assert_eq!(asked.owner.as_deref(), Some("worker-b"));
    assert_eq!(asked.checkpoint_owner.as_deref(), Some("worker-a"));
    assert_eq!(
        asked.state(),
        kcl::leases::LeaseState::HandingOff {
            from: "worker-a",
            to: "worker-b"
        }
    );
    // A second handoff request finds checkpointOwner present.
    assert_condition_failed(
        store
            .update_lease(
                key,
                Expect {
                    checkpoint_owner: Some(None),
                    ..Expect::default()
                },
                take("worker-c"),
            )
            .await,
        key,
    );

    // worker-a checkpoints and lets go, conditional on still being checkpoint owner.
    let done = store
        .update_lease(
            key,
            Expect {
                checkpoint_owner: Some(Some("worker-a".into())),
                ..Expect::default()
            },
            Change {
                checkpoint: Some(ExtendedSequenceNumber::at("100", 0)),
                checkpoint_owner: Some(None),
                ..Change::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.checkpoint_owner, None);
    assert_eq!(done.checkpoint, ExtendedSequenceNumber::at("100", 0));
    assert_eq!(
        done.state(),
        kcl::leases::LeaseState::Held { owner: "worker-b" }
    );
    // worker-a, having let go, can no longer checkpoint.
    assert_condition_failed(
        store
            .update_lease(
                key,
                Expect {
                    checkpoint_owner: Some(Some("worker-a".into())),
                    ..Expect::default()
                },
                Change {
                    checkpoint: Some(ExtendedSequenceNumber::at("101", 0)),
                    ..Change::default()
                },
            )
            .await,
        key,
    );
}

async fn checkpoint_resets_owner_switches(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    let key = "shardId-000000000004";
    store.create_lease(&trim_horizon(key)).await.unwrap();
    let (mut counter, mut owner) = (0, None);
    for worker in ["worker-a", "worker-b", "worker-c"] {
        let lease = store
            .update_lease(key, Expect::held(counter, owner), take(worker))
            .await
            .unwrap();
        (counter, owner) = (lease.counter, Some(worker));
    }
    let lease = store.get_lease(key).await.unwrap().unwrap();
    assert_eq!(lease.owner_switches_since_checkpoint, 3);

    // Two-phase checkpoint: prepare, then commit (which clears the pending one).
    let prepared = store
        .update_lease(
            key,
            Expect::held(counter, Some("worker-c")),
            Change {
                pending_checkpoint: Some(Some(ExtendedSequenceNumber::at("777", 2))),
                ..renew()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        prepared.pending_checkpoint,
        Some(ExtendedSequenceNumber::at("777", 2))
    );
    assert_eq!(prepared.owner_switches_since_checkpoint, 3);
    let committed = store
        .update_lease(
            key,
            Expect::held(prepared.counter, Some("worker-c")),
            Change {
                checkpoint: Some(ExtendedSequenceNumber::at("777", 2)),
                pending_checkpoint: Some(None),
                ..renew()
            },
        )
        .await
        .unwrap();
    assert_eq!(committed.checkpoint, ExtendedSequenceNumber::at("777", 2));
    assert_eq!(committed.pending_checkpoint, None);
    assert_eq!(committed.owner_switches_since_checkpoint, 0);
    assert_eq!(committed.counter, prepared.counter + 1);

    // A switch that comes with a checkpoint is not counted as one since it.
    let both = store
        .update_lease(
            key,
            Expect::held(committed.counter, Some("worker-c")),
            Change {
                checkpoint: Some(ExtendedSequenceNumber::shard_end()),
                child_shard_ids: Some(vec!["shardId-9".into(), "shardId-8".into()]),
                load: Some(ShardLoad {
                    records_per_sec: 0.5,
                    bytes_per_sec: 10.0,
                    millis_behind_latest: 0,
                }),
                ..take("worker-d")
            },
        )
        .await
        .unwrap();
    assert_eq!(both.owner_switches_since_checkpoint, 0);
    assert_eq!(both.child_shard_ids, ["shardId-8", "shardId-9"]);
    assert_eq!(both.load.unwrap().bytes_per_sec, 10.0);
    assert_eq!(both.state(), kcl::leases::LeaseState::Finished);
    let cleared = store
        .update_lease(
            key,
            Expect::default(),
            Change {
                child_shard_ids: Some(vec![]),
                ..Change::default()
            },
        )
        .await
        .unwrap();
    assert!(cleared.child_shard_ids.is_empty());
    assert_eq!(store.get_lease(key).await.unwrap(), Some(cleared));
}

async fn delete_is_conditional(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    let key = "shardId-000000000005";
    store.create_lease(&trim_horizon(key)).await.unwrap();
    store
        .update_lease(key, Expect::held(0, None), take("worker-a"))
        .await
        .unwrap();
    assert_condition_failed(store.delete_lease(key, Expect::held(0, None)).await, key);
    assert_condition_failed(
        store
            .delete_lease(key, Expect::held(1, Some("worker-b")))
            .await,
        key,
    );
    assert!(store.get_lease(key).await.unwrap().is_some());
    store
        .delete_lease(key, Expect::held(1, Some("worker-a")))
        .await
        .unwrap();
    assert_eq!(store.get_lease(key).await.unwrap(), None);
    // Deleting what is gone is a failed condition, even with no expectation.
    assert_condition_failed(store.delete_lease(key, Expect::default()).await, key);
}

/// Enough leases, each big enough, that a DynamoDB Scan (1 MB a page) needs two pages.
const MANY: usize = 150;

fn big_lease(i: usize) -> Lease {
    Lease {
        parent_shard_ids: (0..8)
            .map(|p| format!("shardId-{i:06}-{p}-{}", "x".repeat(1000)))
            .collect(),
        hash_key_range: Some((i as u128, u128::MAX - i as u128)),
        ..trim_horizon(&format!("shardId-{i:012}"))
    }
}

async fn list_returns_every_lease(store: Arc<dyn LeaseStore>, _: Arc<dyn LeaseStore>) {
    ready(&*store).await;
    for i in 0..MANY {
        store.create_lease(&big_lease(i)).await.unwrap();
    }
    let mut listed = store.list_leases().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let expected: Vec<Lease> = (0..MANY).map(big_lease).collect();
    assert_eq!(listed.len(), MANY);
    assert!(
        listed == expected,
        "listed leases differ from those created"
    );
}

async fn the_group_counts_heartbeats_and_evicts_on_condition(
    store: Arc<dyn LeaseStore>,
    _: Arc<dyn LeaseStore>,
) {
    ready(&*store).await;
    assert_eq!(store.membership().await.unwrap(), Membership::default());
    let beats = |group: Membership| {
        group
            .workers
            .into_iter()
            .map(|w| (w.worker_id, w.heartbeat, w.leases))
            .collect::<Vec<_>>()
    };
    // Any worker id, whatever its characters.
    let odd = "host:1 #b.c-d";
    assert!(matches!(
        store.heartbeat("worker-a", 0).await,
        Err(LeaseError::ConditionFailed { .. })
    ));
    store.join("worker-a").await.unwrap();
    store.heartbeat("worker-a", 3).await.unwrap();
    // Every heartbeat returns the whole group, with the lease count each member sent.
    let group = store.join(odd).await.unwrap();
    assert_eq!(
        beats(group),
        [
            (odd.to_string(), 1, Some(0)),
            ("worker-a".to_string(), 2, Some(3))
        ]
    );
    assert_eq!(beats(store.membership().await.unwrap()).len(), 2);
    // Eviction only at the heartbeat last seen.
    assert!(matches!(
        store.evict_worker("worker-a", 1).await,
        Err(LeaseError::ConditionFailed { .. })
    ));
    store.evict_worker("worker-a", 2).await.unwrap();
    assert!(matches!(
        store.heartbeat("worker-a", 3).await,
        Err(LeaseError::ConditionFailed { .. })
    ));
    assert_eq!(
        beats(store.heartbeat(odd, 1).await.unwrap()),
        [(odd.to_string(), 2, Some(1))]
    );
    // Leaving, and coming back: counting starts again.
    store.remove_worker(odd).await.unwrap();
    store.remove_worker("worker-never-seen").await.unwrap();
    assert!(store.list_workers().await.unwrap().is_empty());
    assert_eq!(
        beats(store.join("worker-a").await.unwrap()),
        [("worker-a".to_string(), 1, Some(0))]
    );
    // The lease generation moves when told.
    store.note_leases_changed().await.unwrap();
    store.note_leases_changed().await.unwrap();
    assert_eq!(store.membership().await.unwrap().lease_generation, 2);
    assert_eq!(
        store
            .heartbeat("worker-a", 0)
            .await
            .unwrap()
            .lease_generation,
        2
    );
}

async fn ensure_tables_is_idempotent_and_concurrent(
    store: Arc<dyn LeaseStore>,
    _: Arc<dyn LeaseStore>,
) {
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.ensure_tables().await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    store.ensure_tables().await.unwrap();
    store.ensure_tables().await.unwrap();
    store
        .create_lease(&trim_horizon("shardId-0"))
        .await
        .unwrap();
    store.join("worker-a").await.unwrap();
    assert_eq!(store.list_leases().await.unwrap().len(), 1);
    assert_eq!(store.list_workers().await.unwrap().len(), 1);
}

/// Two workers, each with its own connection, race to take the same free lease having
/// seen the same counter. The table must let exactly one of them win every time.
async fn exactly_one_taker_wins(a: Arc<dyn LeaseStore>, b: Arc<dyn LeaseStore>) {
    race(a, b, |counter| Expect::held(counter, None)).await;
}

/// The same race with only the counter in the condition: the fencing token alone
/// must be enough to decide it.
async fn the_counter_alone_fences(a: Arc<dyn LeaseStore>, b: Arc<dyn LeaseStore>) {
    race(a, b, |counter| Expect {
        counter: Some(counter),
        ..Expect::default()
    })
    .await;
}

async fn race(a: Arc<dyn LeaseStore>, b: Arc<dyn LeaseStore>, expect: fn(u64) -> Expect) {
    ready(&*a).await;
    let key = "shardId-race";
    a.create_lease(&trim_horizon(key)).await.unwrap();
    let mut counter = 0;
    for trial in 0..200 {
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [("worker-a", a.clone()), ("worker-b", b.clone())]
            .into_iter()
            .map(|(worker, store)| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let taken = store.update_lease(key, expect(counter), take(worker)).await;
                    (worker, taken)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                (worker, Ok(lease)) => winners.push((worker, lease)),
                (_, Err(LeaseError::ConditionFailed { .. })) => {}
                (worker, Err(e)) => panic!("trial {trial}: {worker}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "trial {trial}: winners {winners:?}");
        let (winner, lease) = winners.pop().unwrap();
        assert_eq!(lease.owner.as_deref(), Some(winner));
        assert_eq!(lease.counter, counter + 1);
        let released = a
            .update_lease(key, Expect::held(counter + 1, Some(winner)), release())
            .await
            .unwrap();
        counter = released.counter;
    }
}

// ---------------------------------------------------------------------------------
// Each scenario as a test against each store.
// ---------------------------------------------------------------------------------

/// A DynamoDB store on a fresh table of its own local DynamoDB.
struct Dynamo {
    aws: LocalAws,
    table: String,
}

impl Dynamo {
    async fn start() -> Dynamo {
        let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
        Dynamo {
            aws,
            table: unique("leases"),
        }
    }

    /// A store with a client (and so connections) of its own.
    async fn store(&self) -> DynamoLeaseStore {
        DynamoLeaseStore::new(self.aws.clients().await.dynamodb, &self.table)
    }
}

macro_rules! contract {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let store = kcl::leases::memory::MemoryLeaseStore::new();
                    super::$scenario(
                        std::sync::Arc::new(store.clone()),
                        std::sync::Arc::new(store),
                    )
                    .await;
                }
            )*
        }

        mod dynamo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let dynamo = super::Dynamo::start().await;
                    super::$scenario(
                        std::sync::Arc::new(dynamo.store().await),
                        std::sync::Arc::new(dynamo.store().await),
                    )
                    .await;
                    dynamo.aws.shutdown().await;
                }
            )*
        }
    };
}

contract!(
    create_twice_is_rejected,
    every_attribute_round_trips,
    renew_needs_counter_and_owner,
    take_and_release,
    graceful_handoff,
    checkpoint_resets_owner_switches,
    delete_is_conditional,
    list_returns_every_lease,
    the_group_counts_heartbeats_and_evicts_on_condition,
    ensure_tables_is_idempotent_and_concurrent,
    exactly_one_taker_wins,
    the_counter_alone_fences,
);

// ---------------------------------------------------------------------------------
// DynamoDB only: the table itself.
// ---------------------------------------------------------------------------------

async fn create_table(
    db: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    ty: ScalarAttributeType,
) {
    db.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ty)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_tables_creates_both_tables_on_demand() {
    let dynamo = Dynamo::start().await;
    let store = dynamo.store().await;
    store.ensure_tables().await.unwrap();
    let db = dynamo.aws.clients().await.dynamodb;
    for (table, key) in [
        (dynamo.table.clone(), "leaseKey"),
        (format!("{}-Workers", dynamo.table), "workerId"),
    ] {
        let description = db
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .unwrap()
            .table
            .unwrap();
        assert_eq!(description.key_schema()[0].attribute_name(), key, "{table}");
        assert_eq!(
            description
                .billing_mode_summary()
                .and_then(|b| b.billing_mode()),
            Some(&BillingMode::PayPerRequest),
            "{table}"
        );
    }
    assert_eq!(
        store.workers_table_name(),
        format!("{}-Workers", dynamo.table)
    );
    dynamo.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_the_wrong_key_schema_is_fatal() {
    let dynamo = Dynamo::start().await;
    let db = dynamo.aws.clients().await.dynamodb;
    create_table(&db, &dynamo.table, "shardId", ScalarAttributeType::S).await;
    let err = dynamo.store().await.ensure_tables().await.unwrap_err();
    assert!(matches!(err, LeaseError::Fatal { .. }), "{err:?}");
    assert!(err.to_string().contains(&dynamo.table), "{err}");
    assert!(err.to_string().contains("shardId HASH (S)"), "{err}");

    // Right name, wrong type; and the workers table is checked the same way.
    let numeric = unique("numeric");
    create_table(&db, &numeric, "leaseKey", ScalarAttributeType::N).await;
    let err = DynamoLeaseStore::new(db.clone(), &numeric)
        .ensure_tables()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("leaseKey HASH (N)"), "{err}");
    let workers = unique("workers");
    create_table(
        &db,
        &format!("{workers}-Workers"),
        "id",
        ScalarAttributeType::S,
    )
    .await;
    let err = DynamoLeaseStore::new(db.clone(), &workers)
        .ensure_tables()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!("{workers}-Workers")),
        "{err}"
    );
    dynamo.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_follows_scan_pages() {
    let dynamo = Dynamo::start().await;
    let store: Arc<dyn LeaseStore> = Arc::new(dynamo.store().await);
    list_returns_every_lease(store.clone(), store).await;
    // The fixture really spans pages: the first page alone stops short.
    let db = dynamo.aws.clients().await.dynamodb;
    let page = db
        .scan()
        .table_name(&dynamo.table)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(page.last_evaluated_key.is_some());
    assert!(
        page.items().len() < MANY,
        "{} items in one page",
        page.items().len()
    );
    dynamo.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_java_kcl_items() {
    let dynamo = Dynamo::start().await;
    let store = dynamo.store().await;
    store.ensure_tables().await.unwrap();
    let db = dynamo.aws.clients().await.dynamodb;
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());

    // An item as the Java KCL writes it, with attributes we do not know.
    db.put_item()
        .table_name(&dynamo.table)
        .item("leaseKey", s("shardId-000000000001"))
        .item("leaseOwner", s("java-worker"))
        .item("leaseCounter", n("17"))
        .item(
            "checkpoint",
            s("49590338271490256608559692538361571095921575989136588898"),
        )
        .item("checkpointSubSequenceNumber", n("0"))
        .item("ownerSwitchesSinceCheckpoint", n("1"))
        .item(
            "parentShardId",
            AttributeValue::Ss(vec!["shardId-000000000000".into()]),
        )
        .item("startingHashKey", s("0"))
        .item(
            "endingHashKey",
            s("170141183460469231731687303715884105727"),
        )
        .item(
            "pendingCheckpointState",
            AttributeValue::B(vec![1, 2].into()),
        )
        .item("leaseTimeout", n("10000"))
        .send()
        .await
        .unwrap();
    let lease = store
        .get_lease("shardId-000000000001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.owner.as_deref(), Some("java-worker"));
    assert_eq!(lease.counter, 17);
    assert_eq!(lease.parent_shard_ids, ["shardId-000000000000"]);
    assert_eq!(lease.hash_key_range, Some((0, u128::MAX / 2)));

    // Our updates leave the attributes we do not know alone.
    store
        .update_lease(&lease.key, Expect::held(17, Some("java-worker")), renew())
        .await
        .unwrap();
    let item = db
        .get_item()
        .table_name(&dynamo.table)
        .key("leaseKey", s("shardId-000000000001"))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["leaseCounter"], n("18"));
    assert_eq!(item["leaseTimeout"], n("10000"));

    // An item without a counter is reported, not guessed at.
    db.put_item()
        .table_name(&dynamo.table)
        .item("leaseKey", s("shardId-broken"))
        .item("checkpoint", s("TRIM_HORIZON"))
        .send()
        .await
        .unwrap();
    let err = store.get_lease("shardId-broken").await.unwrap_err();
    assert!(
        matches!(&err, LeaseError::Malformed { key, what } if key == "shardId-broken" && what.contains("leaseCounter")),
        "{err:?}"
    );
    // A listing leaves it out (counted, logged once) rather than failing as a whole:
    // one bad item must not stop every worker.
    let listed = store.list_leases().await.unwrap();
    assert!(listed.iter().all(|l| l.key != "shardId-broken"));
    assert!(!listed.is_empty());
    assert_eq!(store.malformed_items(), 1);
    store.list_leases().await.unwrap();
    assert_eq!(store.malformed_items(), 1, "counted once per item");
    dynamo.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_table_is_transient() {
    let dynamo = Dynamo::start().await;
    let store = dynamo.store().await;
    store.ensure_tables().await.unwrap();
    dynamo.aws.shutdown().await;
    // Nothing listens any more: connection refused, after the SDK's own retries.
    let started = std::time::Instant::now();
    let err = store.get_lease("shardId-0").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_clones_share_state() {
    let store = MemoryLeaseStore::new();
    let other = store.clone();
    store
        .create_lease(&trim_horizon("shardId-0"))
        .await
        .unwrap();
    assert!(other.get_lease("shardId-0").await.unwrap().is_some());
}
