//! The statistics store against the embedded DynamoDB: a transaction applies once; the
//! same records again (a replay by a zombie or after a crash) are refused by the
//! watermark condition, a plan from a stale order state by the order's condition, and
//! nothing changes either time. An exact copy of an applied event (a producer's
//! redelivery) is skipped and counted.
//!
//! On a strict local AWS enforcing the documented policies: the store under test signs
//! as `delivery-worker`, as in a worker; the test reads the tables as the administrator.

mod common;

use std::collections::HashMap;

use delivery_app::events::{Reason, parse};
use delivery_app::principals::Role;
use delivery_app::stats::StatsStore;
use delivery_app::stats::plan::{
    OrderState, ParsedRecord, PlanLimits, digest, plan_chunk, plan_chunk_within, referenced_orders,
};
use delivery_app::stats::store::StoreError;
use kcl::checkpoint::{ExtendedSequenceNumber, LeaseOwnership, SequencePosition};
use kcl::leases::{Change, DynamoLeaseStore, Expect, Lease, LeaseStore};
use kcl_local::LocalAws;

/// A strict local AWS with the documented policies bound for `app`, the statistics
/// store of `app` signed as the worker principal, and one signed as the (unrestricted)
/// administrator for reading what the worker may not (`Scan`).
async fn strict_stores(app: &str) -> (LocalAws, StatsStore, StatsStore) {
    let aws = common::strict_aws().await;
    common::enforce_policies(&aws, "no-stream", app);
    let worker = aws.clients_as(Role::Worker.access_key_id()).await;
    let store = StatsStore::new(worker.dynamodb, app);
    let reader = StatsStore::new(aws.clients().await.dynamodb, app);
    (aws, store, reader)
}

/// The writer of every transaction below, which holds the leases of `shards`.
const WRITER: &str = "w1";

/// [`WRITER`]'s ownership of every lease [`lease_to_writer`] creates.
fn writer() -> LeaseOwnership {
    owner(WRITER, 1)
}

fn owner(worker_id: &str, epoch: u64) -> LeaseOwnership {
    LeaseOwnership {
        worker_id: worker_id.into(),
        epoch,
    }
}

/// Creates application `app`'s lease table with `shards` leased to [`WRITER`]: every
/// statistics transaction checks that its writer holds the shard's lease.
async fn lease_to_writer(aws: &LocalAws, app: &str, shards: &[&str]) -> DynamoLeaseStore {
    let leases = DynamoLeaseStore::new(aws.clients().await.dynamodb, app);
    leases.ensure_tables().await.unwrap();
    for shard in shards {
        let mut lease = Lease::new(
            *shard,
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        );
        lease.owner = Some(WRITER.into());
        lease.epoch = Some(writer().epoch);
        leases.create_lease(&lease).await.unwrap();
    }
    leases
}

