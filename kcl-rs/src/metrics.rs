//! Metrics, recorded through the [`metrics`](https://docs.rs/metrics) facade crate.
//!
//! kcl-rs records per-shard lag, records and bytes processed, `process_records` time,
//! retrieval calls (GetRecords or SubscribeToShard) with their latency and throttles,
//! expired iterators; per worker its leases (held, taken, lost, released, still to
//! take), renewal and take latency and failures, live workers; checkpoints; shard-sync
//! runs and the leases they create and delete. The names mirror the Java KCL's
//! CloudWatch metrics where one exists; every one is listed with its type, labels and
//! meaning in the repository's `docs/metrics.md`, and its name is a constant in
//! [`names`].
//!
//! Nothing is exported until the application installs a recorder (for example
//! `metrics-exporter-prometheus`); until then an update costs an atomic load. The
//! handles are registered once per shard consumer and per worker, never per record.
//!
//! A shard's gauge stops being set when its lease leaves the worker. Install the
//! exporter with an idle timeout for gauges (a few failover times; Prometheus:
//! `idle_timeout(MetricKindMask::GAUGE, ...)`) so that it leaves this worker's output
//! instead of showing its last value beside the new owner's: while the worker reads the
//! shard, the lag is set at every read and the worker's own gauges at every renewal and
//! taking cycle. Gauges are looked up in the recorder at every set, so one dropped
//! while idle comes back.
//! The `metrics` feature (on by default) compiles all of this out when turned off.
//!
//! ```
//! // After installing a recorder (for example metrics-exporter-prometheus's):
//! kcl::metrics::describe();
//! assert_eq!(kcl::metrics::names::RECORDS_PROCESSED, "kcl_records_processed_total");
//! assert!(kcl::metrics::DESCRIPTIONS.iter().any(|d| d.name == "kcl_millis_behind_latest"));
//! ```

