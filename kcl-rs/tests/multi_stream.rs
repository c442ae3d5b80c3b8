//! Multi-stream mode on the strict local AWS: one worker on several streams (one
//! created, one deleted and created again, one unlisted while it runs), a second worker
//! joining; every record processed, lease keys naming their stream, the former
//! streams' leases gone after the grace.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl::leases::{DynamoLeaseStore, LeaseStore};
use kcl::{
    CancellationToken, Checkpointer, InitialPosition, InitializationInput, ProcessRecordsInput,
    RecordProcessor, StreamConfig, StreamIdentifier, StreamList, Worker, WorkerConfig,
};
use kcl_local::strict::DEFAULT_ACCOUNT_ID;
use kcl_local::testing::{unique, wait_for};

mod common;
use common::consumers::produce;
use common::strict;

const WAIT: Duration = Duration::from_secs(90);
const GRACE: Duration = Duration::from_secs(4);

/// (worker, stream, data) of every record delivered, from every worker.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

struct Recorder {
    worker: String,
    stream: String,
    seen: Seen,
}

impl RecordProcessor for Recorder {
    async fn initialize(&mut self, input: InitializationInput) {
        self.stream = input.stream_name;
    }

    async fn process_records(&mut self, input: ProcessRecordsInput, cp: &mut Checkpointer) {
        self.seen
            .lock()
            .unwrap()
            .extend(input.records.iter().map(|r| {
                let data = String::from_utf8_lossy(&r.data).into_owned();
                (self.worker.clone(), self.stream.clone(), data)
            }));
        let _ = cp.checkpoint().await;
    }

    async fn shutdown_requested(&mut self, cp: &mut Checkpointer) {
        let _ = cp.checkpoint().await;
    }
}

fn recorder(worker: &str, seen: &Seen) -> Recorder {
    Recorder {
        worker: worker.to_string(),
        stream: String::new(),
        seen: Arc::clone(seen),
    }
}

struct Running {
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), kcl::WorkerError>>,
}

