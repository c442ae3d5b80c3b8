//! What DynamoDB refuses, and what no record explains, against an in-process worker
//! whose DynamoDB calls go through a fault proxy: a `ValidationException` on one
//! record's transaction is bisected down to that record, which alone becomes a dead
//! letter while the shard moves on; access denied stops the worker with an error
//! naming the call, the table and the missing permission.
//!
//! The local AWS is strict and enforces the documented policies: the worker signs as
//! `delivery-worker`, and the denials are real, from the worker policy with one action
//! taken out.
//!
//! The embedded DynamoDB accepts what real DynamoDB refuses (keys over 2,048 bytes,
//! items over 400 KB), and the parser now rejects such records before any write, so
//! the refusal is injected: the proxy answers a `ValidationException` to every
//! `TransactWriteItems` whose body holds a marker that only the order write of one
//! assignment carries (its driver id; a dead letter stores the record's bytes as a
//! base64 binary, without the marker in clear).

use std::time::Duration;

mod common;

use common::{
    assigned, completed, created, run_worker_task, statistics_with, stop_worker_task,
    worker_options,
};

use delivery_app::events::Reason;
use delivery_app::principals::{POLICY_DOC, Role, principals};
use delivery_app::stats::StatsStore;
use kcl::aws::{Clients, Endpoints};
use kcl_local::LocalAws;
use kcl_local::faults::{Fault, FaultPlan, FaultProxy, Rule, dynamodb_target};
use kcl_local::strict::RefusalKind;
use kcl_local::testing::{unique, wait_for};

const MARKER: &str = "poison-driver";

/// A strict local AWS enforcing the documented policies (docs/iam-policy.md), a fault
/// proxy in front of its DynamoDB, a one-shard stream holding `events` (all with one
/// partition key, so in order), and the clients a worker uses: signed as
/// `delivery-worker`, so restricted to the worker policy.
async fn setup(events: &[String]) -> (LocalAws, FaultProxy, Clients, String, String) {
    setup_with_policies(events, POLICY_DOC).await
}

/// [`setup`] with the policies of `doc` (shaped like docs/iam-policy.md).
async fn setup_with_policies(
    events: &[String],
    doc: &str,
) -> (LocalAws, FaultProxy, Clients, String, String) {
    let aws = common::strict_aws().await;
    let stream = unique("refusals");
    let app = unique("refusals-app");
    aws.strict()
        .unwrap()
        .iam()
        .set_principals(principals(doc, &stream, &app).unwrap());
    let endpoints = aws.endpoints();
    let proxy = FaultProxy::start(endpoints.dynamodb.as_deref().unwrap(), FaultPlan::new(7))
        .await
        .unwrap();
    let clients = Clients::connect_as(
        &Endpoints::local(endpoints.kinesis.clone().unwrap(), proxy.url()),
        Role::Worker.access_key_id(),
    )
    .await;
    // Set up as the administrator: the worker may not create streams or put records.
    let admin = aws.clients().await;
    kcl::stream::create_stream(&admin.kinesis, &stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    for event in events {
        admin
            .kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(event.as_bytes()))
            .send()
            .await
            .unwrap();
    }
    (aws, proxy, clients, stream, app)
}

/// Calls of the worker the strict IAM denied.
fn denied(aws: &LocalAws) -> u64 {
    aws.strict()
        .unwrap()
        .refusal_counts()
        .kind(RefusalKind::AccessDenied)
}

/// Splits the stream's only shard (the one `setup` creates) and returns its id: the
/// parent, closed, its records before its children's.
async fn split_the_shard(aws: &LocalAws, stream: &str) -> &'static str {
    let parent = "shardId-000000000000";
    kcl::stream::split_shard(
        &aws.clients().await.kinesis,
        stream,
        parent,
        None,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    parent
}

