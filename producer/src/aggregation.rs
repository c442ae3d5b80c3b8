//! Aggregation: user records of one predicted shard packed into KPL aggregated records
//! with [`kinesis_core::kpl::Aggregator`], whose exact `encoded_len` keeps every aggregate within
//! [`ProducerConfig::aggregation_max_size`](crate::ProducerConfig::aggregation_max_size)
//! and the 1 MiB record limit.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_core::kpl::{self, Aggregator};
use tokio::time::Instant;

use crate::config::MAX_RECORD_SIZE;
use crate::record::Pending;

/// The PutRecords entries of a call's records, moving their data out; the aggregates'
/// digests are computed together first.
pub(crate) fn take_entries(records: &mut [KinesisRecord]) -> Vec<PutRecordsRequestEntry> {
    fill_digests(records);
    records.iter_mut().map(KinesisRecord::take_entry).collect()
}

/// Writes the digest of every aggregate among `records` that has none yet, all at once
/// (several times faster than one by one: [`kinesis_core::digest::md5_each`]).
pub(crate) fn fill_digests(records: &mut [KinesisRecord]) {
    let mut pending: Vec<&mut [u8]> = records
        .iter_mut()
        .filter_map(|r| std::mem::take(&mut r.digest_pending).then_some(r.data.as_mut_slice()))
        .collect();
    if !pending.is_empty() {
        kpl::fill_digests(&mut pending);
    }
}

/// The size limits of one aggregate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AggregationLimits {
    /// Largest encoded aggregate.
    pub max_size: usize,
    /// Most user records in one aggregate.
    pub max_count: usize,
}

/// One Kinesis record ready for PutRecords: an aggregate or a plain user record.
#[derive(Debug)]
pub(crate) struct KinesisRecord {
    pub partition_key: String,
    /// Canonical decimal, as the PutRecords API requires.
    pub explicit_hash_key: Option<String>,
    /// The encoded record; moved out into the request when it is sent.
    pub data: Vec<u8>,
    /// Its user records, in sub-sequence number order.
    pub members: Vec<Pending>,
    /// An aggregate of two or more user records, or a plain record.
    pub aggregated: bool,
    /// The hash key Kinesis routes it by.
    pub routing_hash: u128,
    /// An aggregate whose MD5 digest is still zeros: [`take_entries`] computes the
    /// digests of a whole call at once.
    pub digest_pending: bool,
    /// The earliest deadline of its members: when it must be sent.
    pub deadline: Instant,
    /// The lowest id of its members, for flushes.
    pub min_id: u64,
    /// When its first member expires.
    pub min_expires: Instant,
}

impl KinesisRecord {
    /// A user record sent as a Kinesis record of its own, with its own keys.
    pub(crate) fn plain(member: Pending) -> Self {
        KinesisRecord {
            partition_key: member.partition_key.clone(),
            // The API wants the canonical form; "007" is valid user input.
            explicit_hash_key: member
                .explicit_hash_key
                .as_ref()
                .map(|_| member.hash_key.to_string()),
            data: member.data.clone(),
            aggregated: false,
            digest_pending: false,
            routing_hash: member.hash_key,
            deadline: member.deadline,
            min_id: member.id,
            min_expires: member.expires_at,
            members: vec![member],
        }
    }

    /// Data plus partition key: what the record counts against the request and shard
    /// limits.
    pub(crate) fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// Its PutRecords entry, moving its data out (a retry re-encodes from the members).
    /// Its digest must be filled first ([`fill_digests`]).
    fn take_entry(&mut self) -> PutRecordsRequestEntry {
        debug_assert!(!self.digest_pending);
        PutRecordsRequestEntry::builder()
            .partition_key(self.partition_key.clone())
            .set_explicit_hash_key(self.explicit_hash_key.clone())
            .data(Blob::new(std::mem::take(&mut self.data)))
            .build()
            .expect("partition key and data are set")
    }

    /// Whether it must go now: its deadline passed, a flush waits for one of its
    /// members, or the producer is shutting down.
    pub(crate) fn is_due(&self, now: Instant, flush_barrier: u64, closing: bool) -> bool {
        closing || self.deadline <= now || self.min_id < flush_barrier
    }

