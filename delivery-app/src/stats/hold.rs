//! Orders held in memory until they complete: which order writes a transaction really
//! makes (pure).
//!
//! An order created by this shard's processor is written once, when it completes, not
//! once per event: its creation and assignment are counted in the statistics by the
//! transactions that cover them (the watermark fences them as before), while the order's
//! state stays in memory, its writes merged into one. On AWS a transactional write is
//! two write units per item, and an order has about three events, so this is about a
//! third of the order writes.
//!
//! What is held must be rebuildable after a crash: the processor checkpoints no further
//! than just before the oldest held order's first record ([`HeldOrders::resume_after`]),
//! and the next owner replays from there, planning the records up to the watermark
//! again against the stored order states without writing anything: an order created
//! in that span and never written is absent from the table, so it is held again, with
//! the same state; one that was written reads back with its events' digests, so its
//! replayed events are redeliveries. An order held too long is written
//! ([`HeldOrders::take_where`]) so the checkpoint moves on, and every held order is
//! written before the shard's end, for its children.
//!
//! The plan may only assume an order absent (and so hold its creation) after reading
//! that it is: a copy of an old creation must meet the stored order, since nothing
//! else would catch it before its statistics are counted.
//!
//! ```
//! use std::collections::HashMap;
//! use delivery_app::events::Region;
//! use delivery_app::stats::hold::HeldOrders;
//! use delivery_app::stats::plan::{Creation, Expect, OrderState, OrderWrite};
//!
//! let created = OrderWrite {
//!     order_id: "o1".into(),
//!     expect: Expect::Absent,
//!     created: Some(Creation {
//!         created_at: 10,
//!         price_cents: 500,
//!         pickup: Region { x: 1, y: 1 },
//!         dropoff: Region { x: 2, y: 2 },
//!     }),
//!     assigned: None,
//!     completed_at: None,
//!     digests: vec![7],
//! };
//! let state = OrderState {
//!     created_at: 10,
//!     price_cents: 500,
//!     created_shard: "shard-0".into(),
//!     assigned: false,
//!     completed: false,
//!     applied: vec![7],
//! };
//! let mut held = HeldOrders::default();
//! let after = HashMap::from([("o1".to_string(), Some(state.clone()))]);
//! let (writes, settled) = held.settle(vec![created], &after, |_| None);
//! // Created and not completed: nothing to write, the order is held once committed.
//! assert!(writes.is_empty());
//! held.commit(settled);
//! assert_eq!(held.state("o1"), Some(&state));
//! ```

use std::collections::HashMap;

use kcl::checkpoint::ExtendedSequenceNumber;

use super::plan::{
    Chunk, Expect, OrderState, OrderWrite, ParsedRecord, PlanLimits, plan_chunk_holding,
};

/// An order created here and not written yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// Everything applied to it so far, as one write from absent.
    pub write: OrderWrite,
    /// Its state after those events.
    pub state: OrderState,
    /// Where a replay that rebuilds it starts: the record before its first one here
    /// (`None`: the shard's start).
    resume_after: Option<ExtendedSequenceNumber>,
    /// When it was first held, in the caller's clock (records seen, or time).
    since: u64,
}

/// The orders a shard's processor holds in memory. See the [module](self).
#[derive(Clone, Debug, Default)]
pub struct HeldOrders {
    orders: HashMap<String, Held>,
    /// The caller's clock for [`HeldOrders::take_where`]: set by [`HeldOrders::tick`].
    now: u64,
}

/// The change a transaction makes to the held orders once committed
/// ([`HeldOrders::commit`]).
#[derive(Debug, Default)]
pub struct Settled {
    /// Orders held (again) after it: their merged write, state and replay start.
    hold: Vec<(
        String,
        OrderWrite,
        OrderState,
        Option<ExtendedSequenceNumber>,
    )>,
    /// Orders written by it, no longer held.
    release: Vec<String>,
}

impl HeldOrders {
    /// The state of a held order.
    pub fn state(&self, order_id: &str) -> Option<&OrderState> {
        self.orders.get(order_id).map(|h| &h.state)
    }

    /// Whether `order_id` is held.
    pub fn contains(&self, order_id: &str) -> bool {
        self.orders.contains_key(order_id)
    }

    /// How many orders are held.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Advances the clock [`HeldOrders::take_where`] compares with.
    pub fn tick(&mut self, now: u64) {
        self.now = now;
    }

    /// Where a replay must start to rebuild every held order: `None` with nothing
    /// held, `Some(None)` from the shard's start.
    pub fn resume_after(&self) -> Option<Option<&ExtendedSequenceNumber>> {
        let mut oldest: Option<Option<&ExtendedSequenceNumber>> = None;
        for held in self.orders.values() {
            let candidate = held.resume_after.as_ref();
            oldest = Some(match (oldest, candidate) {
                (None, c) => c,
                (Some(None), _) | (Some(_), None) => None,
                (Some(Some(a)), Some(b)) => Some(if b.compare(a).is_lt() { b } else { a }),
            });
        }
        oldest
    }

