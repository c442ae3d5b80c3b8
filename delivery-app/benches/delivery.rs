//! End-to-end benchmark of the delivery application on the embedded local AWS:
//! the simulator through the producer into a 4-shard stream, 3 statistics worker
//! processes, statistics checked exactly against the ground truth.
//!
//! 0. Bound (`bound`): the statistics transactions alone, straight to DynamoDB (see
//!    [`bound_run`]); the unpaced run of the same invocation is divided by it.
//! 1. Consumers alone: the stream is filled first, then the workers start; events/s
//!    from their start until the statistics reflect the last event.
//! 2. End to end, unpaced: events put as fast as the producer takes them while the
//!    workers run, the producer's per-shard rate limit lifted (the local Kinesis has no
//!    write limits here); events/s from the first put until the statistics reflect the
//!    last.
//! 3. Latency: events paced at a target rate (default 5,000/s); for every event, the
//!    time from `put` until the statistics reflect it (its shard's watermark passed it),
//!    median and p99.
//!
//! 4. Balance: events keyed by pickup region on 8 shards of uneven hash ranges (as
//!    after splitting hot shards: 2 × 1/4, 2 × 1/8, 4 × 1/16 of the key space), 4 workers,
//!    paced at `DELIVERY_BENCH_BALANCE_RATE` (default 2,000/s) for
//!    `DELIVERY_BENCH_BALANCE_SECS` (default 90 s), once with count balancing and once
//!    with load balancing. The lease table is read every second; after the first third
//!    of the run (convergence), the busiest worker's records/s (the sum of the loads
//!    written on its leases) over the mean, and lease moves per minute.
//!
//! `cargo bench --workspace --bench delivery`
//! Environment: `DELIVERY_BENCH_EVENTS` (default 60000) events per run,
//! `DELIVERY_BENCH_RATE` (default 5000) events/s of the paced run,
//! `DELIVERY_BENCH_RUNS` (default `bound,alone,unpaced,paced,balance`; `cost` on demand)
//! which runs to do.
//!
//! 5. Cost (`cost`): the unpaced run through proxies that count Kinesis calls and PUT
//!    payload units and the DynamoDB request units each table consumes
//!    (`kcl_local::meter`): units per 1,000 events per table, calls per shard-minute,
//!    and what a million events cost at AWS's published prices.
//!
//! Besides the human lines, one `BENCH {json}` line per figure for `.ci/bench-report`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use delivery_app::scenario::{self, ScenarioConfig, ScenarioReport, percentile};
use delivery_app::sim::{KeyStrategy, SimConfig};
use delivery_app::worker::{BalanceFlag, Retrieval};
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use kcl_local::meter::{Metered, Usage};
use kcl_local::{LocalAws, LocalAwsOptions};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Simulated events per simulated second at the default order rate (3 per order).
const SIM_EVENTS_PER_SEC: f64 = 3.0 * 1000.0 / 90.0;

/// A producer rate limit (percent of AWS's per-shard write limits) that never binds.
const UNLIMITED: u32 = 1_000_000;

enum Mode {
    ConsumersAlone,
    Unpaced,
    /// Unpaced, through proxies that count Kinesis calls and DynamoDB request units.
    Cost,
    Paced(f64),
    /// Region keys, 8 uneven shards, 4 workers, paced at this rate, leases shared so.
    Balance(f64, BalanceFlag),
}

/// What the lease table showed once a second: per worker, the records/s written on
/// the leases it holds; and each lease's owner.
type Sample = (BTreeMap<String, f64>, BTreeMap<String, Option<String>>);

async fn run(name: &str, events: u64, mode: Mode) -> ScenarioReport {
    run_sampled(name, events, mode).await.0
}

async fn run_sampled(name: &str, events: u64, mode: Mode) -> (ScenarioReport, Vec<Sample>) {
    let (report, samples, _) = run_metered(name, events, mode).await;
    (report, samples)
}