    /// Rebuilds the record from some of its members (after others expired), or `None`
    /// when none is left. They fit: they fitted together with more.
    pub(crate) fn rebuild(members: Vec<Pending>) -> Option<Self> {
        let first = members.first()?;
        let mut open = OpenAggregate {
            aggregator: Aggregator::new(),
            members: Vec::new(),
            max_len: MAX_RECORD_SIZE,
            deadline: first.deadline,
            min_id: first.id,
            min_expires: first.expires_at,
        };
        for member in &members {
            open.aggregator.add_len(
                &member.partition_key,
                member.explicit_hash_key.as_deref(),
                member.data.len(),
            );
            open.note(member);
        }
        open.members = members;
        Some(open.seal(None))
    }
}

/// The aggregate being filled for one shard.
#[derive(Debug)]
struct OpenAggregate {
    aggregator: Aggregator,
    members: Vec<Pending>,
    /// The largest encoded length the next member may bring the aggregate to.
    max_len: usize,
    deadline: Instant,
    min_id: u64,
    min_expires: Instant,
}

impl OpenAggregate {
    /// Adds `record` if the aggregate has fewer than `max_count` members and it fits
    /// within the size limit; gives it back otherwise.
    fn try_push(&mut self, record: Pending, max_count: usize) -> Option<Pending> {
        let fits = self.members.len() < max_count
            && self.aggregator.add_len_within(
                &record.partition_key,
                record.explicit_hash_key.as_deref(),
                record.data.len(),
                self.max_len,
            );
        if !fits {
            return Some(record);
        }
        self.note(&record);
        self.members.push(record);
        None
    }

    /// Takes a new member's deadlines and id into account. The member keeps its data
    /// (for a retry, which re-aggregates it against the shard map of the time); the
    /// aggregator only sizes it and reads it at encode.
    fn note(&mut self, record: &Pending) {
        self.deadline = self.deadline.min(record.deadline);
        self.min_id = self.min_id.min(record.id);
        self.min_expires = self.min_expires.min(record.expires_at);
    }

    /// The aggregated record; its `ExplicitHashKey` is its first member's hash key,
    /// which lies in the predicted shard's range like every member's. The aggregator,
    /// emptied, goes to `spare` (when given) for the next aggregate.
    fn encode(mut self, spare: Option<&mut Aggregator>) -> KinesisRecord {
        let data = self
            .aggregator
            .encode_undigested_with(self.members.iter().map(|m| m.data.as_slice()));
        if let Some(spare) = spare {
            self.aggregator.clear();
            *spare = self.aggregator;
        }
        let first = &self.members[0];
        KinesisRecord {
            partition_key: first.partition_key.clone(),
            explicit_hash_key: Some(first.hash_key.to_string()),
            routing_hash: first.hash_key,
            data,
            aggregated: true,
            digest_pending: true,
            deadline: self.deadline,
            min_id: self.min_id,
            min_expires: self.min_expires,
            members: self.members,
        }
    }

    /// A container holding a single user record goes out as that plain record.
    fn seal(mut self, spare: Option<&mut Aggregator>) -> KinesisRecord {
        if self.members.len() == 1 {
            KinesisRecord::plain(self.members.pop().expect("one member"))
        } else {
            self.encode(spare)
        }
    }
}

/// Fills aggregates for one predicted shard, one at a time.
#[derive(Debug, Default)]
pub(crate) struct ShardAggregator {
    open: Option<OpenAggregate>,
    /// Members of the last aggregate sealed: the room a new one starts with.
    last_count: usize,
    /// The last aggregate's aggregator, emptied: a new aggregate starts with its
    /// allocations.
    spare: Aggregator,
}

impl ShardAggregator {
    /// Adds a user record. Returns, in order, the records it caused to be sealed: the
    /// open aggregate when the record does not fit in it, and the record itself when it
    /// is too large for any aggregate.
    pub(crate) fn add(
        &mut self,
        record: Pending,
        limits: AggregationLimits,
    ) -> (Option<KinesisRecord>, Option<KinesisRecord>) {
        let record = match &mut self.open {
            Some(open) => match open.try_push(record, limits.max_count) {
                None => return (None, None),
                Some(record) => record,
            },
            None => record,
        };
        let sealed = self.seal();
        let alone = self.open(record, limits).map(KinesisRecord::plain);
        (sealed, alone)
    }

