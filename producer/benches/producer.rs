//! Producer figures on the embedded Kinesis, in one run:
//! - user records/s and producer CPU time per user record for 368- and 100-byte
//!   records, aggregated and not (4 shards, no write limits, the producer's rate limit
//!   lifted), the 368-byte aggregated case again with a buffer of 20,000 records, and
//!   a bare SDK PutRecords loop for reference;
//! - user records/s one shard absorbs under the real per-shard write limits (1 MiB/s,
//!   1,000 records/s) with aggregation, against the physical bound of 1 MiB/s of
//!   encoded bytes, at the default rate limit (150%) and at 100%.
//!
//! With `PEER_PYTHON` set to a Python that has `async-kinesis[kpl]` (`.ci/peer-async-kinesis`
//! installs one and prints its path), the same 368-byte case runs through the Python
//! `async-kinesis` producer on the same local Kinesis, and the ratio is reported.
//!
//! Run: `cargo bench --workspace --bench producer` (RECORDS=n user records per
//! throughput case, default 200,000; SECONDS=n of writing per single-shard case,
//! default 10). Besides the human lines, one `BENCH {json}` line per figure for
//! `.ci/bench-report`.
//!
//! The producer (its task, the SDK and its HTTP connections) runs on a current-thread
//! runtime on the main thread, whose CPU time (`getrusage(RUSAGE_THREAD)`) is the
//! producer's; the emulator runs on a runtime of its own. Calls carry at most 1 MiB of
//! payload: the embedded Kinesis refuses request bodies over 2 MB (axum's default).

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use kcl_local::{LocalAws, LocalAwsOptions};
use producer::{Producer, ProducerConfig, ProducerConfigBuilder};
use tokio::runtime::Runtime;

const MIB: f64 = 1024.0 * 1024.0;

/// The smaller buffer (`max_outstanding_records`) of one throughput case.
const SMALL_BUFFER: usize = 20_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of the calling thread, or of the whole process.
fn cpu_time(who: libc::c_int) -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_THREAD and RUSAGE_SELF are
    // valid on Linux.
    let usage = unsafe {
        assert_eq!(libc::getrusage(who, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time of the calling thread, to the nanosecond.
fn thread_cpu_now() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given; the clock exists on Linux.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) },
        0
    );
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time the main thread spends building `count` user records the way the put loop
/// does (a partition key and a payload copied per record): the application's work, not
/// the producer's, subtracted from the loop's CPU. Built in chunks and freed untimed
/// (the producer frees the real ones, and that is counted as its own).
fn building_cpu(keys: &[String], payload: &[u8], count: usize) -> Duration {
    const CHUNK: usize = 10_000;
    let mut built: Vec<(String, Vec<u8>)> = Vec::with_capacity(CHUNK);
    let mut total = Duration::ZERO;
    for first in (0..count).step_by(CHUNK) {
        let start = thread_cpu_now();
        for i in first..(first + CHUNK).min(count) {
            built.push((keys[i % keys.len()].clone(), payload.to_vec()));
        }
        total += thread_cpu_now() - start;
        std::hint::black_box(&built);
        built.clear();
    }
    total
}

// One format for every bench of the workspace: the kcl-rs benches' helper.
#[path = "../../kcl-rs/benches/common/mod.rs"]
mod report;

/// The machine-readable line `.ci/bench-report` reads, for this bench.
fn result_line(
    figure: &str,
    label: &str,
    unit: &str,
    samples: &[f64],
    goal: Option<(&str, f64, &str)>,
) {
    report::result_line("producer", figure, label, unit, samples, goal);
}

/// The three `BENCH` lines of one throughput case.
fn throughput_lines(case: &str, label: &str, t: &Throughput) {
    // The goal (issue: a producer far ahead of the Python peer) is on the main case.
    let cpu_goal = (case == "throughput_368_aggregation_on").then_some(("<=", 2.0, "≤ 2 µs"));
    result_line(
        &format!("{case}_records_per_s"),
        &format!("{label}: user records/s"),
        "records/s",
        &[t.records_per_second],
        None,
    );
    result_line(
        &format!("{case}_producer_cpu"),
        &format!(
            "{label}: producer CPU per user record (the bench building the record subtracted)"
        ),
        "µs",
        &[t.cpu_per_record.as_secs_f64() * 1e6],
        cpu_goal,
    );
    result_line(
        &format!("{case}_building_cpu"),
        &format!("{label}: the bench building a user record (key and payload copies)"),
        "µs",
        &[t.building_per_record.as_secs_f64() * 1e6],
        None,
    );
    result_line(
        &format!("{case}_process_cpu"),
        &format!("{label}: process CPU per user record (emulator included)"),
        "µs",
        &[t.process_cpu_per_record.as_secs_f64() * 1e6],
        None,
    );
}

