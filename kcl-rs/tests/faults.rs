//! Fault injection: throttling, 5xx answers, dropped connections and added latency
//! between kcl-rs and its AWS services, through `kcl_local::faults::FaultProxy` in
//! front of the embedded DynamoDB and Kinesis (or the external Kinesis named by
//! `KCL_TEST_KINESIS_ENDPOINT`). Each test starts its own strict local AWS and injects
//! faults through the plans of its strict proxies.
//!
//! What must hold: renewals ride out throttling while the lease has time left and give
//! the lease up once it has none; a checkpoint that fails is retried or reported, never
//! dropped; GetRecords failures are backed off, not hammered; and a worker delivers
//! every record, in order per key, through dropped connections and latency.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::Blob;
use kcl::aws::{Clients, Endpoints};
use kcl::checkpoint::{CheckpointError, Checkpointer, ExtendedSequenceNumber, SequencePosition};
use kcl::config::{InitialPosition, WorkerConfig};
use kcl::internals::ExpiryTracker;
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::internals::{LeaseHandle, LeasePhase};
use kcl::internals::{RetrievalConfig, ShardReader};
use kcl::leases::LostReason;
use kcl::leases::{DynamoLeaseStore, Lease, LeaseError, LeaseStore};
use kcl::processor::{ProcessRecordsInput, RecordProcessor};
use kcl::worker::Worker;
use kcl_local::LocalAws;
use kcl_local::faults::{Fault, FaultKind, FaultProxy, Rule, dynamodb_target, kinesis_target};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod common;
use common::consumers::{self, InProcess, Log};
use common::strict;
use kcl_local::testing::{unique, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);
const FAILOVER: Duration = Duration::from_secs(3);

/// A strict local AWS; the plans of its strict proxies (empty at start) inject faults.
struct Env {
    aws: LocalAws,
}

impl Env {
    async fn start(seed: u64) -> Env {
        let env = Env {
            aws: strict::local_aws().await,
        };
        env.kinesis().plan().reseed(seed);
        env.dynamodb().plan().reseed(seed + 1);
        env
    }

    /// The strict proxy in front of Kinesis.
    fn kinesis(&self) -> &FaultProxy {
        self.aws.strict().expect("strict mode").kinesis_proxy()
    }

    /// The strict proxy in front of DynamoDB.
    fn dynamodb(&self) -> &FaultProxy {
        self.aws.strict().expect("strict mode").dynamodb_proxy()
    }

    /// Both services through their proxies.
    fn faulty(&self) -> Endpoints {
        self.aws.endpoints()
    }

    /// Both services directly: for setting up and for looking.
    async fn direct(&self) -> Clients {
        strict::admin(&self.aws).await
    }

    async fn direct_store(&self, table: &str) -> DynamoLeaseStore {
        DynamoLeaseStore::new(self.direct().await.dynamodb, table)
    }

    /// A worker's lease store: through the proxy, signed as the worker policy.
    async fn faulty_store(&self, table: &str) -> Arc<dyn LeaseStore> {
        let clients = strict::worker_clients(&self.aws, "no-stream", table).await;
        Arc::new(DynamoLeaseStore::new(clients.dynamodb, table))
    }

    async fn stream(&self, shards: i32) -> String {
        let stream = unique("faults");
        kcl::stream::create_stream(&self.direct().await.kinesis, &stream, shards, DEADLINE)
            .await
            .unwrap();
        stream
    }

    /// A 1-shard stream holding `records` records, "r0", "r1", ..., put directly.
    async fn stream_with_records(&self, records: usize) -> String {
        let stream = self.stream(1).await;
        let direct = self.direct().await.kinesis;
        for i in 0..records {
            direct
                .put_record()
                .stream_name(&stream)
                .partition_key("k")
                .data(Blob::new(format!("r{i}")))
                .send()
                .await
                .unwrap();
        }
        stream
    }