/// Every `TransactWriteItems` whose body holds [`MARKER`] is refused with a
/// `ValidationException` saying `message`.
fn refuse_marked_transactions(proxy: &FaultProxy, message: &str) {
    proxy.plan().add(
        Rule::dynamodb(
            "TransactWriteItems",
            Fault::error(400, "ValidationException", message),
        )
        .when_body_contains(MARKER),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_dynamodb_refuses_is_isolated_and_the_shard_moves_on() {
    let mut events = Vec::new();
    for n in 0..20 {
        events.push(created(&format!("o{n}")));
    }
    for n in 0..20 {
        let driver = if n == 13 {
            format!("{MARKER}-13")
        } else {
            format!("d{n}")
        };
        events.push(assigned(&format!("o{n}"), &driver));
    }
    // An order is written once, when it completes: o13's write, with the driver id
    // DynamoDB refuses, comes with its completion, the record then dead-lettered.
    for n in 0..20 {
        events.push(completed(&format!("o{n}")));
    }
    let (aws, proxy, clients, stream, app) = setup(&events).await;
    refuse_marked_transactions(
        &proxy,
        "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of 2048 bytes",
    );
    let (worker, cancel) = run_worker_task(&clients, worker_options(&stream, &app, "w1"));
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    let stats = statistics_with(&store, 60).await;
    assert_eq!(stats.totals.sums.orders_created, 20);
    assert_eq!(stats.totals.sums.orders_assigned, 20);
    assert_eq!(stats.totals.sums.response_ms_sum, 20 * 500);
    assert_eq!(stats.totals.sums.orders_completed, 19);
    assert_eq!(stats.totals.sums.completion_ms_sum, 19 * 1500);
    assert_eq!(
        stats.totals.dead_letters.get(&Reason::RejectedByDynamodb),
        Some(&1),
        "{:?}",
        stats.totals.dead_letters
    );
    assert_eq!(stats.totals.dead_letter_count(), 1);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].raw, completed("o13"), "{:?}", dead[0]);
    assert!(
        dead[0].detail.contains("ValidationException"),
        "{:?}",
        dead[0]
    );
    // The watermark passed the refused record: it is at the last record of the shard.
    assert_eq!(stats.shards.len(), 1);
    assert!(stats.shards[0].watermark.is_some());
    assert!(
        proxy.injected(
            &dynamodb_target("TransactWriteItems"),
            kcl_local::faults::FaultKind::ClientError
        ) >= 2
    );
    stop_worker_task(worker, cancel).await;
    // Under the documented worker policy, checked call by call, nothing was denied.
    assert!(aws.strict().unwrap().iam().checked("TransactWriteItems") > 0);
    assert_eq!(
        denied(&aws),
        0,
        "{:?}",
        aws.strict().unwrap().refusal_counts().snapshot()
    );
    proxy.shutdown().await;
    aws.shutdown().await;
}

/// The documented worker policy without `dynamodb:PutItem` on `APP-Orders` (the other
/// gap of issue 12): the transaction that completes an order holds its `Put`.
fn without_put_item_on_orders() -> String {
    let granted = r#""dynamodb:BatchGetItem",
        "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem""#;
    assert_eq!(
        POLICY_DOC.matches(granted).count(),
        1,
        "the Orders statement moved"
    );
    POLICY_DOC.replace(
        granted,
        r#""dynamodb:BatchGetItem",
        "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem""#,
    )
}

