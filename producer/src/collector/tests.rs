//! Collection tables: which records a call takes, when, and what holds a shard back.

use std::sync::Arc;

use super::*;
use crate::record::tests::pending;

const LIMITS: CollectionLimits = CollectionLimits {
    max_count: 500,
    max_size: 5 * 1024 * 1024,
};

fn key(id: &str) -> ShardKey {
    Some(Arc::from(id))
}

fn plain(id: u64, data_len: usize, deadline: Instant) -> KinesisRecord {
    let mut p = pending(id, "k", None, &vec![0; data_len]);
    p.deadline = deadline;
    KinesisRecord::plain(p)
}

fn ids(batch: &Batch) -> Vec<u64> {
    batch.records.iter().map(|r| r.min_id).collect()
}

#[test]
fn nothing_goes_before_a_deadline_unless_a_call_is_full() {
    let now = Instant::now();
    let later = now + Duration::from_secs(1);
    let mut queues = Queues::default();
    let mut expired = Vec::new();
    queues
        .entry(key("a"), None, 100, now)
        .push_ready(plain(0, 10, later));
    assert!(
        queues
            .next_batch(now, LIMITS, 0, false, &mut expired)
            .is_none()
    );
    // A flush waiting for id 0 makes it due.
    let batch = queues
        .next_batch(now, LIMITS, 1, false, &mut expired)
        .unwrap();
    assert_eq!(ids(&batch), [0]);
    assert_eq!(batch.shards, [key("a")]);

    let mut queues = Queues::default();
    let small = CollectionLimits {
        max_count: 3,
        ..LIMITS
    };
    for id in 0..5 {
        queues
            .entry(key("a"), None, 1000, now)
            .push_ready(plain(id, 10, later));
    }
    let batch = queues
        .next_batch(now, small, 0, false, &mut expired)
        .unwrap();
    assert_eq!(ids(&batch), [0, 1, 2]);
    // The shard is in flight now: its other records wait for the answer.
    assert!(
        queues
            .next_batch(now, small, 0, true, &mut expired)
            .is_none()
    );
    queues.get_mut(&key("a")).unwrap().in_flight = false;
    assert_eq!(
        ids(&queues
            .next_batch(now, small, 0, true, &mut expired)
            .unwrap()),
        [3, 4]
    );
}

#[test]
fn calls_respect_the_byte_limit_and_take_other_shards_along() {
    let now = Instant::now();
    let later = now + Duration::from_secs(9);
    let mut queues = Queues::default();
    let limits = CollectionLimits {
        max_size: 3000,
        ..LIMITS
    };
    // Four records of 1,000 bytes (data plus key) due now: three fit in a call.
    for id in 0..4 {
        queues
            .entry(key("a"), None, 100, now)
            .push_ready(plain(id, 999, now));
    }
    let batch = queues
        .next_batch(now, limits, 0, false, &mut Vec::new())
        .unwrap();
    assert_eq!(ids(&batch), [0, 1, 2]);

    // A call that is due takes the other shards' ready records along.
    let mut queues = Queues::default();
    queues
        .entry(key("a"), None, 100, now)
        .push_ready(plain(0, 10, now));
    queues
        .entry(key("b"), None, 100, now)
        .push_ready(plain(1, 10, later));
    let batch = queues
        .next_batch(now, limits, 0, false, &mut Vec::new())
        .unwrap();
    let mut all = ids(&batch);
    all.sort();
    assert_eq!(all, [0, 1]);
    assert_eq!(batch.shards.len(), 2);
}

#[test]
fn unpredicted_records_wait_while_held_and_block_others_in_flight() {
    let now = Instant::now();
    let mut queues = Queues::default();
    let mut expired = Vec::new();
    queues
        .entry(None, None, 100, now)
        .push_ready(plain(0, 10, now));
    queues.hold_unpredicted = true;
    assert!(
        queues
            .next_batch(now, LIMITS, 0, true, &mut expired)
            .is_none()
    );
    assert_eq!(queues.next_wake(true), None, "no wake-up for held records");
    queues.hold_unpredicted = false;
    let batch = queues
        .next_batch(now, LIMITS, 0, false, &mut expired)
        .unwrap();
    assert_eq!(batch.shards, [None]);
    // While they are in flight, records predicted since wait: same keys, maybe.
    queues
        .entry(key("a"), None, 100, now)
        .push_ready(plain(1, 10, now));
    assert_eq!(
        queues.next_wake(true),
        None,
        "wait for the answer, not a deadline"
    );
    assert!(
        queues
            .next_batch(now, LIMITS, 0, true, &mut expired)
            .is_none()
    );
    queues.get_mut(&None).unwrap().in_flight = false;
    queues.remove_if_idle(&None);
    assert_eq!(
        ids(&queues
            .next_batch(now, LIMITS, 0, false, &mut expired)
            .unwrap()),
        [1]
    );
}

#[test]
fn a_single_record_above_the_call_size_still_goes() {
    let now = Instant::now();
    let mut queues = Queues::default();
    let limits = CollectionLimits {
        max_size: 100,
        ..LIMITS
    };
    queues
        .entry(key("a"), None, 100, now)
        .push_ready(plain(0, 5000, now));
    let batch = queues
        .next_batch(now, limits, 0, false, &mut Vec::new())
        .unwrap();
    assert_eq!(ids(&batch), [0]);
}