async fn run_metered(
    name: &str,
    events: u64,
    mode: Mode,
) -> (ScenarioReport, Vec<Sample>, Option<Usage>) {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let metered = match mode {
        Mode::Cost => Some(Metered::start(&aws.endpoints()).await.unwrap()),
        _ => None,
    };
    let endpoints = metered
        .as_ref()
        .map_or_else(|| aws.endpoints(), Metered::endpoints);
    let balance = match mode {
        Mode::Balance(_, balance) => Some(balance),
        _ => None,
    };
    let sim = SimConfig {
        seed: 2024,
        max_orders: Some(events / 3),
        duration_ms: i64::MAX / 4,
        keys: if balance.is_some() {
            KeyStrategy::Region
        } else {
            KeyStrategy::Order
        },
        ..SimConfig::default()
    };
    let app = format!("bench-{name}-stats");
    if balance.is_some() {
        uneven_shards(&aws, &format!("bench-{name}")).await;
    }
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let leases = DynamoLeaseStore::new(aws.clients().await.dynamodb, &app);
        let stop = sampling.clone();
        async move {
            let mut samples = Vec::new();
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return samples,
                    _ = every.tick() => {}
                }
                let Ok(all) = leases.scan_leases().await else {
                    continue;
                };
                let mut load: BTreeMap<String, f64> = BTreeMap::new();
                let mut owners = BTreeMap::new();
                for lease in all.iter().filter(|l| !l.checkpoint.is_shard_end()) {
                    if let Some(owner) = &lease.owner {
                        *load.entry(owner.clone()).or_default() +=
                            lease.load.map_or(0.0, |l| l.records_per_sec);
                    }
                    owners.insert(lease.key.clone(), lease.owner.clone());
                }
                samples.push((load, owners));
            }
        }
    });
    let config = ScenarioConfig {
        exe: env!("CARGO_BIN_EXE_delivery-app").into(),
        endpoints,
        stream: format!("bench-{name}"),
        app,
        shards: if balance.is_some() { 8 } else { 4 },
        workers: if balance.is_some() { 4 } else { 3 },
        failover: Duration::from_secs(10),
        poll: Duration::from_millis(100),
        retrieval: Retrieval::Polling,
        balance: balance.unwrap_or_default(),
        sim,
        speed: match mode {
            Mode::Paced(rate) | Mode::Balance(rate, _) => Some(rate / SIM_EVENTS_PER_SEC),
            _ => None,
        },
        steps: Vec::new(),
        autoscale: None,
        live_every: None,
        log_dir: Some(
            std::env::temp_dir().join(format!("delivery-bench-{}-{name}", std::process::id())),
        ),
        settle_timeout: Duration::from_secs(600),
        track_latency: matches!(mode, Mode::Paced(_)),
        workers_after_production: matches!(mode, Mode::ConsumersAlone),
        audit_dir: None,
        as_principals: false,
        metrics_base: None,
        // The local Kinesis enforces no write limits here: the unpaced run lifts the
        // producer's own (150% of AWS's 1 MiB/s per shard), which would otherwise cap
        // it at what 4 shards take (about 21,000 events/s with the first second's
        // burst) and measure that instead of the pipeline. The other runs keep it:
        // the cost run counts calls per shard-minute as AWS would see them.
        producer_rate_limit: matches!(mode, Mode::Unpaced).then_some(UNLIMITED),
        local_aws: None,
    };
    let say: scenario::Narrator = Arc::new(|_| {});
    let report = scenario::run(config, say).await.unwrap();
    sampling.cancel();
    let samples = sampler.await.unwrap();
    let usage = metered.as_ref().map(Metered::usage);
    if let Some(metered) = metered {
        metered.shutdown().await;
    }
    aws.shutdown().await;
    (report, samples, usage)
}