    async fn shutdown(self) {
        self.aws.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------
// The proxy itself: each fault as the SDK sees it

/// SDK clients through the proxies with no SDK retries and a short attempt timeout, so
/// that each call meets exactly one fault.
async fn single_attempt_clients(env: &Env) -> (aws_sdk_kinesis::Client, aws_sdk_dynamodb::Client) {
    let config = kcl::aws::sdk_config(&env.faulty()).await;
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(500))
        .build();
    let kinesis = aws_sdk_kinesis::config::Builder::from(&config)
        .endpoint_url(env.kinesis().url())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts.clone())
        .build();
    let dynamodb = aws_sdk_dynamodb::config::Builder::from(&config)
        .endpoint_url(env.dynamodb().url())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts)
        .build();
    (
        aws_sdk_kinesis::Client::from_conf(kinesis),
        aws_sdk_dynamodb::Client::from_conf(dynamodb),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_fault_reaches_the_sdk_as_the_service_would_send_it() {
    use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

    let env = Env::start(1).await;
    let (kinesis, dynamodb) = single_attempt_clients(&env).await;
    let list_tables = dynamodb_target("ListTables");

    // Error answers: the SDK parses code and status.
    env.kinesis()
        .plan()
        .add(Rule::kinesis("ListStreams", Fault::throughput_exceeded()).for_next(1));
    let err = kinesis.list_streams().send().await.unwrap_err();
    assert_eq!(err.code(), Some("ProvisionedThroughputExceededException"));
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 400);
    kinesis.list_streams().send().await.unwrap();
    for (fault, code, status) in [
        (Fault::throttling_exception(), "ThrottlingException", 400),
        (
            Fault::throughput_exceeded(),
            "ProvisionedThroughputExceededException",
            400,
        ),
        (Fault::internal_server_error(), "InternalServerError", 500),
        (Fault::service_unavailable(), "ServiceUnavailable", 503),
    ] {
        env.dynamodb()
            .plan()
            .add(Rule::dynamodb("ListTables", fault).for_next(1));
        let err = dynamodb.list_tables().send().await.unwrap_err();
        assert_eq!(
            (err.code(), err.raw_response().unwrap().status().as_u16()),
            (Some(code), status)
        );
    }

    // A dropped connection is a dispatch (I/O) failure, retryable.
    env.dynamodb()
        .plan()
        .add(Rule::dynamodb("ListTables", Fault::DropConnection).for_next(1));
    let err = dynamodb.list_tables().send().await.unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "{err:?}"
    );

    // A request held past the attempt timeout is a timeout, and is not forwarded.
    env.dynamodb().plan().add(
        Rule::dynamodb(
            "ListTables",
            Fault::Timeout {
                hold: Duration::from_secs(5),
            },
        )
        .for_next(1),
    );
    let started = Instant::now();
    let err = dynamodb.list_tables().send().await.unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Latency delays, then answers.
    env.dynamodb().plan().add(
        Rule::dynamodb(
            "ListTables",
            Fault::Latency {
                delay: Duration::from_millis(300),
            },
        )
        .for_next(1),
    );
    let started = Instant::now();
    dynamodb.list_tables().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A dropped response: the service acted, the client cannot know.
    let table = unique("dropped");
    env.dynamodb()
        .plan()
        .add(Rule::dynamodb("CreateTable", Fault::DropResponse).for_next(1));
    let err = DynamoLeaseStore::new(dynamodb.clone(), &table)
        .ensure_tables()
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let tables = env
        .direct()
        .await
        .dynamodb
        .list_tables()
        .send()
        .await
        .unwrap();
    assert!(tables.table_names().contains(&table), "{tables:?}");

    let counts = env.dynamodb().counts();
    assert_eq!(counts.calls(&list_tables), 7);
    assert_eq!(counts.injected(&list_tables, FaultKind::Throttling), 2);
    assert_eq!(counts.injected(&list_tables, FaultKind::ServerError), 2);
    assert_eq!(
        counts.injected(&list_tables, FaultKind::DroppedConnection),
        1
    );
    assert_eq!(counts.injected(&list_tables, FaultKind::Timeout), 1);
    assert_eq!(counts.injected(&list_tables, FaultKind::Latency), 1);
    assert_eq!(counts.injected_of_kind(FaultKind::DroppedResponse), 1);
    assert_eq!(counts.total_injected(), 8);
    env.shutdown().await;
}

// ---------------------------------------------------------------------------------
// (a) Lease renewal under throttling

