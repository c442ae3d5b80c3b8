//! The statistics store against the embedded DynamoDB: a transaction applies once; the
//! same records again (a replay by a zombie or after a crash) are refused by the
//! watermark condition, a plan from a stale order state by the order's condition, and
//! nothing changes either time.

use std::collections::HashMap;

use delivery_app::events::parse;
use delivery_app::stats::StatsStore;
use delivery_app::stats::plan::{OrderState, ParsedRecord, plan_chunk, referenced_orders};
use delivery_app::stats::store::StoreError;
use kcl::checkpoint::ExtendedSequenceNumber;
use kcl::local::{LocalAws, LocalAwsOptions};

fn record(seq: u64, json: &str) -> ParsedRecord {
    ParsedRecord {
        position: ExtendedSequenceNumber::at(seq.to_string(), 0),
        partition_key: "k".into(),
        raw: json.as_bytes().to_vec(),
        parsed: Some(parse(json.as_bytes())),
    }
}

fn created(seq: u64, order: &str, price: i64) -> ParsedRecord {
    record(
        seq,
        &format!(
            r#"{{"type":"order_created","order_id":"{order}","created_at":1000,"pickup":{{"x":4,"y":5}},"dropoff":{{"x":4,"y":6}},"price_cents":{price}}}"#
        ),
    )
}

fn absent(records: &[ParsedRecord]) -> HashMap<String, Option<OrderState>> {
    referenced_orders(records)
        .into_iter()
        .map(|id| (id, None))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_stale_plans_change_nothing() {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let store = StatsStore::new(aws.clients().await.dynamodb, "StoreTest");
    store.ensure_tables().await.unwrap();
    store.ensure_tables().await.unwrap(); // idempotent

    let first = vec![
        created(10, "o1", 1_250),
        created(11, "o2", 999),
        record(
            12,
            r#"{"type":"order_assigned","order_id":"o1","driver_id":"d","assigned_at":1100}"#,
        ),
        record(13, "not json"),
    ];
    let chunk = plan_chunk("shard-a", &first, &absent(&first));
    assert_eq!(chunk.records, 4);
    store
        .apply("shard-a", None, &chunk.delta.regions, &chunk)
        .await
        .unwrap();
    let after_first = store.read().await.unwrap();
    assert_eq!(after_first.totals.sums.orders_created, 2);
    assert_eq!(after_first.totals.sums.created_price_cents, 2_249);
    assert_eq!(after_first.totals.sums.response_ms_sum, 100);
    assert_eq!(after_first.totals.dead_letter_count(), 1);
    assert_eq!(
        store.watermark("shard-a").await.unwrap(),
        Some(ExtendedSequenceNumber::at("13", 0))
    );

    // The same records again, as a zombie would apply them: refused as a whole.
    let replay = store
        .apply("shard-a", None, &chunk.delta.regions, &chunk)
        .await;
    assert!(
        matches!(replay, Err(StoreError::Conflict { .. })),
        "{replay:?}"
    );
    // A plan that believes o1 was never created (stale), on the right watermark:
    // refused by the order's condition, the watermark does not move.
    let stale = vec![created(14, "o1", 5)];
    let chunk = plan_chunk("shard-a", &stale, &absent(&stale));
    let previous = ExtendedSequenceNumber::at("13", 0);
    let refused = store
        .apply("shard-a", Some(&previous), &chunk.delta.regions, &chunk)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    let unchanged = store.read().await.unwrap();
    assert_eq!(unchanged.totals, after_first.totals);
    assert_eq!(
        store.watermark("shard-a").await.unwrap(),
        Some(previous.clone())
    );
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);

    // Planned from the state read back, the same record is a duplicate: dead-lettered.
    let states = store
        .order_states(&["o1".to_string(), "o9".to_string()])
        .await
        .unwrap();
    assert!(
        states["o1"]
            .as_ref()
            .is_some_and(|s| s.assigned && !s.completed)
    );
    assert_eq!(states["o9"], None);
    let chunk = plan_chunk("shard-a", &stale, &states);
    store
        .apply(
            "shard-a",
            Some(&previous),
            &after_first.totals.regions,
            &chunk,
        )
        .await
        .unwrap();
    let now = store.read().await.unwrap();
    assert_eq!(now.totals.sums, after_first.totals.sums);
    assert_eq!(now.totals.dead_letter_count(), 2);

    // Another shard's item is separate; `read` sums them.
    let other = vec![record(
        1,
        r#"{"type":"order_completed","order_id":"o2","completed_at":1600}"#,
    )];
    let states = store.order_states(&["o2".to_string()]).await.unwrap();
    let chunk = plan_chunk("shard-b", &other, &states);
    store
        .apply("shard-b", None, &chunk.delta.regions, &chunk)
        .await
        .unwrap();
    let both = store.read().await.unwrap();
    assert_eq!(both.shards.len(), 2);
    assert_eq!(both.totals.sums.orders_completed, 1);
    assert_eq!(both.totals.sums.completed_price_cents, 999);
    assert_eq!(both.totals.sums.completion_ms_sum, 600);
    assert_eq!(both.totals.cross_shard_completions, 1);
    let marks = store.watermarks().await.unwrap();
    assert_eq!(marks["shard-b"], ExtendedSequenceNumber::at("1", 0));
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_transaction_of_one_hundred_items_is_accepted() {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let store = StatsStore::new(aws.clients().await.dynamodb, "BigTest");
    store.ensure_tables().await.unwrap();
    let records: Vec<_> = (0..250)
        .map(|n| created(100 + n, &format!("o{n}"), 100))
        .collect();
    let states = absent(&records);
    let mut rest = &records[..];
    let mut previous = None;
    let mut transactions = 0;
    let mut regions = std::collections::BTreeMap::new();
    while !rest.is_empty() {
        let chunk = plan_chunk("s", rest, &states);
        assert!(chunk.items() <= 100);
        for (r, n) in &chunk.delta.regions {
            *regions.entry(*r).or_default() += n;
        }
        store
            .apply("s", previous.as_ref(), &regions, &chunk)
            .await
            .unwrap();
        previous = Some(chunk.last.clone());
        rest = &rest[chunk.records..];
        transactions += 1;
    }
    assert_eq!(transactions, 3);
    let stats = store.read().await.unwrap();
    assert_eq!(stats.totals.sums.orders_created, 250);
    assert_eq!(stats.totals.sums.created_price_cents, 25_000);
    assert_eq!(stats.totals.summary().top_regions[0].orders, 250);
    aws.shutdown().await;
}