/// The documented worker policy without `dynamodb:ConditionCheckItem` on `APP`, the
/// lease table: the fence of every statistics transaction.
fn without_condition_check_on_the_lease_table() -> String {
    let granted = r#""dynamodb:DeleteItem", "dynamodb:ConditionCheckItem""#;
    assert_eq!(
        POLICY_DOC.matches(granted).count(),
        1,
        "the LeaseTable statement moved"
    );
    POLICY_DOC.replace(granted, r#""dynamodb:DeleteItem""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_denied_stops_the_worker_with_the_missing_permission() {
    let events = vec![created("o1"), completed("o1")];
    let (aws, proxy, clients, stream, app) =
        setup_with_policies(&events, &without_put_item_on_orders()).await;
    let (worker, _cancel) = run_worker_task(&clients, worker_options(&stream, &app, "w1"));
    let result = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker stops on its own")
        .unwrap();
    let error = result
        .expect_err("access denied is not retried for ever")
        .to_string();
    assert!(error.contains("TransactWriteItems"), "{error}");
    assert!(error.contains(&format!("{app}-Stats")), "{error}");
    assert!(
        error.contains("missing permission is dynamodb:PutItem"),
        "{error}"
    );
    assert!(error.contains(&format!("table/{app}-Orders")), "{error}");
    // Nothing was applied, the single try was not repeated, and no other call of the
    // worker was denied.
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    assert_eq!(store.read().await.unwrap().totals.records(), 0);
    let strict = aws.strict().unwrap();
    assert_eq!(
        strict.refusals_of("TransactWriteItems", RefusalKind::AccessDenied),
        1
    );
    assert_eq!(denied(&aws), 1, "{:?}", strict.refusal_counts().snapshot());
    proxy.shutdown().await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_table_stops_the_worker_naming_it() {
    let events = vec![created("o1")];
    let (aws, proxy, clients, stream, app) = setup(&events).await;
    // The statistics table vanishes after the start (deleted by hand, say): its reads
    // answer ResourceNotFoundException.
    proxy.plan().add(
        Rule::dynamodb(
            "GetItem",
            Fault::error(
                400,
                "ResourceNotFoundException",
                "Requested resource not found",
            ),
        )
        .when_body_contains(format!("{app}-Stats")),
    );
    let (worker, _cancel) = run_worker_task(&clients, worker_options(&stream, &app, "w1"));
    let result = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker stops on its own")
        .unwrap();
    let error = result
        .expect_err("a missing table is not retried for ever")
        .to_string();
    assert!(
        error.contains(&format!("GetItem on {app}-Stats")),
        "{error}"
    );
    assert!(error.contains("does not exist"), "{error}");
    proxy.shutdown().await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_process_lacking_condition_check_item_on_the_lease_table_exits_naming_it() {
    let events = vec![created("o1")];
    let (aws, proxy, _clients, stream, app) =
        setup_with_policies(&events, &without_condition_check_on_the_lease_table()).await;
    // The process signs as the worker principal, the way the scenario starts workers.
    let endpoints = aws.endpoints();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_delivery-app"))
        .args(["worker", "--kinesis-endpoint"])
        .arg(endpoints.kinesis.as_deref().unwrap())
        .arg("--dynamodb-endpoint")
        .arg(endpoints.dynamodb.as_deref().unwrap())
        .args(["--stream", &stream, "--app", &app])
        .args(["--failover-ms", "3000", "--poll-ms", "200"])
        .env("AWS_ACCESS_KEY_ID", Role::Worker.access_key_id())
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("the worker exits on its own")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the missing permission is dynamodb:ConditionCheckItem"),
        "{err}"
    );
    // On the lease table (not APP-Orders, where the policy still grants it).
    assert!(
        err.contains(&format!("table/{app} because no identity-based policy")),
        "{err}"
    );
    assert!(err.contains("hint: docs/iam-policy.md"), "{err}");
    // Only the statistics transaction was denied: the rest of the policy suffices.
    let strict = aws.strict().unwrap();
    assert!(strict.refusals_of("TransactWriteItems", RefusalKind::AccessDenied) >= 1);
    assert_eq!(
        denied(&aws),
        strict.refusals_of("TransactWriteItems", RefusalKind::AccessDenied),
        "{:?}",
        strict.refusal_counts().snapshot()
    );
    proxy.shutdown().await;
    aws.shutdown().await;
}

/// A worker stopped while it retries the last batch of a closed shard must not let the
/// framework write SHARD_END for it (kcl-rs writes it after that batch, whatever the
/// processor did): the batch was not applied, and the next owner must replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_during_the_last_batch_of_a_closed_shard_loses_nothing() {
    let mut events = Vec::new();
    for n in 0..10 {
        events.push(created(&format!("o{n}")));
    }
    let (aws, proxy, clients, stream, app) = setup(&events).await;
    let parent = split_the_shard(&aws, &stream).await;
    // Every statistics transaction fails as a 5xx: the processor retries the parent's
    // only batch, which is also its last.
    proxy.plan().add(Rule::dynamodb(
        "TransactWriteItems",
        Fault::internal_server_error(),
    ));
    let (worker, cancel) = run_worker_task(&clients, worker_options(&stream, &app, "w1"));
    let target = dynamodb_target("TransactWriteItems");
    wait_for(
        "the processor retrying",
        Duration::from_secs(60),
        || async {
            (proxy.injected(&target, kcl_local::faults::FaultKind::ServerError) >= 4).then_some(())
        },
    )
    .await;
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops within 30 s");
    let direct = Clients::connect_as(&aws.endpoints(), Role::Worker.access_key_id()).await;
    let leases = kcl::leases::DynamoLeaseStore::new(direct.dynamodb.clone(), &app);
    let lease = kcl::leases::LeaseStore::get_lease(&leases, parent)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !lease.checkpoint.is_shard_end(),
        "SHARD_END written for an unapplied batch"
    );

    // The next owner applies it, once the first worker's lease expired: its tasks
    // outlive the dropped worker in this process (a process would have exited), so its
    // DynamoDB goes away with the proxy.
    proxy.shutdown().await;
    let mut options = worker_options(&stream, &app, "w1");
    options.worker_id = Some("w2".into());
    let (worker, cancel) = run_worker_task(&direct, options);
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    let stats = statistics_with(&store, 10).await;
    assert_eq!(stats.totals.sums.orders_created, 10);
    assert_eq!(stats.totals.dead_letter_count(), 0);
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    aws.shutdown().await;
}