/// A lease coordinator (no processors) whose DynamoDB goes through the proxy.
struct Coordinator {
    coordinator: Arc<LeaseCoordinator>,
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), LeaseError>>,
    acquired: mpsc::UnboundedReceiver<Arc<LeaseHandle>>,
}

impl Coordinator {
    fn start(store: Arc<dyn LeaseStore>, id: &str) -> Coordinator {
        let mut config = LeaseConfig::new(id);
        config.failover_time = FAILOVER;
        let (coordinator, mut events) = LeaseCoordinator::new(store, config);
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let coordinator = Arc::clone(&coordinator);
            let cancel = cancel.clone();
            async move { coordinator.run(cancel).await }
        });
        let (tx, acquired) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(LeaseEvent::Acquired { handle, .. }) = events.recv().await {
                let _ = tx.send(handle);
            }
        });
        Coordinator {
            coordinator,
            cancel,
            run,
            acquired,
        }
    }

    /// Waits until `count` leases were acquired and returns their handles.
    async fn acquire(&mut self, count: usize) -> Vec<Arc<LeaseHandle>> {
        let mut handles = Vec::new();
        while handles.len() < count {
            let handle = tokio::time::timeout(DEADLINE, self.acquired.recv())
                .await
                .expect("leases acquired in time")
                .expect("coordinator running");
            handles.push(handle);
        }
        handles
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.run.await.unwrap().unwrap();
    }
}

