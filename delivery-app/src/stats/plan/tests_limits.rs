//! The plan's limits: exact sizes against DynamoDB's, sums that must stay within 64
//! bits, the record limit a bisection sets, and dead letters that always fit.

use super::*;
use crate::events::{MAX_ID_BYTES, parse};
use crate::stats::size::{
    MAX_ITEM_BYTES, dead_letter_bound, dead_letter_item, order_item_bound, stats_item_bound,
};

fn rec(n: u64, json: &str) -> ParsedRecord {
    ParsedRecord {
        position: ExtendedSequenceNumber::at(format!("{}", 1000 + n), 0),
        partition_key: "pk".into(),
        raw: json.as_bytes().to_vec(),
        parsed: parse(json.as_bytes()),
    }
}

fn assigned(n: u64, order: &str, driver: &str, at: i64) -> ParsedRecord {
    rec(
        n,
        &format!(
            r#"{{"type":"order_assigned","order_id":"{order}","driver_id":"{driver}","assigned_at":{at}}}"#
        ),
    )
}

fn created(n: u64, order: &str, at: i64, price: i64) -> ParsedRecord {
    rec(
        n,
        &format!(
            r#"{{"type":"order_created","order_id":"{order}","created_at":{at},"pickup":{{"x":1,"y":2}},"dropoff":{{"x":3,"y":4}},"price_cents":{price}}}"#
        ),
    )
}

