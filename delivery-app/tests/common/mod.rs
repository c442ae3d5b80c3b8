//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use delivery_app::principals::{POLICY_DOC, principals};
use delivery_app::scenario::{Narrator, ScenarioConfig, ScenarioReport, Step};
use delivery_app::sim::{KeyStrategy, SimConfig};
use delivery_app::worker::Retrieval;
use kcl_local::strict::RefusalKind;
use kcl_local::testing::unique;
use kcl_local::{LocalAws, LocalAwsOptions};

/// A local AWS as strict as the real one (AWS's limits, retention, transaction
/// conflicts, IAM): what every test of leases, resharding, the worker and the delivery
/// application runs on. Bind the policies with [`enforce_policies`].
pub async fn strict_aws() -> LocalAws {
    LocalAws::start(LocalAwsOptions::strict()).await.unwrap()
}

/// `delivery-app local --strict` as a process (the binary `exe`), logging into `dir`,
/// with the documented policies bound for `stream` and `app`: what the tests of
/// commands run by hand use.
pub async fn strict_local_process(
    exe: &str,
    dir: &std::path::Path,
    stream: &str,
    app: &str,
) -> delivery_app::scenario::LocalAwsProcess {
    delivery_app::scenario::LocalAwsProcess::start(
        exe.as_ref(),
        None,
        &dir.join("local.log"),
        Some(delivery_app::scenario::StrictNames {
            stream: stream.to_string(),
            app: app.to_string(),
        }),
    )
    .await
    .unwrap()
}

/// Binds each command's documented policy (docs/iam-policy.md) to its access key
/// (`delivery-worker`, ...) for `stream` and `app`, as `delivery-app local --strict`
/// does. Does nothing on a local AWS that is not strict.
pub fn enforce_policies(aws: &LocalAws, stream: &str, app: &str) {
    if let Some(strict) = aws.strict() {
        strict
            .iam()
            .set_principals(principals(POLICY_DOC, stream, app).expect("the policies parse"));
    }
}

/// Messages of the scenario, prefixed with the test's name, on stderr.
pub fn narrator(test: &'static str) -> Narrator {
    Arc::new(move |line: &str| eprintln!("[{test}] {line}"))
}

/// On a strict `aws`: the policies were enforced (the workers' transactions and the
/// producer's puts were checked) and no call was denied, so the documented policies are
/// all the application needs.
pub fn assert_no_call_denied(aws: &LocalAws) {
    let Some(strict) = aws.strict() else {
        return;
    };
    for operation in ["TransactWriteItems", "PutRecords", "GetRecords"] {
        assert!(
            strict.iam().checked(operation) > 0,
            "{operation} was never checked against a policy"
        );
    }
    assert_eq!(
        strict.refusal_counts().kind(RefusalKind::AccessDenied),
        0,
        "calls denied: {:?}",
        strict.refusal_counts().snapshot()
    );
}

/// On a strict `aws`: statistics transactions were checked against a policy and no
/// call was denied.
pub fn assert_no_call_denied_to_the_worker(aws: &LocalAws) {
    let Some(strict) = aws.strict() else {
        return;
    };
    assert!(strict.iam().checked("TransactWriteItems") > 0);
    assert_eq!(
        strict.refusal_counts().kind(RefusalKind::AccessDenied),
        0,
        "calls denied: {:?}",
        strict.refusal_counts().snapshot()
    );
}

/// A scenario of about `orders` orders produced over about `seconds` real seconds,
/// with 3 worker processes on a 3-shard stream; each process signs as its principal,
/// restricted to its documented policy when `aws` is strict.
pub fn scenario(
    aws: &LocalAws,
    orders: u64,
    seconds: f64,
    keys: KeyStrategy,
    bad_events: u64,
    steps: Vec<(f64, Step)>,
) -> ScenarioConfig {
    let sim = SimConfig {
        seed: 7,
        duration_ms: (orders as f64 * 90.0) as i64,
        keys,
        bad_events,
        ..SimConfig::default()
    };
    let speed = sim.duration_ms as f64 / 1000.0 / seconds;
    let (stream, app) = (unique("deliveries"), unique("delivery-stats"));
    enforce_policies(aws, &stream, &app);
    ScenarioConfig {
        exe: env!("CARGO_BIN_EXE_delivery-app").into(),
        endpoints: aws.endpoints(),
        stream,
        app,
        shards: 3,
        workers: 3,
        failover: Duration::from_secs(3),
        poll: Duration::from_millis(100),
        retrieval: Retrieval::Polling,
        balance: Default::default(),
        sim,
        speed: Some(speed),
        steps,
        autoscale: None,
        live_every: None,
        log_dir: None,
        settle_timeout: Duration::from_secs(90),
        track_latency: false,
        workers_after_production: false,
        audit_dir: None,
        local_aws: None,
        as_principals: true,
        metrics_base: None,
        producer_rate_limit: None,
    }
}

