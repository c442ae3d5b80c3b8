//! Shard consumers that end other than cleanly — a panicking processor, a SHARD_END
//! checkpoint that cannot be written, a shard gone from the stream — and a worker that
//! must stop while everything hangs: no lease is left held with nobody reading it,
//! children proceed, shutdown is bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use kcl::aws::{Clients, Endpoints};
use kcl::checkpoint::Checkpointer;
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use kcl::local::faults::{Fault, FaultPlan, FaultProxy, Rule, kinesis_target};
use kcl::local::testing::{unique, wait_for};
use kcl::local::{LocalAws, LocalAwsOptions};
use kcl::processor::{ProcessRecordsInput, RecordProcessor};
use kcl::stream;
use kcl::worker::{Worker, WorkerError};
use tokio_util::sync::CancellationToken;

mod common;
use common::consumers::{FAILOVER, config};

const WAIT: Duration = Duration::from_secs(60);
/// Room for the taking interval and a loaded machine on top of a bound under test.
const SLACK: Duration = Duration::from_secs(1);

struct Env {
    aws: LocalAws,
    kinesis: FaultProxy,
    dynamodb: FaultProxy,
}

impl Env {
    async fn start() -> Env {
        let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
        let direct = aws.endpoints();
        let kinesis = FaultProxy::start(direct.kinesis.as_deref().unwrap(), FaultPlan::new(1))
            .await
            .unwrap();
        let dynamodb = FaultProxy::start(direct.dynamodb.as_deref().unwrap(), FaultPlan::new(2))
            .await
            .unwrap();
        Env {
            aws,
            kinesis,
            dynamodb,
        }
    }

    async fn direct(&self) -> Clients {
        self.aws.clients().await
    }

    /// Both services through their fault proxies.
    async fn faulty(&self) -> Clients {
        Clients::connect(&Endpoints::local(self.kinesis.url(), self.dynamodb.url())).await
    }

    async fn store(&self, app: &str) -> DynamoLeaseStore {
        DynamoLeaseStore::new(self.direct().await.dynamodb, app)
    }

    async fn put(&self, stream: &str, key: &str, data: &str) {
        self.direct()
            .await
            .kinesis
            .put_record()
            .stream_name(stream)
            .partition_key(key)
            .data(Blob::new(data.to_string()))
            .send()
            .await
            .unwrap();
    }

    /// A one-shard stream with `p0..p4` in its parent shard, split in two, with
    /// `c0..c19` (over many keys, so both children get some) written after the split.
    /// Returns the stream and the parent's shard id.
    async fn split_stream(&self) -> (String, String) {
        let name = unique("failures");
        let kinesis = self.direct().await.kinesis;
        stream::create_stream(&kinesis, &name, 1, WAIT)
            .await
            .unwrap();
        for i in 0..5 {
            self.put(&name, &format!("k{i}"), &format!("p{i}")).await;
        }
        let parent = stream::list_shards(&kinesis, &name).await.unwrap()[0]
            .shard_id
            .clone();
        stream::split_shard(&kinesis, &name, &parent, None, WAIT)
            .await
            .unwrap();
        for i in 0..20 {
            self.put(&name, &format!("k{i}"), &format!("c{i}")).await;
        }
        (name, parent)
    }

    async fn shutdown(self) {
        self.kinesis.shutdown().await;
        self.dynamodb.shutdown().await;
        self.aws.shutdown().await;
    }
}

/// Every delivery as `(shard, data)`, in order.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<(String, String)>>>);

impl Deliveries {
    fn data(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, d)| d.clone())
            .collect()
    }

    fn count_with_prefix(&self, prefix: &str) -> usize {
        let mut seen: Vec<String> = self
            .data()
            .into_iter()
            .filter(|d| d.starts_with(prefix))
            .collect();
        seen.sort();
        seen.dedup();
        seen.len()
    }
}

/// Records deliveries and checkpoints each batch. With `panic_once` armed, the first
/// batch it sees panics instead (and disarms it).
struct Tracker {
    shard: String,
    deliveries: Deliveries,
    panic_once: Arc<AtomicBool>,
}

