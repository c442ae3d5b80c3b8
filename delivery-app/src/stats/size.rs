//! DynamoDB's size rules, applied to the items a statistics transaction writes, so that
//! a plan knows before sending whether a transaction fits.
//!
//! DynamoDB sizes an item as the sum over its attributes of the name's UTF-8 length
//! plus the value's size: a string's UTF-8 length, a binary's length, one byte for a
//! boolean, and for a number about one byte per two significant digits plus one; a
//! number set is the sum of its numbers. An item may hold 400 KB, a transaction 100
//! items and 4 MB in all (the items' sizes, condition checks included).
//!
//! The functions here are upper bounds computed from the attribute names of
//! [`items`](super::items): exact for what a write sets, and the largest possible for
//! what is already stored and not known to the plan (an order's driver id, the
//! region string of a shard's statistics item).

use crate::events::{MAX_DETAIL_BYTES, MAX_ID_BYTES, Reason};

use super::plan::{DeadLetter, MAX_DEAD_LETTER_RAW};

/// DynamoDB's limit on one item (400 KB).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's limit on the aggregate size of the items of one transaction (4 MB).
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;
/// Kinesis's limit on a partition key (256 characters of up to 4 UTF-8 bytes each).
pub const MAX_PARTITION_KEY_BYTES: usize = 1024;
/// Kinesis's limit on a shard id and on a sequence number, in characters.
pub const MAX_KINESIS_ID_BYTES: usize = 128;
/// The largest lease item kcl-rs writes: key, owner, counters, checkpoints and, after
/// a merge, two parent and two child shard ids. Checked, not written, by a transaction.
pub const LEASE_ITEM_BOUND: usize = 4 * 1024;

/// The size of a number attribute value: one byte per two significant digits (leading
/// and trailing zeros do not count), plus one, plus one for a minus sign.
///
/// ```
/// use delivery_app::stats::size::number;
/// assert_eq!(number(0), 1);
/// assert_eq!(number(7), 2);
/// assert_eq!(number(1_000_000), 2);
/// assert_eq!(number(1_704_067_200_123), 8);
/// assert_eq!(number(-12), 3);
/// assert_eq!(number(i128::from(u64::MAX)), 11);
/// ```
pub fn number(value: i128) -> usize {
    let digits = value.unsigned_abs().to_string();
    let significant = digits.trim_end_matches('0').len();
    significant.div_ceil(2) + 1 + usize::from(value < 0)
}

/// The largest size of a number attribute value holding an `i64` or a `u64`.
pub const MAX_NUMBER_BYTES: usize = 12;

fn attr_number(name: &str, value: i128) -> usize {
    name.len() + number(value)
}

fn attr_string(name: &str, value_len: usize) -> usize {
    name.len() + value_len
}

/// An upper bound of the size of order `order_id`'s item, whatever the transaction
/// sets: exact for the key, the largest possible value for every other attribute
/// (the driver id at [`MAX_ID_BYTES`], numbers at [`MAX_NUMBER_BYTES`], at most three
/// digests), since an update's item holds what is stored besides what it sets.
pub fn order_item_bound(order_id: &str) -> usize {
    let numbers = [
        "created_at",
        "price_cents",
        "pickup_x",
        "pickup_y",
        "dropoff_x",
        "dropoff_y",
        "assigned_at",
        "completed_at",
    ];
    attr_string("order_id", order_id.len())
        + numbers
            .iter()
            .map(|name| name.len() + MAX_NUMBER_BYTES)
            .sum::<usize>()
        + attr_string("created_shard", MAX_KINESIS_ID_BYTES)
        + attr_string("driver_id", MAX_ID_BYTES)
        + "event_digests".len()
        + 3 * MAX_NUMBER_BYTES
}