/// Fails with the differences when the statistics are not exactly the ground truth.
pub fn assert_exact(report: &ScenarioReport) {
    assert!(
        report.comparison.matches,
        "statistics differ from the ground truth in {:?}\nstatistics: {:#?}\nground truth: {:#?}\ndead letters: {:?} vs {:?}\nactions: {:?}\nsome dead letters: {:#?}",
        report.comparison.differences,
        report.stats.totals.summary(),
        report.truth.summary,
        report.stats.totals.dead_letters,
        report.truth.dead_letters,
        report.actions,
        report.unexpected_dead_letters,
    );
}

/// Stops worker process `worker` with SIGTERM (a graceful stop: checkpoints, leases
/// released) and asserts it exits with success within 30 s.
pub async fn stop_gracefully(worker: &mut tokio::process::Child) {
    let pid = worker.id().expect("still running") as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// An in-process statistics worker's options for a test: worker `worker` of `app` on
/// `stream`, failover 3 s, a 100 ms poll, polling retrieval.
pub fn worker_options(
    stream: &str,
    app: &str,
    worker: &str,
) -> delivery_app::worker::WorkerOptions {
    delivery_app::worker::WorkerOptions {
        stream: stream.into(),
        app: app.into(),
        worker_id: Some(worker.into()),
        failover: Duration::from_secs(3),
        poll: Duration::from_millis(100),
        audit_file: None,
        retrieval: Default::default(),
        balance: Default::default(),
    }
}

/// An in-process statistics worker's task, started with `options`, and the token that
/// stops it (see [`stop_worker_task`]).
pub fn run_worker_task(
    clients: &kcl::aws::Clients,
    options: delivery_app::worker::WorkerOptions,
) -> (
    tokio::task::JoinHandle<Result<(), delivery_app::worker::WorkerError>>,
    tokio_util::sync::CancellationToken,
) {
    let cancel = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn({
        let (clients, cancel) = (clients.clone(), cancel.clone());
        async move { delivery_app::worker::run_worker(&clients, &options, cancel).await }
    });
    (worker, cancel)
}

/// Stops a worker of [`run_worker_task`] and asserts it stopped within 30 s, without
/// an error.
pub async fn stop_worker_task(
    worker: tokio::task::JoinHandle<Result<(), delivery_app::worker::WorkerError>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops within 30 s")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// The statistics once they account for `records` records (applied, dead-lettered
/// or skipped as copies), within 60 s.
pub async fn statistics_with(
    store: &delivery_app::stats::StatsStore,
    records: u64,
) -> delivery_app::stats::StoredStats {
    kcl_local::testing::wait_for(
        &format!("{records} records in the statistics"),
        Duration::from_secs(60),
        || async {
            let stats = store.read().await.ok()?;
            (stats.totals.records() >= records).then_some(stats)
        },
    )
    .await
}

/// A hand-written `order_created` event: at 1,000 ms, 250 cents, pickup (1, 2).
pub fn created(order: &str) -> String {
    format!(
        r#"{{"type":"order_created","order_id":"{order}","created_at":1000,"pickup":{{"x":1,"y":2}},"dropoff":{{"x":3,"y":4}},"price_cents":250}}"#
    )
}

/// A hand-written `order_assigned` event: at 1,500 ms, to `driver`.
pub fn assigned(order: &str, driver: &str) -> String {
    format!(
        r#"{{"type":"order_assigned","order_id":"{order}","driver_id":"{driver}","assigned_at":1500}}"#
    )
}

/// A hand-written `order_completed` event: at 2,500 ms.
pub fn completed(order: &str) -> String {
    format!(r#"{{"type":"order_completed","order_id":"{order}","completed_at":2500}}"#)
}

/// Waits (within 60 s) for `shard`'s lease in `app`'s lease table to be checkpointed
/// at SHARD_END.
pub async fn shard_end(dynamodb: &aws_sdk_dynamodb::Client, app: &str, shard: &str) {
    let leases = kcl::leases::DynamoLeaseStore::new(dynamodb.clone(), app);
    kcl_local::testing::wait_for(
        &format!("{shard} at SHARD_END"),
        Duration::from_secs(60),
        || async {
            let lease = kcl::leases::LeaseStore::get_lease(&leases, shard)
                .await
                .ok()??;
            lease.checkpoint.is_shard_end().then_some(())
        },
    )
    .await;
}
