//! Statistics transactions whose answer was lost: what the worker's audit log says
//! (what the chaos run's checks rely on) and how the worker goes on.

use std::time::Duration;

mod common;

use common::{
    assigned, completed, created, run_worker_task, statistics_with, stop_worker_task,
    worker_options,
};

use delivery_app::audit::{self, AttemptResult, AuditEntry};
use delivery_app::stats::StatsStore;
use kcl::aws::{Clients, Endpoints};
use kcl_local::faults::{Fault, FaultKind, FaultPlan, FaultProxy, Rule, dynamodb_target};
use kcl_local::testing::{unique, wait_for};
use kcl_local::{LocalAws, LocalAwsOptions};

/// A local AWS that keeps its state across a restart on the same ports, a worker's
/// clients reaching its DynamoDB through a fault proxy, and a one-shard stream.
struct Restartable {
    dir: std::path::PathBuf,
    local: LocalAwsOptions,
    aws: LocalAws,
    proxy: FaultProxy,
    clients: Clients,
    stream: String,
    app: String,
}

impl Restartable {
    async fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(name));
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
            // restart window these tests need, so they would not reach it reliably.
            ..LocalAwsOptions::from_env()
        };
        let aws = LocalAws::start(local.clone()).await.unwrap();
        let endpoints = aws.endpoints();
        let proxy = FaultProxy::start(endpoints.dynamodb.as_deref().unwrap(), FaultPlan::new(9))
            .await
            .unwrap();
        let clients = Clients::connect(&Endpoints::local(
            endpoints.kinesis.clone().unwrap(),
            proxy.url(),
        ))
        .await;
        let (stream, app) = (unique(name), unique(&format!("{name}-app")));
        kcl::stream::create_stream(&clients.kinesis, &stream, 1, Duration::from_secs(30))
            .await
            .unwrap();
        Restartable {
            dir,
            local,
            aws,
            proxy,
            clients,
            stream,
            app,
        }
    }

    async fn put(&self, events: &[String]) {
        let kinesis = self.aws.clients().await.kinesis;
        for event in events {
            kinesis
                .put_record()
                .stream_name(&self.stream)
                .partition_key("k")
                .data(aws_sdk_kinesis::primitives::Blob::new(event.as_bytes()))
                .send()
                .await
                .unwrap();
        }
    }

    /// The next `TransactWriteItems` is applied and its answer lost; the SDK's retry
    /// is held until DynamoDB has restarted (and forgotten the retry's idempotency
    /// token), so the retry is cancelled by the conditions its own first try met.
    fn lose_the_next_transaction_answer(&self) {
        let plan = self.proxy.plan();
        plan.add(Rule::dynamodb("TransactWriteItems", Fault::DropResponse).for_next(1));
        plan.add(
            Rule::dynamodb(
                "TransactWriteItems",
                Fault::Latency {
                    delay: Duration::from_secs(4),
                },
            )
            .for_next(1),
        );
    }

    /// Restarts the local AWS once the answer is dropped.
    async fn restart_after_the_lost_answer(mut self) -> Self {
        let target = dynamodb_target("TransactWriteItems");
        wait_for("the answer dropped", Duration::from_secs(60), || async {
            (self.proxy.injected(&target, FaultKind::DroppedResponse) >= 1).then_some(())
        })
        .await;
        self.aws.shutdown().await;
        self.aws = LocalAws::start(self.local.clone()).await.unwrap();
        self
    }

    fn store(&self, dynamodb: aws_sdk_dynamodb::Client) -> StatsStore {
        StatsStore::new(dynamodb, &self.app)
    }

    async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.aws.shutdown().await;
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

/// Orders `o0`..`o3` created.
fn created_orders() -> Vec<String> {
    (0..4).map(|n| created(&format!("o{n}"))).collect()
}

/// Every order `o0`..`o3` assigned and completed.
fn assigned_and_completed() -> Vec<String> {
    (0..4)
        .flat_map(|n| {
            [
                assigned(&format!("o{n}"), "d1"),
                completed(&format!("o{n}")),
            ]
        })
        .collect()
}

/// The statistics of four orders created, assigned and completed, nothing dead-lettered.
async fn assert_four_orders_complete(store: &StatsStore) {
    let totals = statistics_with(store, 12).await.totals;
    assert_eq!(totals.dead_letter_count(), 0, "{:?}", totals.dead_letters);
    assert_eq!(totals.sums.orders_created, 4, "{totals:?}");
    assert_eq!(totals.sums.orders_assigned, 4, "{totals:?}");
    assert_eq!(totals.sums.orders_completed, 4, "{totals:?}");
}

/// A statistics transaction is applied and its answer lost; DynamoDB restarts before
/// the SDK's retry and forgets the idempotency token: the retry is cancelled by the
/// watermark condition its own first try moved. The worker still holds the lease (the
/// lease check passed), so nobody else can have moved the watermark to exactly this
/// transaction's end: it was applied, and the audit log must say so, or the chaos run
/// sees a hole in the shard's chain (found by `chaos --strict`, a local AWS restart
/// mid-transaction). And the worker must go on as if it had the answer: the orders
/// that transaction created are held (written once, when they complete), so their
/// later events find them (also found by `chaos --strict`: lost, they made those
/// events dead letters).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_applied_before_a_dynamodb_restart_is_audited_as_applied_and_its_orders_held()
{
    let local = Restartable::start("restart-answer").await;
    local.put(&created_orders()).await;
    local.lose_the_next_transaction_answer();
    let audit_file = local.dir.join("w1.jsonl");
    let mut options = worker_options(&local.stream, &local.app, "w1");
    options.audit_file = Some(audit_file.clone());
    let (worker, cancel) = run_worker_task(&local.clients, options);
    let local = local.restart_after_the_lost_answer().await;

    let store = local.store(local.aws.clients().await.dynamodb);
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

    local.put(&assigned_and_completed()).await;
    assert_four_orders_complete(&store).await;
    stop_worker_task(worker, cancel).await;
    local.shutdown().await;
}

/// At a shard's end the held orders are written for its children; that write is
/// applied and its answer lost, and DynamoDB restarts before the retry, which its own
/// first try's orders cancel. Those orders are stored: the worker no longer holds
/// them, ends the shard, and the children's events find them (rather than the worker
/// stopping on a cancelled write no record explains).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_orders_written_at_shard_end_whose_answer_was_lost_are_not_written_again() {
    let local = Restartable::start("restart-held").await;
    local.put(&created_orders()).await;
    let (worker, cancel) = run_worker_task(
        &local.clients,
        worker_options(&local.stream, &local.app, "w1"),
    );
    // The four orders are counted and held, not written.
    let store = local.store(local.aws.clients().await.dynamodb);
    statistics_with(&store, 4).await;
    let orders: Vec<String> = (0..4).map(|n| format!("o{n}")).collect();
    let states = store.order_states(&orders).await.unwrap();
    assert!(states.values().all(Option::is_none), "{states:?}");

    // The next transaction is the shard's end writing them.
    local.lose_the_next_transaction_answer();
    let parent = "shardId-000000000000";
    kcl::stream::split_shard(
        &local.aws.clients().await.kinesis,
        &local.stream,
        parent,
        None,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let local = local.restart_after_the_lost_answer().await;

    let admin = local.aws.clients().await;
    common::shard_end(&admin.dynamodb, &local.app, parent).await;
    let store = local.store(admin.dynamodb);
    local.put(&assigned_and_completed()).await;
    assert_four_orders_complete(&store).await;
    stop_worker_task(worker, cancel).await;
    local.shutdown().await;
}