/// Orders still open when their shard ends are written before SHARD_END, for the
/// children. One whose write DynamoDB refuses is found by halving the transaction and
/// dropped alone (its events stay counted); the others are written, and the children go
/// on: the dropped order's completion becomes a dead letter, the others complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_order_refused_at_shard_end_is_dropped_alone_and_the_children_go_on() {
    let orders: Vec<String> = (0..10).map(|n| format!("o{n}")).collect();
    let mut events: Vec<String> = orders.iter().map(|o| created(o)).collect();
    for (n, order) in orders.iter().enumerate() {
        let driver = if n == 3 {
            format!("{MARKER}-3")
        } else {
            format!("d{n}")
        };
        events.push(assigned(order, &driver));
    }
    let (aws, proxy, clients, stream, app) = setup(&events).await;
    let admin = aws.clients().await;
    let parent = split_the_shard(&aws, &stream).await;
    // Only o3's order item carries the marker (its driver id): no order is written
    // before the shard ends, then every transaction holding o3 is refused.
    refuse_marked_transactions(&proxy, "Item size has exceeded the maximum allowed size");
    let (worker, cancel) = run_worker_task(&clients, worker_options(&stream, &app, "w1"));
    common::shard_end(&admin.dynamodb, &app, parent).await;
    let store = StatsStore::new(admin.dynamodb.clone(), &app);
    let stats = store.read().await.unwrap();
    assert_eq!(stats.totals.sums.orders_created, 10);
    assert_eq!(stats.totals.sums.orders_assigned, 10);
    assert_eq!(stats.totals.dead_letter_count(), 0);
    let states = store.order_states(&orders).await.unwrap();
    for (n, order) in orders.iter().enumerate() {
        match &states[order] {
            None => assert_eq!(n, 3, "{order} not written"),
            Some(state) => {
                assert_ne!(n, 3, "the refused order was written: {state:?}");
                assert!(state.assigned && !state.completed, "{order}: {state:?}");
            }
        }
    }
    // The first transaction held all ten; halving found o3 in a few more.
    let refused = proxy.injected(
        &dynamodb_target("TransactWriteItems"),
        kcl_local::faults::FaultKind::ClientError,
    );
    assert!((2..=5).contains(&refused), "{refused} refusals");

    // The children: every order completes, put after the split.
    for order in &orders {
        admin
            .kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(completed(order)))
            .send()
            .await
            .unwrap();
    }
    let stats = statistics_with(&store, 30).await;
    assert_eq!(stats.totals.sums.orders_completed, 9);
    assert_eq!(
        stats
            .totals
            .dead_letters
            .get(&Reason::CompletedBeforeCreated),
        Some(&1),
        "{:?}",
        stats.totals.dead_letters
    );
    assert_eq!(stats.totals.dead_letter_count(), 1);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].raw, completed("o3"), "{:?}", dead[0]);
    stop_worker_task(worker, cancel).await;
    proxy.shutdown().await;
    aws.shutdown().await;
}

/// A statistics transaction applied whose answer is lost is retried by the SDK with the
/// same idempotency token (`ClientRequestToken`), which DynamoDB answers as applied
/// instead of cancelling it on its own watermark: the audit log then says "applied",
/// and the chaos run's checks find the shard's chain whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_whose_answer_was_lost_is_audited_as_applied() {
    use delivery_app::audit::{self, AttemptResult, AuditEntry};

    let events: Vec<String> = (0..4).map(|n| created(&format!("o{n}"))).collect();
    let (aws, proxy, clients, stream, app) = setup(&events).await;
    proxy
        .plan()
        .add(Rule::dynamodb("TransactWriteItems", Fault::DropResponse).for_next(1));
    let dir = std::env::temp_dir().join(unique("lost-answer"));
    let audit_file = dir.join("w1.jsonl");
    let mut options = worker_options(&stream, &app, "w1");
    options.audit_file = Some(audit_file.clone());
    let (worker, cancel) = run_worker_task(&clients, options);
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    statistics_with(&store, 4).await;
    let target = dynamodb_target("TransactWriteItems");
    assert_eq!(
        proxy.injected(&target, kcl_local::faults::FaultKind::DroppedResponse),
        1
    );
    // The transactions the audit log says were applied cover every record once.
    let entries = wait_for("the outcomes logged", Duration::from_secs(30), || async {
        let entries = audit::read(&audit_file).ok()?;
        let attempts = entries
            .iter()
            .filter(|e| matches!(e, AuditEntry::Attempt { .. }))
            .count();
        let outcomes = entries
            .iter()
            .filter(|e| matches!(e, AuditEntry::Outcome { .. }))
            .count();
        (attempts > 0 && attempts == outcomes).then_some(entries)
    })
    .await;
    let applied: Vec<u64> = entries
        .iter()
        .filter_map(|e| match e {
            AuditEntry::Outcome {
                id,
                result: AttemptResult::Applied,
                ..
            } => Some(*id),
            _ => None,
        })
        .collect();
    let covered: u64 = entries
        .iter()
        .filter_map(|e| match e {
            AuditEntry::Attempt { id, records, .. } if applied.contains(id) => Some(*records),
            _ => None,
        })
        .sum();
    assert_eq!(covered, 4, "{entries:#?}");
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    proxy.shutdown().await;
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
