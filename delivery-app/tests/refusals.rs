//! What DynamoDB refuses, and what no record explains, against an in-process worker
//! whose DynamoDB calls go through a fault proxy: a `ValidationException` on one
//! record's transaction is bisected down to that record, which alone becomes a dead
//! letter while the shard moves on; access denied stops the worker with an error
//! naming the call, the table and the missing permission.
//!
//! The embedded DynamoDB accepts what real DynamoDB refuses (keys over 2,048 bytes,
//! items over 400 KB), and the parser now rejects such records before any write, so
//! the refusal is injected: the proxy answers a `ValidationException` to every
//! `TransactWriteItems` whose body holds a marker that only the order write of one
//! assignment carries (its driver id; a dead letter stores the record's bytes as a
//! base64 binary, without the marker in clear).

use std::time::Duration;

use delivery_app::events::Reason;
use delivery_app::stats::StatsStore;
use delivery_app::worker::{WorkerOptions, run_worker};
use kcl::aws::{Clients, Endpoints};
use kcl::local::faults::{Fault, FaultPlan, FaultProxy, Rule, dynamodb_target};
use kcl::local::testing::{unique, wait_for};
use kcl::local::{LocalAws, LocalAwsOptions};
use tokio_util::sync::CancellationToken;

const MARKER: &str = "poison-driver";