fn record(seq: u64, json: &str) -> ParsedRecord {
    ParsedRecord {
        position: ExtendedSequenceNumber::at(seq.to_string(), 0),
        partition_key: "k".into(),
        raw: json.as_bytes().to_vec(),
        parsed: parse(json.as_bytes()),
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
    let (aws, store, reader) = strict_stores("StoreTest").await;
    store.ensure_tables().await.unwrap();
    lease_to_writer(&aws, "StoreTest", &["shard-a", "shard-b"]).await;
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
        .apply("shard-a", None, &chunk.delta.regions, &chunk, &writer())
        .await
        .unwrap();
    let after_first = reader.read().await.unwrap();
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
        .apply("shard-a", None, &chunk.delta.regions, &chunk, &writer())
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
        .apply(
            "shard-a",
            Some(&previous),
            &chunk.delta.regions,
            &chunk,
            &writer(),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    let unchanged = reader.read().await.unwrap();
    assert_eq!(unchanged.totals, after_first.totals);
    assert_eq!(
        store.watermark("shard-a").await.unwrap(),
        Some(previous.clone())
    );
    assert_eq!(reader.dead_letters(10).await.unwrap().len(), 1);

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
            &writer(),
        )
        .await
        .unwrap();
    let now = reader.read().await.unwrap();
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
        .apply("shard-b", None, &chunk.delta.regions, &chunk, &writer())
        .await
        .unwrap();
    let both = reader.read().await.unwrap();
    assert_eq!(both.shards.len(), 2);
    assert_eq!(both.totals.sums.orders_completed, 1);
    assert_eq!(both.totals.sums.completed_price_cents, 999);
    assert_eq!(both.totals.sums.completion_ms_sum, 600);
    assert_eq!(both.totals.cross_shard_completions, 1);
    let marks = reader.watermarks().await.unwrap();
    assert_eq!(marks["shard-b"], ExtendedSequenceNumber::at("1", 0));
    common::assert_no_call_denied_to_the_worker(&aws);
    aws.shutdown().await;
}

/// A copy of a *rejected* record (the producer put it twice) is one dead letter, even
/// in another shard: the processor finds the stored one before planning, and two plans
/// made at once cannot both write it (the dead letter's put requires its absence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_rejected_record_are_one_dead_letter() {
    let (aws, store, reader) = strict_stores("DeadCopyTest").await;
    store.ensure_tables().await.unwrap();
    lease_to_writer(&aws, "DeadCopyTest", &["s1", "s2"]).await;
    let bad = r#"{"type":"order_assigned","order_id":"o7","driver_id":"d","assigned_at":5}"#;
    let in_s1 = vec![record(1, bad)];
    let in_s2 = vec![record(40, bad)];
    // Both planned before either is applied, as two workers would.
    let first = plan_chunk("s1", &in_s1, &absent(&in_s1));
    let second = plan_chunk("s2", &in_s2, &absent(&in_s2));
    assert_eq!(first.dead_letters.len(), 1);
    assert_eq!(first.dead_letters[0].id, second.dead_letters[0].id);
    let ids = [first.dead_letters[0].id.clone()];
    assert!(store.stored_dead_letters(&ids).await.unwrap().is_empty());
    store
        .apply("s1", None, &first.delta.regions, &first, &writer())
        .await
        .unwrap();
    let refused = store
        .apply("s2", None, &second.delta.regions, &second, &writer())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(store.watermark("s2").await.unwrap(), None);

    // Re-planned knowing the stored one: a redelivery, counted, nothing else written.
    let stored = store.stored_dead_letters(&ids).await.unwrap();
    assert_eq!(stored, ids.iter().cloned().collect());
    let limits = PlanLimits {
        dead_lettered: [second.dead_letters[0].digest].into(),
        ..PlanLimits::default()
    };
    let again = plan_chunk_within("s2", &in_s2, &absent(&in_s2), &limits);
    assert!(again.dead_letters.is_empty());
    store
        .apply("s2", None, &again.delta.regions, &again, &writer())
        .await
        .unwrap();
    let end = reader.read().await.unwrap();
    assert_eq!(end.totals.dead_letter_count(), 1);
    assert_eq!(end.totals.dead_letters[&Reason::AssignedBeforeCreated], 1);
    assert_eq!(end.totals.redeliveries_skipped, 1);
    assert_eq!(end.totals.records(), 2);
    let listed = reader.dead_letters(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, ids[0]);
    common::assert_no_call_denied_to_the_worker(&aws);
    aws.shutdown().await;
}

