//! Prometheus metrics of a delivery-app process (`--metrics-addr`): kcl-rs's and the
//! producer's, through the `metrics` facade, and the application's own: events
//! applied, dead letters by reason, redeliveries skipped, statistics transaction
//! latency and conflicts, and how far the applied records are behind their arrival.
//! `docs/metrics.md` lists every one.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use kinesis_core::metrics::{
    Counter, Description, Histogram, Kind, Unit, counter, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio_util::sync::CancellationToken;

use crate::events::Reason;

/// The application's metric names.
pub mod names {
    /// Counter, per `shard`: valid events applied to the statistics.
    pub const EVENTS_APPLIED: &str = "delivery_events_applied_total";
    /// Counter, per `shard` and `reason`: records dead-lettered.
    pub const DEAD_LETTERS: &str = "delivery_dead_letters_total";
    /// Counter, per `shard`: exact copies of applied or dead-lettered records skipped.
    pub const REDELIVERIES_SKIPPED: &str = "delivery_redeliveries_skipped_total";
    /// Histogram, per `shard`, seconds: one statistics transaction, sent to answered.
    pub const TRANSACTION_SECONDS: &str = "delivery_transaction_seconds";
    /// Counter, per `shard`: transactions cancelled by a condition (a stale plan),
    /// re-read and planned again.
    pub const TRANSACTION_CONFLICTS: &str = "delivery_transaction_conflicts_total";
    /// Gauge, per `shard`, seconds: from the arrival in Kinesis of the newest record
    /// applied to when it was applied.
    pub const WATERMARK_LAG: &str = "delivery_watermark_lag_seconds";
}

/// The application's metrics: name, kind, unit, meaning.
pub const DESCRIPTIONS: &[Description] = &[
    Description::new(
        names::EVENTS_APPLIED,
        Kind::Counter,
        Unit::Count,
        "Valid events applied to the statistics",
    ),
    Description::new(
        names::DEAD_LETTERS,
        Kind::Counter,
        Unit::Count,
        "Records dead-lettered, by reason",
    ),
    Description::new(
        names::REDELIVERIES_SKIPPED,
        Kind::Counter,
        Unit::Count,
        "Exact copies of applied or dead-lettered records skipped",
    ),
    Description::new(
        names::TRANSACTION_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of one statistics transaction",
    ),
    Description::new(
        names::TRANSACTION_CONFLICTS,
        Kind::Counter,
        Unit::Count,
        "Statistics transactions cancelled by a condition and planned again",
    ),
    Description::new(
        names::WATERMARK_LAG,
        Kind::Gauge,
        Unit::Seconds,
        "From the newest applied record's arrival in Kinesis to its application",
    ),
];

/// One shard processor's handles.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    shard: String,
    events_applied: Counter,
    redeliveries_skipped: Counter,
    transaction_seconds: Histogram,
    transaction_conflicts: Counter,
    watermark_lag: kinesis_core::metrics::Gauge,
    /// The watermark lag last set, set again for batches with nothing to apply.
    last_lag: Option<f64>,
}

impl ShardMetrics {
    /// The handles of `shard`.
    pub fn new(shard: &str) -> ShardMetrics {
        let l = [("shard", shard)];
        ShardMetrics {
            shard: shard.to_string(),
            events_applied: counter(names::EVENTS_APPLIED, &l),
            redeliveries_skipped: counter(names::REDELIVERIES_SKIPPED, &l),
            transaction_seconds: histogram(names::TRANSACTION_SECONDS, &l),
            transaction_conflicts: counter(names::TRANSACTION_CONFLICTS, &l),
            watermark_lag: gauge(names::WATERMARK_LAG, &l),
            last_lag: None,
        }
    }

    /// A transaction answered after `took`.
    pub fn transaction(&self, took: Duration) {
        self.transaction_seconds.record(took.as_secs_f64());
    }

    /// A committed transaction's counts.
    pub fn applied<'a>(
        &self,
        events: u64,
        skipped: u64,
        dead_letters: impl IntoIterator<Item = (&'a Reason, &'a u64)>,
    ) {
        self.events_applied.increment(events);
        self.redeliveries_skipped.increment(skipped);
        for (reason, n) in dead_letters {
            counter(
                names::DEAD_LETTERS,
                &[("shard", &self.shard), ("reason", reason.as_str())],
            )
            .increment(*n);
        }
    }

    /// A transaction cancelled by a condition.
    pub fn conflict(&self) {
        self.transaction_conflicts.increment(1);
    }

    /// A batch was applied whose newest record arrived in Kinesis at `arrival`, or
    /// with no record (`None`): the lag stays what the last record applied gave, and is
    /// set again so that it stays in the output while this worker reads the shard.
    pub fn applied_up_to(&mut self, arrival: Option<SystemTime>) {
        if let Some(arrival) = arrival {
            let lag = SystemTime::now()
                .duration_since(arrival)
                .unwrap_or_default();
            self.last_lag = Some(lag.as_secs_f64());
        }
        if let Some(lag) = self.last_lag {
            self.watermark_lag.set(lag);
        }
    }
}

/// How long a gauge stays in the output without being set, for a worker whose leases
/// fail over after `failover`: three failover times. A worker sets every gauge of a
/// shard it reads at each read (kcl-rs's lag at least every poll, this application's
/// watermark lag at every batch, empty ones included) and its own gauges at least every
/// taking cycle, all far more often; a worker that has not renewed a lease for one
/// failover time has lost it. So the gauges of a shard whose lease moved to another
/// worker leave this worker's output instead of showing their last value for ever.
pub fn gauge_idle_timeout(failover: Duration) -> Duration {
    failover * 3
}

/// Installs the Prometheus recorder for this process (once; later calls reuse it,
/// with the first call's `gauge_idle`: see [`gauge_idle_timeout`]; `None` keeps every
/// gauge) and serves `GET /metrics` on `addr` until `cancel`. Returns the address bound
/// (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    gauge_idle: Option<Duration>,
    cancel: CancellationToken,
) -> Result<SocketAddr, String> {
    let handle = install(gauge_idle)?;
    let render = handle.clone();
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = render.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    );
    let bound = crate::http::serve("metrics", addr, router, cancel.clone()).await?;
    // Histograms are summarised in buckets that need a periodic drain.
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => handle.run_upkeep(),
            }
        }
    });
    Ok(bound)
}

/// The process's Prometheus recorder, installed on first use.
fn install(gauge_idle: Option<Duration>) -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Gauges only: counters and histograms of a shard read before stay right.
            let recorder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, gauge_idle)
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            kcl::metrics::describe();
            producer::metrics::describe();
            kinesis_core::metrics::describe(DESCRIPTIONS);
            Ok(handle)
        })
        .clone()
}
