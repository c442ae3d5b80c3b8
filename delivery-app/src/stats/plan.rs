//! What one DynamoDB transaction applies: a pure function from a shard's next records
//! and the orders' current states to the order writes, dead letters and statistics
//! deltas of one `TransactWriteItems` call.
//!
//! Each order moves through a tiny state machine: absent → created → assigned and/or
//! completed. A valid event is a transition; an event that does not fit the order's
//! state is a dead letter with its reason. Every order a chunk depends on gets exactly
//! one item in the transaction (DynamoDB forbids two operations on one item): an
//! `Update` when it changes, a `ConditionCheck` when only a rejection or a skipped
//! redelivery depended on it. Either is conditioned on the state the plan assumed, so a
//! plan made from a stale read is cancelled, never applied.
//!
//! Kinesis producers are at-least-once: when a `PutRecords` answer is lost, the same
//! user record is put again and the stream holds two byte-identical copies at different
//! positions. Every order therefore keeps the [`digest`]s of the events applied to it
//! (at most three), and a record whose digest is among them is skipped and counted
//! ([`Totals::redeliveries_skipped`]), not dead-lettered. A duplicate with other bytes
//! (another event about the same thing) is still a `duplicate_event` dead letter.
//! A rejected record is redelivered the same way, so a dead letter is keyed by its
//! record's digest and length ([`DeadLetter::id`]): the caller passes the digests
//! already dead-lettered ([`PlanLimits::dead_lettered`]), a copy of one of them (or of
//! a record rejected earlier in the chunk) is a skipped redelivery, and the dead
//! letter's put is conditioned on its absence, so two copies planned at once in two
//! shards cannot both count.

use std::collections::{HashMap, HashSet};

use kcl::checkpoint::ExtendedSequenceNumber;

use crate::events::{Event, Reason, Region, Rejection};

use super::size::{self, LEASE_ITEM_BOUND};
use super::summary::{Summary, Totals};

pub use super::size::MAX_TRANSACTION_BYTES;

/// DynamoDB's limit on items in one transaction.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Raw bytes kept in a dead letter; longer records are truncated (the item limit is
/// 400 KB, and a Kinesis record can be 1 MiB).
pub const MAX_DEAD_LETTER_RAW: usize = 64 * 1024;

/// What bounds a plan besides DynamoDB's limits.
#[derive(Clone, Debug)]
pub struct PlanLimits {
    /// The shard's sums as stored with its watermark: a transition that would make one
    /// of them overflow is a [`Reason::SumOverflow`] dead letter, since the stored
    /// counters must stay readable as 64-bit integers.
    pub stored: Summary,
    /// At most this many records (at least one): how a refused transaction is bisected.
    pub max_records: usize,
    /// The [`digest`]s of records known to be dead-lettered already: an exact copy of
    /// one is a redelivery, skipped.
    pub dead_lettered: HashSet<u64>,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            stored: Summary::default(),
            max_records: usize::MAX,
            dead_lettered: HashSet::new(),
        }
    }
}

/// One user record of the shard, parsed.
#[derive(Clone, Debug)]
pub struct ParsedRecord {
    /// Its position in the shard.
    pub position: ExtendedSequenceNumber,
    /// Its partition key.
    pub partition_key: String,
    /// Its bytes.
    pub raw: Vec<u8>,
    /// The event, or why it is rejected.
    pub parsed: Result<Event, Rejection>,
}

/// The stable 64-bit FNV-1a hash of a record's bytes: what identifies an exact copy of
/// an applied event. Stable across builds and platforms (unlike std's `DefaultHasher`),
/// since it is stored.
///
/// ```
/// use delivery_app::stats::plan::digest;
///
/// assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
/// assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
/// ```
pub fn digest(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// What the statistics need to know about a created order. Immutable once created,
/// except the two flags, which only go from false to true, and the digests, which only
/// grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderState {
    /// Event time of the creation, ms.
    pub created_at: i64,
    /// The order's price, cents.
    pub price_cents: i64,
    /// The shard whose consumer applied the creation.
    pub created_shard: String,
    /// Whether an assignment was applied.
    pub assigned: bool,
    /// Whether a completion was applied.
    pub completed: bool,
    /// The [`digest`]s of the events applied to it (creation, assignment, completion:
    /// at most three), in the order applied. Orders stored before digests were kept
    /// have none.
    pub applied: Vec<u64>,
}

