//! Metric handles for kcl-rs and the producer: the [`metrics`](https://docs.rs/metrics)
//! facade's `Counter`, `Gauge` and `Histogram` with the `metrics` feature, stand-ins
//! that do nothing without it, so the recording code is the same either way.
//!
//! Counters and histograms are registered once (per shard consumer, per worker, per
//! producer) and updated on the hot path: with no recorder installed an update costs
//! an atomic load. A [`Gauge`] is looked up in the recorder at every `set` instead
//! (gauges are set once per batch or cycle, not per record): an exporter that drops
//! gauges left idle (Prometheus's `idle_timeout`, so that a shard's gauge leaves the
//! worker that stopped reading it) gets the gauge back at its next `set`, where a
//! cached handle would keep writing to the dropped one.
//!
//! ```
//! use kinesis_core::metrics::{Counter, counter};
//!
//! let calls: Counter = counter("example_calls_total", &[("stream", "orders")]);
//! calls.increment(1); // recorded by the installed recorder, if any
//! Counter::noop().increment(1); // never recorded
//! ```

#[cfg(feature = "metrics")]
pub use metrics::{Counter, Histogram};

#[cfg(not(feature = "metrics"))]
pub use noop::{Counter, Gauge, Histogram};

#[cfg(feature = "metrics")]
pub use live::Gauge;

/// The gauge resolved at every `set`.
#[cfg(feature = "metrics")]
mod live {
    static METADATA: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

    /// A gauge, looked up in the installed recorder at every [`set`](Gauge::set): one
    /// the recorder dropped for being idle comes back at the next `set`.
    #[derive(Clone, Debug, Default)]
    pub struct Gauge {
        /// `None`: records nothing.
        key: Option<metrics::Key>,
    }

    impl Gauge {
        /// The gauge `key`.
        pub(super) fn new(key: metrics::Key) -> Gauge {
            Gauge { key: Some(key) }
        }

        /// A handle that records nothing.
        pub fn noop() -> Gauge {
            Gauge { key: None }
        }

        /// Sets the gauge, through the recorder installed now.
        pub fn set(&self, value: f64) {
            if let Some(key) = &self.key {
                metrics::with_recorder(|r| r.register_gauge(key, &METADATA).set(value));
            }
        }
    }
}

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

/// The gauge `name` with `labels`, looked up in the recorder installed at each `set`.
pub fn gauge(name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
    #[cfg(feature = "metrics")]
    {
        Gauge::new(metrics::Key::from_parts(name, self::labels(labels)))
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

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{Key, KeyName, Metadata, Recorder, SharedString};

    use super::*;

    /// A recorder that keeps its gauges until told to forget them all, as an exporter
    /// drops idle gauges.
    #[derive(Default)]
    struct Forgetful {
        gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    }

    impl Forgetful {
        fn value(&self, name: &str) -> Option<f64> {
            let gauges = self.gauges.lock().unwrap();
            let (_, cell) = gauges.iter().find(|(k, _)| k.name() == name)?;
            Some(f64::from_bits(cell.load(Ordering::SeqCst)))
        }

        fn forget(&self) {
            self.gauges.lock().unwrap().clear();
        }
    }

    impl Recorder for Forgetful {
        fn describe_counter(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            let mut gauges = self.gauges.lock().unwrap();
            metrics::Gauge::from_arc(Arc::clone(gauges.entry(key.clone()).or_default()))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn a_gauge_the_recorder_dropped_comes_back_at_its_next_set() {
        let recorder = Forgetful::default();
        metrics::with_local_recorder(&recorder, || {
            let lag = gauge("lag", &[("shard", "shardId-000000000001")]);
            lag.set(5.0);
            assert_eq!(recorder.value("lag"), Some(5.0));
            recorder.forget();
            assert_eq!(recorder.value("lag"), None);
            lag.set(7.0);
            assert_eq!(recorder.value("lag"), Some(7.0));
            Gauge::noop().set(1.0);
            assert_eq!(
                recorder.gauges.lock().unwrap().len(),
                1,
                "noop records nothing"
            );
        });
    }
}
