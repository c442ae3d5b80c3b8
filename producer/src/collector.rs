//! Collection: the per-shard queues of Kinesis records, and PutRecords calls built from
//! them (at most [`collection_max_count`] entries and [`collection_max_size`] bytes of
//! data plus partition keys).
//!
//! A shard is in at most one call at a time, so Kinesis receives a shard's records in
//! the order they were sealed: per partition key, user records keep their order unless
//! a failure sends one back for a retry. A call goes out when one of its shards' records
//! is due (its buffered time is up, or a flush is waiting for it), or when the ready
//! records fill a call; it also takes whatever else is ready, as the KPL does.
//!
//! [`collection_max_count`]: crate::ProducerConfig::collection_max_count
//! [`collection_max_size`]: crate::ProducerConfig::collection_max_size

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::aggregation::{KinesisRecord, ShardAggregator};
use crate::limiter::ShardLimiter;
use crate::record::Pending;
use crate::shard_map::ShardId;

/// Least time between two calls for a shard that its rate limit held back, as the KPL's
/// limiter drains: without it, a limited shard would go out a record or two at a time,
/// every time its buckets refill by that much.
const LIMITED_DRAIN_INTERVAL: Duration = Duration::from_millis(25);

/// The buffers are keyed by predicted shard; `None` while no shard map is known (then
/// records go out plain, as the KPL does).
pub(crate) type ShardKey = Option<ShardId>;

/// Everything buffered for one predicted shard.
#[derive(Debug)]
pub(crate) struct ShardQueue {
    pub aggregator: ShardAggregator,
    ready: VecDeque<KinesisRecord>,
    ready_bytes: usize,
    pub in_flight: bool,
    /// `None` for the unknown shard: its records' real shards are unknown.
    limiter: Option<ShardLimiter>,
    /// Set when the limiter refused the head record: when to try again.
    blocked_until: Option<Instant>,
}

impl ShardQueue {
    fn new(limiter: Option<ShardLimiter>) -> Self {
        ShardQueue {
            aggregator: ShardAggregator::default(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            in_flight: false,
            limiter,
            blocked_until: None,
        }
    }

    pub(crate) fn push_ready(&mut self, record: KinesisRecord) {
        self.ready_bytes += record.size();
        self.ready.push_back(record);
    }

    fn pop_ready(&mut self) -> Option<KinesisRecord> {
        let record = self.ready.pop_front()?;
        self.ready_bytes -= record.size();
        Some(record)
    }

    /// Whether nothing is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.aggregator.deadline().is_none()
    }

    /// All buffered user records, oldest first, for re-routing after a reshard.
    pub(crate) fn take_members(&mut self) -> Vec<Pending> {
        let mut members: Vec<Pending> = self.ready.drain(..).flat_map(|r| r.members).collect();
        self.ready_bytes = 0;
        members.extend(self.aggregator.take_members());
        members
    }

    fn is_candidate(&self, now: Instant) -> bool {
        !self.in_flight && !self.ready.is_empty() && self.blocked_until.is_none_or(|t| t <= now)
    }

    /// When this queue next needs attention if no call is sent meanwhile: its open
    /// aggregate's deadline, its head record's deadline, or the end of a rate-limit wait.
    pub(crate) fn next_wake(&self, can_send: bool) -> Option<Instant> {
        let mut wake = self.aggregator.deadline();
        if can_send
            && !self.in_flight
            && let Some(head) = self.ready.front()
        {
            let at = self.blocked_until.unwrap_or(head.deadline);
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        wake
    }
}

/// One PutRecords call being assembled.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub records: Vec<KinesisRecord>,
    pub shards: Vec<ShardKey>,
    bytes: usize,
}

/// The request limits of [`Queues::next_batch`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CollectionLimits {
    pub max_count: usize,
    pub max_size: usize,
}

/// Every shard's queue.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    shards: HashMap<ShardKey, ShardQueue>,
    /// Rotates the shard a call starts with, so no shard always fills calls first.
    cursor: usize,
    /// Keep records with no predicted shard (while the first shard map is being
    /// listed): sent now, they would go out unaggregated.
    pub hold_unpredicted: bool,
}

impl Queues {
    /// The queue of `key`, created with full rate-limit buckets if new.
    pub(crate) fn entry(
        &mut self,
        key: ShardKey,
        rate_limit: u32,
        now: Instant,
    ) -> &mut ShardQueue {
        self.shards.entry(key).or_insert_with_key(|key| {
            ShardQueue::new(key.as_ref().map(|_| ShardLimiter::new(rate_limit, now)))
        })
    }