impl RecordProcessor for Tracker {
    async fn process_records(&mut self, input: ProcessRecordsInput, cp: &mut Checkpointer) {
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("a processor bug");
        }
        for r in &input.records {
            self.deliveries.0.lock().unwrap().push((
                self.shard.clone(),
                String::from_utf8_lossy(&r.data).into_owned(),
            ));
        }
        let _ = cp.checkpoint().await;
    }

    async fn shutdown_requested(&mut self, cp: &mut Checkpointer) {
        let _ = cp.checkpoint().await;
    }
}

struct Running {
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    fn start(
        config: kcl::config::WorkerConfig,
        clients: &Clients,
        deliveries: &Deliveries,
        panic_once: &Arc<AtomicBool>,
    ) -> Running {
        let (deliveries, panic_once) = (deliveries.clone(), Arc::clone(panic_once));
        let worker = Worker::new(config, clients, move |shard: &str| Tracker {
            shard: shard.to_string(),
            deliveries: deliveries.clone(),
            panic_once: Arc::clone(&panic_once),
        });
        let cancel = CancellationToken::new();
        let run = tokio::spawn(worker.run(cancel.clone()));
        Running { cancel, run }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.run)
            .await
            .expect("the worker stops")
            .unwrap()
            .unwrap();
    }
}

