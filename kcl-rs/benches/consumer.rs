//! Consumer figures on the embedded Kinesis + DynamoDB:
//! - records/s consumed by a kcl-rs worker (checkpointing every batch) from a
//!   pre-filled stream, versus a bare aws-sdk GetRecords loop over the same data, in
//!   the same run (goal: kcl-rs ≥ 0.9× the bare loop). Both are timed over the same
//!   span, first records received → last record received, and each round runs the
//!   bare loop just before and just after the worker and compares the worker with
//!   their mean, so load that drifts during a round weighs on both sides alike;
//! - the same worker with enhanced fan-out (SubscribeToShard) over the same data;
//! - put → `process_records` latency at a steady 1,000 records/s on 4 shards, polling
//!   versus fan-out (goal for fan-out: p50 ≤ 50 ms, p99 ≤ 200 ms);
//! - child-start latency: a parent shard's `shard_ended` → its child's `initialize`;
//! - what metrics cost: records/s with a Prometheus recorder installed versus none,
//!   in each round the metered run is compared with the mean of two unmetered runs,
//!   one just before and one just after it (goal: within 3%).
//!
//! Run: `cargo bench -p kcl-rs --bench consumer` (RECORDS=n, default 1,000,000 records
//! of 368 bytes on 8 shards; ROUNDS=n, default 3; LATENCY_SECS=n, default 20 per mode).
//! Besides the human lines, one `BENCH {json}` line per figure for `.ci/bench-report`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use metrics::{Key, KeyName, Metadata, SharedString, Unit};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use kcl::aws::Clients;
use kcl::checkpoint::Checkpointer;
use kcl::config::{InitialPosition, RetrievalMode, WorkerConfig};
use kcl::processor::{InitializationInput, ProcessRecordsInput, RecordProcessor};
use kcl::stream;
use kcl::worker::Worker;
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio_util::sync::CancellationToken;

/// A recorder that hands out Prometheus handles while on and no-op handles while off
/// (what the facade gives when no recorder is installed): the global recorder can be
/// installed once, and rounds with and without metrics alternate.
struct Switchable {
    on: AtomicBool,
    inner: metrics_exporter_prometheus::PrometheusRecorder,
}

impl metrics::Recorder for Switchable {
    fn describe_counter(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_counter(k, u, d)
    }
    fn describe_gauge(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_gauge(k, u, d)
    }
    fn describe_histogram(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_histogram(k, u, d)
    }
    fn register_counter(&self, key: &Key, meta: &Metadata<'_>) -> metrics::Counter {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_counter(key, meta)
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, meta: &Metadata<'_>) -> metrics::Gauge {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_gauge(key, meta)
        } else {
            metrics::Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, meta: &Metadata<'_>) -> metrics::Histogram {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_histogram(key, meta)
        } else {
            metrics::Histogram::noop()
        }
    }
}

static METRICS_ON: std::sync::OnceLock<&'static Switchable> = std::sync::OnceLock::new();

/// Installs the switchable recorder (off) once, and returns it.
fn switchable() -> &'static Switchable {
    METRICS_ON.get_or_init(|| {
        let recorder: &'static Switchable = Box::leak(Box::new(Switchable {
            on: AtomicBool::new(false),
            inner: metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
        }));
        metrics::set_global_recorder(recorder).unwrap();
        kcl::metrics::describe();
        recorder
    })
}

const SHARDS: i32 = 8;
const RECORD_BYTES: usize = 368;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One PutRecords call; every entry must be accepted.
async fn put_all(clients: &Clients, name: &str, entries: Vec<PutRecordsRequestEntry>) {
    let out = clients
        .kinesis
        .put_records()
        .stream_name(name)
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_record_count(), Some(0));
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
                put_all(&clients, &name, entries).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// When the first records of a run arrived and when its last one did: the span both
/// the bare loop and the worker are timed over.
#[derive(Default)]
struct Span {
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

impl Span {
    /// Notes `n` records received now, `total` of the run's `records` so far.
    fn received(&self, n: usize, total: usize, records: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        self.first.lock().unwrap().get_or_insert(now);
        if total >= records {
            self.last.lock().unwrap().get_or_insert(now);
        }
    }

