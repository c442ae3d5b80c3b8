//! Consumer figures on the embedded Kinesis + DynamoDB:
//! - records/s consumed by a kcl-rs worker (checkpointing every batch) from a
//!   pre-filled stream, versus a bare aws-sdk GetRecords loop over the same data, in
//!   the same run (goal: kcl-rs ≥ 0.9× the bare loop);
//! - child-start latency: a parent shard's `shard_ended` → its child's `initialize`.
//!
//! Run: `cargo bench -p kcl-rs --bench consumer` (RECORDS=n, default 1,000,000 records
//! of 368 bytes on 8 shards; ROUNDS=n, default 3). Besides the human lines, one
//! `BENCH {json}` line per figure for `.ci/bench-report`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use kcl::aws::Clients;
use kcl::checkpoint::Checkpointer;
use kcl::config::{InitialPosition, WorkerConfig};
use kcl::processor::{InitializationInput, ProcessRecordsInput, RecordProcessor};
use kcl::stream;
use kcl::worker::Worker;
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio_util::sync::CancellationToken;

const SHARDS: i32 = 8;
const RECORD_BYTES: usize = 368;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fill(clients: &Clients, name: &str, records: usize) {
    let payload = vec![b'x'; RECORD_BYTES];
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (clients, name, payload, next) = (
            clients.clone(),
            name.to_string(),
            payload.clone(),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(500, Ordering::Relaxed);
                if start >= records {
                    return;
                }
                let entries: Vec<_> = (start..(start + 500).min(records))
                    .map(|i| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(format!("order-{i}"))
                            .data(Blob::new(payload.clone()))
                            .build()
                            .unwrap()
                    })
                    .collect();
                let out = clients
                    .kinesis
                    .put_records()
                    .stream_name(&name)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(out.failed_record_count(), Some(0));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// GetRecords with 10,000 per call on every shard in parallel until `records` are read.
async fn bare_loop(clients: &Clients, name: &str, records: usize) -> Duration {
    let shards = stream::list_shards(&clients.kinesis, name).await.unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for shard in shards {
        let (clients, name, read) = (clients.clone(), name.to_string(), Arc::clone(&read));
        tasks.push(tokio::spawn(async move {
            let mut iterator = clients
                .kinesis
                .get_shard_iterator()
                .stream_name(&name)
                .shard_id(&shard.shard_id)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator
                .unwrap();
            loop {
                let page = clients
                    .kinesis
                    .get_records()
                    .shard_iterator(&iterator)
                    .limit(10_000)
                    .send()
                    .await
                    .unwrap();
                let n = page.records().len();
                read.fetch_add(n, Ordering::Relaxed);
                if n == 0 && page.millis_behind_latest() == Some(0) {
                    return;
                }
                iterator = page.next_shard_iterator().unwrap().to_string();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(read.load(Ordering::Relaxed), records);
    started.elapsed()
}

struct Count {
    seen: Arc<AtomicUsize>,
    first: Arc<Mutex<Option<Instant>>>,
}

impl RecordProcessor for Count {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        self.first.lock().unwrap().get_or_insert_with(Instant::now);
        self.seen.fetch_add(input.records.len(), Ordering::Relaxed);
        checkpointer.checkpoint().await.unwrap();
    }
}

/// Returns (from worker start, from first delivery) until every record was processed.
async fn kcl_worker(
    clients: &Clients,
    name: &str,
    app: &str,
    records: usize,
) -> (Duration, Duration) {
    let seen = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Mutex::new(None));
    let config = WorkerConfig::builder(name, app)
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .unwrap();
    let (s, f) = (Arc::clone(&seen), Arc::clone(&first));
    let worker = Worker::new(config, clients, move |_: &str| Count {
        seen: Arc::clone(&s),
        first: Arc::clone(&f),
    });
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(worker.run(cancel.clone()));
    while seen.load(Ordering::Relaxed) < records {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done = Instant::now();
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), records);
    let first = first.lock().unwrap().unwrap();
    (done - started, done - first)
}

struct Lineage {
    ended: Arc<Mutex<HashMap<String, Instant>>>,
    started: Arc<Mutex<HashMap<String, Instant>>>,
    shard: String,
}

impl RecordProcessor for Lineage {
    async fn initialize(&mut self, input: InitializationInput) {
        self.started
            .lock()
            .unwrap()
            .insert(input.shard_id, Instant::now());
    }
    async fn process_records(
        &mut self,
        _input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        let _ = checkpointer.checkpoint().await;
    }
    async fn shard_ended(&mut self, _checkpointer: &mut Checkpointer) {
        self.ended
            .lock()
            .unwrap()
            .insert(self.shard.clone(), Instant::now());
    }
}

/// Splits the newest open shard `rounds` times while a worker runs; for each child,
/// the time from its parent's `shard_ended` to its own `initialize`.
async fn child_start_latencies(clients: &Clients, rounds: usize) -> Vec<f64> {
    let name = "bench-lineage";
    stream::create_stream(&clients.kinesis, name, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let ended = Arc::new(Mutex::new(HashMap::new()));
    let started = Arc::new(Mutex::new(HashMap::new()));
    let config = WorkerConfig::builder(name, "bench-lineage-app")
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .unwrap();
    let (e, s) = (Arc::clone(&ended), Arc::clone(&started));
    let worker = Worker::new(config, clients, move |shard: &str| Lineage {
        ended: Arc::clone(&e),
        started: Arc::clone(&s),
        shard: shard.to_string(),
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        let open: Vec<_> = stream::list_shards(&clients.kinesis, name)
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.is_open())
            .collect();
        let parent = open
            .iter()
            .max_by_key(|s| s.ending_hash_key - s.starting_hash_key)
            .unwrap()
            .clone();
        clients
            .kinesis
            .put_record()
            .stream_name(name)
            .partition_key("p")
            .explicit_hash_key(parent.starting_hash_key.to_string())
            .data(Blob::new("x"))
            .send()
            .await
            .unwrap();
        stream::split_shard(
            &clients.kinesis,
            name,
            &parent.shard_id,
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let children: Vec<String> = stream::list_shards(&clients.kinesis, name)
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.parents() == vec![parent.shard_id.clone()])
            .map(|s| s.shard_id)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let end = ended.lock().unwrap().get(&parent.shard_id).copied();
            let starts: Vec<Instant> = children
                .iter()
                .filter_map(|c| started.lock().unwrap().get(c).copied())
                .collect();
            if let (Some(end), 2) = (end, starts.len()) {
                for start in starts {
                    latencies.push(start.duration_since(end).as_secs_f64());
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "children of {} did not start",
                parent.shard_id
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
    latencies
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records = env_usize("RECORDS", 1_000_000);
    let rounds = env_usize("ROUNDS", 3);
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let clients = aws.clients().await;
    let name = "bench-consumer";
    stream::create_stream(&clients.kinesis, name, SHARDS, Duration::from_secs(10))
        .await
        .unwrap();
    let filling = Instant::now();
    fill(&clients, name, records).await;
    println!(
        "filled {records} records of {RECORD_BYTES} bytes on {SHARDS} shards in {:.1} s ({} cores)",
        filling.elapsed().as_secs_f64(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let (mut bare, mut kcl_total, mut kcl_steady, mut ratio) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let b = records as f64 / bare_loop(&clients, name, records).await.as_secs_f64();
        let (total, steady) =
            kcl_worker(&clients, name, &format!("bench-app-{round}"), records).await;
        let (t, s) = (
            records as f64 / total.as_secs_f64(),
            records as f64 / steady.as_secs_f64(),
        );
        println!(
            "round {round}: bare {b:.0} rec/s, kcl-rs {s:.0} rec/s from first delivery ({t:.0} rec/s incl. start-up)"
        );
        bare.push(b);
        kcl_total.push(t);
        kcl_steady.push(s);
        ratio.push(s / b);
    }
    let line = |figure, label, unit, samples: &[f64], goal| {
        common::result_line("consumer", figure, label, unit, samples, goal)
    };
    line(
        "bare_loop",
        "bare GetRecords loop, 8 shards in parallel",
        "records/s",
        &bare,
        None,
    );
    line(
        "kcl_first_delivery",
        "kcl-rs worker, first delivery → last",
        "records/s",
        &kcl_steady,
        None,
    );
    line(
        "kcl_with_startup",
        "kcl-rs worker, incl. lease start-up",
        "records/s",
        &kcl_total,
        None,
    );
    line(
        "ratio_to_bare",
        "kcl-rs worker / bare GetRecords loop (per round)",
        "× bare loop",
        &ratio,
        Some((">=", 0.9, "≥ 0.9× the bare loop")),
    );
    let (b, bmin, bmax) = stats(bare);
    let (k, kmin, kmax) = stats(kcl_steady);
    let (t, tmin, tmax) = stats(kcl_total);
    let (r, rmin, rmax) = stats(ratio);
    println!("bare GetRecords loop: median {b:.0} rec/s (min {bmin:.0}, max {bmax:.0})");
    println!(
        "kcl-rs worker (first delivery → last): median {k:.0} rec/s (min {kmin:.0}, max {kmax:.0})"
    );
    println!(
        "kcl-rs worker (incl. lease start-up): median {t:.0} rec/s (min {tmin:.0}, max {tmax:.0})"
    );
    println!(
        "ratio kcl-rs / bare: median {r:.2} (min {rmin:.2}, max {rmax:.2}) | goal ≥ 0.9: {}",
        if rmin >= 0.9 {
            "met"
        } else if r >= 0.9 {
            "met at the median, not every round"
        } else {
            "NOT met"
        }
    );
    let latencies = child_start_latencies(&clients, 6).await;
    let millis: Vec<f64> = latencies.iter().map(|s| s * 1000.0).collect();
    line(
        "child_start",
        "child start after parent end (shard_ended → child initialize)",
        "ms",
        &millis,
        Some(("<=", 1000.0, "≤ 1 s")),
    );
    let n = latencies.len();
    let (m, lo, hi) = stats(latencies);
    println!(
        "child start after parent end: median {:.0} ms (min {:.0}, max {:.0}) over {n} children | goal ≤ 1 s: {}",
        m * 1000.0,
        lo * 1000.0,
        hi * 1000.0,
        if hi <= 1.0 { "met" } else { "NOT met" }
    );
    aws.shutdown().await;
}