/// A producer that lost a `PutRecords` answer puts the same record again: the copy is
/// skipped and counted, not dead-lettered, because the order item keeps the digests of
/// the events applied to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_copy_of_an_applied_event_is_skipped_and_counted() {
    let (aws, store, reader) = strict_stores("CopyTest").await;
    store.ensure_tables().await.unwrap();
    lease_to_writer(&aws, "CopyTest", &["s"]).await;
    let creation = created(1, "o1", 1_250);
    let copy = |seq: u64, of: &ParsedRecord| record(seq, std::str::from_utf8(&of.raw).unwrap());
    let o1 = ["o1".to_string()];

    let first = vec![creation.clone()];
    let chunk = plan_chunk("s", &first, &absent(&first));
    store
        .apply("s", None, &chunk.delta.regions, &chunk, &writer())
        .await
        .unwrap();
    let after_creation = reader.read().await.unwrap();
    let created_states = store.order_states(&o1).await.unwrap();
    assert_eq!(
        created_states["o1"].as_ref().unwrap().applied,
        vec![digest(&creation.raw)]
    );

    // The byte-identical copy, planned from the state read back: only a check of the
    // order, and the counter.
    let second = vec![copy(2, &creation)];
    let chunk = plan_chunk("s", &second, &created_states);
    assert_eq!(chunk.delta.redeliveries_skipped, 1);
    assert!(chunk.dead_letters.is_empty());
    assert!(chunk.orders.len() == 1 && chunk.orders[0].is_check_only());
    store
        .apply(
            "s",
            Some(&ExtendedSequenceNumber::at("1", 0)),
            &after_creation.totals.regions,
            &chunk,
            &writer(),
        )
        .await
        .unwrap();
    let now = reader.read().await.unwrap();
    assert_eq!(now.totals.redeliveries_skipped, 1);
    assert_eq!(now.shards[0].totals.redeliveries_skipped, 1);
    assert_eq!(now.totals.dead_letter_count(), 0);
    assert_eq!(now.totals.sums, after_creation.totals.sums);
    assert_eq!(now.totals.regions, after_creation.totals.regions);
    assert!(reader.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(
        store.watermark("s").await.unwrap(),
        Some(ExtendedSequenceNumber::at("2", 0))
    );
    assert_eq!(store.order_states(&o1).await.unwrap(), created_states);

    // An assignment on the existing order ADDs its digest to the set.
    let assignment = record(
        3,
        r#"{"type":"order_assigned","order_id":"o1","driver_id":"d","assigned_at":1100}"#,
    );
    let third = vec![assignment.clone()];
    let chunk = plan_chunk("s", &third, &created_states);
    store
        .apply(
            "s",
            Some(&ExtendedSequenceNumber::at("2", 0)),
            &now.totals.regions,
            &chunk,
            &writer(),
        )
        .await
        .unwrap();
    let assigned_states = store.order_states(&o1).await.unwrap();
    let mut applied = assigned_states["o1"].as_ref().unwrap().applied.clone();
    applied.sort_unstable();
    let mut expected = vec![digest(&creation.raw), digest(&assignment.raw)];
    expected.sort_unstable();
    assert_eq!(applied, expected);
    let after_assignment = reader.read().await.unwrap();
    assert_eq!(after_assignment.totals.sums.orders_assigned, 1);

    // A copy planned from a stale state (before the assignment) is refused: the check
    // is conditioned on the state the skip was decided on.
    let previous = ExtendedSequenceNumber::at("3", 0);
    let stale = plan_chunk("s", &[copy(4, &creation)], &created_states);
    let refused = store
        .apply(
            "s",
            Some(&previous),
            &after_assignment.totals.regions,
            &stale,
            &writer(),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );

    // Copies of both events, and a duplicate assignment with other bytes.
    let fourth = vec![
        copy(4, &assignment),
        copy(5, &creation),
        record(
            6,
            r#"{"type":"order_assigned","order_id":"o1","driver_id":"d2","assigned_at":1100}"#,
        ),
    ];
    let chunk = plan_chunk("s", &fourth, &assigned_states);
    store
        .apply(
            "s",
            Some(&previous),
            &after_assignment.totals.regions,
            &chunk,
            &writer(),
        )
        .await
        .unwrap();
    let end = reader.read().await.unwrap();
    assert_eq!(end.totals.redeliveries_skipped, 3);
    assert_eq!(end.totals.sums, after_assignment.totals.sums);
    assert_eq!(end.totals.dead_letters[&Reason::DuplicateEvent], 1);
    assert_eq!(end.totals.dead_letter_count(), 1);
    assert_eq!(end.totals.records(), 2 + 1 + 3);
    common::assert_no_call_denied_to_the_worker(&aws);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_transaction_of_one_hundred_items_is_accepted() {
    let (aws, store, reader) = strict_stores("BigTest").await;
    store.ensure_tables().await.unwrap();
    lease_to_writer(&aws, "BigTest", &["s"]).await;
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
            .apply("s", previous.as_ref(), &regions, &chunk, &writer())
            .await
            .unwrap();
        previous = Some(chunk.last.clone());
        rest = &rest[chunk.records..];
        transactions += 1;
    }
    assert_eq!(transactions, 3);
    let stats = reader.read().await.unwrap();
    assert_eq!(stats.totals.sums.orders_created, 250);
    assert_eq!(stats.totals.sums.created_price_cents, 25_000);
    assert_eq!(stats.totals.summary().top_regions[0].orders, 250);
    common::assert_no_call_denied_to_the_worker(&aws);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_or_the_worker_handing_it_over_may_write() {
    let (aws, store, reader) = strict_stores("FenceTest").await;
    store.ensure_tables().await.unwrap();
    let leases = lease_to_writer(&aws, "FenceTest", &["s"]).await;
    let first = vec![created(1, "o1", 100)];
    let chunk = plan_chunk("s", &first, &absent(&first));

    // A zombie: "w0" believes it still holds the shard. Refused, nothing written.
    let zombie = store
        .apply("s", None, &chunk.delta.regions, &chunk, &owner("w0", 1))
        .await;
    assert!(matches!(zombie, Err(StoreError::LeaseLost)), "{zombie:?}");
    assert_eq!(store.watermark("s").await.unwrap(), None);
    assert_eq!(reader.read().await.unwrap().totals.sums.orders_created, 0);

    // "w2" asks for the lease: while WRITER finishes its batch it may still write,
    // the new owner may not yet.
    let lease = leases.get_lease("s").await.unwrap().unwrap();
    leases
        .update_lease(
            "s",
            Expect::held(lease.counter, Some(WRITER)),
            Change {
                bump_counter: true,
                owner: Some(Some("w2".into())),
                checkpoint_owner: Some(Some(WRITER.into())),
                epoch: Some(lease.counter + 1),
                keep_epoch_for_checkpoint_owner: true,
                ..Change::default()
            },
        )
        .await
        .unwrap();
    let w2 = owner("w2", lease.counter + 1);
    let early = store
        .apply("s", None, &chunk.delta.regions, &chunk, &w2)
        .await;
    assert!(matches!(early, Err(StoreError::LeaseLost)), "{early:?}");
    store
        .apply("s", None, &chunk.delta.regions, &chunk, &writer())
        .await
        .unwrap();

    // Handed over: now only "w2".
    leases
        .update_lease(
            "s",
            Expect {
                checkpoint_owner: Some(Some(WRITER.into())),
                ..Expect::default()
            },
            Change {
                bump_counter: true,
                checkpoint_owner: Some(None),
                ..Change::default()
            },
        )
        .await
        .unwrap();
    let next = vec![created(2, "o2", 50)];
    let chunk = plan_chunk("s", &next, &absent(&next));
    let previous = ExtendedSequenceNumber::at("1", 0);
    let late = store
        .apply(
            "s",
            Some(&previous),
            &chunk.delta.regions,
            &chunk,
            &writer(),
        )
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    store
        .apply("s", Some(&previous), &chunk.delta.regions, &chunk, &w2)
        .await
        .unwrap();
    let stats = reader.read().await.unwrap();
    assert_eq!(stats.totals.sums.orders_created, 2);
    assert_eq!(stats.totals.sums.created_price_cents, 150);
    common::assert_no_call_denied_to_the_worker(&aws);
    aws.shutdown().await;
}

/// A table of the application's name that something else made, with another key, is
/// refused at set-up, never written into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_another_key_schema_is_refused() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let (aws, store, _reader) = strict_stores("ForeignTable").await;
    aws.clients()
        .await
        .dynamodb
        .create_table()
        .table_name(&store.tables().orders)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::N)
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
    let err = store.ensure_tables().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Fatal(m) if m.contains("key schema [id HASH (N)]")),
        "{err}"
    );
}

