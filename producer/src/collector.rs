//! Collection: the per-shard queues of Kinesis records, and PutRecords calls built from
//! them (at most [`collection_max_count`] entries and [`collection_max_size`] bytes of
//! data plus partition keys).
//!
//! A shard is in at most one call at a time, so Kinesis receives a shard's records in
//! the order they were sealed: per partition key, user records keep their order unless
//! a failure sends one back for a retry. After a reshard, a shard's queue also waits
//! while a call for a retired shard (closed, or not predicted any more) whose hash key
//! range overlaps its own is in flight: Kinesis routes that call's records by hash key
//! into the new shards, and records of the same keys must not overtake them. A call goes out when one of its shards' records
//! is due (its buffered time is up, or a flush is waiting for it), or when the ready
//! records fill a call; it also takes whatever else is ready, as the KPL does.
//!
//! [`collection_max_count`]: crate::ProducerConfig::collection_max_count
//! [`collection_max_size`]: crate::ProducerConfig::collection_max_size

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::Duration;

use hashbrown::HashMap;
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
    /// The shard's hash key range; `None` when unknown (the unpredicted queue), which
    /// overlaps every range.
    range: Option<RangeInclusive<u128>>,
    /// The shard map no longer predicts this shard: a call of it still in flight fences
    /// the queues whose ranges overlap its range.
    retired: bool,
}

impl ShardQueue {
    fn new(limiter: Option<ShardLimiter>, range: Option<RangeInclusive<u128>>) -> Self {
        ShardQueue {
            aggregator: ShardAggregator::default(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            in_flight: false,
            limiter,
            blocked_until: None,
            range,
            retired: false,
        }
    }

    /// Marks the shard as no longer predicted by the shard map.
    pub(crate) fn retire(&mut self) {
        self.retired = true;
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
    /// The queue of `key`, whose hash key range is `range`, created with full
    /// rate-limit buckets if new.
    pub(crate) fn entry(
        &mut self,
        key: ShardKey,
        range: Option<&RangeInclusive<u128>>,
        rate_limit: u32,
        now: Instant,
    ) -> &mut ShardQueue {
        let queue = self.shards.entry(key).or_insert_with_key(|key| {
            let limiter = key.as_ref().map(|_| ShardLimiter::new(rate_limit, now));
            ShardQueue::new(limiter, range.cloned())
        });
        // Records go only to shards the map predicts: not retired (any more).
        queue.retired = false;
        queue
    }

    /// The ranges of retired shards with a call in flight.
    fn fences(&self) -> Vec<Option<&RangeInclusive<u128>>> {
        self.shards
            .values()
            .filter(|q| q.retired && q.in_flight)
            .map(|q| q.range.as_ref())
            .collect()
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
        let fences = self.fences();
        self.shards
            .iter()
            .filter_map(|(key, queue)| {
                let held = key.is_none() && self.hold_unpredicted;
                queue.next_wake(can_send && !held && !is_fenced(queue, &fences))
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
        let fences = self.fences();
        let mut candidates: Vec<ShardKey> = Vec::new();
        let (mut count, mut bytes, mut due) = (0, 0, false);
        for (key, queue) in &self.shards {
            if queue.is_candidate(now)
                && !(key.is_none() && self.hold_unpredicted)
                && !is_fenced(queue, &fences)
            {
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

/// Whether `queue` must wait for a retired shard's call: their ranges overlap, so the
/// call may carry records of keys now routed to `queue`. An unknown range overlaps all.
fn is_fenced(queue: &ShardQueue, fences: &[Option<&RangeInclusive<u128>>]) -> bool {
    fences.iter().any(|fence| match (fence, &queue.range) {
        (Some(fence), Some(range)) => fence.start() <= range.end() && range.start() <= fence.end(),
        _ => true,
    })
}

#[cfg(test)]
mod tests;
