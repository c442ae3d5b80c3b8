//! Bad events mixed into a run, one of each kind in turn, each with the reason the
//! consumer must give when it dead-letters it. None of them may change the statistics
//! of the valid events.

use crate::events::{Reason, Region};

use super::rng::SimRng;
use super::wire::{self, Envelope};
use super::{EPOCH_MS, Effect, EventKind, SimEvent};

/// The real order a bad event is injected next to.
pub(super) struct Order {
    pub order_id: String,
    pub partition_key: String,
    /// Event time of its creation, ms since the Unix epoch.
    pub created_at: i64,
    /// Simulated ms of its creation and completion.
    pub created_ms: i64,
    pub completed_ms: i64,
    pub created_json: Vec<u8>,
    pub pickup: Region,
}

/// The `n`-th bad event. Kinds that need an order of their own use `fresh_id` (never
/// created) with `fresh_key`; the others refer to `order` and use its partition key, so
/// they land in its shard after its creation.
pub(super) fn bad_event(
    n: u64,
    order: &Order,
    fresh_id: &str,
    fresh_key: &str,
    env: &Envelope<'_>,
    rng: &mut SimRng,
) -> SimEvent {
    let at = order.created_ms;
    let fresh = |data: Vec<u8>, reason| SimEvent {
        at_ms: at,
        order_id: fresh_id.to_string(),
        partition_key: fresh_key.to_string(),
        data,
        kind: EventKind::Bad(reason),
    };
    let real = |at_ms, data: Vec<u8>, reason| SimEvent {
        at_ms,
        order_id: order.order_id.clone(),
        partition_key: order.partition_key.clone(),
        data,
        kind: EventKind::Bad(reason),
    };
    let ok_region = order.pickup;
    match n % 7 {
        0 => {
            let mut json = wire::created(env, EPOCH_MS + at, ok_region, ok_region, 1_000);
            json.truncate(json.len() / 2);
            fresh(json, Reason::MalformedJson)
        }
        1 => fresh(
            wire::unknown_type(env, EPOCH_MS + at),
            Reason::UnknownEventType,
        ),
        2 => {
            let off = Region {
                x: 50 + (n % 5) as u8,
                y: ok_region.y,
            };
            fresh(
                wire::created(env, EPOCH_MS + at, off, ok_region, 1_000),
                Reason::RegionOffGrid,
            )
        }
        3 => fresh(
            wire::created(
                env,
                EPOCH_MS + at,
                ok_region,
                ok_region,
                -rng.between(1, 5_000),
            ),
            Reason::NegativePrice,
        ),
        4 => fresh(
            wire::assigned(env, "driver-001", EPOCH_MS + at, ok_region, 0),
            Reason::AssignedBeforeCreated,
        ),
        5 => {
            // A completion of the real order, stamped before its creation.
            let env = Envelope {
                order_id: &order.order_id,
                ..clone_envelope(env)
            };
            let stamp = order.created_at - rng.between(1, 60_000);
            real(
                at,
                wire::completed(&env, stamp, "driver-001", ok_region, 0),
                Reason::CompletedBeforeCreated,
            )
        }
        _ => real(
            // The creation again, after the order is done: a duplicate.
            order.completed_ms,
            duplicate(&order.created_json, &env.event_id),
            Reason::DuplicateEvent,
        ),
    }
}

/// `event` again as another event: the same fields but `event_id`. A semantic
/// duplicate, which the consumer dead-letters, unlike a byte-identical copy (a
/// producer's redelivery), which it skips. Deterministic: the same input and id give
/// the same bytes.
fn duplicate(event: &[u8], event_id: &str) -> Vec<u8> {
    let mut json: serde_json::Value =
        serde_json::from_slice(event).expect("the simulator's own JSON");
    json["event_id"] = serde_json::Value::String(event_id.to_string());
    serde_json::to_vec(&json).expect("serialisable")
}

fn clone_envelope<'a>(env: &Envelope<'a>) -> Envelope<'a> {
    Envelope {
        event_id: env.event_id.clone(),
        order_id: env.order_id,
        trace_id: env.trace_id.clone(),
        pick: env.pick,
    }
}

/// Driver ids of the batch of oversized assignments: 50 KB each, 98 of them (about
/// 5 MB of dead letters: more than one transaction's 4 MB and exactly its 100 items
/// with the statistics item and the lease check).
const BATCH_DRIVER_BYTES: usize = 50 * 1024;
/// How many oversized assignments the batch holds.
pub(super) const BATCH_ASSIGNMENTS: usize = 98;

/// The records DynamoDB would refuse or the sums could not hold, all valid-looking
/// JSON, put next to `order` (a real order, in its shard): a creation with a 3,000-byte
/// order id, an assignment of `order` with a 500 KB driver id, a batch of
/// [`BATCH_ASSIGNMENTS`] assignments of `order` with 50 KB driver ids (each
/// `field_too_long`), and an order created at `i64::MIN / 2` (valid, counted) whose
/// completion's time difference does not fit in 64 bits (`sum_overflow`). `parts`
/// gives each event its event id, trace id and random pick.
pub(super) fn hostile_events(
    order: &Order,
    ancient_id: &str,
    mut parts: impl FnMut() -> (String, String, u64),
) -> Vec<(SimEvent, Effect)> {
    let mut envelope = |order_id| envelope_for(order_id, parts());
    let at = order.created_ms;
    let ok = order.pickup;
    let bad = |at_ms, order_id: &str, data: Vec<u8>, reason| {
        (
            SimEvent {
                at_ms,
                order_id: order_id.to_string(),
                partition_key: order.partition_key.clone(),
                data,
                kind: EventKind::Bad(reason),
            },
            Effect::Bad(reason),
        )
    };
    let mut out = Vec::new();
    let long_id = format!("{}-{}", order.order_id, "x".repeat(3_000));
    let env = envelope(&long_id);
    let created = wire::created(&env, order.created_at, ok, ok, 1_000);
    out.push(bad(
        at,
        &format!("{}-long", order.order_id),
        created,
        Reason::FieldTooLong,
    ));
    let env = envelope(&order.order_id);
    let driver = "d".repeat(500 * 1024);
    let assigned = wire::assigned(&env, &driver, order.created_at + 1, ok, 0);
    out.push(bad(at, &order.order_id, assigned, Reason::FieldTooLong));
    let driver = "d".repeat(BATCH_DRIVER_BYTES);
    for n in 0..BATCH_ASSIGNMENTS {
        let env = envelope(&order.order_id);
        let assigned = wire::assigned(&env, &driver, order.created_at + 2 + n as i64, ok, 0);
        out.push(bad(at, &order.order_id, assigned, Reason::FieldTooLong));
    }
    // Ancient but valid: its creation counts like any other.
    let env = envelope(ancient_id);
    let price = 1_234;
    out.push((
        SimEvent {
            at_ms: at,
            order_id: ancient_id.to_string(),
            partition_key: order.partition_key.clone(),
            data: wire::created(&env, i64::MIN / 2, ok, ok, price),
            kind: EventKind::Created,
        },
        Effect::Created {
            price_cents: price,
            pickup: ok,
        },
    ));
    let env = envelope(ancient_id);
    let completed = wire::completed(&env, i64::MAX / 2 + 1_000, "driver-001", ok, 0);
    out.push(bad(at, ancient_id, completed, Reason::SumOverflow));
    out
}

fn envelope_for(order_id: &str, (event_id, trace_id, pick): (String, String, u64)) -> Envelope<'_> {
    Envelope {
        event_id,
        order_id,
        trace_id,
        pick,
    }
}