/// Answers BatchGetItem with every key unprocessed (as DynamoDB does for a throttled
/// partition) while `remaining` lasts, and counts the calls.
struct Unprocessed {
    remaining: std::sync::atomic::AtomicU64,
    calls: std::sync::atomic::AtomicU64,
}

impl kcl_local::faults::ProxyLayer for Unprocessed {
    fn call<'a>(
        &'a self,
        request: kcl_local::faults::ProxyRequest,
        forward: kcl_local::faults::Forward<'a>,
    ) -> kcl_local::faults::LayerFuture<'a> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            if request.action() != "BatchGetItem" {
                return forward.send(request).await;
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            let unprocessed = self
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            let asked = request.json().and_then(|b| b.get("RequestItems").cloned());
            let mut answer = forward.send(request).await;
            if let (true, Some(asked), Some(response)) = (unprocessed, asked, answer.success_mut())
            {
                response
                    .set_json(&serde_json::json!({ "Responses": {}, "UnprocessedKeys": asked }));
            }
            answer
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_keys_are_asked_again_a_bounded_number_of_times() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let aws = LocalAws::start(kcl_local::LocalAwsOptions::default())
        .await
        .unwrap();
    let layer = Arc::new(Unprocessed {
        remaining: 3.into(),
        calls: 0.into(),
    });
    let proxy = kcl_local::faults::FaultProxy::start_layered(
        &aws.endpoints().dynamodb.unwrap(),
        kcl_local::faults::FaultPlan::default(),
        vec![layer.clone()],
    )
    .await
    .unwrap();
    let endpoints = kcl::aws::Endpoints::local(aws.endpoints().kinesis.unwrap(), proxy.url());
    let store = StatsStore::new(
        kcl::aws::Clients::connect(&endpoints).await.dynamodb,
        "Unprocessed",
    );
    store.ensure_tables().await.unwrap();
    lease_to_writer(&aws, "Unprocessed", &["shard-a"]).await;
    let records = vec![created(10, "o1", 1_250)];
    let chunk = plan_chunk("shard-a", &records, &absent(&records));
    store
        .apply("shard-a", None, &chunk.delta.regions, &chunk, &writer())
        .await
        .unwrap();

    // Three answers leave the keys unprocessed; the fourth call reads them.
    let ids = ["o1".to_string(), "o9".to_string()];
    let states = store.order_states(&ids).await.unwrap();
    assert_eq!(layer.calls.load(Ordering::Relaxed), 4);
    assert_eq!(states["o1"].as_ref().map(|s| s.price_cents), Some(1_250));
    assert_eq!(states["o9"], None);

    // Keys that stay unprocessed end in a transient error after a bounded number of
    // calls, for the processor's own retry to log and back off from.
    layer.remaining.store(u64::MAX, Ordering::Relaxed);
    layer.calls.store(0, Ordering::Relaxed);
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), store.order_states(&ids))
        .await
        .expect("the reads give up")
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("unprocessed"), "{err}");
    assert_eq!(layer.calls.load(Ordering::Relaxed), 8);
    proxy.shutdown().await;
    aws.shutdown().await;
}
