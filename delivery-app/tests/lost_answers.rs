//! What a worker's audit log says about a statistics transaction whose answer was lost
//! (what the chaos run's checks rely on).

use std::time::Duration;

mod common;

use common::{created, run_worker_task, statistics_with, worker_options};

use delivery_app::audit::{self, AttemptResult, AuditEntry};
use delivery_app::stats::StatsStore;
use kcl::aws::{Clients, Endpoints};
use kcl_local::faults::{Fault, FaultPlan, FaultProxy, Rule, dynamodb_target};
use kcl_local::testing::{unique, wait_for};
use kcl_local::{LocalAws, LocalAwsOptions};

/// A statistics transaction is applied and its answer lost; DynamoDB restarts before
/// the SDK's retry and forgets the idempotency token: the retry is cancelled by the watermark condition its
/// own first try moved. The worker still holds the lease (the lease check passed), so
/// nobody else can have moved the watermark to exactly this transaction's end: it was
/// applied, and the audit log must say so, or the chaos run sees a hole in the shard's
/// chain (found by `chaos --strict`, a local AWS restart mid-transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_applied_before_a_dynamodb_restart_is_audited_as_applied() {
    let dir = std::env::temp_dir().join(unique("restart-answer"));
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let local = LocalAwsOptions {
        kinesis_port: free(),
        dynamodb_port: free(),
        data_dir: Some(dir.join("data")),
        // Not strict: the strict layer's transaction hold moves the retry past the
        // restart window this test needs, so it would not reach the case reliably.
        ..LocalAwsOptions::from_env()
    };
    let mut aws = LocalAws::start(local.clone()).await.unwrap();
    let endpoints = aws.endpoints();
    let proxy = FaultProxy::start(endpoints.dynamodb.as_deref().unwrap(), FaultPlan::new(9))
        .await
        .unwrap();
    let clients = Clients::connect(&Endpoints::local(
        endpoints.kinesis.clone().unwrap(),
        proxy.url(),
    ))
    .await;
    let (stream, app) = (unique("restart"), unique("restart-app"));
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    for n in 0..4 {
        clients
            .kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(
                created(&format!("o{n}")).into_bytes(),
            ))
            .send()
            .await
            .unwrap();
    }
    // The first statistics transaction is applied and its answer lost; the SDK's retry
    // is held until DynamoDB has restarted.
    proxy
        .plan()
        .add(Rule::dynamodb("TransactWriteItems", Fault::DropResponse).for_next(1));
    proxy.plan().add(
        Rule::dynamodb(
            "TransactWriteItems",
            Fault::Latency {
                delay: Duration::from_secs(4),
            },
        )
        .for_next(1),
    );
    let audit_file = dir.join("w1.jsonl");
    let mut options = worker_options(&stream, &app, "w1");
    options.audit_file = Some(audit_file.clone());
    let (worker, cancel) = run_worker_task(&clients, options);
    let target = dynamodb_target("TransactWriteItems");
    wait_for("the answer dropped", Duration::from_secs(60), || async {
        (proxy.injected(&target, kcl_local::faults::FaultKind::DroppedResponse) >= 1).then_some(())
    })
    .await;
    aws.shutdown().await;
    aws = LocalAws::start(local.clone()).await.unwrap();

    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    statistics_with(&store, 4).await;
    let entries = wait_for("the outcomes logged", Duration::from_secs(30), || async {
        let entries = audit::read(&audit_file).ok()?;
        let count = |attempt: bool| {
            entries
                .iter()
                .filter(|e| {
                    if attempt {
                        matches!(e, AuditEntry::Attempt { .. })
                    } else {
                        matches!(e, AuditEntry::Outcome { .. })
                    }
                })
                .count()
        };
        (count(true) > 0 && count(true) == count(false)).then_some(entries)
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
