//! End-to-end benchmark of the delivery application on the embedded local AWS:
//! the simulator through the producer into a 4-shard stream, 3 statistics worker
//! processes, statistics checked exactly against the ground truth.
//!
//! 1. Consumers alone: the stream is filled first, then the workers start; events/s
//!    from their start until the statistics reflect the last event.
//! 2. End to end, unpaced: events put as fast as the producer takes them while the
//!    workers run; events/s from the first put until the statistics reflect the last.
//! 3. Latency: events paced at a target rate (default 5,000/s); for every event, the
//!    time from `put` until the statistics reflect it (its shard's watermark passed it),
//!    median and p99.
//!
//! `cargo bench --workspace --bench delivery`
//! Environment: `DELIVERY_BENCH_EVENTS` (default 60000) events per run,
//! `DELIVERY_BENCH_RATE` (default 5000) events/s of the paced run,
//! `DELIVERY_BENCH_RUNS` (default `alone,unpaced,paced`) which runs to do.
//!
//! Besides the human lines, one `BENCH {json}` line per figure for `.ci/bench-report`.

use std::sync::Arc;
use std::time::Duration;

use delivery_app::scenario::{self, ScenarioConfig, ScenarioReport, percentile};
use delivery_app::sim::{KeyStrategy, SimConfig};
use delivery_app::worker::Retrieval;
use kcl_local::{LocalAws, LocalAwsOptions};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Simulated events per simulated second at the default order rate (3 per order).
const SIM_EVENTS_PER_SEC: f64 = 3.0 * 1000.0 / 90.0;

enum Mode {
    ConsumersAlone,
    Unpaced,
    Paced(f64),
}

async fn run(name: &str, events: u64, mode: Mode) -> ScenarioReport {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let sim = SimConfig {
        seed: 2024,
        max_orders: Some(events / 3),
        duration_ms: i64::MAX / 4,
        keys: KeyStrategy::Order,
        ..SimConfig::default()
    };
    let config = ScenarioConfig {
        exe: env!("CARGO_BIN_EXE_delivery-app").into(),
        endpoints: aws.endpoints(),
        stream: format!("bench-{name}"),
        app: format!("bench-{name}-stats"),
        shards: 4,
        workers: 3,
        failover: Duration::from_secs(10),
        poll: Duration::from_millis(100),
        retrieval: Retrieval::Polling,
        sim,
        speed: match mode {
            Mode::Paced(rate) => Some(rate / SIM_EVENTS_PER_SEC),
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
        local_aws: None,
    };
    let say: scenario::Narrator = Arc::new(|_| {});
    let report = scenario::run(config, say).await.unwrap();
    aws.shutdown().await;
    report
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

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn rate(events: u64, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64()
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
    let runs =
        std::env::var("DELIVERY_BENCH_RUNS").unwrap_or_else(|_| "alone,unpaced,paced".into());
    let wanted = |name: &str| runs.split(',').any(|r| r.trim() == name);

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
