//! Which user records of a shard belong to it: the hash key ranges of a stream's shards
//! and the aggregates a producer with a stale shard map put in the wrong child.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use kcl::retrieval::KinesisClientRecord;
use tokio_util::sync::CancellationToken;

/// Longest pause between two listings of the shards.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The hash key ranges of a stream's shards, shared by a worker's processors.
#[derive(Debug)]
pub struct ShardRanges {
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    known: Mutex<HashMap<String, (u128, u128)>>,
}

impl ShardRanges {
    /// Ranges of `stream`'s shards, listed on demand.
    pub fn new(kinesis: aws_sdk_kinesis::Client, stream: impl Into<String>) -> ShardRanges {
        ShardRanges {
            kinesis,
            stream: stream.into(),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The range of `shard_id`, listing the shards (again, with retries) when unknown;
    /// `None` once `cancel` is cancelled.
    pub async fn range_of(
        &self,
        shard_id: &str,
        cancel: &CancellationToken,
    ) -> Option<(u128, u128)> {
        let mut pause = Duration::from_millis(100);
        loop {
            if let Some(range) = self.known.lock().expect("not poisoned").get(shard_id) {
                return Some(*range);
            }
            let listed = tokio::select! {
                listed = kcl::stream::list_shards(&self.kinesis, &self.stream) => listed,
                _ = cancel.cancelled() => return None,
            };
            match listed {
                Ok(shards) => {
                    let mut known = self.known.lock().expect("not poisoned");
                    for s in shards {
                        known.insert(s.shard_id, (s.starting_hash_key, s.ending_hash_key));
                    }
                    if let Some(range) = known.get(shard_id) {
                        return Some(*range);
                    }
                    tracing::warn!(shard = shard_id, "shard not listed yet");
                }
                Err(e) => tracing::warn!(error = %e, "cannot list shards"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return None,
            }
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

/// Whether a user record's hash key is in `range`. Kinesis routes a plain record by its
/// own key, so only sub-records of an aggregate can be outside.
pub fn in_range(record: &KinesisClientRecord, range: (u128, u128)) -> bool {
    if !record.aggregated {
        return true;
    }
    let hash = record
        .explicit_hash_key
        .as_deref()
        .and_then(kcl::kpl::parse_explicit_hash_key)
        .unwrap_or_else(|| kcl::kpl::partition_key_hash(&record.partition_key));
    (range.0..=range.1).contains(&hash)
}

/// The aggregates (by sequence number) stored in a shard that does not own all their
/// user records. A producer aggregating with a stale shard map after a split puts such
/// an aggregate in the wrong child, notices, and puts *all* its user records again,
/// routed right; the Java KCL drops the whole aggregate in the wrong shard, and so do
/// we, so each user record counts once. Every record of an aggregate is in the same
/// batch: a processor checkpoints only after whole batches, so a resumed shard starts
/// at an aggregate's first user record.
pub fn foreign_aggregates(records: &[KinesisClientRecord], range: (u128, u128)) -> HashSet<String> {
    records
        .iter()
        .filter(|r| !in_range(r, range))
        .map(|r| r.sequence_number.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(aggregated: bool, key: &str, explicit: Option<&str>) -> KinesisClientRecord {
        KinesisClientRecord {
            sequence_number: format!("{}", 1 + u8::from(aggregated)),
            sub_sequence_number: 0,
            aggregated,
            partition_key: key.into(),
            explicit_hash_key: explicit.map(str::to_string),
            data: Vec::new(),
            approximate_arrival_timestamp: None,
        }
    }

    #[test]
    fn only_aggregated_records_outside_the_range_are_foreign() {
        let hash = kcl::kpl::partition_key_hash("k");
        let around = (hash - 1, hash + 1);
        let below = (0, hash - 1);
        let cases = [
            (record(false, "k", None), below, true),
            (record(true, "k", None), around, true),
            (record(true, "k", None), below, false),
            (record(true, "k", Some("5")), below, true),
            (record(true, "k", Some("5")), around, false),
        ];
        for (i, (r, range, expected)) in cases.into_iter().enumerate() {
            assert_eq!(in_range(&r, range), expected, "case {i}");
        }
    }

    #[test]
    fn one_foreign_sub_record_makes_its_whole_aggregate_foreign() {
        let hash = kcl::kpl::partition_key_hash("k");
        let range = (hash - 1, hash + 1);
        let mut inside = record(true, "k", None);
        inside.sequence_number = "7".into();
        let mut outside = record(true, "k", Some("5"));
        outside.sequence_number = "7".into();
        outside.sub_sequence_number = 1;
        let mut other = record(true, "k", None);
        other.sequence_number = "8".into();
        let plain = record(false, "x", None);
        let foreign = foreign_aggregates(&[inside, outside, other, plain], range);
        assert_eq!(foreign, HashSet::from(["7".to_string()]));
    }
}