    pub(crate) fn get_mut(&mut self, key: &ShardKey) -> Option<&mut ShardQueue> {
        self.shards.get_mut(key)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &ShardKey> {
        self.shards.keys()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut ShardQueue> {
        self.shards.values_mut()
    }

    /// When the queues next need attention (see [`ShardQueue::next_wake`]).
    pub(crate) fn next_wake(&self, can_send: bool) -> Option<Instant> {
        // Nothing is sent while unpredicted records are in flight (see `next_batch`):
        // their answer, not a deadline, is what to wait for then.
        let can_send = can_send && !self.unpredicted_in_flight();
        self.shards
            .iter()
            .filter_map(|(key, queue)| {
                queue.next_wake(can_send && !(key.is_none() && self.hold_unpredicted))
            })
            .min()
    }

    fn unpredicted_in_flight(&self) -> bool {
        self.shards.get(&None).is_some_and(|q| q.in_flight)
    }

    /// Drops the queue of `key` when it holds nothing and no call carries its records.
    pub(crate) fn remove_if_idle(&mut self, key: &ShardKey) {
        if self
            .shards
            .get(key)
            .is_some_and(|q| q.is_empty() && !q.in_flight)
        {
            self.shards.remove(key);
        }
    }

    /// The next PutRecords call, if one is due. Members found expired on the way are
    /// moved to `expired` (to be resolved by the caller) and their records re-encoded
    /// without them.
    pub(crate) fn next_batch(
        &mut self,
        now: Instant,
        limits: CollectionLimits,
        flush_barrier: u64,
        closing: bool,
        expired: &mut Vec<Pending>,
    ) -> Option<Batch> {
        // Records sent before the first shard map went to their real shards unpredicted:
        // until that call is answered, a later record of the same key could overtake it.
        if self.unpredicted_in_flight() {
            return None;
        }
        let mut candidates: Vec<ShardKey> = Vec::new();
        let (mut count, mut bytes, mut due) = (0, 0, false);
        for (key, queue) in &self.shards {
            if queue.is_candidate(now) && !(key.is_none() && self.hold_unpredicted) {
                count += queue.ready.len();
                bytes += queue.ready_bytes;
                due |= queue
                    .ready
                    .front()
                    .is_some_and(|r| r.is_due(now, flush_barrier, closing));
                candidates.push(key.clone());
            }
        }
        if !(due || count >= limits.max_count || bytes >= limits.max_size) {
            return None;
        }
        candidates.sort();
        let start = self.cursor % candidates.len();
        candidates.rotate_left(start);
        self.cursor = self.cursor.wrapping_add(1);

        let mut batch = Batch::default();
        'shards: for key in candidates {
            let queue = self.shards.get_mut(&key).expect("candidate queue");
            let mut took = false;
            while let Some(head) = queue.ready.front() {
                if head.min_expires <= now {
                    let record = queue.pop_ready().expect("head");
                    let (live, dead): (Vec<_>, Vec<_>) =
                        record.members.into_iter().partition(|m| m.expires_at > now);
                    expired.extend(dead);
                    if let Some(rebuilt) = KinesisRecord::rebuild(live) {
                        queue.ready_bytes += rebuilt.size();
                        queue.ready.push_front(rebuilt);
                    }
                    continue;
                }
                let size = head.size();
                let full = batch.records.len() >= limits.max_count
                    || (!batch.records.is_empty() && batch.bytes + size > limits.max_size);
                if full {
                    if took {
                        queue.in_flight = true;
                        batch.shards.push(key);
                    }
                    break 'shards;
                }
                if let Some(limiter) = &mut queue.limiter
                    && let Err(at) = limiter.try_take(size, now)
                {
                    queue.blocked_until = Some(at.max(now + LIMITED_DRAIN_INTERVAL));
                    break;
                }
                queue.blocked_until = None;
                let record = queue.pop_ready().expect("head");
                batch.bytes += size;
                batch.records.push(record);
                took = true;
            }
            if took {
                queue.in_flight = true;
                batch.shards.push(key);
            }
        }
        (!batch.records.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
mod tests {
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
            .entry(key("a"), 100, now)
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
                .entry(key("a"), 1000, now)
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
                .entry(key("a"), 100, now)
                .push_ready(plain(id, 999, now));
        }
        let batch = queues
            .next_batch(now, limits, 0, false, &mut Vec::new())
            .unwrap();
        assert_eq!(ids(&batch), [0, 1, 2]);

        // A call that is due takes the other shards' ready records along.
        let mut queues = Queues::default();
        queues
            .entry(key("a"), 100, now)
            .push_ready(plain(0, 10, now));
        queues
            .entry(key("b"), 100, now)
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
        queues.entry(None, 100, now).push_ready(plain(0, 10, now));
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
            .entry(key("a"), 100, now)
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
            .entry(key("a"), 100, now)
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
                .entry(key("slow"), 1, now)
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
            .entry(key("fast"), 100, now)
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
        queues.entry(key("a"), 100, now).push_ready(record);
        let mut expired = Vec::new();
        let batch = queues
            .next_batch(now, LIMITS, 0, false, &mut expired)
            .unwrap();
        assert_eq!(expired.iter().map(|m| m.id).collect::<Vec<_>>(), [1]);
        let sent = &batch.records[0];
        let users = kcl::kpl::deaggregate(&sent.data).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            sent.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            [0, 2]
        );
    }
}
