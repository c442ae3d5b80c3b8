//! The records a processor sees: Kinesis records with KPL aggregates split into their
//! user records, each addressed by (sequence number, sub-sequence number).

use std::time::SystemTime;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::Record;

use crate::checkpoint::ExtendedSequenceNumber;
use crate::hash::{parse_explicit_hash_key, partition_key_hashes};
use crate::kpl;

/// One user record: a plain Kinesis record, or one user record of a KPL aggregate.
///
/// All user records of one aggregate share the Kinesis record's sequence number and
/// are told apart by their sub-sequence number (0, 1, ... in aggregate order); a plain
/// record has sub-sequence number 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisClientRecord {
    /// The Kinesis sequence number of the (possibly aggregated) record.
    pub sequence_number: String,
    /// Index of this user record inside its aggregate; 0 for a plain record.
    pub sub_sequence_number: u64,
    /// Whether this user record came out of a KPL aggregate.
    pub aggregated: bool,
    /// The partition key (the user record's own key for an aggregate).
    pub partition_key: String,
    /// The explicit hash key the producer set on the user record, if any. Kinesis does
    /// not return the explicit hash key of plain records, so this is `None` for them.
    pub explicit_hash_key: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
    /// When Kinesis accepted the (possibly aggregated) record.
    pub approximate_arrival_timestamp: Option<SystemTime>,
}

impl KinesisClientRecord {
    /// This record's position, the value to checkpoint once it is processed.
    ///
    /// ```
    /// use kcl::checkpoint::ExtendedSequenceNumber;
    /// use kcl::retrieval::KinesisClientRecord;
    ///
    /// let record = KinesisClientRecord {
    ///     sequence_number: "4960".into(),
    ///     sub_sequence_number: 2,
    ///     aggregated: true,
    ///     partition_key: "k".into(),
    ///     explicit_hash_key: None,
    ///     data: b"x".to_vec(),
    ///     approximate_arrival_timestamp: None,
    /// };
    /// assert_eq!(record.extended_sequence_number(), ExtendedSequenceNumber::at("4960", 2));
    /// ```
    pub fn extended_sequence_number(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::at(self.sequence_number.clone(), self.sub_sequence_number)
    }
}

/// User records of a run of Kinesis records, in shard order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deaggregated {
    /// The user records.
    pub records: Vec<KinesisClientRecord>,
    /// Records that start with the KPL magic but do not decode as an aggregate. Each
    /// was delivered as one plain record with its original bytes.
    pub undecodable_aggregates: usize,
    /// User records left out because their aggregate was stored in a shard that does
    /// not own all of them (see [`deaggregate_records`]).
    pub foreign_records_dropped: usize,
}

/// Splits KPL aggregates into their user records and passes plain records through.
///
/// A record that starts with the KPL magic but fails to decode (truncated, bad
/// checksum, or a producer whose payload merely begins with those four bytes) is
/// delivered as one plain record with its original bytes and counted in
/// [`Deaggregated::undecodable_aggregates`]: dropping it would lose data, and failing
/// the shard on it would stop the shard forever.
///
/// With the shard's `hash_key_range`, an aggregate holding a user record whose hash key
/// (its explicit hash key, else the partition key's) lies outside the range is left out
/// whole and its user records counted in [`Deaggregated::foreign_records_dropped`], as
/// the Java KCL does: a producer aggregating with a stale shard map after a split puts
/// such an aggregate in the wrong child, notices, and puts every user record of it
/// again, routed right, so each user record is still delivered once, by its own shard.
/// Plain records are never left out: Kinesis routed them by their own key.
pub fn deaggregate_records(
    records: impl IntoIterator<Item = Record>,
    hash_key_range: Option<(u128, u128)>,
) -> Deaggregated {
    let mut out = Deaggregated::default();
    let records: Vec<(Record, Vec<u8>)> = records
        .into_iter()
        .map(|mut record| {
            let data = std::mem::replace(&mut record.data, Blob::new(Vec::new())).into_inner();
            (record, data)
        })
        .collect();
    // The aggregates' checksums, all computed at once.
    let aggregates: Vec<&[u8]> = records
        .iter()
        .map(|(_, data)| data.as_slice())
        .filter(|data| kpl::is_aggregated(data))
        .collect();
    let mut decoded = kpl::deaggregate_each(&aggregates).into_iter();
    for (record, data) in records {
        let arrival = record
            .approximate_arrival_timestamp
            .and_then(|t| SystemTime::try_from(t).ok());
        if kpl::is_aggregated(&data) {
            match decoded.next().expect("a result per aggregate") {
                Ok(users) if !owns_all(hash_key_range, &users) => {
                    tracing::warn!(
                        sequence_number = %record.sequence_number,
                        user_records = users.len(),
                        "aggregate stored in a shard that does not own all its user records; \
                         left out (its producer puts them again, routed by the new shards)"
                    );
                    out.foreign_records_dropped += users.len();
                    continue;
                }
                Ok(users) => {
                    out.records
                        .extend(users.into_iter().enumerate().map(|(i, user)| {
                            KinesisClientRecord {
                                sequence_number: record.sequence_number.clone(),
                                sub_sequence_number: i as u64,
                                aggregated: true,
                                partition_key: user.partition_key,
                                explicit_hash_key: user.explicit_hash_key,
                                data: user.data,
                                approximate_arrival_timestamp: arrival,
                            }
                        }));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(
                        sequence_number = %record.sequence_number,
                        error = %e,
                        "record starts with the KPL magic but is not a valid aggregate; \
                         delivering it as a plain record"
                    );
                    out.undecodable_aggregates += 1;
                }
            }
        }
        out.records.push(KinesisClientRecord {
            sequence_number: record.sequence_number,
            sub_sequence_number: 0,
            aggregated: false,
            // Every put carries a partition key, but recent SDK releases model it as
            // optional (1.99 did not): an absent one reads as the empty key.
            partition_key: record.partition_key.unwrap_or_default(),
            explicit_hash_key: None,
            data,
            approximate_arrival_timestamp: arrival,
        });
    }
    out
}

