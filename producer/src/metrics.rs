//! Metrics, recorded through the [`metrics`](https://docs.rs/metrics) facade crate:
//! user records and Kinesis records put, PutRecords calls and their latency, failed
//! attempts by error code, expired records, buffering time, what is outstanding, and
//! throttling per shard. Names mirror the KPL's CloudWatch metrics where one exists;
//! the repository's `docs/metrics.md` lists each with its type, labels and meaning.
//!
//! Nothing is exported until the application installs a recorder; until then an update
//! costs an atomic load. The `metrics` feature (on by default) compiles it all out.
//!
//! ```
//! producer::metrics::describe(); // after installing a recorder
//! assert_eq!(producer::metrics::names::USER_RECORDS_PUT, "kpl_user_records_put_total");
//! ```

use std::collections::HashMap;

use kinesis_core::metrics::{
    Counter, Description, Gauge, Histogram, Kind, Unit, counter, gauge, histogram,
};

/// The metric names, as recorded. Every one is labelled `stream`.
pub mod names {
    /// Counter: user records written (KPL: `UserRecordsPut`).
    pub const USER_RECORDS_PUT: &str = "kpl_user_records_put_total";
    /// Counter: Kinesis records written, aggregated or not (KPL: `KinesisRecordsPut`).
    pub const KINESIS_RECORDS_PUT: &str = "kpl_kinesis_records_put_total";
    /// Counter, by `result` (`success`, `error`): PutRecords calls (KPL: `AllErrors`
    /// counts the errors).
    pub const PUT_RECORDS_CALLS: &str = "kpl_put_records_calls_total";
    /// Histogram, seconds: one PutRecords call (KPL: `Request Time`).
    pub const PUT_RECORDS_SECONDS: &str = "kpl_put_records_seconds";
    /// Counter, by `code`: failed attempts of Kinesis records (retried or not) by
    /// error code (KPL: `ErrorsByCode`).
    pub const ERRORS: &str = "kpl_errors_total";
    /// Counter: user records that expired before they were written (KPL:
    /// `UserRecordExpired`).
    pub const USER_RECORDS_EXPIRED: &str = "kpl_user_records_expired_total";
    /// Histogram, seconds: how long a Kinesis record's oldest user record waited in
    /// the buffers before a call took it (KPL: `BufferingTime`).
    pub const BUFFERING_SECONDS: &str = "kpl_buffering_seconds";
    /// Gauge: user records accepted and not yet resolved (KPL: `UserRecordsPending`).
    pub const USER_RECORDS_PENDING: &str = "kpl_user_records_pending";
    /// Gauge: bytes of those records.
    pub const USER_RECORD_BYTES_PENDING: &str = "kpl_user_record_bytes_pending";
    /// Counter, by `shard`: Kinesis records refused with
    /// `ProvisionedThroughputExceededException`, by the shard they were routed to.
    pub const THROTTLES: &str = "kpl_throttles_total";
}

/// Every metric the producer records: name, kind, unit, meaning.
pub const DESCRIPTIONS: &[Description] = &[
    Description::new(
        names::USER_RECORDS_PUT,
        Kind::Counter,
        Unit::Count,
        "User records written",
    ),
    Description::new(
        names::KINESIS_RECORDS_PUT,
        Kind::Counter,
        Unit::Count,
        "Kinesis records written, aggregated or not",
    ),
    Description::new(
        names::PUT_RECORDS_CALLS,
        Kind::Counter,
        Unit::Count,
        "PutRecords calls, by result",
    ),
    Description::new(
        names::PUT_RECORDS_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of one PutRecords call",
    ),
    Description::new(
        names::ERRORS,
        Kind::Counter,
        Unit::Count,
        "Failed attempts of Kinesis records, by error code",
    ),
    Description::new(
        names::USER_RECORDS_EXPIRED,
        Kind::Counter,
        Unit::Count,
        "User records that expired before they were written",
    ),
    Description::new(
        names::BUFFERING_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time a Kinesis record's oldest user record waited before its call",
    ),
    Description::new(
        names::USER_RECORDS_PENDING,
        Kind::Gauge,
        Unit::Count,
        "User records accepted and not yet resolved",
    ),
    Description::new(
        names::USER_RECORD_BYTES_PENDING,
        Kind::Gauge,
        Unit::Bytes,
        "Bytes of the user records accepted and not yet resolved",
    ),
    Description::new(
        names::THROTTLES,
        Kind::Counter,
        Unit::Count,
        "Kinesis records throttled, by shard",
    ),
];

/// Describes every metric (unit and help text) to the installed recorder: call it
/// once after installing one. Without the `metrics` feature it does nothing.
pub fn describe() {
    kinesis_core::metrics::describe(DESCRIPTIONS);
}

/// One producer's handles, labelled with its stream.
pub(crate) struct ProducerMetrics {
    stream: String,
    pub user_records_put: Counter,
    pub kinesis_records_put: Counter,
    pub calls_succeeded: Counter,
    pub calls_failed: Counter,
    pub call_seconds: Histogram,
    pub user_records_expired: Counter,
    pub buffering_seconds: Histogram,
    pub pending_records: Gauge,
    pub pending_bytes: Gauge,
    /// Failed attempts by error code.
    errors: HashMap<String, Counter>,
    /// Throttles by shard.
    throttles: HashMap<String, Counter>,
}

impl ProducerMetrics {
    pub fn new(stream: &str) -> ProducerMetrics {
        let l = [("stream", stream)];
        ProducerMetrics {
            stream: stream.to_string(),
            user_records_put: counter(names::USER_RECORDS_PUT, &l),
            kinesis_records_put: counter(names::KINESIS_RECORDS_PUT, &l),
            calls_succeeded: counter(
                names::PUT_RECORDS_CALLS,
                &[("stream", stream), ("result", "success")],
            ),
            calls_failed: counter(
                names::PUT_RECORDS_CALLS,
                &[("stream", stream), ("result", "error")],
            ),
            call_seconds: histogram(names::PUT_RECORDS_SECONDS, &l),
            user_records_expired: counter(names::USER_RECORDS_EXPIRED, &l),
            buffering_seconds: histogram(names::BUFFERING_SECONDS, &l),
            pending_records: gauge(names::USER_RECORDS_PENDING, &l),
            pending_bytes: gauge(names::USER_RECORD_BYTES_PENDING, &l),
            errors: HashMap::new(),
            throttles: HashMap::new(),
        }
    }

    /// A failed attempt of a Kinesis record with `code`.
    pub fn error(&mut self, code: &str) {
        let stream = &self.stream;
        count_by(&mut self.errors, code, || {
            counter(names::ERRORS, &[("stream", stream), ("code", code)])
        });
    }

    /// A Kinesis record throttled in `shard` (counted by [`ProducerMetrics::error`]
    /// too).
    pub fn throttled(&mut self, shard: &str) {
        let stream = &self.stream;
        count_by(&mut self.throttles, shard, || {
            counter(names::THROTTLES, &[("stream", stream), ("shard", shard)])
        });
    }
}

/// Adds one to the counter of `key`, registering it (`register`) the first time only:
/// a failure costs a map lookup, not a registration with labels built anew.
fn count_by(
    counters: &mut HashMap<String, Counter>,
    key: &str,
    register: impl FnOnce() -> Counter,
) {
    match counters.get(key) {
        Some(counter) => counter.increment(1),
        None => {
            let counter = register();
            counter.increment(1);
            counters.insert(key.to_string(), counter);
        }
    }
}
