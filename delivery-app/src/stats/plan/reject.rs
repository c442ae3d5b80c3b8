//! The two ways planning itself rejects a record, apart from the order's state machine:
//! a sum that would overflow, and the dead letter every rejection becomes, capped so
//! that it always fits in an item.

use crate::events::{MAX_DETAIL_BYTES, MAX_ID_BYTES, Rejection, truncate};
use crate::stats::size::MAX_PARTITION_KEY_BYTES;
use crate::stats::summary::Summary;

use super::{DeadLetter, MAX_DEAD_LETTER_RAW, OrderState, ParsedRecord, Transition};

/// Why applying `t` to an order in `state` would make a sum of the shard overflow
/// (counted from `stored` plus the chunk's `delta`), or `None` when every sum fits.
pub(super) fn overflow(
    t: &Transition,
    state: &Option<OrderState>,
    stored: &Summary,
    delta: &Summary,
) -> Option<String> {
    let add = |name: &str, stored: i64, delta: i64, value: Option<i64>| -> Option<String> {
        let fits = value.and_then(|v| stored.checked_add(delta)?.checked_add(v));
        fits.is_none().then(|| match value {
            None => format!("the time difference for {name} does not fit in 64 bits"),
            Some(v) => format!("adding {v} to {name} would overflow 64 bits"),
        })
    };
    let created_at = state.as_ref().map(|s| s.created_at);
    match t {
        Transition::Create(c) => add(
            "created_price_cents",
            stored.created_price_cents,
            delta.created_price_cents,
            Some(c.price_cents),
        ),
        Transition::Assign(a) => add(
            "response_ms_sum",
            stored.response_ms_sum,
            delta.response_ms_sum,
            created_at.and_then(|c| a.assigned_at.checked_sub(c)),
        ),
        Transition::Complete(completed_at) => add(
            "completion_ms_sum",
            stored.completion_ms_sum,
            delta.completion_ms_sum,
            created_at.and_then(|c| completed_at.checked_sub(c)),
        )
        .or_else(|| {
            add(
                "completed_price_cents",
                stored.completed_price_cents,
                delta.completed_price_cents,
                state.as_ref().map(|s| s.price_cents),
            )
        }),
    }
}

/// The dead letter of `record`, every field capped so that the item always fits (see
/// [`crate::stats::size::dead_letter_bound`]).
pub(super) fn dead_letter(record: &ParsedRecord, digest: u64, rejection: Rejection) -> DeadLetter {
    DeadLetter {
        id: format!("{digest:016x}-{}", record.raw.len()),
        digest,
        position: record.position.clone(),
        partition_key: truncate(&record.partition_key, MAX_PARTITION_KEY_BYTES).to_string(),
        reason: rejection.reason,
        detail: truncate(&rejection.detail, MAX_DETAIL_BYTES).to_string(),
        order_id: rejection
            .order_id
            .map(|id| truncate(&id, MAX_ID_BYTES).to_string()),
        raw: record.raw[..record.raw.len().min(MAX_DEAD_LETTER_RAW)].to_vec(),
        raw_len: record.raw.len(),
    }
}
