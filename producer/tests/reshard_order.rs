//! Per-key order across a split: a record of a key that the new shard map routes to a
//! child shard waits until the call still carrying an earlier record of that key to the
//! (now closed) parent has been answered. Otherwise the later record reaches the child
//! first, and Kinesis, routing the delayed call by hash key, puts the earlier one after
//! it in the same child.

mod common;

use std::time::Duration;

use common::{config, payload, read_all, start, tag_of};
use kcl::aws::{Clients, Endpoints};
use kcl::stream;
use kcl_local::LocalAwsOptions;
use kcl_local::faults::{Fault, FaultKind, FaultPlan, FaultProxy, Rule, kinesis_target};
use kcl_local::testing::wait_for;
use producer::Producer;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Delay of the parent shard's call: long enough for a split, a map refresh and a
/// second put to happen behind it, even on a loaded machine.
const PARENT_CALL_DELAY: Duration = Duration::from_secs(6);

/// The key whose order is checked; `-` keeps it out of any base64 data in a body.
const KEY: &str = "slow-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_routed_to_a_child_waits_for_the_parents_call() {
    let (aws, direct, stream_name) = start(LocalAwsOptions::from_env(), "order", 2).await;
    let plan = FaultPlan::new(5);
    let proxy = FaultProxy::start(aws.endpoints().kinesis.as_deref().unwrap(), plan.clone())
        .await
        .unwrap();
    let endpoints = Endpoints::local(proxy.url(), aws.endpoints().dynamodb.unwrap());
    let faulty = Clients::connect(&endpoints).await.kinesis;
    let producer_config = config(&stream_name)
        .record_max_buffered_time(Duration::from_millis(10))
        .build()
        .unwrap();
    let producer = Producer::new(producer_config, faulty);
    let shards = stream::list_shards(&direct, &stream_name).await.unwrap();
    let (parent, other) = (&shards[0], &shards[1]);
    // KEY's hash key lies in the parent's lower half: its lower child after the split.
    let key_hash = (parent.starting_hash_key + 10).to_string();

    // The producer learns the two-shard map.
    let warm = producer
        .put_with_hash_key("warm", key_hash.clone(), payload("warm", 10))
        .await
        .unwrap();
    producer.flush().await;
    warm.await.unwrap();

    // The first record of KEY goes to the parent in a call the proxy holds back.
    let puts = kinesis_target("PutRecords");
    plan.add(
        Rule::kinesis(
            "PutRecords",
            Fault::Latency {
                delay: PARENT_CALL_DELAY,
            },
        )
        .when_body_contains(KEY)
        .for_next(1),
    );
    let mut first = producer
        .put_with_hash_key(KEY, key_hash.clone(), payload("first", 20))
        .await
        .unwrap();
    wait_for("the first record's call held", TIMEOUT, || async {
        (proxy.injected(&puts, FaultKind::Latency) == 1).then_some(())
    })
    .await;

    // Both shards split meanwhile. An aggregate of two keys from the other shard's two
    // halves lands in one child, so the producer refreshes its map to judge it and puts
    // the stray user record again: once that one is written, the new map is in.
    for shard in [&parent.shard_id, &other.shard_id] {
        stream::split_shard(&direct, &stream_name, shard, None, TIMEOUT)
            .await
            .unwrap();
    }
    let low = (other.starting_hash_key + 10).to_string();
    let high = (other.ending_hash_key - 10).to_string();
    let _trigger = producer
        .put_with_hash_key("trigger", low, payload("trigger-low", 20))
        .await
        .unwrap();
    let stray = producer
        .put_with_hash_key("trigger", high, payload("trigger-high", 20))
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, stray)
        .await
        .unwrap()
        .expect("written after the map refresh");
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut first)
            .await
            .is_err(),
        "the first record was answered before the map changed: the scenario needs a longer delay"
    );

    // The second record of KEY is routed by the new map, straight to the child.
    let second = producer
        .put_with_hash_key(KEY, key_hash, payload("second", 20))
        .await
        .unwrap();
    let first = tokio::time::timeout(TIMEOUT, first).await.unwrap().unwrap();
    let second = tokio::time::timeout(TIMEOUT, second)
        .await
        .unwrap()
        .unwrap();
    producer.shutdown().await;
    assert_ne!(
        *first.shard_id, parent.shard_id,
        "the held call reached Kinesis before the split: nothing to order"
    );
    assert_eq!(first.shard_id, second.shard_id);

    // Read back with GetRecords: KEY's records in put order.
    let (_, records) = read_all(&direct, &stream_name).await;
    let order: Vec<&str> = records
        .iter()
        .filter(|r| r.partition_key == KEY)
        .map(|r| tag_of(&r.data))
        .collect();
    assert_eq!(order, ["first", "second"], "{KEY} out of order");
    proxy.shutdown().await;
    aws.shutdown().await;
}
