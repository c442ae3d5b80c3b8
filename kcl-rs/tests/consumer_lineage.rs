//! Parents before children when the lease table is incomplete: a merge child whose
//! other parent has no lease, and a child lease whose creation failed.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kcl::leases::LeaseStore;
use kcl::stream;
use kcl_local::faults::{Fault, Rule};
use kcl_local::testing::{unique, wait_for};

mod common;
use common::consumers::{FAILOVER, config};
use common::faulty_worker::{Deliveries, Env, Running, WAIT};

/// Shards of a stream that went X → split into A and B → A and B merged into C.
struct Lineage {
    name: String,
    x: String,
    a: String,
    b: String,
    c: String,
}

/// Records `x*` in X, `m*` in A and B, `c*` in C.
async fn split_and_merge(env: &Env) -> Lineage {
    let name = unique("lineage");
    let kinesis = env.direct().await.kinesis;
    stream::create_stream(&kinesis, &name, 1, WAIT)
        .await
        .unwrap();
    for i in 0..5 {
        env.put(&name, &format!("k{i}"), &format!("x{i}")).await;
    }
    let x = stream::list_shards(&kinesis, &name).await.unwrap()[0]
        .shard_id
        .clone();
    stream::split_shard(&kinesis, &name, &x, None, WAIT)
        .await
        .unwrap();
    for i in 0..20 {
        env.put(&name, &format!("k{i}"), &format!("m{i}")).await;
    }
    let mut halves: Vec<_> = stream::list_shards(&kinesis, &name)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    halves.sort_by_key(|s| s.starting_hash_key);
    let (a, b) = (halves[0].shard_id.clone(), halves[1].shard_id.clone());
    stream::merge_shards(&kinesis, &name, &a, &b, WAIT)
        .await
        .unwrap();
    for i in 0..20 {
        env.put(&name, &format!("k{i}"), &format!("c{i}")).await;
    }
    let c = stream::list_shards(&kinesis, &name)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.parents().len() == 2)
        .unwrap()
        .shard_id;
    Lineage { name, x, a, b, c }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_child_waits_for_a_parent_whose_lease_is_missing() {
    let env = Env::start().await;
    let lineage = split_and_merge(&env).await;
    let app = unique("lineage-app");
    // As if A's lease came from X's ChildShards and B's creation failed: the start
    // sync of an application reading from LATEST then leases A and the merge child C
    // (a leased parent), but not B (closed, with no leased parent).
    let store = env.store(&app).await;
    store.ensure_tables().await.unwrap();
    let mut a = kcl::leases::Lease::new(
        lineage.a.clone(),
        kcl::checkpoint::ExtendedSequenceNumber::new(
            kcl::checkpoint::SequencePosition::TrimHorizon,
        ),
    );
    a.parent_shard_ids = vec![lineage.x.clone()];
    store.create_lease(&a).await.unwrap();
    let config = kcl::config::WorkerConfig::builder(&lineage.name, &app)
        .worker_id("w")
        .initial_position(kcl::config::InitialPosition::Latest)
        .failover_time(FAILOVER)
        .idle_time_between_reads(Duration::from_millis(100))
        .build()
        .unwrap();
    let deliveries = Deliveries::default();
    let worker = Running::start(
        config,
        &env.direct().await,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    wait_for(
        "every record of A, B and C",
        Duration::from_secs(30),
        || async {
            (deliveries.count_with_prefix("m") == 20 && deliveries.count_with_prefix("c") == 20)
                .then_some(())
        },
    )
    .await;
    let log = deliveries.0.lock().unwrap().clone();
    let last_of = |shard: &str| log.iter().rposition(|(s, _)| s == shard);
    let first_of = |shard: &str| log.iter().position(|(s, _)| s == shard);
    let child_first = first_of(&lineage.c).unwrap();
    for parent in [&lineage.a, &lineage.b] {
        assert!(
            last_of(parent).unwrap() < child_first,
            "{} delivered before its parent {parent} ended: {log:?}",
            lineage.c
        );
    }
    worker.stop().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_child_lease_creation_is_retried_before_the_periodic_sync() {
    let env = Env::start().await;
    let name = unique("child-retry");
    let app = unique("child-retry-app");
    let kinesis = env.direct().await.kinesis;
    stream::create_stream(&kinesis, &name, 1, WAIT)
        .await
        .unwrap();
    env.put(&name, "k", "p0").await;
    let deliveries = Deliveries::default();
    let worker = Running::start(
        config(&name, &app, "w"),
        &env.faulty(&name, &app).await,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    wait_for("the first record", WAIT, || async {
        (deliveries.count_with_prefix("p") == 1).then_some(())
    })
    .await;
    // The quick sync at the parent's end fails to create the first child's lease (the
    // SDK's three attempts); the periodic sync is a minute away.
    let parent = stream::list_shards(&kinesis, &name).await.unwrap()[0]
        .shard_id
        .clone();
    let first_child = format!("shardId-{:012}", 1);
    env.dynamodb().injector().add(
        Rule::dynamodb("PutItem", Fault::internal_server_error())
            .when_body_contains(&first_child)
            .for_next(3),
    );
    stream::split_shard(&kinesis, &name, &parent, None, WAIT)
        .await
        .unwrap();
    for i in 0..20 {
        env.put(&name, &format!("k{i}"), &format!("c{i}")).await;
    }
    wait_for("every child record", Duration::from_secs(15), || async {
        (deliveries.count_with_prefix("c") == 20).then_some(())
    })
    .await;
    worker.stop().await;
    env.shutdown().await;
}