/// The stored state a write is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No item for the order.
    Absent,
    /// Created, with these flags.
    Present {
        /// `assigned_at` exists.
        assigned: bool,
        /// `completed_at` exists.
        completed: bool,
    },
}

impl Expect {
    fn of(state: &Option<OrderState>) -> Expect {
        match state {
            None => Expect::Absent,
            Some(s) => Expect::Present {
                assigned: s.assigned,
                completed: s.completed,
            },
        }
    }
}

/// Attributes a creation sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creation {
    /// Event time, ms.
    pub created_at: i64,
    /// Cents.
    pub price_cents: i64,
    /// Pickup region.
    pub pickup: Region,
    /// Drop-off region.
    pub dropoff: Region,
}

/// Attributes an assignment sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Event time, ms.
    pub assigned_at: i64,
    /// The driver.
    pub driver_id: String,
}

/// The one operation on an order item in a transaction. With nothing to set it is a
/// `ConditionCheck`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderWrite {
    /// The order.
    pub order_id: String,
    /// The state before the transaction, as the plan assumed it.
    pub expect: Expect,
    /// Set by a creation.
    pub created: Option<Creation>,
    /// Set by an assignment.
    pub assigned: Option<Assignment>,
    /// `completed_at`, set by a completion.
    pub completed_at: Option<i64>,
    /// The [`digest`]s of the events this transaction applies to the order, added to
    /// its stored ones. Empty exactly when it is check-only.
    pub digests: Vec<u64>,
}

impl OrderWrite {
    /// Whether this only checks the state.
    pub fn is_check_only(&self) -> bool {
        self.created.is_none() && self.assigned.is_none() && self.completed_at.is_none()
    }
}

/// A rejected record, for the dead-letter table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record's identity, the same for every copy of it: `<digest>-<length>`, its
    /// bytes' [`digest`] in 16 hex digits and their length.
    pub id: String,
    /// The record's [`digest`].
    pub digest: u64,
    /// The record's position.
    pub position: ExtendedSequenceNumber,
    /// The record's partition key.
    pub partition_key: String,
    /// Why.
    pub reason: Reason,
    /// What exactly.
    pub detail: String,
    /// The order, if readable.
    pub order_id: Option<String>,
    /// The record's bytes, at most [`MAX_DEAD_LETTER_RAW`].
    pub raw: Vec<u8>,
    /// The record's full length.
    pub raw_len: usize,
}

/// One transaction's worth of records.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// How many of the given records it covers (from the first).
    pub records: usize,
    /// The position of the last record covered: the shard's new watermark.
    pub last: ExtendedSequenceNumber,
    /// One write per order touched.
    pub orders: Vec<OrderWrite>,
    /// Rejected records.
    pub dead_letters: Vec<DeadLetter>,
    /// Counters to add to the shard's statistics item.
    pub delta: Totals,
    /// The states of the touched orders after the transaction.
    pub after: HashMap<String, Option<OrderState>>,
}

impl Chunk {
    /// Items in the transaction, counting the shard's statistics item and the check
    /// that the writer still holds the shard's lease.
    pub fn items(&self) -> usize {
        2 + self.orders.len() + self.dead_letters.len()
    }
}

/// The distinct orders the valid events of `records` refer to: the states a plan needs.
pub fn referenced_orders(records: &[ParsedRecord]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter_map(|r| r.parsed.as_ref().ok().map(Event::order_id))
        .filter(|id| seen.insert(*id))
        .map(str::to_string)
        .collect()
}

/// A transition that fits the order's state.
enum Transition {
    Create(Creation),
    Assign(Assignment),
    Complete(i64),
}

/// What a valid event does to its order.
enum Decision {
    /// It fits: apply it.
    Apply(Transition),
    /// The record is an exact copy of an event already applied to the order (its
    /// digest is among the order's): skip it, count it, change nothing.
    Redelivery,
    /// It does not fit: a dead letter, with why.
    Reject(Reason, String),
}

/// Applies an event, whose record's bytes have digest `digest`, to an order's state:
/// a redelivery first, then the transition or why it does not fit.
fn decide(event: &Event, digest: u64, state: &Option<OrderState>) -> Decision {
    if state.as_ref().is_some_and(|s| s.applied.contains(&digest)) {
        return Decision::Redelivery;
    }
    match transition(event, state) {
        Ok(t) => Decision::Apply(t),
        Err((reason, detail)) => Decision::Reject(reason, detail),
    }
}