async fn lease_table(env: &Env, leases: usize) -> String {
    let table = unique("leases");
    let store = env.direct_store(&table).await;
    store.ensure_tables().await.unwrap();
    for i in 0..leases {
        let lease = Lease::new(
            format!("shardId-{i:012}"),
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        );
        store.create_lease(&lease).await.unwrap();
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_throttled_half_the_time_keep_every_lease() {
    let env = Env::start(11).await;
    let table = lease_table(&env, 4).await;
    let direct = env.direct_store(&table).await;
    let mut worker = Coordinator::start(env.faulty_store(&table).await, "worker-a");
    let handles = worker.acquire(4).await;

    // Half of all UpdateItem calls (renewals and heartbeats) are throttled.
    let update_item = dynamodb_target("UpdateItem");
    env.dynamodb()
        .plan()
        .add(Rule::dynamodb("UpdateItem", Fault::throughput_exceeded()).with_probability(0.5));
    let renewal_interval = worker.coordinator.config().renewal_interval();
    let throttled_before = env.dynamodb().injected(&update_item, FaultKind::Throttling);

    // Watch the table for five renewal intervals exactly as a taking worker does: a
    // lease whose counter stays unchanged for the failover time would be taken.
    let mut expiry = ExpiryTracker::new(FAILOVER);
    let watch_until = Instant::now() + renewal_interval * 5;
    while Instant::now() < watch_until {
        let leases = direct.list_leases().await.unwrap();
        let now = std::time::Instant::now();
        expiry.observe_leases(&leases, now);
        let expired = expiry.expired_leases(now);
        assert!(expired.is_empty(), "a taker would see {expired:?} expired");
        for lease in &leases {
            assert_eq!(lease.owner.as_deref(), Some("worker-a"), "{lease:?}");
        }
        for handle in &handles {
            assert_eq!(handle.phase(), LeasePhase::Held, "{}", handle.key());
        }
        // Sampling pace of the watch, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let throttled = env.dynamodb().injected(&update_item, FaultKind::Throttling) - throttled_before;
    assert!(
        throttled >= 5,
        "only {throttled} UpdateItem calls were throttled; the test proves nothing"
    );

    env.dynamodb().plan().clear();
    worker.stop().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_throttled_past_the_failover_time_give_the_leases_up_to_a_healthy_worker() {
    let env = Env::start(12).await;
    let table = lease_table(&env, 4).await;
    let direct = env.direct_store(&table).await;
    let mut sick = Coordinator::start(env.faulty_store(&table).await, "worker-sick");
    let handles = sick.acquire(4).await;

    env.dynamodb()
        .plan()
        .add(Rule::dynamodb("UpdateItem", Fault::throughput_exceeded()));
    let throttled_at = Instant::now();
    for handle in &handles {
        let mut phase = handle.watch_phase();
        let lost = tokio::time::timeout(
            DEADLINE,
            phase.wait_for(|phase| matches!(phase, LeasePhase::Lost(_))),
        )
        .await
        .expect("the lease is given up in time")
        .unwrap()
        .clone();
        assert_eq!(lost, LeasePhase::Lost(LostReason::ExpiredLocally));
    }
    let given_up_after = throttled_at.elapsed();
    assert!(
        given_up_after >= FAILOVER / 2,
        "leases given up after {given_up_after:?}, before their renewals could expire"
    );

    // Only now does a healthy worker appear; it takes every lease once expired.
    let mut healthy =
        Coordinator::start(Arc::new(env.direct_store(&table).await), "worker-healthy");
    healthy.acquire(4).await;
    let leases = direct.list_leases().await.unwrap();
    assert!(
        leases
            .iter()
            .all(|l| l.owner.as_deref() == Some("worker-healthy")),
        "{leases:?}"
    );

    env.dynamodb().plan().clear();
    healthy.stop().await;
    sick.stop().await;
    env.shutdown().await;
}

// ---------------------------------------------------------------------------------
// (b) Checkpoints under 5xx answers

/// Checkpoints every batch and reports the result with the last record's position.
struct ReportingProcessor {
    results: mpsc::UnboundedSender<(Result<(), CheckpointError>, ExtendedSequenceNumber)>,
}

impl RecordProcessor for ReportingProcessor {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        let Some(last) = input.records.last() else {
            return;
        };
        let position = last.extended_sequence_number();
        let result = checkpointer.checkpoint().await;
        let _ = self.results.send((result, position));
    }
}

struct CheckpointFixture {
    env: Env,
    stream: String,
    app: String,
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), kcl::worker::WorkerError>>,
    results: mpsc::UnboundedReceiver<(Result<(), CheckpointError>, ExtendedSequenceNumber)>,
}

impl CheckpointFixture {
    async fn start(seed: u64) -> CheckpointFixture {
        let env = Env::start(seed).await;
        let stream = env.stream(1).await;
        let app = unique("checkpoints");
        let config = WorkerConfig::builder(&stream, &app)
            .worker_id("worker-1")
            .initial_position(InitialPosition::TrimHorizon)
            // Renewals and heartbeats stay rare; the fault rules single out
            // checkpoints anyway.
            .failover_time(Duration::from_secs(30))
            .idle_time_between_reads(Duration::from_millis(100))
            .build()
            .unwrap();
        let (tx, results) = mpsc::unbounded_channel();
        let worker = Worker::new(
            config,
            &strict::worker_clients(&env.aws, &stream, &app).await,
            move |_: &str| ReportingProcessor {
                results: tx.clone(),
            },
        );
        let cancel = CancellationToken::new();
        let run = tokio::spawn(worker.run(cancel.clone()));
        CheckpointFixture {
            env,
            stream,
            app,
            cancel,
            run,
            results,
        }
    }

    async fn put(&self, data: &str) {
        self.env
            .direct()
            .await
            .kinesis
            .put_record()
            .stream_name(&self.stream)
            .partition_key("k")
            .data(Blob::new(data))
            .send()
            .await
            .unwrap();
    }

    async fn next_result(&mut self) -> (Result<(), CheckpointError>, ExtendedSequenceNumber) {
        tokio::time::timeout(DEADLINE, self.results.recv())
            .await
            .expect("a batch processed in time")
            .expect("worker running")
    }

    async fn stored_checkpoint(&self) -> ExtendedSequenceNumber {
        let leases = self
            .env
            .direct_store(&self.app)
            .await
            .list_leases()
            .await
            .unwrap();
        assert_eq!(leases.len(), 1, "{leases:?}");
        leases[0].checkpoint.clone()
    }

    async fn stop(self) {
        self.env.dynamodb().plan().clear();
        self.cancel.cancel();
        self.run.await.unwrap().unwrap();
        self.env.shutdown().await;
    }
}

/// Only UpdateItem calls that write a checkpoint (the expression names `checkpoint`).
fn checkpoint_writes(fault: Fault) -> Rule {
    Rule::dynamodb("UpdateItem", fault).when_body_contains("\"#checkpoint\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_failing_twice_is_retried_and_stored() {
    let mut fixture = CheckpointFixture::start(21).await;
    let rule = fixture
        .env
        .dynamodb()
        .plan()
        .add(checkpoint_writes(Fault::internal_server_error()).for_next(2));
    fixture.put("first").await;

    let (result, position) = fixture.next_result().await;
    result.expect("checkpoint retried past two 500s");
    assert_eq!(fixture.env.dynamodb().plan().remaining(rule), Some(0));
    assert_eq!(
        fixture
            .env
            .dynamodb()
            .injected(&dynamodb_target("UpdateItem"), FaultKind::ServerError),
        2
    );
    assert_eq!(fixture.stored_checkpoint().await, position);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_failing_persistently_is_reported_and_changes_nothing() {
    let mut fixture = CheckpointFixture::start(22).await;
    fixture.put("first").await;
    let (result, first) = fixture.next_result().await;
    result.unwrap();
    assert_eq!(fixture.stored_checkpoint().await, first);

    fixture
        .env
        .dynamodb()
        .plan()
        .add(checkpoint_writes(Fault::internal_server_error()));
    fixture.put("second").await;
    let (result, second) = fixture.next_result().await;
    assert!(second.compare(&first).is_gt());
    match result {
        Err(CheckpointError::Store { shard_id, source }) => {
            assert!(source.is_transient(), "{source}");
            assert_eq!(shard_id, "shardId-000000000000");
        }
        other => panic!("expected CheckpointError::Store, got {other:?}"),
    }
    assert_eq!(fixture.stored_checkpoint().await, first);
    let failed = fixture
        .env
        .dynamodb()
        .injected(&dynamodb_target("UpdateItem"), FaultKind::ServerError);
    assert!(failed >= 3, "the checkpoint was tried only {failed} times");
    fixture.stop().await;
}

// ---------------------------------------------------------------------------------
// (c) GetRecords backoff

/// A Kinesis client through the proxy with the SDK's own retries off, so that every
/// failed call reaches the reader and only the reader's backoff spaces the calls.
async fn kinesis_without_sdk_retries(env: &Env) -> aws_sdk_kinesis::Client {
    let endpoints = env.faulty();
    let config = kcl::aws::sdk_config(&endpoints).await;
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&config)
            .endpoint_url(env.kinesis().url())
            .retry_config(RetryConfig::disabled())
            .build(),
    )
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

async fn reader_with_records(env: &Env, records: usize) -> ShardReader {
    let stream = env.stream_with_records(records).await;
    let direct = env.direct().await.kinesis;
    let shard_id = kcl::stream::list_shards(&direct, &stream).await.unwrap()[0]
        .shard_id
        .clone();
    ShardReader::new(
        kinesis_without_sdk_retries(env).await,
        &stream,
        shard_id,
        ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        RetrievalConfig {
            initial_backoff: INITIAL_BACKOFF,
            max_backoff: MAX_BACKOFF,
            ..RetrievalConfig::default()
        },
    )
}

fn data(batch: &kcl::internals::Batch) -> Vec<String> {
    batch
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_records_throttled_for_the_next_calls_backs_off_and_delivers_everything() {
    const THROTTLED: u64 = 15;
    let env = Env::start(31).await;
    let mut reader = reader_with_records(&env, 20).await;
    let get_records = kinesis_target("GetRecords");
    env.kinesis()
        .plan()
        .add(Rule::kinesis("GetRecords", Fault::throughput_exceeded()).for_next(THROTTLED));

    let started = Instant::now();
    let batch = tokio::time::timeout(DEADLINE, reader.next_batch())
        .await
        .expect("delivered in time")
        .unwrap();
    let elapsed = started.elapsed();

    let expected: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    assert_eq!(data(&batch), expected);
    assert_eq!(env.kinesis().calls(&get_records), THROTTLED + 1);
    assert_eq!(
        env.kinesis().injected(&get_records, FaultKind::Throttling),
        THROTTLED
    );
    // Full jitter: the k-th delay is uniform in [0, min(20 ms · 2^(k-1), 200 ms)], so
    // the 15 delays add up to 1.25 s on average (standard deviation 0.2 s) and never
    // to more than 2.5 s. A hot loop would take a few milliseconds.
    let bounds: Duration = (0..THROTTLED as u32)
        .map(|k| (INITIAL_BACKOFF * 2u32.pow(k.min(16))).min(MAX_BACKOFF))
        .sum();
    assert!(
        elapsed >= bounds / 6,
        "{THROTTLED} throttled calls retried within {elapsed:?}: not backed off"
    );
    assert!(
        elapsed <= bounds + Duration::from_secs(2),
        "{elapsed:?}: backoff beyond its bounds (sum {bounds:?})"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_get_records_throttling_is_paced_by_the_backoff() {
    let env = Env::start(32).await;
    let mut reader = reader_with_records(&env, 5).await;
    let get_records = kinesis_target("GetRecords");
    let rule = env
        .kinesis()
        .plan()
        .add(Rule::kinesis("GetRecords", Fault::throughput_exceeded()));

    let reading = tokio::spawn(async move {
        let batch = reader.next_batch().await;
        (reader, batch)
    });
    // Watch the calls for two seconds of throttling.
    let window = Duration::from_secs(2);
    let calls_at_start = env.kinesis().calls(&get_records);
    tokio::time::sleep(window).await;
    let calls = env.kinesis().calls(&get_records) - calls_at_start;
    // Delays are uniform in [0, bound] with the bound doubling from 20 ms up to 200 ms:
    // 40 calls in 2 s would need 40 delays averaging 50 ms against an expected ~100 ms
    // (a chance below 1e-6). A reader without backoff makes thousands.
    assert!(calls >= 2, "the reader did not retry ({calls} calls)");
    assert!(
        calls <= 40,
        "{calls} GetRecords calls in {window:?}: not backed off"
    );

    // Healed, the same call delivers.
    assert!(env.kinesis().plan().remove(rule));
    let (_reader, batch) = tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("delivered once healed")
        .unwrap();
    assert_eq!(data(&batch.unwrap()), ["r0", "r1", "r2", "r3", "r4"]);
    env.shutdown().await;
}

// ---------------------------------------------------------------------------------
// (d) A worker through dropped connections and latency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_delivers_everything_in_order_through_drops_and_latency() {
    const KEYS: usize = 6;
    const ROUNDS: usize = 30;
    let env = Env::start(41).await;
    let stream = env.stream(2).await;
    let app = unique("drops");
    let log = Log::default();
    let clients = strict::worker_clients(&env.aws, &stream, &app).await;
    let worker = InProcess::start_with(&clients, &stream, &app, "worker-1", &log);
    // Faults start once the worker runs: its start-up is not what is tested here.
    let direct = env.direct_store(&app).await;
    wait_for("the worker to hold both leases", DEADLINE, || async {
        let leases = direct.list_leases().await.ok()?;
        (leases.len() == 2
            && leases
                .iter()
                .all(|l| l.owner.as_deref() == Some("worker-1")))
        .then_some(())
    })
    .await;

    for (proxy, service) in [
        (env.kinesis(), "Kinesis_20131202.*"),
        (env.dynamodb(), "DynamoDB_20120810.*"),
    ] {
        let plan = proxy.plan();
        plan.add(Rule::new(service, Fault::DropConnection).with_probability(0.1));
        plan.add(Rule::new(service, Fault::DropResponse).with_probability(0.05));
        plan.add(
            Rule::new(
                service,
                Fault::Latency {
                    delay: Duration::from_millis(150),
                },
            )
            .with_probability(0.2),
        );
    }
    // One round at a time, each after a further fault on both services, so that the
    // faults fall among the deliveries rather than after them.
    let clients = env.direct().await;
    let injected = || [env.kinesis(), env.dynamodb()].map(|proxy| proxy.counts().total_injected());
    for round in 0..ROUNDS {
        consumers::produce(&clients, &stream, KEYS, round..round + 1).await;
        let before = injected();
        wait_for("a further fault on both services", DEADLINE, || async {
            let now = injected();
            (now[0] > before[0] && now[1] > before[1]).then_some(())
        })
        .await;
    }
    let every_kind = |proxy: &FaultProxy| {
        let counts = proxy.counts();
        [
            FaultKind::DroppedConnection,
            FaultKind::DroppedResponse,
            FaultKind::Latency,
        ]
        .iter()
        .all(|&kind| counts.injected_of_kind(kind) > 0)
    };
    wait_for(
        "every record delivered, and every kind of fault injected into both services",
        DEADLINE,
        || async {
            (log.distinct_data() == KEYS * ROUNDS
                && every_kind(env.kinesis())
                && every_kind(env.dynamodb()))
            .then_some(())
        },
    )
    .await;
    env.kinesis().plan().clear();
    env.dynamodb().plan().clear();
    worker.stop().await;
    consumers::assert_per_key_order(&log.snapshot());
    env.shutdown().await;
}

// ---------------------------------------------------------------------------------
// (e) A whole worker whose GetRecords calls time out

/// Forwards every record's data, in the order delivered, and checkpoints each batch.
struct Forwarder {
    seen: mpsc::UnboundedSender<String>,
}

impl RecordProcessor for Forwarder {
    async fn process_records(&mut self, input: ProcessRecordsInput, cp: &mut Checkpointer) {
        for record in &input.records {
            let _ = self
                .seen
                .send(String::from_utf8_lossy(&record.data).into_owned());
        }
        cp.checkpoint().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_get_records_calls_time_out_delivers_every_record_once_in_order() {
    const RECORDS: usize = 60;
    let env = Env::start(41).await;
    let stream = env.stream_with_records(RECORDS).await;
    let direct = env.direct().await.kinesis;
    // A third of the GetRecords calls hang past the worker's 300 ms attempt timeout;
    // the SDK gives up on them, the reader retries with the same iterator.
    env.kinesis().plan().add(
        Rule::kinesis(
            "GetRecords",
            Fault::Timeout {
                hold: Duration::from_secs(2),
            },
        )
        .with_probability(0.35),
    );
    let faulty = env.faulty();
    let config = kcl::aws::sdk_config(&faulty).await;
    let kinesis = aws_sdk_kinesis::config::Builder::from(&config)
        .endpoint_url(env.kinesis().url())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(300))
                .build(),
        )
        .build();
    let clients = Clients::from_sdk(
        aws_sdk_kinesis::Client::from_conf(kinesis),
        Clients::connect(&faulty).await.dynamodb,
        faulty,
    );
    let app = unique("timeouts");
    let worker_config = WorkerConfig::builder(&stream, &app)
        .worker_id("worker-1")
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(FAILOVER)
        .idle_time_between_reads(Duration::from_millis(50))
        // Small batches: many GetRecords calls, so many meet a timeout.
        .max_records(5)
        .build()
        .unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let worker = Worker::new(worker_config, &clients, move |_: &str| Forwarder {
        seen: tx.clone(),
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    let mut delivered = Vec::new();
    while delivered.len() < RECORDS {
        let data = tokio::time::timeout(DEADLINE, seen.recv())
            .await
            .expect("records keep coming despite the timeouts")
            .unwrap();
        delivered.push(data);
    }
    let expected: Vec<String> = (0..RECORDS).map(|i| format!("r{i}")).collect();
    assert_eq!(delivered, expected, "every record once, in order");
    let timeouts = env
        .kinesis()
        .counts()
        .injected(&kinesis_target("GetRecords"), FaultKind::Timeout);
    assert!(timeouts >= 3, "only {timeouts} GetRecords calls timed out");

    // Nothing more arrives, the lease stayed with the worker, and the checkpoint is at
    // the last record.
    env.kinesis().plan().clear();
    let leases = env.direct_store(&app).await;
    let last = direct
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(
            kcl::stream::list_shards(&direct, &stream).await.unwrap()[0]
                .shard_id
                .clone(),
        )
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let records = direct
        .get_records()
        .shard_iterator(last.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    let last_sequence = records
        .records()
        .last()
        .unwrap()
        .sequence_number()
        .to_string();
    wait_for("the last record checkpointed", DEADLINE, || async {
        let all = leases.list_leases().await.unwrap();
        (all.len() == 1
            && all[0].owner.as_deref() == Some("worker-1")
            && all[0].checkpoint == ExtendedSequenceNumber::at(last_sequence.clone(), 0))
        .then_some(())
    })
    .await;
    assert!(seen.try_recv().is_err(), "a record delivered twice");
    cancel.cancel();
    run.await.unwrap().unwrap();
    env.shutdown().await;
}