    /// Opens an aggregate with `first` as its first member, or gives `first` back when
    /// it does not fit alone within the limits.
    fn open(&mut self, first: Pending, limits: AggregationLimits) -> Option<Pending> {
        // The aggregate's partition key is its first member's, and counts against the
        // 1 MiB record limit with the data.
        let max_len = limits
            .max_size
            .min(MAX_RECORD_SIZE.saturating_sub(first.partition_key.len()));
        let mut aggregator = std::mem::take(&mut self.spare);
        let fits = limits.max_count > 0
            && aggregator.add_len_within(
                &first.partition_key,
                first.explicit_hash_key.as_deref(),
                first.data.len(),
                max_len,
            );
        if !fits {
            self.spare = aggregator;
            return Some(first);
        }
        // As many members as the last aggregate had: no regrowth on the way.
        let mut members = Vec::with_capacity(self.last_count.max(1));
        let (deadline, min_id, min_expires) = (first.deadline, first.id, first.expires_at);
        members.push(first);
        self.open = Some(OpenAggregate {
            aggregator,
            members,
            max_len,
            deadline,
            min_id,
            min_expires,
        });
        None
    }

    /// Seals the open aggregate, if any.
    pub(crate) fn seal(&mut self) -> Option<KinesisRecord> {
        let open = self.open.take()?;
        self.last_count = open.members.len();
        Some(open.seal(Some(&mut self.spare)))
    }

