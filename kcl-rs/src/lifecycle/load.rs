//! Smoothed per-shard throughput, reported on the lease at renewal.

use std::time::{Duration, Instant};

use crate::leases::ShardLoad;

/// Exponentially smoothed records/s and bytes/s over windows of at least one second.
#[derive(Debug)]
pub(crate) struct LoadMeter {
    window_start: Instant,
    records: u64,
    bytes: u64,
    load: Option<ShardLoad>,
}

const WINDOW: Duration = Duration::from_secs(1);
/// Weight of the newest window: about a 5-second memory.
const ALPHA: f64 = 0.3;

impl LoadMeter {
    pub(crate) fn new(now: Instant) -> LoadMeter {
        LoadMeter {
            window_start: now,
            records: 0,
            bytes: 0,
            load: None,
        }
    }

    /// Adds a batch; returns the new smoothed load when a window closed.
    pub(crate) fn record(
        &mut self,
        records: usize,
        bytes: usize,
        millis_behind_latest: Option<i64>,
        now: Instant,
    ) -> Option<ShardLoad> {
        self.records += records as u64;
        self.bytes += bytes as u64;
        let elapsed = now.duration_since(self.window_start);
        if elapsed < WINDOW {
            return None;
        }
        let secs = elapsed.as_secs_f64();
        let (rps, bps) = (self.records as f64 / secs, self.bytes as f64 / secs);
        let load = match self.load {
            None => ShardLoad {
                records_per_sec: rps,
                bytes_per_sec: bps,
                millis_behind_latest: millis_behind_latest.unwrap_or(0),
            },
            Some(prev) => ShardLoad {
                records_per_sec: prev.records_per_sec + ALPHA * (rps - prev.records_per_sec),
                bytes_per_sec: prev.bytes_per_sec + ALPHA * (bps - prev.bytes_per_sec),
                millis_behind_latest: millis_behind_latest.unwrap_or(prev.millis_behind_latest),
            },
        };
        self.load = Some(load);
        self.window_start = now;
        self.records = 0;
        self.bytes = 0;
        Some(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooths_over_windows() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::new(t0);
        assert_eq!(
            meter.record(100, 1000, Some(5), t0 + Duration::from_millis(500)),
            None
        );
        let first = meter.record(100, 1000, Some(7), t0 + WINDOW).unwrap();
        assert_eq!(first.records_per_sec, 200.0);
        assert_eq!(first.bytes_per_sec, 2000.0);
        assert_eq!(first.millis_behind_latest, 7);
        let second = meter.record(0, 0, None, t0 + 2 * WINDOW).unwrap();
        assert!((second.records_per_sec - 140.0).abs() < 1e-9);
        assert_eq!(second.millis_behind_latest, 7);
    }
}
