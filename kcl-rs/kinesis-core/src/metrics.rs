//! Metric handles for kcl-rs and the producer: the [`metrics`](https://docs.rs/metrics)
//! facade's `Counter`, `Gauge` and `Histogram` with the `metrics` feature, stand-ins
//! that do nothing without it, so the recording code is the same either way.
//!
//! Handles are registered once (per shard consumer, per worker, per producer) and
//! updated on the hot path: with no recorder installed an update costs an atomic load.
//!
//! ```
//! use kinesis_core::metrics::{Counter, counter};
//!
//! let calls: Counter = counter("example_calls_total", &[("stream", "orders")]);
//! calls.increment(1); // recorded by the installed recorder, if any
//! Counter::noop().increment(1); // never recorded
//! ```

#[cfg(feature = "metrics")]
pub use metrics::{Counter, Gauge, Histogram};

#[cfg(not(feature = "metrics"))]
pub use noop::{Counter, Gauge, Histogram};

/// Stand-ins with the facade's methods, doing nothing.
#[cfg(not(feature = "metrics"))]
mod noop {
    /// A counter that records nothing.
    #[derive(Clone, Debug, Default)]
    pub struct Counter;
    impl Counter {
        /// A handle that records nothing.
        pub fn noop() -> Counter {
            Counter
        }
        /// Does nothing.
        pub fn increment(&self, _: u64) {}
    }
    /// A gauge that records nothing.
    #[derive(Clone, Debug, Default)]
    pub struct Gauge;
    impl Gauge {
        /// A handle that records nothing.
        pub fn noop() -> Gauge {
            Gauge
        }
        /// Does nothing.
        pub fn set(&self, _: f64) {}
    }
    /// A histogram that records nothing.
    #[derive(Clone, Debug, Default)]
    pub struct Histogram;
    impl Histogram {
        /// A handle that records nothing.
        pub fn noop() -> Histogram {
            Histogram
        }
        /// Does nothing.
        pub fn record(&self, _: f64) {}
    }
}

#[cfg(feature = "metrics")]
fn labels(pairs: &[(&'static str, &str)]) -> Vec<metrics::Label> {
    pairs
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.to_string()))
        .collect()
}

/// The counter `name` with `labels`, from the installed recorder.
pub fn counter(name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(name, self::labels(labels))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, labels);
        Counter
    }
}

/// The gauge `name` with `labels`, from the installed recorder.
pub fn gauge(name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!(name, self::labels(labels))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, labels);
        Gauge
    }
}

/// The histogram `name` with `labels`, from the installed recorder.
pub fn histogram(name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!(name, self::labels(labels))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, labels);
        Histogram
    }
}

/// One metric's name, kind, unit and help text: what [`describe`] tells the recorder.
#[derive(Clone, Copy, Debug)]
pub struct Description {
    /// The name.
    pub name: &'static str,
    /// The kind.
    pub kind: Kind,
    /// What one unit is.
    pub unit: Unit,
    /// What it means.
    pub help: &'static str,
}

impl Description {
    /// A description, for `const` tables.
    pub const fn new(name: &'static str, kind: Kind, unit: Unit, help: &'static str) -> Self {
        Description {
            name,
            kind,
            unit,
            help,
        }
    }
}

/// A metric's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A current value.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// A metric's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A count of things.
    Count,
    /// Bytes.
    Bytes,
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Milliseconds,
}

/// Describes `metrics` (unit and help text) to the installed recorder, for exporters
/// that print them. Without the `metrics` feature it does nothing.
pub fn describe(metrics: &[Description]) {
    #[cfg(feature = "metrics")]
    for d in metrics {
        let unit = match d.unit {
            Unit::Count => metrics::Unit::Count,
            Unit::Bytes => metrics::Unit::Bytes,
            Unit::Seconds => metrics::Unit::Seconds,
            Unit::Milliseconds => metrics::Unit::Milliseconds,
        };
        match d.kind {
            Kind::Counter => metrics::describe_counter!(d.name, unit, d.help),
            Kind::Gauge => metrics::describe_gauge!(d.name, unit, d.help),
            Kind::Histogram => metrics::describe_histogram!(d.name, unit, d.help),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = metrics;
}