/// Runs the Python peer (`benches/peer/async_kinesis_producer.py`) with `python`:
/// (user records/s, its process CPU per record in µs).
fn run_peer(python: &str, endpoint: &str, stream: &str, records: usize) -> (f64, f64) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/peer/async_kinesis_producer.py"
    );
    let out = std::process::Command::new(python)
        .args([script, endpoint, stream, &records.to_string(), "368"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the peer with {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEER "))
        .unwrap_or_else(|| {
            panic!(
                "the peer printed no result (exit {:?}): {stdout}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    (
        v["records_per_second"].as_f64().unwrap(),
        v["cpu_us_per_record"].as_f64().unwrap(),
    )
}

fn config(stream: &str) -> ProducerConfigBuilder {
    ProducerConfig::builder(stream).collection_max_size(1024 * 1024)
}

async fn create(kinesis: &Client, name: &str, shards: i32) {
    kcl::stream::create_stream(kinesis, name, shards, Duration::from_secs(30))
        .await
        .unwrap();
}

struct Throughput {
    records_per_second: f64,
    /// The main thread's CPU per record, less the bench's building of the record.
    cpu_per_record: Duration,
    /// The bench's building of a record: copies of its key and payload.
    building_per_record: Duration,
    process_cpu_per_record: Duration,
}

/// Puts `count` records of `size` bytes over 1,000 keys and waits for every result.
/// With `buffer`, the producer holds at most that many user records (default
/// otherwise, 100,000).
async fn throughput(
    kinesis: &Client,
    name: &str,
    size: usize,
    aggregation: bool,
    count: usize,
    buffer: Option<usize>,
) -> Throughput {
    create(kinesis, name, 4).await;
    // The emulator has no write limits here: lift the producer's own, so that the
    // figures are the producer's cost, not 4 × 150% of a shard's limits.
    let mut config = config(name).aggregation(aggregation).rate_limit(1_000_000);
    if let Some(records) = buffer {
        config = config.max_outstanding_records(records);
    }
    let config = config.build().unwrap();
    // Results are awaited as they come, as an application does: at most as many wait
    // as the producer buffers (holding every future of the run would hold ~200 bytes
    // of result per record, 200 MB for a million, for nothing).
    let window = config.max_outstanding_records;
    let producer = Producer::new(config, kinesis.clone());
    let keys: Vec<String> = (0..1000).map(|k| format!("customer-{k}")).collect();
    let payload = vec![b'x'; size];
    let (cpu0, process0, started) = (
        cpu_time(libc::RUSAGE_THREAD),
        cpu_time(libc::RUSAGE_SELF),
        Instant::now(),
    );
    let mut pending = std::collections::VecDeque::with_capacity(window);
    for i in 0..count {
        if pending.len() == window {
            let oldest: producer::RecordFuture = pending.pop_front().expect("a full window");
            oldest.await.unwrap();
        }
        pending.push_back(
            producer
                .put(keys[i % keys.len()].clone(), payload.clone())
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    for future in pending {
        future.await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(libc::RUSAGE_THREAD) - cpu0;
    let process = cpu_time(libc::RUSAGE_SELF) - process0;
    producer.shutdown().await;
    let building = building_cpu(&keys, &payload, count);
    Throughput {
        records_per_second: count as f64 / elapsed.as_secs_f64(),
        cpu_per_record: cpu.saturating_sub(building) / count as u32,
        building_per_record: building / count as u32,
        process_cpu_per_record: process / count as u32,
    }
}

/// A bare loop of PutRecords calls of 500 plain records, `concurrency` at a time: what
/// the SDK and the emulator manage without the producer.
async fn bare(
    kinesis: &Client,
    name: &str,
    size: usize,
    count: usize,
    concurrency: usize,
) -> Throughput {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    create(kinesis, name, 4).await;
    let payload = vec![b'x'; size];
    let (cpu0, process0, started) = (
        cpu_time(libc::RUSAGE_THREAD),
        cpu_time(libc::RUSAGE_SELF),
        Instant::now(),
    );
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (kinesis, name, payload, next) = (
            kinesis.clone(),
            name.to_string(),
            payload.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(500, std::sync::atomic::Ordering::Relaxed);
                if start >= count {
                    return;
                }
                let entries = (start..(start + 500).min(count))
                    .map(|i| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(format!("customer-{}", i % 1000))
                            .data(Blob::new(payload.clone()))
                            .build()
                            .unwrap()
                    })
                    .collect();
                let out = kinesis
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
    let elapsed = started.elapsed();
    Throughput {
        records_per_second: count as f64 / elapsed.as_secs_f64(),
        // Its entries are built inside the calls' loop: counted, as in a real client.
        building_per_record: Duration::ZERO,
        cpu_per_record: (cpu_time(libc::RUSAGE_THREAD) - cpu0) / count as u32,
        process_cpu_per_record: (cpu_time(libc::RUSAGE_SELF) - process0) / count as u32,
    }
}

struct ShardRate {
    records_per_second: f64,
    encoded_per_record: f64,
    throttled: usize,
    count: usize,
}

/// Writes 368-byte records to one throttled shard for `seconds`, then waits for the
/// rest; reads the stream back to measure the encoded bytes per user record.
async fn one_shard(kinesis: &Client, name: &str, rate_limit: u32, seconds: u64) -> ShardRate {
    create(kinesis, name, 1).await;
    let config = config(name)
        .rate_limit(rate_limit)
        .max_outstanding_records(10_000)
        .build()
        .unwrap();
    let producer = Producer::new(config, kinesis.clone());
    let keys: Vec<String> = (0..1000).map(|k| format!("customer-{k}")).collect();
    let payload = vec![b'x'; 368];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut pending = Vec::new();
    let mut i = 0;
    while Instant::now() < deadline {
        pending.push(
            producer
                .put(keys[i % keys.len()].clone(), payload.clone())
                .await
                .unwrap(),
        );
        i += 1;
    }
    producer.flush().await;
    let mut throttled = 0;
    for future in pending.drain(..) {
        let result = future.await.unwrap();
        throttled += usize::from(result.attempts.len() > 1);
    }
    let elapsed = started.elapsed();
    producer.shutdown().await;

    // Encoded bytes per user record, as the shard counts them (data plus key).
    let (mut bytes, mut users) = (0usize, 0usize);
    let shard = kcl::stream::list_shards(kinesis, name)
        .await
        .unwrap()
        .remove(0);
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name(name)
        .shard_id(&shard.shard_id)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator()
        .map(str::to_string);
    while let Some(it) = iterator.take() {
        let page = kinesis
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap();
        for record in page.records() {
            let data = record.data().as_ref();
            bytes += data.len() + record.partition_key().map_or(0, str::len);
            users += kcl::kpl::deaggregate(data).map_or(1, |u| u.len());
        }
        if !page.records().is_empty() {
            iterator = page.next_shard_iterator().map(str::to_string);
        }
    }
    assert_eq!(users, i, "every user record written once");
    ShardRate {
        records_per_second: i as f64 / elapsed.as_secs_f64(),
        encoded_per_record: bytes as f64 / users as f64,
        throttled,
        count: i,
    }
}

fn start(emulator: &Runtime, enforce_limits: bool) -> LocalAws {
    emulator
        .block_on(LocalAws::start(LocalAwsOptions {
            enforce_limits,
            ..LocalAwsOptions::default()
        }))
        .unwrap()
}

fn main() {
    let records = env_usize("RECORDS", 200_000);
    let seconds = env_usize("SECONDS", 10) as u64;
    let emulator = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("producer throughput, {records} user records per case, 4 shards, no write limits:");
    println!(
        "  size  aggregation  user records/s  producer CPU/record  process CPU/record  (bench building a record, subtracted)"
    );
    let aws = start(&emulator, false);
    let mut ours_368_on = 0.0;
    // PRODUCER_BENCH_ONLY=368-on (for profiling): that throughput case alone.
    let only = std::env::var("PRODUCER_BENCH_ONLY").ok();
    for size in [368, 100] {
        for aggregation in [true, false] {
            let case = format!("{size}-{}", if aggregation { "on" } else { "off" });
            if only.as_ref().is_some_and(|o| *o != case) {
                continue;
            }
            let name = format!("bench-{size}-{aggregation}");
            let t = runtime.block_on(async {
                let kinesis = aws.clients().await.kinesis;
                throughput(&kinesis, &name, size, aggregation, records, None).await
            });
            println!(
                "  {size:>4}  {:<11}  {:>14.0}  {:>16.2} µs  {:>15.2} µs  ({:.2} µs)",
                if aggregation { "on" } else { "off" },
                t.records_per_second,
                t.cpu_per_record.as_secs_f64() * 1e6,
                t.process_cpu_per_record.as_secs_f64() * 1e6,
                t.building_per_record.as_secs_f64() * 1e6,
            );
            let on = if aggregation { "on" } else { "off" };
            if size == 368 && aggregation {
                ours_368_on = t.records_per_second;
            }
            throughput_lines(
                &format!("throughput_{size}_aggregation_{on}"),
                &format!("{size} B, aggregation {on}, 4 shards"),
                &t,
            );
        }
    }
    if only.is_some() {
        return;
    }
    // The main case with a buffer of 20,000 records: what the buffer's depth costs. The
    // put loop outruns the producer, so the buffer stays full and every record waits
    // through all of it; a record's state is then out of the CPU's caches by the time
    // it is sent and resolved. 20,000 records still cover rate × round trip here.
    let name = "bench-368-buffer".to_string();
    let t = runtime.block_on(async {
        let kinesis = aws.clients().await.kinesis;
        throughput(&kinesis, &name, 368, true, records, Some(SMALL_BUFFER)).await
    });
    println!(
        "   368  on, buffer {SMALL_BUFFER} {:>7.0}  {:>16.2} µs  {:>15.2} µs  ({:.2} µs)",
        t.records_per_second,
        t.cpu_per_record.as_secs_f64() * 1e6,
        t.process_cpu_per_record.as_secs_f64() * 1e6,
        t.building_per_record.as_secs_f64() * 1e6,
    );
    throughput_lines(
        &format!("throughput_368_aggregation_on_buffer_{SMALL_BUFFER}"),
        &format!("368 B, aggregation on, 4 shards, a buffer of {SMALL_BUFFER} records"),
        &t,
    );
    // The reference: what the SDK and the emulator do without the producer.
    let name = "bench-bare".to_string();
    let t = runtime.block_on(async {
        let kinesis = aws.clients().await.kinesis;
        bare(&kinesis, &name, 368, records, 4).await
    });
    println!(
        "   368  bare loop    {:>14.0}  {:>16.2} µs  {:>15.2} µs   (PutRecords of 500 plain records, 4 at a time)",
        t.records_per_second,
        t.cpu_per_record.as_secs_f64() * 1e6,
        t.process_cpu_per_record.as_secs_f64() * 1e6,
    );
    throughput_lines(
        "bare_loop_368",
        "368 B, bare SDK loop (500 plain records per call, 4 in flight)",
        &t,
    );
    if let Some(python) = std::env::var("PEER_PYTHON").ok().filter(|p| !p.is_empty()) {
        let name = "bench-peer-368";
        let url = runtime.block_on(async {
            create(&aws.clients().await.kinesis, name, 4).await;
            aws.endpoints().kinesis.unwrap()
        });
        let peer = run_peer(&python, &url, name, records);
        println!(
            "   368  async-kinesis {:>13.0}  {:>16.2} µs  (the Python peer, KPL aggregation, its limits raised; CPU: its process)",
            peer.0, peer.1
        );
        println!(
            "  this producer / the peer: {:.2}× the user records/s",
            ours_368_on / peer.0
        );
        result_line(
            "peer_368_records_per_s",
            "368 B, the Python async-kinesis producer (KPL aggregation, limits raised), 4 shards: user records/s",
            "records/s",
            &[peer.0],
            None,
        );
        result_line(
            "peer_368_cpu",
            "368 B, the Python async-kinesis producer: process CPU per user record",
            "µs",
            &[peer.1],
            None,
        );
        result_line(
            "peer_ratio",
            "368 B, aggregation on: this producer's user records/s ÷ the async-kinesis peer's (same run, same Kinesis)",
            "× peer",
            &[ours_368_on / peer.0],
            Some((">=", 3.0, "≥ 3× the peer")),
        );
    }
    emulator.block_on(aws.shutdown());

    println!(
        "one shard under the per-shard write limits, 368-byte records, aggregation on, {seconds} s:"
    );
    let aws = start(&emulator, true);
    for rate_limit in [150, 100] {
        let name = format!("bench-shard-{rate_limit}");
        let r = runtime.block_on(async {
            let kinesis = aws.clients().await.kinesis;
            one_shard(&kinesis, &name, rate_limit, seconds).await
        });
        let bound = MIB / r.encoded_per_record;
        println!(
            "  rate limit {rate_limit}%: {:.0} user records/s ({} records, {} retried); {:.1} encoded bytes per user record → bound {:.0}/s; {:.1}% of the bound",
            r.records_per_second,
            r.count,
            r.throttled,
            r.encoded_per_record,
            bound,
            100.0 * r.records_per_second / bound,
        );
        let case = format!("one shard, rate limit {rate_limit}%");
        result_line(
            &format!("one_shard_{rate_limit}_records_per_s"),
            &format!("{case}: user records/s"),
            "records/s",
            &[r.records_per_second],
            None,
        );
        result_line(
            &format!("one_shard_{rate_limit}_bound"),
            &format!("{case}: physical bound (1 MiB/s ÷ encoded bytes per user record)"),
            "records/s",
            &[bound],
            None,
        );
        result_line(
            &format!("one_shard_{rate_limit}_of_bound"),
            &format!("{case}: absorbed share of the physical bound"),
            "% of bound",
            &[100.0 * r.records_per_second / bound],
            Some((">=", 90.0, "within 10% of the bound")),
        );
    }
    emulator.block_on(aws.shutdown());
}