/// The transition an event (not a redelivery) makes, or why it does not fit.
fn transition(event: &Event, state: &Option<OrderState>) -> Result<Transition, (Reason, String)> {
    match (event, state) {
        (
            Event::Created {
                pickup,
                dropoff,
                price_cents,
                created_at,
                ..
            },
            None,
        ) => Ok(Transition::Create(Creation {
            created_at: *created_at,
            price_cents: *price_cents,
            pickup: *pickup,
            dropoff: *dropoff,
        })),
        (Event::Created { .. }, Some(_)) => Err((
            Reason::DuplicateEvent,
            "the order was already created".into(),
        )),
        (Event::Assigned { .. }, None) => Err((
            Reason::AssignedBeforeCreated,
            "the order has not been created".into(),
        )),
        (Event::Assigned { assigned_at, .. }, Some(s)) if *assigned_at < s.created_at => Err((
            Reason::AssignedBeforeCreated,
            format!(
                "assigned_at {assigned_at} is before created_at {}",
                s.created_at
            ),
        )),
        (Event::Assigned { .. }, Some(s)) if s.assigned => Err((
            Reason::DuplicateEvent,
            "the order was already assigned".into(),
        )),
        (
            Event::Assigned {
                assigned_at,
                driver_id,
                ..
            },
            Some(_),
        ) => Ok(Transition::Assign(Assignment {
            assigned_at: *assigned_at,
            driver_id: driver_id.clone(),
        })),
        (Event::Completed { .. }, None) => Err((
            Reason::CompletedBeforeCreated,
            "the order has not been created".into(),
        )),
        (Event::Completed { completed_at, .. }, Some(s)) if *completed_at < s.created_at => Err((
            Reason::CompletedBeforeCreated,
            format!(
                "completed_at {completed_at} is before created_at {}",
                s.created_at
            ),
        )),
        (Event::Completed { .. }, Some(s)) if s.completed => Err((
            Reason::DuplicateEvent,
            "the order was already completed".into(),
        )),
        (Event::Completed { completed_at, .. }, Some(_)) => Ok(Transition::Complete(*completed_at)),
    }
}

/// Plans the next transaction for `records` (non-empty, in shard order, none applied
/// yet) of `shard_id`. `states` must hold the state before these records of every order
/// in [`referenced_orders`] (`None`: absent).
///
/// The chunk takes records while the transaction stays within
/// [`MAX_TRANSACTION_ITEMS`] items and [`MAX_TRANSACTION_BYTES`]; it always takes at
/// least one. [`plan_chunk_within`] with no stored sums and no record limit.
pub fn plan_chunk(
    shard_id: &str,
    records: &[ParsedRecord],
    states: &HashMap<String, Option<OrderState>>,
) -> Chunk {
    plan_chunk_within(shard_id, records, states, &PlanLimits::default())
}

/// [`plan_chunk`] within `limits`: at most `limits.max_records` records, and sums that
/// stay within 64 bits counted from `limits.stored`.
///
/// The bytes are counted with [`size`]'s rules: the shard's statistics item and the
/// lease item at their largest, each order item at its largest for its id, each dead
/// letter exactly. Every one of them fits in an item by construction (ids are bounded
/// by the parser, dead letters are capped), so only the transaction can overflow, and
/// then the chunk ends before the record.
pub fn plan_chunk_within(
    shard_id: &str,
    records: &[ParsedRecord],
    states: &HashMap<String, Option<OrderState>>,
    limits: &PlanLimits,
) -> Chunk {
    plan(shard_id, records, states, limits, None)
}

