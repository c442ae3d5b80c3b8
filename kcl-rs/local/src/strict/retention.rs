//! Retention, as the strict Kinesis layer models it over answers passing through:
//! records older than the retention are cut out of GetRecords answers, and a shard
//! closed longer ago than the retention is gone (not listed, not readable).
//!
//! Pure functions over the AWS JSON answers, with the time passed in. What is not
//! modelled: the service's own storage keeps the records (the emulators hold them for
//! 24 h at least), so only reads through the strict layer see the trim; and the time a
//! shard closed is the time the layer saw its SplitShard or MergeShards succeed, or
//! else the first listing that showed it closed.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A shard of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    /// The stream name.
    pub stream: String,
    /// The shard id, e.g. `shardId-000000000001`.
    pub shard: String,
}

impl ShardKey {
    /// The shard `shard` of `stream`.
    pub fn new(stream: impl Into<String>, shard: impl Into<String>) -> ShardKey {
        ShardKey {
            stream: stream.into(),
            shard: shard.into(),
        }
    }
}

/// Seconds since the Unix epoch, as Kinesis writes `ApproximateArrivalTimestamp`.
pub fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Cuts the records that arrived before `now - retention` out of a GetRecords answer;
/// returns how many. Kinesis would have trimmed them: an iterator at a trimmed
/// position reads from the oldest record kept, the trim horizon.
pub fn trim_records(answer: &mut Value, retention: Duration, now: SystemTime) -> usize {
    let cutoff = epoch_seconds(now) - retention.as_secs_f64();
    let Some(records) = answer.get_mut("Records").and_then(Value::as_array_mut) else {
        return 0;
    };
    let before = records.len();
    records.retain(|record| arrival(record).is_none_or(|arrived| arrived >= cutoff));
    before - records.len()
}