/// The metric names, as recorded.
pub mod names {
    /// Gauge, per shard: how far the last batch read was behind the stream's tip, in
    /// milliseconds (Java KCL: `MillisBehindLatest`).
    pub const MILLIS_BEHIND_LATEST: &str = "kcl_millis_behind_latest";
    /// Counter, per shard: user records given to `process_records` (Java KCL:
    /// `RecordsProcessed`).
    pub const RECORDS_PROCESSED: &str = "kcl_records_processed_total";
    /// Counter, per shard: bytes of those records (Java KCL: `DataBytesProcessed`).
    pub const BYTES_PROCESSED: &str = "kcl_bytes_processed_total";
    /// Histogram, per shard, seconds: one `process_records` call (Java KCL:
    /// `RecordProcessor.processRecords.Time`).
    pub const PROCESS_RECORDS_SECONDS: &str = "kcl_process_records_seconds";
    /// Counter, per shard and `operation` (`GetRecords`, `SubscribeToShard`), by
    /// `result` (`success`, `throttled`, `error`): retrieval calls (Java KCL:
    /// `GetRecords.Success`).
    pub const RETRIEVAL_CALLS: &str = "kcl_retrieval_calls_total";
    /// Histogram, per shard and `operation`, seconds: a successful retrieval call
    /// (Java KCL: `GetRecords.Time`).
    pub const RETRIEVAL_SECONDS: &str = "kcl_retrieval_seconds";
    /// Counter, per shard: shard iterators that expired and were acquired again.
    pub const EXPIRED_ITERATORS: &str = "kcl_expired_iterators_total";
    /// Counter, per shard: fan-out subscriptions replaced by the watchdog after
    /// delivering nothing for `subscription_timeout`.
    pub const SUBSCRIPTION_TIMEOUTS: &str = "kcl_subscription_timeouts_total";
    /// Gauge, per worker: leases held (Java KCL: `CurrentLeases`).
    pub const CURRENT_LEASES: &str = "kcl_current_leases";
    /// Counter, per worker: leases taken, free, expired or handed over (Java KCL:
    /// `TakenLeases`).
    pub const LEASES_TAKEN: &str = "kcl_leases_taken_total";
    /// Counter, per worker: leases lost other than by a handoff or release: taken
    /// over, expired because renewals failed, deleted (Java KCL: `LostLeases`).
    pub const LEASES_LOST: &str = "kcl_leases_lost_total";
    /// Counter, per worker: leases given up gracefully (handed over or released).
    pub const LEASES_RELEASED: &str = "kcl_leases_released_total";
    /// Gauge, per worker: leases the last taking cycle wanted beyond those held
    /// (Java KCL: `NeededLeases`).
    pub const LEASES_TO_TAKE: &str = "kcl_leases_to_take";
    /// Histogram, per worker, seconds: one lease renewal (Java KCL:
    /// `RenewAllLeases.Time`, per lease here).
    pub const LEASE_RENEWAL_SECONDS: &str = "kcl_lease_renewal_seconds";
    /// Counter, per worker: renewals that failed (and were retried, or lost the
    /// lease).
    pub const LEASE_RENEWAL_FAILURES: &str = "kcl_lease_renewal_failures_total";
    /// Histogram, per worker, seconds: one take (a conditional write of the lease).
    pub const LEASE_TAKE_SECONDS: &str = "kcl_lease_take_seconds";
    /// Counter, per worker: takes that failed (a race lost or an error).
    pub const LEASE_TAKE_FAILURES: &str = "kcl_lease_take_failures_total";
    /// Gauge, per worker: workers in the group as this worker last saw it (Java KCL:
    /// `NumWorkers`).
    pub const LIVE_WORKERS: &str = "kcl_live_workers";
    /// Counter, per shard, by `result` (`success`, `failure`): checkpoints written.
    pub const CHECKPOINTS: &str = "kcl_checkpoints_total";
    /// Counter, per stream and worker: shard-sync runs (Java KCL:
    /// `ShardSyncTask`).
    pub const SHARD_SYNC_RUNS: &str = "kcl_shard_sync_runs_total";
    /// Counter, per stream and worker: leases created by shard sync.
    pub const LEASES_CREATED: &str = "kcl_shard_sync_leases_created_total";
    /// Counter, per stream and worker: leases of finished, trimmed shards deleted by
    /// shard sync.
    pub const LEASES_DELETED: &str = "kcl_shard_sync_leases_deleted_total";
}

use kinesis_core::metrics::{
    Counter, Description, Gauge, Histogram, Kind, Unit, counter, gauge, histogram,
};