    /// Whether the open aggregate must be sealed now (see [`KinesisRecord::is_due`]).
    pub(crate) fn is_due(&self, now: Instant, flush_barrier: u64, closing: bool) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| closing || o.deadline <= now || o.min_id < flush_barrier)
    }

    /// When the open aggregate must be sealed.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.deadline)
    }

    /// Takes the open aggregate's user records out, in order.
    pub(crate) fn take_members(&mut self) -> Vec<Pending> {
        self.open.take().map(|o| o.members).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use kinesis_core::kpl::{deaggregate, is_aggregated};

    use super::*;
    use crate::record::tests::pending;

    const LIMITS: AggregationLimits = AggregationLimits {
        max_size: 51_200,
        max_count: usize::MAX,
    };

    fn fill(
        aggregator: &mut ShardAggregator,
        records: Vec<Pending>,
        limits: AggregationLimits,
    ) -> Vec<KinesisRecord> {
        let mut out = Vec::new();
        for record in records {
            let (sealed, alone) = aggregator.add(record, limits);
            out.extend(sealed);
            out.extend(alone);
        }
        out.extend(aggregator.seal());
        fill_digests(&mut out);
        out
    }

    #[test]
    fn aggregates_stay_within_the_size_limit_and_keep_order() {
        let mut aggregator = ShardAggregator::default();
        let records = (0..2000)
            .map(|i| {
                pending(
                    i,
                    &format!("key-{}", i % 37),
                    None,
                    &vec![i as u8; (i as usize * 7) % 900],
                )
            })
            .collect();
        let out = fill(&mut aggregator, records, LIMITS);
        let mut next = 0;
        for record in &out {
            assert!(record.data.len() <= LIMITS.max_size);
            assert!(record.aggregated && is_aggregated(&record.data));
            let users = deaggregate(&record.data).unwrap();
            assert_eq!(users.len(), record.members.len());
            for (user, member) in users.iter().zip(&record.members) {
                assert_eq!(member.id, next);
                assert_eq!(user.partition_key, member.partition_key);
                assert_eq!(user.data, member.data);
                next += 1;
            }
            assert_eq!(record.partition_key, record.members[0].partition_key);
            assert_eq!(
                record.explicit_hash_key,
                Some(record.members[0].hash_key.to_string())
            );
        }
        assert_eq!(next, 2000);
        // Full aggregates are close to the limit: the next record did not fit.
        assert!(
            out[0].data.len() > LIMITS.max_size - 1000,
            "{}",
            out[0].data.len()
        );
    }

    #[test]
    fn single_record_containers_are_plain_records_with_their_own_keys() {
        let mut aggregator = ShardAggregator::default();
        let out = fill(
            &mut aggregator,
            vec![pending(0, "user", Some("0042"), b"x")],
            LIMITS,
        );
        assert_eq!(out.len(), 1);
        let record = &out[0];
        assert!(!record.aggregated);
        assert_eq!(record.data, b"x");
        assert_eq!(record.partition_key, "user");
        assert_eq!(record.explicit_hash_key.as_deref(), Some("42"));
        assert_eq!(record.routing_hash, 42);
    }

    #[test]
    fn records_too_large_to_aggregate_go_alone_after_the_open_aggregate() {
        let mut aggregator = ShardAggregator::default();
        let records = vec![
            pending(0, "a", None, b"small"),
            pending(1, "b", None, b"small"),
            pending(2, "c", None, &vec![0; 60_000]),
            pending(3, "d", None, b"after"),
        ];
        let out = fill(&mut aggregator, records, LIMITS);
        let ids: Vec<Vec<u64>> = out
            .iter()
            .map(|r| r.members.iter().map(|m| m.id).collect())
            .collect();
        assert_eq!(ids, [vec![0, 1], vec![2], vec![3]]);
        assert!(out[0].aggregated && !out[1].aggregated && !out[2].aggregated);
    }

    #[test]
    fn one_mib_limit_counts_the_partition_key() {
        let limits = AggregationLimits {
            max_size: MAX_RECORD_SIZE,
            max_count: usize::MAX,
        };
        let key = "k".repeat(256);
        let mut aggregator = ShardAggregator::default();
        let records = (0..40)
            .map(|i| pending(i, &key, None, &vec![1; 50_000]))
            .collect();
        for record in fill(&mut aggregator, records, limits) {
            assert!(record.size() <= MAX_RECORD_SIZE, "{}", record.size());
        }
    }

    #[test]
    fn count_limit_and_rebuild() {
        let limits = AggregationLimits {
            max_size: 51_200,
            max_count: 3,
        };
        let mut aggregator = ShardAggregator::default();
        let records = (0..7).map(|i| pending(i, "k", None, b"d")).collect();
        let out = fill(&mut aggregator, records, limits);
        let sizes: Vec<_> = out.iter().map(|r| r.members.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);

        let mut first = out.into_iter().next().unwrap();
        let survivors = first.members.split_off(1);
        let mut survivors = survivors.into_iter();
        let (one, two) = (survivors.next().unwrap(), survivors.next().unwrap());
        let mut rebuilt = KinesisRecord::rebuild(vec![one, two]).unwrap();
        fill_digests(std::slice::from_mut(&mut rebuilt));
        assert!(rebuilt.aggregated);
        assert_eq!(deaggregate(&rebuilt.data).unwrap().len(), 2);
        assert_eq!(rebuilt.min_id, 1);
        let mut members = rebuilt.members;
        members.pop();
        let single = KinesisRecord::rebuild(members).unwrap();
        assert!(!single.aggregated, "one survivor goes out plain");
        assert_eq!(single.data, b"d");
        assert!(KinesisRecord::rebuild(Vec::new()).is_none());
    }

    #[test]
    fn entries_carry_keys_and_move_the_data() {
        let mut record = KinesisRecord::plain(pending(0, "k", Some("012"), b"abc"));
        let entry = take_entries(std::slice::from_mut(&mut record)).remove(0);
        assert_eq!(entry.partition_key(), Some("k"));
        assert_eq!(entry.explicit_hash_key(), Some("12"));
        assert_eq!(entry.data().as_ref(), b"abc");
        assert!(record.data.is_empty());
    }

    #[test]
    fn deadlines_and_flush_barriers() {
        let now = Instant::now();
        let mut aggregator = ShardAggregator::default();
        let mut early = pending(5, "k", None, b"d");
        early.deadline = now;
        let mut late = pending(6, "k", None, b"d");
        late.deadline = now + std::time::Duration::from_secs(1);
        aggregator.add(late, LIMITS);
        assert!(!aggregator.is_due(now, 0, false));
        assert!(
            aggregator.is_due(now, 7, false),
            "flush barrier above its ids"
        );
        assert!(aggregator.is_due(now, 0, true), "closing");
        aggregator.add(early, LIMITS);
        assert_eq!(aggregator.deadline(), Some(now));
        assert!(aggregator.is_due(now, 0, false));
    }
}
