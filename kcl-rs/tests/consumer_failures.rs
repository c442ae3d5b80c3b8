//! Shard consumers that end other than cleanly — a panicking processor, a read error
//! no retry fixes, a SHARD_END checkpoint that cannot be written, a shard gone from the
//! stream — and a worker that must stop while everything hangs: no lease is left held
//! with nobody reading it, children proceed, shutdown is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kcl::checkpoint::Checkpointer;
use kcl::processor::{ProcessRecordsInput, RecordProcessor};
use kcl::stream;
use kcl::worker::Worker;
use kcl_local::faults::{Fault, Rule, kinesis_target};
use kcl_local::testing::{unique, wait_for};
use tokio_util::sync::CancellationToken;

mod common;
use common::consumers::{FAILOVER, config};
use common::faulty_worker::{Deliveries, Env, Running, SLACK, WAIT, checkpoint_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_processor_lets_its_lease_go_and_the_shard_is_read_again() {
    let env = Env::start().await;
    let name = unique("panic");
    let app = unique("panic-app");
    stream::create_stream(&env.direct().await.kinesis, &name, 1, WAIT)
        .await
        .unwrap();
    for i in 0..5 {
        env.put(&name, "k", &format!("r{i}")).await;
    }
    let deliveries = Deliveries::default();
    let panic_once = Arc::new(AtomicBool::new(true));
    let mut worker = Running::start(
        config(&name, &app, "w"),
        &env.direct().await,
        &deliveries,
        &panic_once,
    );
    wait_for("the processor to panic", WAIT, || async {
        (!panic_once.load(Ordering::SeqCst)).then_some(())
    })
    .await;
    // Reported to the worker's caller, not only logged.
    let (shard, why) = worker.failure().await;
    assert_eq!(shard, "shardId-000000000000");
    assert!(why.contains("panicked"), "{why}");
    // Not held alive with nobody reading: released (or expired) and read again.
    wait_for(
        "every record, read again after the panic",
        2 * FAILOVER + SLACK,
        || async { (deliveries.count_with_prefix("r") == 5).then_some(()) },
    )
    .await;
    worker.stop().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_error_no_retry_fixes_lets_the_lease_go_and_the_shard_is_read_again() {
    let env = Env::start().await;
    let name = unique("denied");
    let app = unique("denied-app");
    stream::create_stream(&env.direct().await.kinesis, &name, 1, WAIT)
        .await
        .unwrap();
    for i in 0..5 {
        env.put(&name, "k", &format!("r{i}")).await;
    }
    let denied = env.kinesis().injector().add(
        Rule::kinesis(
            "GetRecords",
            Fault::error(400, "AccessDeniedException", "injected: not allowed"),
        )
        .for_next(1),
    );
    let deliveries = Deliveries::default();
    let mut worker = Running::start(
        config(&name, &app, "w"),
        &env.faulty(&name, &app).await,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    wait_for("the read to be denied", WAIT, || async {
        (env.kinesis().injector().remaining(denied) == Some(0)).then_some(())
    })
    .await;
    let (_, why) = worker.failure().await;
    assert!(why.contains("AccessDenied"), "{why}");
    wait_for(
        "every record, read again after the failure",
        2 * FAILOVER + SLACK,
        || async { (deliveries.count_with_prefix("r") == 5).then_some(()) },
    )
    .await;
    worker.stop().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shard_end_checkpoint_lets_the_lease_go_and_the_children_proceed() {
    let env = Env::start().await;
    let (name, parent) = env.split_stream().await;
    let app = unique("shard-end-app");
    // The first SHARD_END write is refused with an error no retry fixes.
    let refused = env.dynamodb().injector().add(
        Rule::dynamodb(
            "UpdateItem",
            Fault::error(400, "ValidationException", "injected: SHARD_END refused"),
        )
        .when_body_contains("SHARD_END")
        .for_next(1),
    );
    let deliveries = Deliveries::default();
    let worker = Running::start(
        config(&name, &app, "w"),
        &env.faulty(&name, &app).await,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    wait_for("the SHARD_END write to be refused", WAIT, || async {
        (env.dynamodb().injector().remaining(refused) == Some(0)).then_some(())
    })
    .await;
    let store = env.store(&app).await;
    wait_for(
        "the parent read again and checkpointed at SHARD_END",
        2 * FAILOVER + SLACK,
        || async {
            (checkpoint_of(&store, &parent).await.as_deref() == Some("SHARD_END")).then_some(())
        },
    )
    .await;
    wait_for("every child record", WAIT, || async {
        (deliveries.count_with_prefix("c") == 20).then_some(())
    })
    .await;
    assert_eq!(deliveries.count_with_prefix("p"), 5);
    worker.stop().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_gone_from_the_stream_is_ended_and_its_children_proceed() {
    let env = Env::start().await;
    let (name, parent) = env.split_stream().await;
    let app = unique("gone-app");
    // As real Kinesis answers for a closed shard trimmed past the retention period.
    env.kinesis().injector().add(
        Rule::kinesis(
            "GetShardIterator",
            Fault::error(
                400,
                "ResourceNotFoundException",
                format!(
                    "Shard {parent} in stream {name} under account 000000000000 does not exist"
                ),
            ),
        )
        .when_body_contains(&parent),
    );
    let clients = env.faulty(&name, &app).await;
    let deliveries = Deliveries::default();
    let worker = Running::start(
        config(&name, &app, "w"),
        &clients,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    let store = env.store(&app).await;
    wait_for(
        "the gone parent checkpointed at SHARD_END",
        2 * FAILOVER,
        || async {
            (checkpoint_of(&store, &parent).await.as_deref() == Some("SHARD_END")).then_some(())
        },
    )
    .await;
    wait_for("every child record", WAIT, || async {
        (deliveries.count_with_prefix("c") == 20).then_some(())
    })
    .await;
    assert_eq!(
        deliveries.count_with_prefix("p"),
        0,
        "the parent's records are gone"
    );
    // One GetShardIterator per shard: no release-and-retake loop on the gone parent.
    let iterators = env.kinesis().calls(&kinesis_target("GetShardIterator"));
    assert!(iterators <= 4, "{iterators} GetShardIterator calls");
    worker.stop().await;
    env.shutdown().await;
}

/// Never returns from a batch, nor from `shutdown_requested`.
struct Stuck(Arc<AtomicBool>);

impl RecordProcessor for Stuck {
    async fn process_records(&mut self, _: ProcessRecordsInput, _: &mut Checkpointer) {
        self.0.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await
    }

    async fn shutdown_requested(&mut self, _: &mut Checkpointer) {
        std::future::pending::<()>().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_worker_returns_within_the_grace_when_nothing_answers() {
    let env = Env::start().await;
    let name = unique("stuck");
    let app = unique("stuck-app");
    stream::create_stream(&env.direct().await.kinesis, &name, 2, WAIT)
        .await
        .unwrap();
    for i in 0..10 {
        env.put(&name, &format!("k{i}"), &format!("r{i}")).await;
    }
    let grace = Duration::from_secs(2);
    let config = kcl::config::WorkerConfig::builder(&name, &app)
        .worker_id("stuck")
        .initial_position(kcl::config::InitialPosition::TrimHorizon)
        .failover_time(FAILOVER)
        .shutdown_grace(grace)
        .build()
        .unwrap();
    let entered = Arc::new(AtomicBool::new(false));
    let worker = Worker::new(config, &env.faulty(&name, &app).await, {
        let entered = Arc::clone(&entered);
        move |_: &str| Stuck(Arc::clone(&entered))
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    wait_for("a batch in the processor", WAIT, || async {
        entered.load(Ordering::SeqCst).then_some(())
    })
    .await;
    // DynamoDB stops answering altogether.
    env.dynamodb().injector().add(Rule::new(
        "DynamoDB_20120810.*",
        Fault::Timeout {
            hold: Duration::from_secs(300),
        },
    ));
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = tokio::time::timeout(grace + Duration::from_secs(2), run)
        .await
        .expect("run returns within the grace");
    result.unwrap().unwrap();
    assert!(cancelled_at.elapsed() < grace + Duration::from_secs(2));
    env.shutdown().await;
}