/// A local AWS, a fault proxy in front of its DynamoDB, a one-shard stream holding
/// `events` (all with one partition key, so in order), and the clients a worker uses.
async fn setup(events: &[String]) -> (LocalAws, FaultProxy, Clients, String, String) {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let endpoints = aws.endpoints();
    let proxy = FaultProxy::start(endpoints.dynamodb.as_deref().unwrap(), FaultPlan::new(7))
        .await
        .unwrap();
    let clients = Clients::connect(&Endpoints::local(
        endpoints.kinesis.clone().unwrap(),
        proxy.url(),
    ))
    .await;
    let stream = unique("refusals");
    let app = unique("refusals-app");
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    for event in events {
        clients
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

fn options(stream: &str, app: &str) -> WorkerOptions {
    WorkerOptions {
        stream: stream.into(),
        app: app.into(),
        worker_id: Some("w1".into()),
        failover: Duration::from_secs(3),
        poll: Duration::from_millis(100),
        audit_file: None,
    }
}

fn created(order: &str) -> String {
    format!(
        r#"{{"type":"order_created","order_id":"{order}","created_at":1000,"pickup":{{"x":1,"y":2}},"dropoff":{{"x":3,"y":4}},"price_cents":250}}"#
    )
}

fn assigned(order: &str, driver: &str) -> String {
    format!(
        r#"{{"type":"order_assigned","order_id":"{order}","driver_id":"{driver}","assigned_at":1500}}"#
    )
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
    let (aws, proxy, clients, stream, app) = setup(&events).await;
    proxy.plan().add(
        Rule::dynamodb(
            "TransactWriteItems",
            Fault::error(
                400,
                "ValidationException",
                "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of 2048 bytes",
            ),
        )
        .when_body_contains(MARKER),
    );
    let cancel = CancellationToken::new();
    let worker = tokio::spawn({
        let (clients, options, cancel) = (clients.clone(), options(&stream, &app), cancel.clone());
        async move { run_worker(&clients, &options, cancel).await }
    });
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    let stats = wait_for(
        "every record applied or dead-lettered",
        Duration::from_secs(60),
        || {
            let store = store.clone();
            async move {
                let stats = store.read().await.ok()?;
                (stats.totals.records() >= 40).then_some(stats)
            }
        },
    )
    .await;
    assert_eq!(stats.totals.sums.orders_created, 20);
    assert_eq!(stats.totals.sums.orders_assigned, 19);
    assert_eq!(stats.totals.sums.response_ms_sum, 19 * 500);
    assert_eq!(
        stats.totals.dead_letters.get(&Reason::RejectedByDynamodb),
        Some(&1),
        "{:?}",
        stats.totals.dead_letters
    );
    assert_eq!(stats.totals.dead_letter_count(), 1);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].raw.contains(MARKER), "{:?}", dead[0]);
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
            kcl::local::faults::FaultKind::ClientError
        ) >= 2
    );
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops within 30 s")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    proxy.shutdown().await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_denied_stops_the_worker_with_the_missing_permission() {
    let events = vec![created("o1"), created("o2")];
    let (aws, proxy, clients, stream, app) = setup(&events).await;
    proxy.plan().add(Rule::dynamodb(
        "TransactWriteItems",
        Fault::error(
            400,
            "AccessDeniedException",
            format!(
                "User: arn:aws:sts::123456789012:assumed-role/stats/w1 is not authorized to \
                 perform: dynamodb:ConditionCheckItem on resource: \
                 arn:aws:dynamodb:us-east-1:123456789012:table/{app} because no \
                 identity-based policy allows the dynamodb:ConditionCheckItem action"
            ),
        ),
    ));
    let worker = tokio::spawn({
        let (clients, options) = (clients.clone(), options(&stream, &app));
        async move { run_worker(&clients, &options, CancellationToken::new()).await }
    });
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
        error.contains("missing permission is dynamodb:ConditionCheckItem"),
        "{error}"
    );
    // Nothing was applied, and the single try was not repeated.
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    assert_eq!(store.read().await.unwrap().totals.records(), 0);
    assert_eq!(proxy.calls(&dynamodb_target("TransactWriteItems")), 1);
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
    let worker = tokio::spawn({
        let (clients, options) = (clients.clone(), options(&stream, &app));
        async move { run_worker(&clients, &options, CancellationToken::new()).await }
    });
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
async fn a_denied_worker_process_exits_non_zero_naming_the_permission() {
    let events = vec![created("o1")];
    let (aws, proxy, _clients, stream, app) = setup(&events).await;
    proxy.plan().add(Rule::dynamodb(
        "TransactWriteItems",
        Fault::error(
            400,
            "AccessDeniedException",
            format!(
                "User: arn:aws:iam::123456789012:user/stats is not authorized to perform: \
                 dynamodb:PutItem on resource: arn:aws:dynamodb:us-east-1:123456789012:table/{app}-Orders"
            ),
        ),
    ));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_delivery-app"))
        .args([
            "worker",
            "--kinesis-endpoint",
            aws.endpoints().kinesis.as_deref().unwrap(),
        ])
        .args([
            "--dynamodb-endpoint",
            &proxy.url(),
            "--stream",
            &stream,
            "--app",
            &app,
        ])
        .args(["--failover-ms", "3000", "--poll-ms", "100"])
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the worker exits on its own")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the missing permission is dynamodb:PutItem"),
        "{err}"
    );
    assert!(err.contains("hint: docs/iam-policy.md"), "{err}");
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
    let parent = "shardId-000000000000";
    kcl::stream::split_shard(
        &clients.kinesis,
        &stream,
        parent,
        None,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    // Every statistics transaction fails as a 5xx: the processor retries the parent's
    // only batch, which is also its last.
    proxy.plan().add(Rule::dynamodb(
        "TransactWriteItems",
        Fault::internal_server_error(),
    ));
    let cancel = CancellationToken::new();
    let worker = tokio::spawn({
        let (clients, options, cancel) = (clients.clone(), options(&stream, &app), cancel.clone());
        async move { run_worker(&clients, &options, cancel).await }
    });
    let target = dynamodb_target("TransactWriteItems");
    wait_for(
        "the processor retrying",
        Duration::from_secs(60),
        || async {
            (proxy.injected(&target, kcl::local::faults::FaultKind::ServerError) >= 4).then_some(())
        },
    )
    .await;
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops within 30 s");
    let direct = aws.clients().await;
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
    let cancel = CancellationToken::new();
    let worker = tokio::spawn({
        let mut options = options(&stream, &app);
        options.worker_id = Some("w2".into());
        let (clients, cancel) = (direct.clone(), cancel.clone());
        async move { run_worker(&clients, &options, cancel).await }
    });
    let store = StatsStore::new(direct.dynamodb.clone(), &app);
    let stats = wait_for("every order applied", Duration::from_secs(60), || async {
        let stats = store.read().await.ok()?;
        (stats.totals.records() >= 10).then_some(stats)
    })
    .await;
    assert_eq!(stats.totals.sums.orders_created, 10);
    assert_eq!(stats.totals.dead_letter_count(), 0);
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    aws.shutdown().await;
}