#[test]
fn rate_limited_shards_wait_and_others_go() {
    let now = Instant::now();
    let mut queues = Queues::default();
    let mut expired = Vec::new();
    // 1% of a shard: 10 records/s, 10,485 bytes/s.
    for id in 0..3 {
        queues
            .entry(key("slow"), None, 1, now)
            .push_ready(plain(id, 6000, now));
    }
    let batch = queues
        .next_batch(now, LIMITS, 0, false, &mut expired)
        .unwrap();
    assert_eq!(ids(&batch), [0]);
    queues.get_mut(&key("slow")).unwrap().in_flight = false;
    assert!(
        queues
            .next_batch(now, LIMITS, 0, false, &mut expired)
            .is_none()
    );
    let wake = queues
        .get_mut(&key("slow"))
        .unwrap()
        .next_wake(true)
        .unwrap();
    // Not as soon as one more record's tokens are in: a drain interval later.
    assert!(wake >= now + LIMITED_DRAIN_INTERVAL);
    queues
        .entry(key("fast"), None, 100, now)
        .push_ready(plain(7, 10, now));
    assert_eq!(
        ids(&queues
            .next_batch(now, LIMITS, 0, false, &mut expired)
            .unwrap()),
        [7]
    );
    assert_eq!(
        ids(&queues
            .next_batch(wake, LIMITS, 0, false, &mut expired)
            .unwrap()),
        [1]
    );
}

#[test]
fn expired_members_are_dropped_and_the_rest_re_encoded() {
    let now = Instant::now();
    let mut aggregator = ShardAggregator::default();
    let limits = crate::aggregation::AggregationLimits {
        max_size: 51_200,
        max_count: 10,
    };
    for id in 0..3 {
        let mut p = pending(id, "k", None, b"data");
        p.deadline = now;
        if id == 1 {
            p.expires_at = now;
        }
        aggregator.add(p, limits);
    }
    let record = aggregator.seal().unwrap();
    assert_eq!(record.members.len(), 3);
    let mut queues = Queues::default();
    queues.entry(key("a"), None, 100, now).push_ready(record);
    let mut expired = Vec::new();
    let mut batch = queues
        .next_batch(now, LIMITS, 0, false, &mut expired)
        .unwrap();
    assert_eq!(expired.iter().map(|m| m.id).collect::<Vec<_>>(), [1]);
    crate::aggregation::fill_digests(&mut batch.records);
    let sent = &batch.records[0];
    let users = kinesis_core::kpl::deaggregate(&sent.data).unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(
        sent.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        [0, 2]
    );
}

#[test]
fn a_retired_shards_call_in_flight_fences_the_shards_taking_its_keys() {
    let now = Instant::now();
    let mut queues = Queues::default();
    let mut expired = Vec::new();
    queues
        .entry(key("parent"), Some(&(0..=99)), 100, now)
        .push_ready(plain(0, 10, now));
    let batch = queues
        .next_batch(now, LIMITS, 0, false, &mut expired)
        .unwrap();
    assert_eq!(ids(&batch), [0]);
    // The map changes while the parent's call is in flight: [0, 99] split in two.
    queues.get_mut(&key("parent")).unwrap().retire();
    queues
        .entry(key("low"), Some(&(0..=49)), 100, now)
        .push_ready(plain(1, 10, now));
    queues
        .entry(key("other"), Some(&(100..=199)), 100, now)
        .push_ready(plain(2, 10, now));
    let batch = queues
        .next_batch(now, LIMITS, 0, false, &mut expired)
        .unwrap();
    assert_eq!(
        ids(&batch),
        [2],
        "only the shard outside the parent's range goes"
    );
    queues.get_mut(&key("other")).unwrap().in_flight = false;
    assert!(
        queues
            .next_batch(now, LIMITS, 0, true, &mut expired)
            .is_none()
    );
    assert_eq!(
        queues.next_wake(true),
        None,
        "wait for the answer, not a deadline"
    );
    // The parent's call is answered: its keys' records may follow.
    queues.get_mut(&key("parent")).unwrap().in_flight = false;
    queues.remove_if_idle(&key("parent"));
    assert_eq!(
        ids(&queues
            .next_batch(now, LIMITS, 0, false, &mut expired)
            .unwrap()),
        [1]
    );
}

#[test]
fn fences_by_range_overlap() {
    type Range = Option<RangeInclusive<u128>>;
    let queue = |range: Range| ShardQueue::new(None, range);
    let cases: [(Range, Range, bool); 6] = [
        // (retired shard's range, queue's range, fenced)
        (Some(0..=99), Some(0..=49), true),
        (Some(0..=99), Some(99..=120), true),
        (Some(0..=99), Some(100..=120), false),
        (Some(50..=99), Some(0..=49), false),
        // An unknown range on either side could hold any key.
        (None, Some(0..=49), true),
        (Some(0..=99), None, true),
    ];
    for (i, (fence, range, fenced)) in cases.into_iter().enumerate() {
        assert_eq!(
            is_fenced(&queue(range), &[fence.as_ref()]),
            fenced,
            "case {i}"
        );
    }
    assert!(!is_fenced(&queue(Some(0..=9)), &[]));
}