/// The exact size of a dead letter's item (its `recorded_at` at its largest).
pub fn dead_letter_item(shard_id: &str, dead: &DeadLetter) -> usize {
    attr_string("dl_id", dead.id.len())
        + attr_string("shard_id", shard_id.len())
        + attr_string("sequence_number", dead.position.position.as_str().len())
        + attr_number("sub_sequence_number", dead.position.sub_sequence.into())
        + attr_string("partition_key", dead.partition_key.len())
        + attr_string("reason", dead.reason.as_str().len())
        + attr_string("detail", dead.detail.len())
        + attr_number("raw_len", dead.raw_len as i128)
        + "truncated".len()
        + 1
        + "recorded_at".len()
        + MAX_NUMBER_BYTES
        + if dead.raw.is_empty() {
            0
        } else {
            "raw".len() + dead.raw.len()
        }
        + dead
            .order_id
            .as_ref()
            .map_or(0, |id| attr_string("order_id", id.len()))
}

/// The largest a dead letter can be once capped: what shows that one always fits.
pub fn dead_letter_bound() -> usize {
    let id = 2 * MAX_KINESIS_ID_BYTES + 2 + 20;
    let reason = Reason::ALL
        .iter()
        .map(|r| r.as_str().len())
        .max()
        .unwrap_or(0);
    attr_string("dl_id", id)
        + attr_string("shard_id", MAX_KINESIS_ID_BYTES)
        + attr_string("sequence_number", MAX_KINESIS_ID_BYTES)
        + "sub_sequence_number".len()
        + MAX_NUMBER_BYTES
        + attr_string("partition_key", MAX_PARTITION_KEY_BYTES)
        + attr_string("reason", reason)
        + attr_string("detail", MAX_DETAIL_BYTES)
        + "raw_len".len()
        + MAX_NUMBER_BYTES
        + "truncated".len()
        + 1
        + "recorded_at".len()
        + MAX_NUMBER_BYTES
        + attr_string("raw", MAX_DEAD_LETTER_RAW)
        + attr_string("order_id", MAX_ID_BYTES)
}

/// An upper bound of a shard's statistics item: its key, watermark and shard id, every
/// counter at its largest, one dead-letter counter per reason, and the region string
/// with every region of the grid at the largest count (`xx_yy:<20 digits> `).
pub fn stats_item_bound(shard_id: &str) -> usize {
    let counters = [
        "events",
        "orders_created",
        "created_price_cents",
        "orders_assigned",
        "response_ms_sum",
        "orders_completed",
        "completed_price_cents",
        "completion_ms_sum",
        "cross_shard_completions",
        "redeliveries_skipped",
        "updated_at",
        "applied_sub",
    ];
    let grid = usize::from(crate::events::GRID) * usize::from(crate::events::GRID);
    attr_string("pk", "stats#".len() + shard_id.len())
        + attr_string("shard_id", shard_id.len())
        + attr_string("applied_seq", MAX_KINESIS_ID_BYTES)
        + counters
            .iter()
            .map(|c| c.len() + MAX_NUMBER_BYTES)
            .sum::<usize>()
        + Reason::ALL
            .iter()
            .map(|r| "dl_".len() + r.as_str().len() + MAX_NUMBER_BYTES)
            .sum::<usize>()
        + attr_string("regions", grid * 27)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_a_transaction_can_write_fits_in_an_item() {
        assert!(
            dead_letter_bound() < MAX_ITEM_BYTES,
            "{}",
            dead_letter_bound()
        );
        let shard = "s".repeat(MAX_KINESIS_ID_BYTES);
        assert!(stats_item_bound(&shard) < MAX_ITEM_BYTES);
        assert!(order_item_bound(&"o".repeat(MAX_ID_BYTES)) < 2 * 1024);
    }

    #[test]
    fn numbers_count_significant_digits() {
        let cases: &[(i128, usize)] = &[
            (0, 1),
            (1, 2),
            (10, 2),
            (12, 2),
            (123, 3),
            (-1, 3),
            (i64::MAX as i128, 11),
            (i64::MIN as i128, 12),
        ];
        for (value, size) in cases {
            assert_eq!(number(*value), *size, "{value}");
        }
        assert!(number(u64::MAX.into()) <= MAX_NUMBER_BYTES);
        assert!(number(i64::MIN.into()) <= MAX_NUMBER_BYTES);
    }
}