/// [`plan_chunk_within`] for a processor that holds orders in memory until they
/// complete ([`hold`](super::hold)): an order's write takes an item (and its bytes) of
/// the transaction only if the transaction will make it. That is at once for an order
/// read from the table, and only when it completes for an order `held` says is held or
/// one this chunk creates from absent (until then its events merge into the held
/// order). The chunk's writes then exceed the limits until settling against the same
/// held orders takes out the held ones ([`HeldOrders::plan_chunk`] does both); what it
/// leaves is within them, so a transaction carries up to [`MAX_TRANSACTION_ITEMS`]
/// items really written instead of stopping at the held ones.
///
/// [`HeldOrders::plan_chunk`]: super::hold::HeldOrders::plan_chunk
///
/// ```
/// use std::collections::HashMap;
/// use delivery_app::stats::plan::{ParsedRecord, PlanLimits, plan_chunk_holding, plan_chunk_within};
/// use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
///
/// // 150 new orders: each one's creation held, none written.
/// let records: Vec<ParsedRecord> = (0..150)
///     .map(|n| {
///         let raw = format!(
///             r#"{{"type":"order_created","order_id":"o{n}","created_at":1,"pickup":{{"x":1,"y":1}},"dropoff":{{"x":2,"y":2}},"price_cents":100}}"#
///         )
///         .into_bytes();
///         ParsedRecord {
///             position: ExtendedSequenceNumber::new(SequencePosition::Sequence(format!("{}", 100 + n))),
///             parsed: delivery_app::events::parse(&raw),
///             partition_key: format!("o{n}"),
///             raw,
///         }
///     })
///     .collect();
/// let absent: HashMap<_, _> = (0..150).map(|n| (format!("o{n}"), None)).collect();
/// let limits = PlanLimits::default();
/// // Counting every order as an item: 98 records (the statistics item and the lease
/// // check take two).
/// assert_eq!(plan_chunk_within("s", &records, &absent, &limits).records, 98);
/// // Knowing new orders are held: all of them.
/// assert_eq!(plan_chunk_holding("s", &records, &absent, &limits, |_| false).records, 150);
/// ```
pub fn plan_chunk_holding(
    shard_id: &str,
    records: &[ParsedRecord],
    states: &HashMap<String, Option<OrderState>>,
    limits: &PlanLimits,
    held: impl Fn(&str) -> bool,
) -> Chunk {
    plan(shard_id, records, states, limits, Some(&held))
}

