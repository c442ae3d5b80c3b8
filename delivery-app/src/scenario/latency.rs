//! End-to-end latency: from `put` of an event to the moment the statistics reflect it,
//! i.e. the watermark of the shard it landed in has reached its position.

use std::collections::HashMap;
use std::time::Duration;

use kcl::checkpoint::ExtendedSequenceNumber;
use tokio::time::Instant;

use crate::sink::PutRecord;

/// Put records waiting to be reflected, and the latencies of those that were.
#[derive(Debug, Default)]
pub struct LatencyTracker {
    pending: HashMap<String, Vec<(ExtendedSequenceNumber, Instant)>>,
    /// One latency per reflected record, in the order they were resolved.
    pub samples: Vec<Duration>,
}

impl LatencyTracker {
    /// Adds acknowledged records.
    pub fn add(&mut self, records: Vec<PutRecord>) {
        for r in records {
            self.pending
                .entry(r.shard_id)
                .or_default()
                .push((r.position, r.put_at));
        }
    }

    /// Resolves every pending record at or before its shard's watermark, as of `now`.
    pub fn resolve(&mut self, watermarks: &HashMap<String, ExtendedSequenceNumber>, now: Instant) {
        for (shard, pending) in &mut self.pending {
            let Some(watermark) = watermarks.get(shard) else {
                continue;
            };
            let before = pending.len();
            pending.retain(|(position, put_at)| {
                let reflected = position.compare(watermark).is_le();
                if reflected {
                    self.samples.push(now.duration_since(*put_at));
                }
                !reflected
            });
            debug_assert!(pending.len() <= before);
        }
    }

    /// Records not reflected yet.
    pub fn pending(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }
}

/// The `p`-th percentile (0–100) of `samples` by nearest rank; zero when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_resolve_when_their_shard_passes_them() {
        let t0 = Instant::now();
        let put = |shard: &str, seq: &str, sub| PutRecord {
            put_at: t0,
            shard_id: shard.into(),
            position: ExtendedSequenceNumber::at(seq, sub),
        };
        let mut tracker = LatencyTracker::default();
        tracker.add(vec![
            put("a", "10", 0),
            put("a", "10", 1),
            put("a", "20", 0),
            put("b", "5", 0),
        ]);
        let marks = HashMap::from([("a".to_string(), ExtendedSequenceNumber::at("10", 1))]);
        tracker.resolve(&marks, t0 + Duration::from_millis(30));
        assert_eq!(tracker.samples, vec![Duration::from_millis(30); 2]);
        assert_eq!(tracker.pending(), 2);
        let marks = HashMap::from([
            ("a".to_string(), ExtendedSequenceNumber::at("20", 0)),
            ("b".to_string(), ExtendedSequenceNumber::at("9", 0)),
        ]);
        tracker.resolve(&marks, t0 + Duration::from_millis(50));
        assert_eq!(tracker.pending(), 0);
        assert_eq!(tracker.samples.len(), 4);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<_> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&samples, 50.0), ms(50));
        assert_eq!(percentile(&samples, 99.0), ms(99));
        assert_eq!(percentile(&samples, 100.0), ms(100));
        assert_eq!(percentile(&[ms(7)], 50.0), ms(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