/// Every metric kcl-rs records: name, kind, unit, meaning.
pub const DESCRIPTIONS: &[Description] = &[
    Description::new(
        names::MILLIS_BEHIND_LATEST,
        Kind::Gauge,
        Unit::Milliseconds,
        "How far the last batch read was behind the stream's tip",
    ),
    Description::new(
        names::RECORDS_PROCESSED,
        Kind::Counter,
        Unit::Count,
        "User records given to process_records",
    ),
    Description::new(
        names::BYTES_PROCESSED,
        Kind::Counter,
        Unit::Bytes,
        "Bytes of the user records given to process_records",
    ),
    Description::new(
        names::PROCESS_RECORDS_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of one process_records call",
    ),
    Description::new(
        names::RETRIEVAL_CALLS,
        Kind::Counter,
        Unit::Count,
        "GetRecords or SubscribeToShard calls, by result",
    ),
    Description::new(
        names::RETRIEVAL_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of one successful GetRecords or SubscribeToShard call",
    ),
    Description::new(
        names::EXPIRED_ITERATORS,
        Kind::Counter,
        Unit::Count,
        "Shard iterators that expired and were acquired again",
    ),
    Description::new(
        names::SUBSCRIPTION_TIMEOUTS,
        Kind::Counter,
        Unit::Count,
        "Fan-out subscriptions replaced after delivering nothing",
    ),
    Description::new(
        names::CURRENT_LEASES,
        Kind::Gauge,
        Unit::Count,
        "Leases held by the worker",
    ),
    Description::new(
        names::LEASES_TAKEN,
        Kind::Counter,
        Unit::Count,
        "Leases taken by the worker",
    ),
    Description::new(
        names::LEASES_LOST,
        Kind::Counter,
        Unit::Count,
        "Leases lost: taken over, expired or deleted",
    ),
    Description::new(
        names::LEASES_RELEASED,
        Kind::Counter,
        Unit::Count,
        "Leases handed over or released gracefully",
    ),
    Description::new(
        names::LEASES_TO_TAKE,
        Kind::Gauge,
        Unit::Count,
        "Leases the last taking cycle wanted beyond those held",
    ),
    Description::new(
        names::LEASE_RENEWAL_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of one lease renewal",
    ),
    Description::new(
        names::LEASE_RENEWAL_FAILURES,
        Kind::Counter,
        Unit::Count,
        "Lease renewals that failed",
    ),
    Description::new(
        names::LEASE_TAKE_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of one lease take",
    ),
    Description::new(
        names::LEASE_TAKE_FAILURES,
        Kind::Counter,
        Unit::Count,
        "Lease takes that failed",
    ),
    Description::new(
        names::LIVE_WORKERS,
        Kind::Gauge,
        Unit::Count,
        "Workers in the group as this worker last saw it",
    ),
    Description::new(
        names::CHECKPOINTS,
        Kind::Counter,
        Unit::Count,
        "Checkpoints written, by result",
    ),
    Description::new(
        names::SHARD_SYNC_RUNS,
        Kind::Counter,
        Unit::Count,
        "Shard-sync runs",
    ),
    Description::new(
        names::LEASES_CREATED,
        Kind::Counter,
        Unit::Count,
        "Leases created by shard sync",
    ),
    Description::new(
        names::LEASES_DELETED,
        Kind::Counter,
        Unit::Count,
        "Leases deleted by shard sync",
    ),
];

/// Describes every metric (unit and help text) to the installed recorder: call it
/// once after installing one, so that exporters that print help text (Prometheus)
/// have it. Without the `metrics` feature it does nothing.
pub fn describe() {
    kinesis_core::metrics::describe(DESCRIPTIONS);
}

/// One shard consumer's metrics, labelled `stream`, `shard`, `worker`.
#[derive(Clone, Debug)]
pub(crate) struct ShardMetrics {
    pub millis_behind_latest: Gauge,
    pub records_processed: Counter,
    pub bytes_processed: Counter,
    pub process_records_seconds: Histogram,
    pub expired_iterators: Counter,
    pub subscription_timeouts: Counter,
    pub checkpoints_succeeded: Counter,
    pub checkpoints_failed: Counter,
    pub calls: RetrievalCalls,
}

/// Retrieval calls of one shard, with one `operation` label.
#[derive(Clone, Debug)]
pub(crate) struct RetrievalCalls {
    pub succeeded: Counter,
    pub throttled: Counter,
    pub failed: Counter,
    pub seconds: Histogram,
}

