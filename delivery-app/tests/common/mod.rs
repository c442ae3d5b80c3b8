//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use delivery_app::scenario::{Narrator, ScenarioConfig, ScenarioReport, Step};
use delivery_app::sim::{KeyStrategy, SimConfig};
use kcl::local::LocalAws;
use kcl::local::testing::unique;

/// Messages of the scenario, prefixed with the test's name, on stderr.
pub fn narrator(test: &'static str) -> Narrator {
    Arc::new(move |line: &str| eprintln!("[{test}] {line}"))
}

/// A scenario of about `orders` orders produced over about `seconds` real seconds,
/// with 3 worker processes on a 3-shard stream.
pub fn scenario(
    aws: &LocalAws,
    orders: u64,
    seconds: f64,
    keys: KeyStrategy,
    bad_events: u64,
    steps: Vec<(f64, Step)>,
) -> ScenarioConfig {
    let sim = SimConfig {
        seed: 7,
        duration_ms: (orders as f64 * 90.0) as i64,
        keys,
        bad_events,
        ..SimConfig::default()
    };
    let speed = sim.duration_ms as f64 / 1000.0 / seconds;
    ScenarioConfig {
        exe: env!("CARGO_BIN_EXE_delivery-app").into(),
        endpoints: aws.endpoints(),
        stream: unique("deliveries"),
        app: unique("delivery-stats"),
        shards: 3,
        workers: 3,
        failover: Duration::from_secs(3),
        poll: Duration::from_millis(100),
        sim,
        speed: Some(speed),
        steps,
        autoscale: None,
        live_every: None,
        log_dir: None,
        settle_timeout: Duration::from_secs(90),
        track_latency: false,
        workers_after_production: false,
        audit_dir: None,
        local_aws: None,
    }
}

/// Fails with the differences when the statistics are not exactly the ground truth.
pub fn assert_exact(report: &ScenarioReport) {
    assert!(
        report.comparison.matches,
        "statistics differ from the ground truth in {:?}\nstatistics: {:#?}\nground truth: {:#?}\ndead letters: {:?} vs {:?}\nactions: {:?}\nsome dead letters: {:#?}",
        report.comparison.differences,
        report.stats.totals.summary(),
        report.truth.summary,
        report.stats.totals.dead_letters,
        report.truth.dead_letters,
        report.actions,
        report.unexpected_dead_letters,
    );
}
