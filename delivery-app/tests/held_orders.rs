//! Orders held in memory until they complete (docs/delivery-stats.md, "Orders written
//! once"): an open order is not written, the checkpoint stays just before its first
//! record, and the next owner of the shard rebuilds it from the records.

use std::time::Duration;

mod common;

use common::{
    assigned, completed, created, run_worker_task, statistics_with, stop_worker_task,
    worker_options,
};

use delivery_app::stats::StatsStore;
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use kcl_local::testing::unique;
use kcl_local::{LocalAws, LocalAwsOptions};

/// Puts `events` in order on the one-shard `stream`; their sequence numbers.
async fn put(kinesis: &aws_sdk_kinesis::Client, stream: &str, events: &[String]) -> Vec<String> {
    let mut sequence_numbers = Vec::new();
    for event in events {
        let put = kinesis
            .put_record()
            .stream_name(stream)
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(event.as_bytes()))
            .send()
            .await
            .unwrap();
        sequence_numbers.push(put.sequence_number().to_string());
    }
    sequence_numbers
}

fn orders(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("o{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_orders_are_not_written_and_the_next_owner_rebuilds_them() {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let clients = aws.clients().await;
    let (stream, app) = (unique("held"), unique("held-app"));
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let all = orders(0..10);
    let mut first: Vec<String> = all.iter().map(|o| created(o)).collect();
    first.extend(all.iter().map(|o| assigned(o, "d")));
    first.extend(orders(0..5).iter().map(|o| completed(o)));
    let positions = put(&clients.kinesis, &stream, &first).await;
    let store = StatsStore::new(clients.dynamodb.clone(), &app);

    // The first worker applies all 25 events; o5..o9 stay open.
    let (w1, stop) = run_worker_task(&clients, worker_options(&stream, &app, "w1"));
    let stats = statistics_with(&store, 25).await;
    assert_eq!(stats.totals.sums.orders_created, 10);
    assert_eq!(stats.totals.sums.orders_assigned, 10);
    assert_eq!(stats.totals.sums.orders_completed, 5);
    // Only the completed orders are in the table: one write each.
    let states = store.order_states(&all).await.unwrap();
    for (n, id) in all.iter().enumerate() {
        let state = &states[id];
        assert_eq!(state.is_some(), n < 5, "{id}: {state:?}");
        if let Some(state) = state {
            assert!(state.assigned && state.completed, "{id}: {state:?}");
            assert_eq!(state.applied.len(), 3, "{id}: {state:?}");
        }
    }
    stop_worker_task(w1, stop).await;
    // Its last checkpoint is just before the oldest open order's creation (o5's).
    let leases = DynamoLeaseStore::new(clients.dynamodb.clone(), &app);
    let lease = leases.list_leases().await.unwrap().remove(0);
    assert_eq!(lease.checkpoint.position.as_str(), positions[4]);

    // The next owner replays o5..o9 from there and completes them as if nothing
    // happened: no dead letter (an order it did not know would be "completed before
    // created"), nothing counted twice.
    put(
        &clients.kinesis,
        &stream,
        &orders(5..10)
            .iter()
            .map(|o| completed(o))
            .collect::<Vec<_>>(),
    )
    .await;
    let (w2, stop) = run_worker_task(&clients, worker_options(&stream, &app, "w2"));
    let stats = statistics_with(&store, 30).await;
    let totals = &stats.totals;
    assert_eq!(totals.sums.events, 30, "{totals:?}");
    assert_eq!(totals.sums.orders_created, 10);
    assert_eq!(totals.sums.orders_assigned, 10);
    assert_eq!(totals.sums.orders_completed, 10);
    assert_eq!(totals.sums.completion_ms_sum, 10 * 1500);
    assert_eq!(totals.dead_letter_count(), 0, "{:?}", totals.dead_letters);
    assert_eq!(totals.redeliveries_skipped, 0);
    let states = store.order_states(&all).await.unwrap();
    assert!(
        states.values().all(|s| s
            .as_ref()
            .is_some_and(|s| s.completed && s.applied.len() == 3)),
        "{states:?}"
    );
    stop_worker_task(w2, stop).await;
    aws.shutdown().await;
}