/// A record's `ApproximateArrivalTimestamp` in epoch seconds (a number, or a number
/// in a string as some emulators write it).
fn arrival(record: &Value) -> Option<f64> {
    match record.get("ApproximateArrivalTimestamp")? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The bytes of record data in a GetRecords answer (the base64 `Data` decoded): what
/// Kinesis counts against a shard's 2 MiB/s read limit.
pub fn data_bytes(answer: &Value) -> u64 {
    let Some(records) = answer.get("Records").and_then(Value::as_array) else {
        return 0;
    };
    records
        .iter()
        .filter_map(|record| record.get("Data").and_then(Value::as_str))
        .map(base64_decoded_len)
        .sum()
}

fn base64_decoded_len(encoded: &str) -> u64 {
    let len = encoded.len() as u64;
    let padding = encoded.bytes().rev().take_while(|b| *b == b'=').count() as u64;
    (len / 4 * 3 + (len % 4).saturating_sub(1)).saturating_sub(padding)
}

/// When each shard the layer knows to be closed closed.
#[derive(Debug, Default)]
pub struct ShardClosings {
    closed_at: HashMap<ShardKey, SystemTime>,
}

impl ShardClosings {
    /// Notes that `shard` closed at `at`; an earlier time already noted stands.
    pub fn closed(&mut self, shard: ShardKey, at: SystemTime) {
        let entry = self.closed_at.entry(shard).or_insert(at);
        *entry = (*entry).min(at);
    }

    /// When `shard` closed, if known.
    pub fn closed_at(&self, shard: &ShardKey) -> Option<SystemTime> {
        self.closed_at.get(shard).copied()
    }

    /// Whether `shard` closed more than `retention` before `now`: Kinesis has then
    /// deleted it with its last records.
    pub fn is_gone(&self, shard: &ShardKey, retention: Duration, now: SystemTime) -> bool {
        self.closed_at(shard).is_some_and(|closed| {
            now.duration_since(closed)
                .is_ok_and(|elapsed| elapsed >= retention)
        })
    }

    /// Forgets a stream (deleted: a new one of the same name has new shards).
    pub fn forget_stream(&mut self, stream: &str) {
        self.closed_at.retain(|shard, _| shard.stream != stream);
    }

    /// For the shards of a listing (ListShards' `Shards`, DescribeStream's
    /// `StreamDescription.Shards`): notes those closed (they have an
    /// `EndingSequenceNumber`) as closed at `now` unless known, and removes those gone.
    /// Returns how many were removed.
    pub fn learn_and_filter(
        &mut self,
        stream: &str,
        shards: &mut Vec<Value>,
        retention: Duration,
        now: SystemTime,
    ) -> usize {
        for shard in shards.iter() {
            if let Some(id) = shard.get("ShardId").and_then(Value::as_str)
                && shard
                    .pointer("/SequenceNumberRange/EndingSequenceNumber")
                    .is_some_and(|end| !end.is_null())
            {
                self.closed(ShardKey::new(stream, id), now);
            }
        }
        let before = shards.len();
        shards.retain(|shard| {
            shard
                .get("ShardId")
                .and_then(Value::as_str)
                .is_none_or(|id| !self.is_gone(&ShardKey::new(stream, id), retention, now))
        });
        before - shards.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    }

    #[test]
    fn records_older_than_the_retention_are_cut() {
        // (arrival of each record, retention s, now) → records kept
        let table: [(&[f64], u64, f64, &[f64]); 4] = [
            (&[100.0, 150.0, 199.5], 60, 200.0, &[150.0, 199.5]),
            (&[100.0, 150.0], 10, 200.0, &[]),
            (&[100.0, 150.0], 100, 200.0, &[100.0, 150.0]),
            (&[], 10, 200.0, &[]),
        ];
        for (arrivals, retention, now, kept) in table {
            let mut answer = json!({
                "Records": arrivals.iter().map(|a| json!({
                    "Data": "YQ==", "PartitionKey": "k", "SequenceNumber": "1",
                    "ApproximateArrivalTimestamp": a,
                })).collect::<Vec<_>>(),
                "NextShardIterator": "next",
            });
            let cut = trim_records(&mut answer, Duration::from_secs(retention), at(now));
            let left: Vec<f64> = answer["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["ApproximateArrivalTimestamp"].as_f64().unwrap())
                .collect();
            assert_eq!(left, kept, "{arrivals:?} retention {retention}");
            assert_eq!(cut, arrivals.len() - kept.len());
            assert_eq!(answer["NextShardIterator"], "next");
        }
    }

    #[test]
    fn read_bytes_are_the_decoded_data() {
        let answer = json!({ "Records": [
            { "Data": "" }, { "Data": "YQ==" }, { "Data": "YWI=" }, { "Data": "YWJj" },
            { "Data": "YWJjZA==" },
        ]});
        assert_eq!(data_bytes(&answer), 1 + 2 + 3 + 4);
        assert_eq!(data_bytes(&json!({})), 0);
    }

    #[test]
    fn a_closed_shard_is_gone_after_the_retention() {
        let mut closings = ShardClosings::default();
        let parent = ShardKey::new("s", "shardId-000000000000");
        let retention = Duration::from_secs(10);
        closings.closed(parent.clone(), at(100.0));
        closings.closed(parent.clone(), at(105.0));
        // (now, gone?)
        for (now, gone) in [(50.0, false), (105.0, false), (109.9, false), (110.0, true)] {
            assert_eq!(closings.is_gone(&parent, retention, at(now)), gone, "{now}");
        }
        let open = ShardKey::new("s", "shardId-000000000001");
        assert!(!closings.is_gone(&open, retention, at(1e9)));
        closings.forget_stream("s");
        assert!(!closings.is_gone(&parent, retention, at(1e9)));
    }

    #[test]
    fn listings_teach_closings_and_lose_gone_shards() {
        let shard = |id: &str, end: Option<&str>| {
            let mut range = json!({ "StartingSequenceNumber": "1" });
            if let Some(end) = end {
                range["EndingSequenceNumber"] = json!(end);
            }
            json!({ "ShardId": id, "SequenceNumberRange": range })
        };
        let listing = || vec![shard("p", Some("9")), shard("a", None), shard("b", None)];
        let mut closings = ShardClosings::default();
        let retention = Duration::from_secs(10);
        let mut first = listing();
        assert_eq!(
            closings.learn_and_filter("s", &mut first, retention, at(100.0)),
            0
        );
        assert_eq!(first.len(), 3);
        let mut later = listing();
        assert_eq!(
            closings.learn_and_filter("s", &mut later, retention, at(110.0)),
            1
        );
        let ids: Vec<&str> = later
            .iter()
            .map(|s| s["ShardId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        // A close seen earlier (a SplitShard passing through) counts from then.
        let mut closings = ShardClosings::default();
        closings.closed(ShardKey::new("s", "p"), at(90.0));
        let mut shards = listing();
        assert_eq!(
            closings.learn_and_filter("s", &mut shards, retention, at(100.0)),
            1
        );
    }
}
