//! Bad events mixed into a run, one of each kind in turn, each with the reason the
//! consumer must give when it dead-letters it. None of them may change the statistics
//! of the valid events.

use crate::events::{Reason, Region};

use super::rng::SimRng;
use super::wire::{self, Envelope};
use super::{EPOCH_MS, EventKind, SimEvent};

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