impl RetrievalCalls {
    fn new(base: &[(&'static str, &str)], operation: &str) -> RetrievalCalls {
        let with = |result: &'static str| {
            let mut l = base.to_vec();
            l.push(("operation", operation));
            l.push(("result", result));
            l
        };
        let mut timed = base.to_vec();
        timed.push(("operation", operation));
        RetrievalCalls {
            succeeded: counter(names::RETRIEVAL_CALLS, &with("success")),
            throttled: counter(names::RETRIEVAL_CALLS, &with("throttled")),
            failed: counter(names::RETRIEVAL_CALLS, &with("error")),
            seconds: histogram(names::RETRIEVAL_SECONDS, &timed),
        }
    }

    /// A failed call: throttled or another error.
    pub fn failure(&self, throttled: bool) {
        if throttled {
            self.throttled.increment(1);
        } else {
            self.failed.increment(1);
        }
    }
}

impl ShardMetrics {
    /// The handles of `shard` of `stream` read by `worker` with `operation`
    /// (`GetRecords` or `SubscribeToShard`).
    pub fn new(stream: &str, shard: &str, worker: &str, operation: &str) -> ShardMetrics {
        let base = [("stream", stream), ("shard", shard), ("worker", worker)];
        let with_result = |result: &'static str| {
            let mut l = base.to_vec();
            l.push(("result", result));
            l
        };
        ShardMetrics {
            millis_behind_latest: gauge(names::MILLIS_BEHIND_LATEST, &base),
            records_processed: counter(names::RECORDS_PROCESSED, &base),
            bytes_processed: counter(names::BYTES_PROCESSED, &base),
            process_records_seconds: histogram(names::PROCESS_RECORDS_SECONDS, &base),
            expired_iterators: counter(names::EXPIRED_ITERATORS, &base),
            subscription_timeouts: counter(names::SUBSCRIPTION_TIMEOUTS, &base),
            checkpoints_succeeded: counter(names::CHECKPOINTS, &with_result("success")),
            checkpoints_failed: counter(names::CHECKPOINTS, &with_result("failure")),
            calls: RetrievalCalls::new(&base, operation),
        }
    }

    /// Handles that record nothing, whatever recorder is installed (readers built
    /// outside a worker: tests, benchmarks).
    pub fn detached() -> ShardMetrics {
        let (c, g, h) = (Counter::noop, Gauge::noop, Histogram::noop);
        ShardMetrics {
            millis_behind_latest: g(),
            records_processed: c(),
            bytes_processed: c(),
            process_records_seconds: h(),
            expired_iterators: c(),
            subscription_timeouts: c(),
            checkpoints_succeeded: c(),
            checkpoints_failed: c(),
            calls: RetrievalCalls {
                succeeded: c(),
                throttled: c(),
                failed: c(),
                seconds: h(),
            },
        }
    }
}

/// One worker's lease metrics, labelled `worker`.
#[derive(Clone, Debug)]
pub(crate) struct WorkerMetrics {
    pub current_leases: Gauge,
    pub leases_taken: Counter,
    pub leases_lost: Counter,
    pub leases_released: Counter,
    pub leases_to_take: Gauge,
    pub renewal_seconds: Histogram,
    pub renewal_failures: Counter,
    pub take_seconds: Histogram,
    pub take_failures: Counter,
    pub live_workers: Gauge,
}

impl WorkerMetrics {
    pub fn new(worker: &str) -> WorkerMetrics {
        let l = [("worker", worker)];
        WorkerMetrics {
            current_leases: gauge(names::CURRENT_LEASES, &l),
            leases_taken: counter(names::LEASES_TAKEN, &l),
            leases_lost: counter(names::LEASES_LOST, &l),
            leases_released: counter(names::LEASES_RELEASED, &l),
            leases_to_take: gauge(names::LEASES_TO_TAKE, &l),
            renewal_seconds: histogram(names::LEASE_RENEWAL_SECONDS, &l),
            renewal_failures: counter(names::LEASE_RENEWAL_FAILURES, &l),
            take_seconds: histogram(names::LEASE_TAKE_SECONDS, &l),
            take_failures: counter(names::LEASE_TAKE_FAILURES, &l),
            live_workers: gauge(names::LIVE_WORKERS, &l),
        }
    }
}

/// Shard sync's metrics, labelled `stream` and `worker`.
#[derive(Clone, Debug)]
pub(crate) struct SyncMetrics {
    pub runs: Counter,
    pub leases_created: Counter,
    pub leases_deleted: Counter,
}

impl SyncMetrics {
    pub fn new(stream: &str, worker: &str) -> SyncMetrics {
        let l = [("stream", stream), ("worker", worker)];
        SyncMetrics {
            runs: counter(names::SHARD_SYNC_RUNS, &l),
            leases_created: counter(names::LEASES_CREATED, &l),
            leases_deleted: counter(names::LEASES_DELETED, &l),
        }
    }
}