    /// Splits a planned transaction's order `writes`: a write to a held order merges
    /// into it, and is made (as one write from absent) only if the order completes; a
    /// creation from a state read as absent is held unless the order completes in the
    /// same transaction; any other write is made as planned. `after` holds the orders'
    /// states after the transaction, `resume_after` where a replay that rebuilds a
    /// newly held order starts. Returns the writes the transaction makes, and the
    /// change to the held orders once it commits.
    pub fn settle(
        &self,
        planned: Vec<OrderWrite>,
        after: &HashMap<String, Option<OrderState>>,
        resume_after: impl Fn(&str) -> Option<ExtendedSequenceNumber>,
    ) -> (Vec<OrderWrite>, Settled) {
        let mut writes = Vec::new();
        let mut settled = Settled::default();
        for write in planned {
            let state = after.get(&write.order_id).cloned().flatten();
            let completed = state.as_ref().is_some_and(|s| s.completed);
            if let Some(held) = self.orders.get(&write.order_id) {
                let merged = merge(&held.write, write);
                if completed {
                    settled.release.push(merged.order_id.clone());
                    writes.push(merged);
                } else {
                    let state = state.unwrap_or_else(|| held.state.clone());
                    let id = merged.order_id.clone();
                    settled
                        .hold
                        .push((id, merged, state, held.resume_after.clone()));
                }
            } else if write.expect == Expect::Absent
                && write.created.is_some()
                && let Some(state) = state.filter(|_| !completed)
            {
                let start = resume_after(&write.order_id);
                settled
                    .hold
                    .push((write.order_id.clone(), write, state, start));
            } else {
                writes.push(write);
            }
        }
        (writes, settled)
    }

    /// The next transaction for `records` of `shard_id`: planned knowing which orders
    /// are held here ([`plan_chunk_holding`], so a held or new order takes an item only
    /// when the transaction writes it), then settled ([`HeldOrders::settle`]), its
    /// order writes becoming the ones the transaction makes. `first_seen` gives, per
    /// order, where a replay that rebuilds it starts (none given: the shard's start).
    /// Returns the chunk and the change to the held orders once it commits. Planning
    /// and settling against the same held orders is what keeps the transaction within
    /// DynamoDB's limits.
    pub fn plan_chunk(
        &self,
        shard_id: &str,
        records: &[ParsedRecord],
        states: &HashMap<String, Option<OrderState>>,
        limits: &PlanLimits,
        first_seen: &HashMap<String, Option<ExtendedSequenceNumber>>,
    ) -> (Chunk, Settled) {
        let mut chunk =
            plan_chunk_holding(shard_id, records, states, limits, |id| self.contains(id));
        let (writes, settled) =
            self.settle(std::mem::take(&mut chunk.orders), &chunk.after, |id| {
                first_seen.get(id).cloned().flatten()
            });
        chunk.orders = writes;
        (chunk, settled)
    }

    /// Applies a committed transaction's [`Settled`] change.
    pub fn commit(&mut self, settled: Settled) {
        for id in settled.release {
            self.orders.remove(&id);
        }
        for (id, write, state, resume_after) in settled.hold {
            let since = self.orders.get(&id).map_or(self.now, |h| h.since);
            self.orders.insert(
                id,
                Held {
                    write,
                    state,
                    resume_after,
                    since,
                },
            );
        }
    }

    /// Takes out, to be written, the held orders first held at or before `cutoff` of
    /// the clock, at most `max`, oldest first (orders held at once by id, so that the
    /// same state always writes the same orders).
    pub fn take_where(&mut self, cutoff: u64, max: usize) -> Vec<Held> {
        let mut old: Vec<(&String, u64)> = self
            .orders
            .iter()
            .filter(|(_, h)| h.since <= cutoff)
            .map(|(id, h)| (id, h.since))
            .collect();
        old.sort_unstable_by(|(a, since_a), (b, since_b)| since_a.cmp(since_b).then(a.cmp(b)));
        let ids: Vec<String> = old
            .into_iter()
            .take(max)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| self.orders.remove(&id))
            .collect()
    }

    /// Puts back orders taken by [`HeldOrders::take_where`] whose write did not commit.
    pub fn put_back(&mut self, orders: Vec<Held>) {
        for held in orders {
            self.orders.insert(held.write.order_id.clone(), held);
        }
    }

    /// Forgets a held order (its stored state is to be read instead).
    pub fn forget(&mut self, order_id: &str) {
        self.orders.remove(order_id);
    }

    /// Forgets every held order (the lease is gone: the next owner rebuilds them).
    pub fn clear(&mut self) {
        self.orders.clear();
    }
}

/// `earlier` followed by `later`, as one write from `earlier`'s expected state.
fn merge(earlier: &OrderWrite, later: OrderWrite) -> OrderWrite {
    let mut digests = earlier.digests.clone();
    digests.extend(later.digests);
    OrderWrite {
        order_id: later.order_id,
        expect: earlier.expect,
        created: earlier.created.clone().or(later.created),
        assigned: earlier.assigned.clone().or(later.assigned),
        completed_at: earlier.completed_at.or(later.completed_at),
        digests,
    }
}

#[cfg(test)]
mod tests;