/// Whether every user record belongs to the shard of `range` (always, without one). An
/// explicit hash key that does not parse counts as owned: leaving data out needs proof.
fn owns_all(range: Option<(u128, u128)>, users: &[kpl::UserRecord]) -> bool {
    let Some((start, end)) = range else {
        return true;
    };
    let owned = |hash: u128| (start..=end).contains(&hash);
    let explicit_owned = users.iter().all(|user| {
        user.explicit_hash_key
            .as_deref()
            .is_none_or(|key| parse_explicit_hash_key(key).is_none_or(owned))
    });
    // The partition keys' hashes, all computed at once.
    let keys: Vec<&str> = users
        .iter()
        .filter(|user| user.explicit_hash_key.is_none())
        .map(|user| user.partition_key.as_str())
        .collect();
    explicit_owned && partition_key_hashes(&keys).into_iter().all(owned)
}

/// The resume rule: drops every record at or before `checkpoint` and clears it once a
/// record after it is seen (records arrive in shard order, so the rest are after too).
///
/// A checkpoint inside an aggregate, e.g. `(S, 2)`, is resumed by reading
/// `AT_SEQUENCE_NUMBER S` — the whole aggregate again — and dropping sub-records 0..=2
/// here, so sub-records 3.. are delivered and none is lost (the Java KCL does the same).
pub(crate) fn skip_through(
    records: Vec<KinesisClientRecord>,
    checkpoint: &mut Option<ExtendedSequenceNumber>,
) -> Vec<KinesisClientRecord> {
    let Some(through) = checkpoint.as_ref() else {
        return records;
    };
    let kept: Vec<KinesisClientRecord> = records
        .into_iter()
        .filter(|r| r.extended_sequence_number().compare(through).is_gt())
        .collect();
    if !kept.is_empty() {
        *checkpoint = None;
    }
    kept
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::primitives::{Blob, DateTime};

    use super::*;

    fn sdk_record(seq: &str, data: Vec<u8>) -> Record {
        Record::builder()
            .sequence_number(seq)
            .partition_key("pk")
            .data(Blob::new(data))
            .approximate_arrival_timestamp(DateTime::from_secs(1_700_000_000))
            .build()
            .unwrap()
    }

    fn client_record(seq: &str, sub: u64) -> KinesisClientRecord {
        KinesisClientRecord {
            sequence_number: seq.into(),
            sub_sequence_number: sub,
            aggregated: sub > 0,
            partition_key: "pk".into(),
            explicit_hash_key: None,
            data: Vec::new(),
            approximate_arrival_timestamp: None,
        }
    }

    fn positions(records: &[KinesisClientRecord]) -> Vec<(String, u64)> {
        records
            .iter()
            .map(|r| (r.sequence_number.clone(), r.sub_sequence_number))
            .collect()
    }

    #[test]
    fn plain_records_pass_through_with_sub_sequence_zero() {
        let out = deaggregate_records([sdk_record("10", b"a".to_vec())], None);
        assert_eq!(out.undecodable_aggregates, 0);
        assert_eq!(out.records.len(), 1);
        let r = &out.records[0];
        assert_eq!((r.sub_sequence_number, r.aggregated), (0, false));
        assert_eq!(
            (r.partition_key.as_str(), r.data.as_slice()),
            ("pk", &b"a"[..])
        );
        assert_eq!(
            r.approximate_arrival_timestamp,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn magic_with_garbage_is_one_plain_record_and_counted() {
        let mut data = vec![0xF3, 0x89, 0x9A, 0xC2];
        data.extend_from_slice(b"definitely not protobuf and no checksum");
        let out = deaggregate_records(
            [
                sdk_record("10", data.clone()),
                sdk_record("11", b"plain".to_vec()),
            ],
            None,
        );
        assert_eq!(out.undecodable_aggregates, 1);
        assert_eq!(
            positions(&out.records),
            [("10".into(), 0), ("11".into(), 0)]
        );
        assert!(!out.records[0].aggregated);
        assert_eq!(out.records[0].data, data);
    }

    #[test]
    fn an_aggregate_with_a_user_record_outside_the_shard_is_left_out_whole() {
        let aggregate = |keys: &[(&str, Option<&str>)]| {
            let mut aggregator = kpl::Aggregator::new();
            for (key, explicit) in keys {
                aggregator.add(key, *explicit, b"x".to_vec());
            }
            aggregator.encode()
        };
        let a = kpl::partition_key_hash("a");
        let b = kpl::partition_key_hash("b");
        let (low, high) = (a.min(b), a.max(b));
        let max = u128::MAX.to_string();
        // (shard range, user records of the aggregate, user records delivered, dropped)
        type Case<'a> = (
            Option<(u128, u128)>,
            Vec<(&'a str, Option<&'a str>)>,
            usize,
            usize,
        );
        let cases: [Case; 6] = [
            (None, vec![("a", None), ("b", None)], 2, 0),
            (Some((low, high)), vec![("a", None), ("b", None)], 2, 0),
            (Some((low, low)), vec![("a", None), ("b", None)], 0, 2),
            (Some((high, high)), vec![("a", None), ("b", None)], 0, 2),
            // The explicit hash key decides, not the partition key.
            (Some((0, 0)), vec![("a", Some("0")), ("b", Some("0"))], 2, 0),
            (
                Some((0, 0)),
                vec![("a", Some("0")), ("b", Some(max.as_str()))],
                0,
                2,
            ),
        ];
        for (range, keys, delivered, dropped) in cases {
            let out = deaggregate_records(
                [
                    sdk_record("10", aggregate(&keys)),
                    // A plain record is never left out, whatever its key.
                    sdk_record("11", b"plain".to_vec()),
                ],
                range,
            );
            assert_eq!(out.records.len(), delivered + 1, "{range:?} {keys:?}");
            assert_eq!(out.foreign_records_dropped, dropped, "{range:?} {keys:?}");
            assert_eq!(out.records.last().unwrap().sequence_number, "11");
        }
    }

    #[test]
    fn skip_through_drops_records_at_or_before_the_checkpoint() {
        let batch = || {
            vec![
                client_record("9", 0),
                client_record("10", 0),
                client_record("10", 1),
                client_record("10", 2),
                client_record("10", 3),
                client_record("10", 4),
                client_record("11", 0),
            ]
        };
        // (checkpoint, positions delivered)
        type Position = (&'static str, u64);
        let cases: [(Option<Position>, &[Position]); 6] = [
            (
                None,
                &[
                    ("9", 0),
                    ("10", 0),
                    ("10", 1),
                    ("10", 2),
                    ("10", 3),
                    ("10", 4),
                    ("11", 0),
                ],
            ),
            (
                Some(("9", 0)),
                &[
                    ("10", 0),
                    ("10", 1),
                    ("10", 2),
                    ("10", 3),
                    ("10", 4),
                    ("11", 0),
                ],
            ),
            (Some(("10", 2)), &[("10", 3), ("10", 4), ("11", 0)]),
            (Some(("10", 4)), &[("11", 0)]),
            // A longer sequence number is larger even when it sorts lower as text.
            (Some(("100", 0)), &[]),
            (Some(("11", 0)), &[]),
        ];
        for (checkpoint, expected) in cases {
            let checkpoint = checkpoint.map(|(s, n)| ExtendedSequenceNumber::at(s, n));
            let mut skip = checkpoint.clone();
            let kept = skip_through(batch(), &mut skip);
            let expected: Vec<(String, u64)> =
                expected.iter().map(|(s, n)| (s.to_string(), *n)).collect();
            assert_eq!(positions(&kept), expected, "checkpoint {checkpoint:?}");
            // The skip point stays until a record after it has been seen.
            assert_eq!(skip.is_some(), checkpoint.is_some() && kept.is_empty());
        }
    }

    #[test]
    fn skip_point_survives_batches_that_are_entirely_before_it() {
        let mut skip = Some(ExtendedSequenceNumber::at("20", 1));
        let first = skip_through(
            vec![client_record("18", 0), client_record("20", 0)],
            &mut skip,
        );
        assert!(first.is_empty());
        let second = skip_through(
            vec![
                client_record("20", 1),
                client_record("20", 2),
                client_record("21", 0),
            ],
            &mut skip,
        );
        assert_eq!(positions(&second), [("20".into(), 2), ("21".into(), 0)]);
        assert_eq!(skip, None);
    }
}