/// The lease's checkpoint; `None` also while the worker has not created the table yet.
async fn checkpoint_of(store: &DynamoLeaseStore, key: &str) -> Option<String> {
    store
        .get_lease(key)
        .await
        .ok()
        .flatten()
        .map(|l| l.checkpoint.to_string())
}

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
    let worker = Running::start(
        config(&name, &app, "w"),
        &env.direct().await,
        &deliveries,
        &panic_once,
    );
    wait_for("the processor to panic", WAIT, || async {
        (!panic_once.load(Ordering::SeqCst)).then_some(())
    })
    .await;
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
async fn a_failed_shard_end_checkpoint_lets_the_lease_go_and_the_children_proceed() {
    let env = Env::start().await;
    let (name, parent) = env.split_stream().await;
    let app = unique("shard-end-app");
    // The first SHARD_END write is refused with an error no retry fixes.
    let refused = env.dynamodb.injector().add(
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
        &env.faulty().await,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    wait_for("the SHARD_END write to be refused", WAIT, || async {
        (env.dynamodb.injector().remaining(refused) == Some(0)).then_some(())
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
    env.kinesis.injector().add(
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
    let clients = Clients::connect(&Endpoints::local(
        env.kinesis.url(),
        env.aws.endpoints().dynamodb.unwrap(),
    ))
    .await;
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
    let iterators = env.kinesis.calls(&kinesis_target("GetShardIterator"));
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
    let worker = Worker::new(config, &env.faulty().await, {
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
    env.dynamodb.injector().add(Rule::new(
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

/// Shards of a stream that went X → split into A and B → A and B merged into C.
struct Lineage {
    name: String,
    x: String,
    a: String,
    b: String,
    c: String,
}

/// Records `x*` in X, `m*` in A and B, `c*` in C.
async fn split_and_merge(env: &Env) -> Lineage {
    let name = unique("lineage");
    let kinesis = env.direct().await.kinesis;
    stream::create_stream(&kinesis, &name, 1, WAIT)
        .await
        .unwrap();
    for i in 0..5 {
        env.put(&name, &format!("k{i}"), &format!("x{i}")).await;
    }
    let x = stream::list_shards(&kinesis, &name).await.unwrap()[0]
        .shard_id
        .clone();
    stream::split_shard(&kinesis, &name, &x, None, WAIT)
        .await
        .unwrap();
    for i in 0..20 {
        env.put(&name, &format!("k{i}"), &format!("m{i}")).await;
    }
    let mut halves: Vec<_> = stream::list_shards(&kinesis, &name)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    halves.sort_by_key(|s| s.starting_hash_key);
    let (a, b) = (halves[0].shard_id.clone(), halves[1].shard_id.clone());
    stream::merge_shards(&kinesis, &name, &a, &b, WAIT)
        .await
        .unwrap();
    for i in 0..20 {
        env.put(&name, &format!("k{i}"), &format!("c{i}")).await;
    }
    let c = stream::list_shards(&kinesis, &name)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.parents().len() == 2)
        .unwrap()
        .shard_id;
    Lineage { name, x, a, b, c }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_child_waits_for_a_parent_whose_lease_is_missing() {
    let env = Env::start().await;
    let lineage = split_and_merge(&env).await;
    let app = unique("lineage-app");
    // As if A's lease came from X's ChildShards and B's creation failed: the start
    // sync of an application reading from LATEST then leases A and the merge child C
    // (a leased parent), but not B (closed, with no leased parent).
    let store = env.store(&app).await;
    store.ensure_tables().await.unwrap();
    let mut a = kcl::leases::Lease::new(
        lineage.a.clone(),
        kcl::checkpoint::ExtendedSequenceNumber::new(
            kcl::checkpoint::SequencePosition::TrimHorizon,
        ),
    );
    a.parent_shard_ids = vec![lineage.x.clone()];
    store.create_lease(&a).await.unwrap();
    let config = kcl::config::WorkerConfig::builder(&lineage.name, &app)
        .worker_id("w")
        .initial_position(kcl::config::InitialPosition::Latest)
        .failover_time(FAILOVER)
        .idle_time_between_reads(Duration::from_millis(100))
        .build()
        .unwrap();
    let deliveries = Deliveries::default();
    let worker = Running::start(
        config,
        &env.direct().await,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    wait_for(
        "every record of A, B and C",
        Duration::from_secs(30),
        || async {
            (deliveries.count_with_prefix("m") == 20 && deliveries.count_with_prefix("c") == 20)
                .then_some(())
        },
    )
    .await;
    let log = deliveries.0.lock().unwrap().clone();
    let last_of = |shard: &str| log.iter().rposition(|(s, _)| s == shard);
    let first_of = |shard: &str| log.iter().position(|(s, _)| s == shard);
    let child_first = first_of(&lineage.c).unwrap();
    for parent in [&lineage.a, &lineage.b] {
        assert!(
            last_of(parent).unwrap() < child_first,
            "{} delivered before its parent {parent} ended: {log:?}",
            lineage.c
        );
    }
    worker.stop().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_child_lease_creation_is_retried_before_the_periodic_sync() {
    let env = Env::start().await;
    let name = unique("child-retry");
    let app = unique("child-retry-app");
    let kinesis = env.direct().await.kinesis;
    stream::create_stream(&kinesis, &name, 1, WAIT)
        .await
        .unwrap();
    env.put(&name, "k", "p0").await;
    let deliveries = Deliveries::default();
    let worker = Running::start(
        config(&name, &app, "w"),
        &env.faulty().await,
        &deliveries,
        &Arc::new(AtomicBool::new(false)),
    );
    wait_for("the first record", WAIT, || async {
        (deliveries.count_with_prefix("p") == 1).then_some(())
    })
    .await;
    // The quick sync at the parent's end fails to create the first child's lease (the
    // SDK's three attempts); the periodic sync is a minute away.
    let parent = stream::list_shards(&kinesis, &name).await.unwrap()[0]
        .shard_id
        .clone();
    let first_child = format!("shardId-{:012}", 1);
    env.dynamodb.injector().add(
        Rule::dynamodb("PutItem", Fault::internal_server_error())
            .when_body_contains(&first_child)
            .for_next(3),
    );
    stream::split_shard(&kinesis, &name, &parent, None, WAIT)
        .await
        .unwrap();
    for i in 0..20 {
        env.put(&name, &format!("k{i}"), &format!("c{i}")).await;
    }
    wait_for("every child record", Duration::from_secs(15), || async {
        (deliveries.count_with_prefix("c") == 20).then_some(())
    })
    .await;
    worker.stop().await;
    env.shutdown().await;
}