/// [`plan_chunk_within`], or with `held` [`plan_chunk_holding`].
fn plan(
    shard_id: &str,
    records: &[ParsedRecord],
    states: &HashMap<String, Option<OrderState>>,
    limits: &PlanLimits,
    held: Option<&dyn Fn(&str) -> bool>,
) -> Chunk {
    assert!(!records.is_empty(), "plan_chunk needs records");
    let mut chunk = Chunk {
        records: 0,
        last: records[0].position.clone(),
        orders: Vec::new(),
        dead_letters: Vec::new(),
        delta: Totals::default(),
        after: HashMap::new(),
    };
    let mut op_index: HashMap<String, usize> = HashMap::new();
    // Per op: whether its write is counted in `items` and `bytes` (with `held`, a held
    // or newly created order's is not until it completes).
    let mut counted: Vec<bool> = Vec::new();
    let mut items = 2;
    // Records rejected by this chunk: a copy later in it is a redelivery too.
    let mut rejected: HashSet<u64> = HashSet::new();
    let mut bytes = size::stats_item_bound(shard_id) + LEASE_ITEM_BOUND;
    for record in records {
        if chunk.records >= limits.max_records.max(1) {
            break;
        }
        let record_digest = digest(&record.raw);
        let (order, outcome) = match &record.parsed {
            _ if limits.dead_lettered.contains(&record_digest)
                || rejected.contains(&record_digest) =>
            {
                (None, Outcome::Redelivery)
            }
            Err(rejection) => (None, Outcome::Rejected(rejection.clone())),
            Ok(event) => {
                let id = event.order_id();
                let state = chunk.after.get(id).unwrap_or_else(|| {
                    states
                        .get(id)
                        .unwrap_or_else(|| panic!("no state fetched for order {id}"))
                });
                let outcome = match decide(event, record_digest, state) {
                    Decision::Apply(t) => {
                        let sums = &chunk.delta.sums;
                        match overflow(&t, state, &limits.stored, sums) {
                            None => Outcome::Apply(t, record_digest),
                            Some(detail) => Outcome::Rejected(Rejection::new(
                                Reason::SumOverflow,
                                detail,
                                Some(id),
                            )),
                        }
                    }
                    Decision::Redelivery => Outcome::Redelivery,
                    Decision::Reject(reason, detail) => Outcome::Rejected(Rejection {
                        reason,
                        detail,
                        order_id: Some(id.to_string()),
                    }),
                };
                (Some(id), outcome)
            }
        };
        // Items and bytes this record adds.
        let new_op = order.is_some_and(|id| !op_index.contains_key(id));
        let completes = matches!(outcome, Outcome::Apply(Transition::Complete(_), _));
        let counts_now = order.is_some_and(|id| match (op_index.get(id), held) {
            (Some(&op), _) => !counted[op] && completes,
            (None, None) => true,
            (None, Some(held)) => {
                let created_from_absent = matches!(states.get(id), Some(None))
                    && matches!(outcome, Outcome::Apply(Transition::Create(_), _));
                completes || !(held(id) || created_from_absent)
            }
        });
        let dead = match &outcome {
            Outcome::Rejected(rejection) => {
                Some(dead_letter(record, record_digest, rejection.clone()))
            }
            _ => None,
        };
        let added_items = usize::from(counts_now) + usize::from(dead.is_some());
        let added_bytes = order
            .filter(|_| counts_now)
            .map_or(0, size::order_item_bound)
            + dead
                .as_ref()
                .map_or(0, |d| size::dead_letter_item(shard_id, d));
        if chunk.records > 0
            && (items + added_items > MAX_TRANSACTION_ITEMS
                || bytes + added_bytes > MAX_TRANSACTION_BYTES)
        {
            break;
        }
        items += added_items;
        bytes += added_bytes;
        if let Some(id) = order.filter(|_| counts_now && !new_op) {
            counted[op_index[id]] = true;
        }
        chunk.records += 1;
        chunk.last = record.position.clone();
        if let Some(id) = order
            && new_op
        {
            let before = states.get(id).cloned().flatten();
            op_index.insert(id.to_string(), chunk.orders.len());
            counted.push(counts_now);
            chunk.orders.push(OrderWrite {
                order_id: id.to_string(),
                expect: Expect::of(&before),
                created: None,
                assigned: None,
                completed_at: None,
                digests: Vec::new(),
            });
            chunk.after.insert(id.to_string(), before);
        }
        match outcome {
            // The order's op (a check unless something else changes it) stays: the
            // decision depended on its state.
            Outcome::Redelivery => chunk.delta.redeliveries_skipped += 1,
            Outcome::Rejected(rejection) => {
                rejected.insert(record_digest);
                *chunk
                    .delta
                    .dead_letters
                    .entry(rejection.reason)
                    .or_default() += 1;
                chunk
                    .dead_letters
                    .push(dead.expect("made above for a rejection"));
            }
            Outcome::Apply(transition, digest) => {
                let id = order.expect("a valid event has an order");
                let op = &mut chunk.orders[op_index[id]];
                let state = chunk.after.get_mut(id).expect("inserted above");
                let delta = &mut chunk.delta;
                delta.sums.events += 1;
                op.digests.push(digest);
                match transition {
                    Transition::Create(creation) => {
                        delta.sums.orders_created += 1;
                        delta.sums.created_price_cents += creation.price_cents;
                        *delta.regions.entry(creation.pickup).or_default() += 1;
                        *state = Some(OrderState {
                            created_at: creation.created_at,
                            price_cents: creation.price_cents,
                            created_shard: shard_id.to_string(),
                            assigned: false,
                            completed: false,
                            applied: vec![digest],
                        });
                        op.created = Some(creation);
                    }
                    Transition::Assign(assignment) => {
                        let s = state.as_mut().expect("decided on a created order");
                        delta.sums.orders_assigned += 1;
                        // Checked by `overflow` before the record was taken.
                        delta.sums.response_ms_sum += assignment.assigned_at - s.created_at;
                        s.assigned = true;
                        s.applied.push(digest);
                        op.assigned = Some(assignment);
                    }
                    Transition::Complete(completed_at) => {
                        let s = state.as_mut().expect("decided on a created order");
                        delta.sums.orders_completed += 1;
                        delta.sums.completed_price_cents += s.price_cents;
                        delta.sums.completion_ms_sum += completed_at - s.created_at;
                        if s.created_shard != shard_id {
                            delta.cross_shard_completions += 1;
                        }
                        s.completed = true;
                        s.applied.push(digest);
                        op.completed_at = Some(completed_at);
                    }
                }
            }
        }
    }
    chunk
}

/// What planning does with one record.
enum Outcome {
    /// An exact copy of an event applied to its order: skipped.
    Redelivery,
    /// A dead letter.
    Rejected(Rejection),
    /// A transition, and the digest of the record that makes it.
    Apply(Transition, u64),
}

mod reject;

use reject::{dead_letter, overflow};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