fn start(
    clients: &kcl::Clients,
    app: &str,
    id: &str,
    streams: &StreamList,
    seen: &Seen,
) -> Running {
    let config = WorkerConfig::multi_stream_builder(app)
        .worker_id(id)
        .failover_time(Duration::from_secs(3))
        .idle_time_between_reads(Duration::from_millis(100))
        .stream_poll_interval(Duration::from_millis(500))
        .former_stream_grace(GRACE)
        .build()
        .unwrap();
    let (seen, id) = (Arc::clone(seen), id.to_string());
    let worker = Worker::multi_stream(config, clients, streams.clone(), move |_: &str| {
        recorder(&id, &seen)
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    Running { cancel, run }
}

/// What `produce(stream, 4 keys, rounds)` puts, as (stream, data).
fn expected(stream: &str, rounds: std::ops::Range<usize>) -> Vec<(String, String)> {
    rounds
        .flat_map(|n| (0..4).map(move |k| (stream.to_string(), format!("k{k}:{n}"))))
        .collect()
}

/// The streams the lease table has leases of (every key must name one).
async fn streams_in_table(store: &DynamoLeaseStore) -> BTreeSet<StreamIdentifier> {
    store
        .list_leases()
        .await
        .unwrap()
        .iter()
        .map(|l| {
            let (id, _) = StreamIdentifier::split_lease_key(&l.key)
                .unwrap_or_else(|| panic!("not a multi-stream lease key: {}", l.key));
            id
        })
        .collect()
}

async fn identifier(admin: &kcl::Clients, stream: &str) -> StreamIdentifier {
    let summary = admin
        .kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let d = summary.stream_description_summary().unwrap();
    StreamIdentifier {
        account_id: DEFAULT_ACCOUNT_ID.into(),
        stream_name: stream.into(),
        creation_epoch: d.stream_creation_timestamp().secs(),
    }
}

fn listing(names: &[&String]) -> Vec<StreamConfig> {
    names
        .iter()
        .map(|n| StreamConfig::new(*n, InitialPosition::TrimHorizon))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_come_and_go_while_workers_run() {
    // The workers' log is shown if the test fails (RUST_LOG=kcl=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let aws = strict::local_aws().await;
    let admin = strict::admin(&aws).await;
    let base = unique("ms");
    let app = unique("ms-app");
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|s| format!("{base}-{s}"));
    // The documented multi-stream policy, STREAM a pattern over the four.
    let policy = strict::documented_policy(
        "kcl-rs worker in multi-stream mode",
        &format!("{base}-*"),
        &app,
    );
    let key = strict::bind_policy(&aws, &app, policy);
    let clients = aws.clients_as(&key).await;
    let timeout = Duration::from_secs(30);
    for (stream, shards) in [(&a, 2), (&b, 1), (&d, 1)] {
        kcl::stream::create_stream(&admin.kinesis, stream, shards, timeout)
            .await
            .unwrap();
        produce(&admin, stream, 4, 0..5).await;
    }
    let mut want: HashSet<(String, String)> = HashSet::new();
    for stream in [&a, &b, &d] {
        want.extend(expected(stream, 0..5));
    }

    let seen: Seen = Arc::default();
    let streams = StreamList::new(listing(&[&a, &b, &d]));
    let first = start(&clients, &app, "w1", &streams, &seen);
    let delivered = || -> HashSet<(String, String)> {
        let seen = seen.lock().unwrap();
        seen.iter()
            .map(|(_, s, d)| (s.clone(), d.clone()))
            .collect()
    };
    let all_of = |want: &HashSet<(String, String)>| {
        let done = want.is_subset(&delivered());
        async move { done.then_some(()) }
    };
    wait_for("the records of a, b and d", WAIT, || all_of(&want)).await;

    // c is created while the worker runs, and listed.
    kcl::stream::create_stream(&admin.kinesis, &c, 2, timeout)
        .await
        .unwrap();
    produce(&admin, &c, 4, 0..5).await;
    want.extend(expected(&c, 0..5));
    streams.set(listing(&[&a, &b, &c, &d]));
    wait_for("c's records", WAIT, || all_of(&want)).await;

    // Leases are keyed account:stream:creationEpoch:shardId: 2, 1, 2 and 1 shards.
    let table = DynamoLeaseStore::new(admin.dynamodb.clone(), app.clone());
    let leases = table.list_leases().await.unwrap();
    let mut old = BTreeMap::new();
    for (stream, shards) in [(&a, 2), (&b, 1), (&c, 2), (&d, 1)] {
        let id = identifier(&admin, stream).await;
        let prefix = format!("{id}:shardId-");
        let keys = leases.iter().filter(|l| l.key.starts_with(&prefix)).count();
        assert_eq!(keys, shards, "{stream}: {leases:?}");
        old.insert(stream.clone(), id);
    }

    // b is deleted while the worker runs (still listed: the worker finds it gone), d
    // is no longer listed (the stream stays).
    admin
        .kinesis
        .delete_stream()
        .stream_name(&b)
        .send()
        .await
        .unwrap();
    streams.set(listing(&[&a, &b, &c]));
    let gone_at = tokio::time::Instant::now();

    // A second worker joins and takes a share; more records on a and c.
    let second = start(&clients, &app, "w2", &streams, &seen);
    let live = [format!("{}:", old[&a]), format!("{}:", old[&c])];
    wait_for(
        "the second worker holding a lease of a or c",
        WAIT,
        || async {
            let leases = table.list_leases().await.unwrap();
            let held = leases.iter().any(|l| {
                // Handed over: w1 no longer finishing its last batch.
                l.owner.as_deref() == Some("w2")
                    && l.checkpoint_owner.is_none()
                    && live.iter().any(|p| l.key.starts_with(p))
            });
            held.then_some(())
        },
    )
    .await;
    produce(&admin, &a, 4, 5..10).await;
    produce(&admin, &c, 4, 5..10).await;
    want.extend(expected(&a, 5..10));
    want.extend(expected(&c, 5..10));

    // b is created again under its name: a new stream, new leases, read from its
    // start; the old b's leases are not read (they would read the new stream).
    wait_for("b deleted", WAIT, || async {
        let missing = matches!(
            kcl::stream::list_shards(&admin.kinesis, &b).await,
            Err(kcl::StreamError::StreamNotFound { .. })
        );
        missing.then_some(())
    })
    .await;
    kcl::stream::create_stream(&admin.kinesis, &b, 1, timeout)
        .await
        .unwrap();
    let new_b = identifier(&admin, &b).await;
    assert_ne!(new_b, old[&b], "created again within the same second");
    produce(&admin, &b, 4, 100..105).await;
    want.extend(expected(&b, 100..105));
    wait_for("every record of a, c and the new b", WAIT, || all_of(&want)).await;

    let now_in_table = BTreeSet::from([old[&a].clone(), old[&c].clone(), new_b.clone()]);
    wait_for("the old b's and d's leases deleted", WAIT, || {
        let (table, now_in_table) = (&table, &now_in_table);
        async move { (streams_in_table(table).await == *now_in_table).then_some(()) }
    })
    .await;
    let gone_after = gone_at.elapsed();
    assert!(
        gone_after >= GRACE,
        "former streams' leases deleted {gone_after:?} after they went, before the grace {GRACE:?}"
    );

    // Nothing delivered that was not put (the old b's leases never read the new b:
    // they would have delivered its first records again under rounds 0..5), and the
    // second worker processed a share of a and c.
    let seen_all = seen.lock().unwrap().clone();
    let spurious: Vec<_> = seen_all
        .iter()
        .filter(|(_, s, d)| !want.contains(&(s.clone(), d.clone())))
        .collect();
    assert!(spurious.is_empty(), "{spurious:?}");
    let by_second = seen_all
        .iter()
        .filter(|(w, s, _)| w == "w2" && (s == &a || s == &c))
        .count();
    assert!(
        by_second > 0,
        "the second worker processed nothing of a or c"
    );

    for worker in [first, second] {
        worker.cancel.cancel();
        worker.run.await.unwrap().unwrap();
    }
    aws.shutdown().await;
}

#[tokio::test]
async fn a_configuration_must_match_its_worker() {
    // Nothing is called: the check comes before the first request.
    let nowhere = kcl::Endpoints::local("http://127.0.0.1:9", "http://127.0.0.1:9");
    let clients = kcl::Clients::connect(&nowhere).await;
    let noop = |_: &str| recorder("w", &Seen::default());
    let multi = WorkerConfig::multi_stream_builder("app").build().unwrap();
    let single = WorkerConfig::builder("Orders", "app").build().unwrap();
    let cancel = CancellationToken::new();
    for worker in [
        Worker::new(multi, &clients, noop),
        Worker::multi_stream(single, &clients, StreamList::default(), noop),
    ] {
        match worker.run(cancel.clone()).await {
            Err(kcl::WorkerError::Config(e)) => assert_eq!(e.field, "multi_stream"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_registers_a_consumer_per_stream() {
    let aws = kcl_local::LocalAws::start(kcl_local::LocalAwsOptions::from_env())
        .await
        .unwrap();
    let clients = aws.clients().await;
    let base = unique("msfo");
    let app = unique("msfo-app");
    let [a, b] = ["a", "b"].map(|s| format!("{base}-{s}"));
    let timeout = Duration::from_secs(30);
    let mut want = HashSet::new();
    for stream in [&a, &b] {
        kcl::stream::create_stream(&clients.kinesis, stream, 1, timeout)
            .await
            .unwrap();
        produce(&clients, stream, 4, 0..3).await;
        want.extend(expected(stream, 0..3));
    }
    let config = WorkerConfig::multi_stream_builder(&app)
        .worker_id("w1")
        .retrieval_mode(kcl::RetrievalMode::fan_out())
        .failover_time(Duration::from_secs(3))
        .build()
        .unwrap();
    let seen: Seen = Arc::default();
    let worker = Worker::multi_stream(config, &clients, StreamList::new(listing(&[&a, &b])), {
        let seen = Arc::clone(&seen);
        move |_: &str| recorder("w1", &seen)
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    wait_for("both streams' records through fan-out", WAIT, || {
        let got: HashSet<(String, String)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s, d)| (s.clone(), d.clone()))
            .collect();
        let done = want.is_subset(&got);
        async move { done.then_some(()) }
    })
    .await;
    // One stream consumer per stream, named after the application.
    for stream in [&a, &b] {
        let consumers = kcl::retrieval::fanout::list_consumers(&clients.kinesis, stream)
            .await
            .unwrap();
        let names: Vec<_> = consumers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [app.as_str()], "{stream}");
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
    aws.shutdown().await;
}