fn completed(n: u64, order: &str, at: i64) -> ParsedRecord {
    rec(
        n,
        &format!(r#"{{"type":"order_completed","order_id":"{order}","completed_at":{at}}}"#),
    )
}

fn created_state(created_at: i64, price: i64) -> Option<OrderState> {
    Some(OrderState {
        created_at,
        price_cents: price,
        created_shard: "s0".into(),
        assigned: false,
        completed: false,
        applied: Vec::new(),
    })
}

/// The bytes a chunk's transaction holds, by the same rules the plan counts with.
fn transaction_bytes(shard: &str, chunk: &Chunk) -> usize {
    stats_item_bound(shard)
        + size::LEASE_ITEM_BOUND
        + chunk
            .orders
            .iter()
            .map(|o| order_item_bound(&o.order_id))
            .sum::<usize>()
        + chunk
            .dead_letters
            .iter()
            .map(|d| dead_letter_item(shard, d))
            .sum::<usize>()
}

#[test]
fn ninety_eight_assignments_with_50_kb_driver_ids_split_under_4_mb() {
    let driver = "d".repeat(50 * 1024);
    let records: Vec<_> = (0..98)
        .map(|n| assigned(n, "o1", &driver, 10 + n as i64))
        .collect();
    let states = HashMap::from([("o1".to_string(), created_state(1, 5))]);
    let mut planned = 0;
    let mut chunks = 0;
    while planned < records.len() {
        let chunk = plan_chunk("s0", &records[planned..], &states);
        assert!(chunk.items() <= MAX_TRANSACTION_ITEMS);
        assert!(transaction_bytes("s0", &chunk) <= MAX_TRANSACTION_BYTES);
        assert!(
            chunk
                .dead_letters
                .iter()
                .all(|d| d.reason == Reason::FieldTooLong && d.raw.len() == d.raw_len)
        );
        assert_eq!(chunk.delta.sums.events, 0);
        planned += chunk.records;
        chunks += 1;
    }
    // About 51 KB each: 98 of them are over 4 MB, so two transactions.
    assert_eq!(chunks, 2);
}

#[test]
fn the_plan_counts_exact_dead_letter_sizes_up_to_4_mb() {
    // Dead letters of 60 KB: the chunk ends where the next one would cross 4 MB.
    let big = |n: u64| {
        format!(
            "{{\"type\":\"x\",\"n\":{n},\"pad\":\"{}\"}}",
            "a".repeat(60 * 1024)
        )
    };
    let records: Vec<_> = (0..90).map(|n| rec(n, &big(n))).collect();
    let chunk = plan_chunk("s0", &records, &HashMap::new());
    let bytes = transaction_bytes("s0", &chunk);
    let one = dead_letter_item("s0", &chunk.dead_letters[0]);
    assert!(bytes <= MAX_TRANSACTION_BYTES, "{bytes}");
    assert!(bytes + one > MAX_TRANSACTION_BYTES, "{bytes} + {one}");
}

#[test]
fn sums_that_would_overflow_are_dead_letters() {
    let near = i64::MAX - 10;
    struct Case {
        name: &'static str,
        record: ParsedRecord,
        state: Option<OrderState>,
        stored: Summary,
        overflow: bool,
    }
    let cases = vec![
        Case {
            name: "a completion whose difference overflows",
            record: completed(0, "o1", i64::MAX / 2 + 1_000),
            state: created_state(i64::MIN / 2, 5),
            stored: Summary::default(),
            overflow: true,
        },
        Case {
            name: "a completion that overflows the stored sum",
            record: completed(0, "o1", 1_000),
            state: created_state(100, 5),
            stored: Summary {
                completion_ms_sum: near,
                ..Summary::default()
            },
            overflow: true,
        },
        Case {
            name: "a completion that just fits",
            record: completed(0, "o1", 110),
            state: created_state(100, 5),
            stored: Summary {
                completion_ms_sum: near,
                ..Summary::default()
            },
            overflow: false,
        },
        Case {
            name: "a completion whose price overflows the completed revenue",
            record: completed(0, "o1", 110),
            state: created_state(100, 50),
            stored: Summary {
                completed_price_cents: near,
                ..Summary::default()
            },
            overflow: true,
        },
        Case {
            name: "an assignment whose difference overflows",
            record: assigned(0, "o1", "d", i64::MAX),
            state: created_state(-10, 5),
            stored: Summary::default(),
            overflow: true,
        },
        Case {
            name: "a creation whose price overflows the revenue",
            record: created(0, "o1", 1, 20),
            state: None,
            stored: Summary {
                created_price_cents: near,
                ..Summary::default()
            },
            overflow: true,
        },
    ];
    for case in cases {
        let states = HashMap::from([("o1".to_string(), case.state.clone())]);
        let limits = PlanLimits {
            stored: case.stored.clone(),
            ..PlanLimits::default()
        };
        let chunk = plan_chunk_within("s0", std::slice::from_ref(&case.record), &states, &limits);
        let name = case.name;
        assert_eq!(chunk.records, 1, "{name}");
        if case.overflow {
            assert_eq!(chunk.dead_letters.len(), 1, "{name}");
            assert_eq!(chunk.dead_letters[0].reason, Reason::SumOverflow, "{name}");
            assert_eq!(chunk.delta.sums, Summary::default(), "{name}");
            assert_eq!(chunk.delta.dead_letters[&Reason::SumOverflow], 1, "{name}");
            // The order is unchanged, only checked: the rejection depended on it.
            assert!(chunk.orders.iter().all(OrderWrite::is_check_only), "{name}");
            assert_eq!(chunk.after["o1"], case.state, "{name}");
        } else {
            assert!(chunk.dead_letters.is_empty(), "{name}");
            assert_eq!(chunk.delta.sums.events, 1, "{name}");
        }
    }
}

#[test]
fn the_record_limit_ends_a_chunk() {
    let records: Vec<_> = (0..10)
        .map(|n| created(n, &format!("o{n}"), 1, 1))
        .collect();
    let states: HashMap<_, _> = (0..10).map(|n| (format!("o{n}"), None)).collect();
    for (limit, expected) in [(usize::MAX, 10), (5, 5), (1, 1), (0, 1)] {
        let limits = PlanLimits {
            max_records: limit,
            ..PlanLimits::default()
        };
        let chunk = plan_chunk_within("s0", &records, &states, &limits);
        assert_eq!(chunk.records, expected, "limit {limit}");
        assert_eq!(chunk.last, records[expected - 1].position, "limit {limit}");
    }
}

#[test]
fn every_field_of_a_dead_letter_is_capped() {
    let mut record = rec(
        0,
        &format!(
            r#"{{"type":"{}","order_id":"{}"}}"#,
            "t".repeat(5_000),
            "o".repeat(3_000)
        ),
    );
    record.partition_key = "k".repeat(4_000);
    let chunk = plan_chunk("s0", &[record], &HashMap::new());
    let dead = &chunk.dead_letters[0];
    assert!(dead.partition_key.len() <= size::MAX_PARTITION_KEY_BYTES);
    assert!(dead.detail.len() <= crate::events::MAX_DETAIL_BYTES);
    assert!(
        dead.order_id
            .as_ref()
            .is_none_or(|o| o.len() <= MAX_ID_BYTES)
    );
    assert!(dead_letter_item("s0", dead) <= dead_letter_bound());
    assert!(dead_letter_bound() < MAX_ITEM_BYTES);
}
