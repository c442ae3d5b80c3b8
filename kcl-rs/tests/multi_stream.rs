//! Multi-stream mode on the strict local AWS: one worker on three streams (one created
//! and one deleted while it runs), a second worker joining; every record processed,
//! lease keys naming their stream, the deleted stream's leases gone after the grace.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl::leases::{DynamoLeaseStore, LeaseStore};
use kcl::{
    CancellationToken, Checkpointer, InitialPosition, InitializationInput, ProcessRecordsInput,
    RecordProcessor, StreamConfig, StreamIdentifier, StreamList, Worker, WorkerConfig, WorkerEvent,
};
use kcl_local::strict::DEFAULT_ACCOUNT_ID;
use kcl_local::testing::{unique, wait_for};

mod common;
use common::consumers::produce;
use common::strict;

const WAIT: Duration = Duration::from_secs(90);
const GRACE: Duration = Duration::from_secs(4);

/// (stream, data) of every record delivered, from every worker.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

struct Recorder {
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
                (
                    self.stream.clone(),
                    String::from_utf8_lossy(&r.data).into_owned(),
                )
            }));
        let _ = cp.checkpoint().await;
    }

    async fn shutdown_requested(&mut self, cp: &mut Checkpointer) {
        let _ = cp.checkpoint().await;
    }
}

struct Running {
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), kcl::WorkerError>>,
    started: Arc<Mutex<Vec<String>>>,
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
    let seen = Arc::clone(seen);
    let mut worker =
        Worker::multi_stream(config, clients, streams.clone(), move |_: &str| Recorder {
            stream: String::new(),
            seen: Arc::clone(&seen),
        });
    let started = Arc::new(Mutex::new(Vec::new()));
    let mut events = worker.events();
    tokio::spawn({
        let started = Arc::clone(&started);
        async move {
            while let Some(event) = events.recv().await {
                if let WorkerEvent::ShardStarted { shard_id } = event {
                    started.lock().unwrap().push(shard_id);
                }
            }
        }
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    Running {
        cancel,
        run,
        started,
    }
}

/// What `produce(stream, 4 keys, rounds)` puts, as (stream, data).
fn expected(stream: &str, rounds: std::ops::Range<usize>) -> Vec<(String, String)> {
    rounds
        .flat_map(|n| (0..4).map(move |k| (stream.to_string(), format!("k{k}:{n}"))))
        .collect()
}

async fn streams_in_table(store: &DynamoLeaseStore) -> BTreeSet<String> {
    store
        .list_leases()
        .await
        .unwrap()
        .iter()
        .map(|l| {
            let (id, _) = StreamIdentifier::split_lease_key(&l.key)
                .unwrap_or_else(|| panic!("not a multi-stream lease key: {}", l.key));
            id.stream_name
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_worker_on_three_streams_created_and_deleted_while_running_then_two() {
    let aws = strict::local_aws().await;
    let admin = strict::admin(&aws).await;
    let base = unique("ms");
    let app = unique("ms-app");
    let [a, b, c] = ["a", "b", "c"].map(|s| format!("{base}-{s}"));
    // The documented multi-stream policy, STREAM a pattern over the three.
    let policy = strict::documented_policy(
        "kcl-rs worker in multi-stream mode",
        &format!("{base}-*"),
        &app,
    );
    let key = strict::bind_policy(&aws, &app, policy);
    let clients = aws.clients_as(&key).await;
    let timeout = Duration::from_secs(30);
    kcl::stream::create_stream(&admin.kinesis, &a, 2, timeout)
        .await
        .unwrap();
    kcl::stream::create_stream(&admin.kinesis, &b, 1, timeout)
        .await
        .unwrap();
    produce(&admin, &a, 4, 0..5).await;
    produce(&admin, &b, 4, 0..5).await;
    let mut want: HashSet<(String, String)> = expected(&a, 0..5).into_iter().collect();
    want.extend(expected(&b, 0..5));

    let seen: Seen = Arc::default();
    let streams = StreamList::new([
        StreamConfig::new(&a, InitialPosition::TrimHorizon),
        StreamConfig::new(&b, InitialPosition::TrimHorizon),
    ]);
    let first = start(&clients, &app, "w1", &streams, &seen);
    let delivered = || {
        let seen: HashSet<_> = seen.lock().unwrap().iter().cloned().collect();
        seen
    };
    let all_of = |want: &HashSet<(String, String)>| {
        let want = want.clone();
        let got = delivered();
        async move { want.is_subset(&got).then_some(()) }
    };
    wait_for("a's and b's records", WAIT, || all_of(&want)).await;

    // c is created while the worker runs, and listed.
    kcl::stream::create_stream(&admin.kinesis, &c, 2, timeout)
        .await
        .unwrap();
    produce(&admin, &c, 4, 0..5).await;
    want.extend(expected(&c, 0..5));
    streams.set([
        StreamConfig::new(&a, InitialPosition::TrimHorizon),
        StreamConfig::new(&b, InitialPosition::TrimHorizon),
        StreamConfig::new(&c, InitialPosition::TrimHorizon),
    ]);
    wait_for("c's records", WAIT, || all_of(&want)).await;

    // Leases are keyed account:stream:creationEpoch:shardId, two, one and two shards.
    let table = DynamoLeaseStore::new(admin.dynamodb.clone(), app.clone());
    let leases = table.list_leases().await.unwrap();
    for stream in [&a, &b, &c] {
        let shards = leases
            .iter()
            .filter_map(|l| StreamIdentifier::split_lease_key(&l.key))
            .filter(|(id, _)| &id.stream_name == stream && id.account_id == DEFAULT_ACCOUNT_ID)
            .count();
        assert_eq!(
            shards,
            if stream == &b { 1 } else { 2 },
            "{stream}: {leases:?}"
        );
    }

    // b is deleted while the worker runs (still listed: the worker finds it gone).
    admin
        .kinesis
        .delete_stream()
        .stream_name(&b)
        .send()
        .await
        .unwrap();
    let deleted_at = tokio::time::Instant::now();

    // A second worker joins; more records on a and c, read by either.
    let second = start(&clients, &app, "w2", &streams, &seen);
    produce(&admin, &a, 4, 5..10).await;
    produce(&admin, &c, 4, 5..10).await;
    want.extend(expected(&a, 5..10));
    want.extend(expected(&c, 5..10));
    wait_for("every record of a and c", WAIT, || all_of(&want)).await;

    wait_for("b's leases deleted", WAIT, || {
        let table = &table;
        let b = &b;
        async move { (!streams_in_table(table).await.contains(b)).then_some(()) }
    })
    .await;
    let gone_after = deleted_at.elapsed();
    assert!(
        gone_after >= GRACE,
        "b's leases deleted {gone_after:?} after the stream, before the grace {GRACE:?}"
    );
    let left = streams_in_table(&table).await;
    assert_eq!(left, BTreeSet::from([a.clone(), c.clone()]));
    // The second worker took a share of the five leases of a and c.
    wait_for("the second worker holding leases", WAIT, || {
        let took = !second.started.lock().unwrap().is_empty();
        async move { took.then_some(()) }
    })
    .await;
    let keys = first.started.lock().unwrap().clone();
    assert!(
        keys.iter()
            .all(|k| StreamIdentifier::split_lease_key(k).is_some()),
        "{keys:?}"
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
    let noop = |_: &str| Recorder {
        stream: String::new(),
        seen: Seen::default(),
    };
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