    /// From the first records received to the last.
    fn elapsed(&self) -> Duration {
        let first = self.first.lock().unwrap().unwrap();
        self.last.lock().unwrap().unwrap() - first
    }
}

/// GetRecords with 10,000 per call on every shard in parallel until `records` are read;
/// returns the time from the first records received to the last.
async fn bare_loop(clients: &Clients, name: &str, records: usize) -> Duration {
    let shards = stream::list_shards(&clients.kinesis, name).await.unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let span = Arc::new(Span::default());
    let mut tasks = Vec::new();
    for shard in shards {
        let (clients, name, read) = (clients.clone(), name.to_string(), Arc::clone(&read));
        let span = Arc::clone(&span);
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
                span.received(n, read.fetch_add(n, Ordering::Relaxed) + n, records);
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
    span.elapsed()
}

struct Count {
    seen: Arc<AtomicUsize>,
    records: usize,
    span: Arc<Span>,
}

impl RecordProcessor for Count {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        let n = input.records.len();
        let total = self.seen.fetch_add(n, Ordering::Relaxed) + n;
        self.span.received(n, total, self.records);
        checkpointer.checkpoint().await.unwrap();
    }
}

/// Returns (from worker start, from first delivery) until every record was delivered.
async fn kcl_worker(
    clients: &Clients,
    name: &str,
    app: &str,
    records: usize,
    mode: RetrievalMode,
) -> (Duration, Duration) {
    let seen = Arc::new(AtomicUsize::new(0));
    let span = Arc::new(Span::default());
    let config = WorkerConfig::builder(name, app)
        .initial_position(InitialPosition::TrimHorizon)
        .retrieval_mode(mode)
        .build()
        .unwrap();
    let (s, f) = (Arc::clone(&seen), Arc::clone(&span));
    let worker = Worker::new(config, clients, move |_: &str| Count {
        seen: Arc::clone(&s),
        records,
        span: Arc::clone(&f),
    });
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(worker.run(cancel.clone()));
    while seen.load(Ordering::Relaxed) < records {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), records);
    let done = span.last.lock().unwrap().unwrap();
    (done - started, span.elapsed())
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

/// The `q` quantile (0..=1) of `samples`, nearest rank.
fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Records the time from its put to its `process_records` for each record.
struct Latency {
    millis: Arc<Mutex<Vec<f64>>>,
}

impl RecordProcessor for Latency {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        let now = unix_nanos();
        {
            let mut millis = self.millis.lock().unwrap();
            for record in &input.records {
                let put: [u8; 16] = record.data[..16].try_into().unwrap();
                millis.push((now - u128::from_be_bytes(put)) as f64 / 1e6);
            }
        }
        let _ = checkpointer.checkpoint().await;
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Puts 1,000 records/s (10 every 10 ms, random keys over 4 shards, each carrying its
/// put time) for `secs` seconds while one worker in `mode` reads them; returns each
/// record's put → `process_records` latency in ms, leaving out the first 2 s (leases
/// and subscriptions starting).
async fn put_to_process_latencies(clients: &Clients, mode: RetrievalMode, secs: usize) -> Vec<f64> {
    let name = format!("bench-latency-{}", unix_nanos());
    stream::create_stream(&clients.kinesis, &name, 4, Duration::from_secs(10))
        .await
        .unwrap();
    let millis = Arc::new(Mutex::new(Vec::new()));
    let config = WorkerConfig::builder(&name, format!("{name}-app"))
        .initial_position(InitialPosition::TrimHorizon)
        .retrieval_mode(mode)
        .build()
        .unwrap();
    let recorded = Arc::clone(&millis);
    let worker = Worker::new(config, clients, move |_: &str| Latency {
        millis: Arc::clone(&recorded),
    });
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut put, warm_up) = (0usize, 200);
    for round in 0..secs * 100 {
        tick.tick().await;
        if round == warm_up {
            millis.lock().unwrap().clear();
            put = 0;
        }
        let entries: Vec<_> = (0..10)
            .map(|i| {
                let mut data = unix_nanos().to_be_bytes().to_vec();
                data.resize(RECORD_BYTES, b'x');
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{round}-{i}"))
                    .data(Blob::new(data))
                    .build()
                    .unwrap()
            })
            .collect();
        put_all(clients, &name, entries).await;
        put += 10;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while millis.lock().unwrap().len() < put && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
    let millis = millis.lock().unwrap().clone();
    assert!(
        millis.len() >= put,
        "{} of {put} records read",
        millis.len()
    );
    millis
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
    let mut fan_out = vec![];
    let (mut with_metrics, mut metrics_ratio) = (vec![], vec![]);
    let recorder = switchable();
    for round in 0..rounds {
        let rate = |d: Duration| records as f64 / d.as_secs_f64();
        let before = rate(bare_loop(&clients, name, records).await);
        let app = format!("bench-app-{round}");
        let (total, steady) =
            kcl_worker(&clients, name, &app, records, RetrievalMode::Polling).await;
        let after = rate(bare_loop(&clients, name, records).await);
        let b = (before + after) / 2.0;
        let (t, s) = (
            records as f64 / total.as_secs_f64(),
            records as f64 / steady.as_secs_f64(),
        );
        // What metrics cost: the worker with a Prometheus recorder, between two runs
        // without, right before and right after it, so that drift weighs on both sides.
        // Records/s of a polling worker from first delivery, with the recorder on or off.
        let steady_rate = |app: String, metered: bool| {
            let (clients, recorder) = (&clients, &recorder);
            async move {
                recorder.on.store(metered, Ordering::Relaxed);
                let (_, steady) =
                    kcl_worker(clients, name, &app, records, RetrievalMode::Polling).await;
                recorder.on.store(false, Ordering::Relaxed);
                records as f64 / steady.as_secs_f64()
            }
        };
        let before_metered = steady_rate(format!("bench-app-before-{round}"), false).await;
        let m = steady_rate(format!("bench-metrics-{round}"), true).await;
        let after_metered = steady_rate(format!("bench-app-after-{round}"), false).await;
        with_metrics.push(m);
        metrics_ratio.push(m / ((before_metered + after_metered) / 2.0));
        let fan_app = format!("bench-fan-out-{round}");
        let (_, fan_steady) =
            kcl_worker(&clients, name, &fan_app, records, RetrievalMode::fan_out()).await;
        let f = records as f64 / fan_steady.as_secs_f64();
        println!(
            "round {round}: bare {b:.0} rec/s (before {before:.0}, after {after:.0}), kcl-rs {s:.0} rec/s from first delivery ({t:.0} rec/s incl. start-up), with a Prometheus recorder {m:.0} rec/s, fan-out {f:.0} rec/s"
        );
        bare.extend([before, after]);
        kcl_total.push(t);
        kcl_steady.push(s);
        ratio.push(s / b);
        fan_out.push(f);
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
        "kcl_fan_out_first_delivery",
        "kcl-rs worker with enhanced fan-out, first delivery → last",
        "records/s",
        &fan_out,
        None,
    );
    line(
        "kcl_with_metrics",
        "kcl-rs worker with a Prometheus recorder installed, first delivery → last",
        "records/s",
        &with_metrics,
        None,
    );
    line(
        "metrics_cost",
        "with a Prometheus recorder / without (per round)",
        "× without",
        &metrics_ratio,
        Some((">=", 0.97, "≥ 0.97 (within 3%)")),
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
    let latency_secs = env_usize("LATENCY_SECS", 20);
    for (mode, figure, label) in [
        (RetrievalMode::Polling, "latency_polling", "polling"),
        (
            RetrievalMode::fan_out(),
            "latency_fan_out",
            "enhanced fan-out",
        ),
    ] {
        let fan_out = mode != RetrievalMode::Polling;
        let millis = put_to_process_latencies(&clients, mode, latency_secs).await;
        let (p50, p99) = (percentile(&millis, 0.5), percentile(&millis, 0.99));
        println!(
            "put → process_records at 1,000 records/s on 4 shards, {label}: p50 {p50:.1} ms, p99 {p99:.1} ms over {} records",
            millis.len()
        );
        common::result_line(
            "consumer",
            &format!("{figure}_p50"),
            &format!("put → process_records p50, 1,000 records/s on 4 shards, {label}"),
            "ms",
            &[p50],
            fan_out.then_some(("<=", 50.0, "≤ 50 ms")),
        );
        common::result_line(
            "consumer",
            &format!("{figure}_p99"),
            &format!("put → process_records p99, 1,000 records/s on 4 shards, {label}"),
            "ms",
            &[p99],
            fan_out.then_some(("<=", 200.0, "≤ 200 ms")),
        );
    }
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