/// The stream of the balance runs: 8 open shards of uneven hash ranges, as after
/// splits of the hot ones (4 shards; 0 and 1 split; the low halves split again): two
/// shards of a quarter of the key space, two of an eighth, four of a sixteenth. Keys
/// hash evenly, so each shard's load follows its range: lease counts alone cannot
/// share that evenly.
async fn uneven_shards(aws: &LocalAws, stream: &str) {
    let kinesis = aws.clients().await.kinesis;
    let wait = Duration::from_secs(60);
    kcl::stream::create_stream(&kinesis, stream, 4, wait)
        .await
        .unwrap();
    for shard in [0, 1, 4, 6] {
        let id = format!("shardId-{shard:012}");
        kcl::stream::split_shard(&kinesis, stream, &id, None, wait)
            .await
            .unwrap();
    }
    let open = kcl::stream::list_shards(&kinesis, stream)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.ending_sequence_number.is_none())
        .count();
    assert_eq!(open, 8);
}

/// From the samples after the first third (convergence) of the production: the
/// median of busiest/mean records/s over `workers` workers, and lease moves per
/// minute.
fn balance_figures(samples: &[Sample], produced_secs: f64, workers: usize) -> (f64, f64) {
    let produced = (produced_secs as usize).min(samples.len());
    let window = &samples[produced / 3..produced];
    let mut ratios: Vec<f64> = window
        .iter()
        .filter_map(|(load, _)| {
            let total: f64 = load.values().sum();
            let busiest = load.values().copied().fold(0.0, f64::max);
            (total > 0.0).then(|| busiest / (total / workers as f64))
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let moves: usize = window
        .windows(2)
        .map(|pair| {
            let (before, after) = (&pair[0].1, &pair[1].1);
            after
                .iter()
                .filter(|(k, owner)| {
                    before
                        .get(*k)
                        .is_some_and(|was| was.is_some() && owner.is_some() && was != *owner)
                })
                .count()
        })
        .sum();
    let minutes = window.len().saturating_sub(1) as f64 / 60.0;
    (median, moves as f64 / minutes.max(1.0 / 60.0))
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
    report::result_line("delivery", figure, label, unit, samples, goal);
}

/// AWS's published on-demand prices, us-east-1: DynamoDB per million request units,
/// Kinesis (provisioned) per million PUT payload units and per shard-hour.
const PRICE_WRU: f64 = 0.625;
const PRICE_RRU: f64 = 0.125;
const PRICE_PUT_UNITS: f64 = 0.014;
const PRICE_SHARD_HOUR: f64 = 0.015;
/// Write request units per 1,000 events, all tables, when they were first measured
/// (the median of three cost runs): the goal is half of it.
const WRU_PER_K_BEFORE: f64 = 2_128.0;

/// Request units per 1,000 events per table, Kinesis calls per shard-minute, and what
/// a million events cost at AWS's prices.
fn cost_figures(report: &ScenarioReport, usage: &Usage, app: &str, shards: u32) {
    let events = report.truth.records as f64;
    let minutes = report.end_to_end_time.as_secs_f64() / 60.0;
    let per_k = |units: f64| units / events * 1000.0;
    println!(
        "  cost, unpaced, {events:.0} events in {:.1} s; exact: {}",
        report.end_to_end_time.as_secs_f64(),
        report.comparison.matches
    );
    let (mut rru, mut wru) = (0.0, 0.0);
    for (table, u) in &usage.tables {
        let role = match table.strip_prefix(app) {
            Some("") => "leases".to_string(),
            Some(suffix) => suffix.trim_start_matches('-').to_lowercase(),
            None => table.clone(),
        };
        println!(
            "    {role:<12} {:>8.1} RRU {:>8.1} WRU per 1,000 events ({} calls, {} refused by a condition)",
            per_k(u.read_units),
            per_k(u.write_units),
            u.calls,
            u.refused
        );
        result_line(
            &format!("cost_rru_{role}"),
            &format!("read request units per 1,000 events, {role} table"),
            "RRU",
            &[per_k(u.read_units)],
            None,
        );
        result_line(
            &format!("cost_wru_{role}"),
            &format!("write request units per 1,000 events, {role} table"),
            "WRU",
            &[per_k(u.write_units)],
            None,
        );
        rru += u.read_units;
        wru += u.write_units;
    }
    let calls = |op: &str| usage.kinesis_calls.get(op).copied().unwrap_or(0) as f64;
    let per_shard_minute = |op: &str| calls(op) / f64::from(shards) / minutes;
    println!(
        "    all tables   {:>8.1} RRU {:>8.1} WRU per 1,000 events; Kinesis per shard-minute: {:.0} GetRecords, {:.0} PutRecords; {:.2} PUT payload units per 1,000 events ({} records put)",
        per_k(rru),
        per_k(wru),
        per_shard_minute("GetRecords"),
        per_shard_minute("PutRecords"),
        per_k(usage.put_payload_units as f64),
        usage.kinesis_records_put
    );
    result_line(
        "cost_wru_total",
        "write request units per 1,000 events, all tables",
        "WRU",
        &[per_k(wru)],
        Some((
            "<=",
            WRU_PER_K_BEFORE / 2.0,
            "≤ 1,064: half the 2,128 measured before any cut",
        )),
    );
    result_line(
        "cost_rru_total",
        "read request units per 1,000 events, all tables",
        "RRU",
        &[per_k(rru)],
        None,
    );
    for op in ["GetRecords", "PutRecords"] {
        result_line(
            &format!("cost_{}_per_shard_minute", op.to_lowercase()),
            &format!("Kinesis {op} calls per shard-minute (unpaced run)"),
            "calls",
            &[per_shard_minute(op)],
            None,
        );
    }
    // A million events: request units scale with events; shard-hours with time, here
    // at the rate of this run.
    let million = 1e6 / events;
    let dynamodb = (wru * PRICE_WRU + rru * PRICE_RRU) * million / 1e6;
    let puts = usage.put_payload_units as f64 * million * PRICE_PUT_UNITS / 1e6;
    let hours = report.end_to_end_time.as_secs_f64() * million / 3600.0;
    let shard_hours = hours * f64::from(shards) * PRICE_SHARD_HOUR;
    println!(
        "    a million events on AWS (us-east-1): DynamoDB on-demand ${dynamodb:.3}, Kinesis PUT payload units ${puts:.4}, {shards} shard-hours at this rate ${shard_hours:.4}"
    );
    result_line(
        "cost_dynamodb_per_million",
        "DynamoDB on-demand cost of a million events (us-east-1 prices)",
        "USD",
        &[dynamodb],
        None,
    );
    result_line(
        "cost_kinesis_per_million",
        "Kinesis cost of a million events: PUT payload units + shard-hours at the run's rate (us-east-1)",
        "USD",
        &[puts + shard_hours],
        None,
    );
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn rate(events: u64, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64()
}

/// The bound of the statistics path (`bound`): the statistics transactions alone. The
/// run's events are put through the same sink into a 4-shard stream and read back
/// (the same records in the same order per shard as the workers get them); then one
/// loop per shard plans and commits them straight to the embedded DynamoDB: the same
/// `TransactWriteItems` the worker commits (statistics item, an order's write when it
/// completes, dead letters, the lease check; the same conditions and sizes), with the
/// order states kept in memory as the worker holds them. No Kinesis, no kcl-rs, no checkpoints
/// while it is timed. Events/s from the first transaction to the last, and
/// transactions committed.
async fn bound_run(events: u64) -> (f64, usize) {
    use delivery_app::stats::StatsStore;
    use delivery_app::stats::hold::HeldOrders;
    use delivery_app::stats::plan::{ParsedRecord, PlanLimits};
    use kcl::checkpoint::{ExtendedSequenceNumber, LeaseOwnership, SequencePosition};
    use kcl::leases::Lease;

    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let clients = aws.clients().await;
    let app = "bench-bound-stats";
    let stream = "bench-bound";
    kcl::stream::create_stream(&clients.kinesis, stream, 4, Duration::from_secs(60))
        .await
        .unwrap();
    let mut sink =
        delivery_app::sink::EventSink::new(clients.kinesis.clone(), stream, false).unwrap();
    let sim = SimConfig {
        seed: 2024,
        max_orders: Some(events / 3),
        duration_ms: i64::MAX / 4,
        ..SimConfig::default()
    };
    for event in delivery_app::sim::Simulation::new(sim) {
        sink.send(event).await;
    }
    sink.finish().await.unwrap();
    let mut shards = Vec::new();
    for shard in kcl::stream::list_shards(&clients.kinesis, stream)
        .await
        .unwrap()
    {
        let records: Vec<ParsedRecord> = read_shard(&clients.kinesis, stream, &shard.shard_id)
            .await
            .into_iter()
            .map(|r| ParsedRecord {
                position: r.extended_sequence_number(),
                parsed: delivery_app::events::parse(&r.data),
                partition_key: r.partition_key,
                raw: r.data,
            })
            .collect();
        shards.push((shard.shard_id, records));
    }
    let store = Arc::new(StatsStore::new(clients.dynamodb.clone(), app));
    store.ensure_tables().await.unwrap();
    let leases = DynamoLeaseStore::new(clients.dynamodb.clone(), app);
    leases.ensure_tables().await.unwrap();
    let owner = LeaseOwnership {
        worker_id: "bound".into(),
        epoch: 1,
    };
    let mut loops = Vec::new();
    for (shard_id, records) in shards {
        let mut lease = Lease::new(
            shard_id.clone(),
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        );
        lease.owner = Some(owner.worker_id.clone());
        lease.counter = owner.epoch;
        lease.epoch = Some(owner.epoch);
        leases.create_lease(&lease).await.unwrap();
        loops.push((shard_id, records));
    }
    let total: usize = loops.iter().map(|(_, r)| r.len()).sum();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = loops
        .into_iter()
        .map(|(shard_id, mut records)| {
            let (store, owner) = (Arc::clone(&store), owner.clone());
            tokio::spawn(async move {
                let mut states = HashMap::new();
                for r in &records {
                    if let Ok(event) = &r.parsed {
                        states.entry(event.order_id().to_string()).or_insert(None);
                    }
                }
                let mut limits = PlanLimits::default();
                let mut regions = BTreeMap::new();
                let mut watermark: Option<ExtendedSequenceNumber> = None;
                let mut transactions = 0;
                let mut held = HeldOrders::default();
                while !records.is_empty() {
                    let (chunk, settled) =
                        held.plan_chunk(&shard_id, &records, &states, &limits, &HashMap::new());
                    for (region, n) in &chunk.delta.regions {
                        *regions.entry(*region).or_default() += n;
                    }
                    store
                        .apply(&shard_id, watermark.as_ref(), &regions, &chunk, &owner)
                        .await
                        .unwrap();
                    transactions += 1;
                    held.commit(settled);
                    limits.stored.add(&chunk.delta.sums);
                    watermark = Some(chunk.last.clone());
                    records.drain(..chunk.records);
                    states.extend(chunk.after);
                }
                transactions
            })
        })
        .collect();
    let mut transactions = 0;
    for task in tasks {
        transactions += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let stored = store.read().await.unwrap();
    assert_eq!(
        stored.totals.sums.events + stored.totals.dead_letters.values().sum::<u64>(),
        total as u64,
        "every event applied or dead-lettered"
    );
    aws.shutdown().await;
    (rate(total as u64, elapsed), transactions)
}

/// Every user record of a shard, from its start until GetRecords reaches its tip.
async fn read_shard(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
) -> Vec<kcl::KinesisClientRecord> {
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard_id)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator;
    let mut records = Vec::new();
    while let Some(it) = iterator {
        let page = kinesis
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap();
        let empty = page.records.is_empty();
        records.extend(kcl::retrieval::deaggregate_records(page.records, None).records);
        if empty && page.millis_behind_latest == Some(0) {
            break;
        }
        iterator = page.next_shard_iterator;
    }
    records
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let events = env_u64("DELIVERY_BENCH_EVENTS", 60_000);
    let target = env_u64("DELIVERY_BENCH_RATE", 5_000) as f64;
    println!(
        "delivery end to end on the embedded local AWS: 4 shards, 3 worker processes, \
         {events} events of ~368 bytes per run, statistics checked against the ground truth"
    );
    let mut exact = true;
    // One sample per run: 1 when its statistics equal the ground truth.
    let mut exact_runs = Vec::new();
    let runs = std::env::var("DELIVERY_BENCH_RUNS")
        .unwrap_or_else(|_| "bound,alone,unpaced,paced,balance".into());
    let wanted = |name: &str| runs.split(',').any(|r| r.trim() == name);

    // The bound first: the end-to-end run of this invocation is divided by it.
    let bound = if wanted("bound") {
        let (per_sec, transactions) = bound_run(events).await;
        println!(
            "  bound: statistics transactions alone, 4 shard loops straight to DynamoDB: {per_sec:.0} events/s ({transactions} transactions)"
        );
        result_line(
            "bound",
            "bound: the statistics transactions alone (4 shard loops straight to DynamoDB, no Kinesis, no kcl-rs)",
            "events/s",
            &[per_sec],
            None,
        );
        Some(per_sec)
    } else {
        None
    };

    if wanted("alone") {
        let alone = run("alone", events, Mode::ConsumersAlone).await;
        exact &= alone.comparison.matches;
        exact_runs.push(f64::from(u8::from(alone.comparison.matches)));
        println!(
            "  consumers alone (stream filled first): {} events applied in {:.2}s = {:.0} events/s (incl. worker start-up); exact: {}",
            alone.truth.records,
            alone.consume_time.as_secs_f64(),
            rate(alone.truth.records, alone.consume_time),
            alone.comparison.matches
        );
        result_line(
            "consumers_alone",
            "consumers alone (stream filled first), incl. worker start-up",
            "events/s",
            &[rate(alone.truth.records, alone.consume_time)],
            None,
        );
    }

    if wanted("unpaced") {
        let unpaced = run("unpaced", events, Mode::Unpaced).await;
        exact &= unpaced.comparison.matches;
        exact_runs.push(f64::from(u8::from(unpaced.comparison.matches)));
        println!(
            "  end to end, unpaced: put in {:.2}s ({:.0}/s), statistics complete after {:.2}s = {:.0} events/s sustained; exact: {}",
            unpaced.produce_time.as_secs_f64(),
            rate(unpaced.truth.records, unpaced.produce_time),
            unpaced.end_to_end_time.as_secs_f64(),
            rate(unpaced.truth.records, unpaced.end_to_end_time),
            unpaced.comparison.matches
        );
        result_line(
            "end_to_end",
            "end to end, unpaced: first put → statistics reflect the last event",
            "events/s",
            &[rate(unpaced.truth.records, unpaced.end_to_end_time)],
            Some((">=", 5000.0, "≥ 5,000 events/s end to end")),
        );
        if let Some(bound) = bound {
            result_line(
                "end_to_end_of_bound",
                "end to end, unpaced / the bound of the statistics transactions (same invocation)",
                "× bound",
                &[rate(unpaced.truth.records, unpaced.end_to_end_time) / bound],
                Some((">=", 0.9, "≥ 0.9× the bound")),
            );
        }
        result_line(
            "unpaced_put",
            "end to end, unpaced: put rate",
            "events/s",
            &[rate(unpaced.truth.records, unpaced.produce_time)],
            None,
        );
    }

    if wanted("paced") {
        let paced = run("paced", events, Mode::Paced(target)).await;
        exact &= paced.comparison.matches;
        exact_runs.push(f64::from(u8::from(paced.comparison.matches)));
        println!(
            "  paced at {target:.0} events/s: put in {:.2}s ({:.0}/s), statistics complete after {:.2}s; exact: {}",
            paced.produce_time.as_secs_f64(),
            rate(paced.truth.records, paced.produce_time),
            paced.end_to_end_time.as_secs_f64(),
            paced.comparison.matches
        );
        println!(
            "  latency put -> reflected in stats ({} events): median {}, p90 {}, p99 {}, max {}",
            paced.latencies.len(),
            ms(percentile(&paced.latencies, 50.0)),
            ms(percentile(&paced.latencies, 90.0)),
            ms(percentile(&paced.latencies, 99.0)),
            ms(percentile(&paced.latencies, 100.0)),
        );
        result_line(
            "paced_put",
            &format!("paced at {target:.0} events/s: put rate achieved"),
            "events/s",
            &[rate(paced.truth.records, paced.produce_time)],
            None,
        );
        for (name, p) in [
            ("median", 50.0),
            ("p90", 90.0),
            ("p99", 99.0),
            ("max", 100.0),
        ] {
            result_line(
                &format!("latency_{name}"),
                &format!("latency put → reflected in stats at {target:.0} events/s, {name}"),
                "ms",
                &[percentile(&paced.latencies, p).as_secs_f64() * 1000.0],
                None,
            );
        }
    }
    if wanted("cost") {
        let (report, _, usage) = run_metered("cost", events, Mode::Cost).await;
        exact &= report.comparison.matches;
        exact_runs.push(f64::from(u8::from(report.comparison.matches)));
        cost_figures(&report, &usage.expect("metered"), "bench-cost-stats", 4);
    }
    if wanted("balance") {
        let rate = env_u64("DELIVERY_BENCH_BALANCE_RATE", 2_000) as f64;
        let secs = env_u64("DELIVERY_BENCH_BALANCE_SECS", 90) as f64;
        for (name, flag) in [("count", BalanceFlag::Count), ("load", BalanceFlag::Load)] {
            let (report, samples) = run_sampled(
                &format!("balance-{name}"),
                (rate * secs) as u64,
                Mode::Balance(rate, flag),
            )
            .await;
            exact &= report.comparison.matches;
            exact_runs.push(f64::from(u8::from(report.comparison.matches)));
            let (ratio, moves) = balance_figures(&samples, report.produce_time.as_secs_f64(), 4);
            println!(
                "  region keys, 8 uneven shards, 4 workers, {rate:.0} events/s, {name} balancing: busiest/mean records/s {ratio:.2} (median after the first third), {moves:.1} lease moves/min; exact: {}",
                report.comparison.matches
            );
            result_line(
                &format!("balance_{name}_ratio"),
                &format!(
                    "region keys, 8 uneven shards, 4 workers: busiest worker's records/s / mean, {name} balancing"
                ),
                "× mean",
                &[ratio],
                (name == "load").then_some(("<=", 1.2, "≤ 1.2")),
            );
            result_line(
                &format!("balance_{name}_moves"),
                &format!(
                    "region keys, 8 uneven shards, 4 workers: lease moves per minute after convergence, {name} balancing"
                ),
                "moves/min",
                &[moves],
                (name == "load").then_some(("<=", 0.0, "0")),
            );
        }
    }
    if !exact_runs.is_empty() {
        result_line(
            "exact",
            "statistics equal the ground truth (1 per run that matched)",
            "exact",
            &exact_runs,
            Some((">=", 1.0, "every run exact")),
        );
    }
    if !exact {
        eprintln!("the statistics differ from the ground truth");
        std::process::exit(1);
    }
}
