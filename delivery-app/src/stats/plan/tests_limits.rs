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

/// Plans and settles `records` against `held` ([`HeldOrders::plan_chunk`]) and commits
/// each chunk, as the processor does: the settled transactions, as (records, items
/// written).
///
/// [`HeldOrders::plan_chunk`]: crate::stats::hold::HeldOrders::plan_chunk
fn holding_transactions(
    records: &[ParsedRecord],
    states: &HashMap<String, Option<OrderState>>,
    held: &mut crate::stats::hold::HeldOrders,
) -> Vec<(usize, usize)> {
    let mut states = states.clone();
    let mut out = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let (chunk, settled) =
            held.plan_chunk("s0", rest, &states, &PlanLimits::default(), &HashMap::new());
        assert!(chunk.records >= 1);
        assert!(chunk.items() <= MAX_TRANSACTION_ITEMS, "{}", chunk.items());
        assert!(transaction_bytes("s0", &chunk) <= MAX_TRANSACTION_BYTES);
        held.commit(settled);
        out.push((chunk.records, chunk.items()));
        states.extend(chunk.after);
        rest = &rest[chunk.records..];
    }
    out
}

#[test]
fn holding_orders_fills_transactions_with_items_really_written() {
    let ids: Vec<String> = (0..150).map(|n| format!("o{n}")).collect();
    let creations = || -> Vec<ParsedRecord> {
        ids.iter()
            .enumerate()
            .map(|(n, id)| created(n as u64, id, 1, 5))
            .collect()
    };
    let completions = |from: u64| -> Vec<ParsedRecord> {
        ids.iter()
            .enumerate()
            .map(|(n, id)| completed(from + n as u64, id, 9))
            .collect()
    };
    let assignments = |from: u64| -> Vec<ParsedRecord> {
        ids.iter()
            .enumerate()
            .map(|(n, id)| assigned(from + n as u64, id, "d", 5))
            .collect()
    };
    let absent: HashMap<_, _> = ids.iter().map(|id| (id.clone(), None)).collect();
    let stored: HashMap<_, _> = ids
        .iter()
        .map(|id| (id.clone(), created_state(1, 5)))
        .collect();
    let hold_all = |records: Vec<ParsedRecord>| {
        let mut held = crate::stats::hold::HeldOrders::default();
        holding_transactions(&records, &absent, &mut held);
        assert_eq!(held.len(), ids.len());
        held
    };
    struct Case {
        name: &'static str,
        records: Vec<ParsedRecord>,
        states: HashMap<String, Option<OrderState>>,
        held: crate::stats::hold::HeldOrders,
        /// (records, items) per transaction.
        expected: Vec<(usize, usize)>,
    }
    let cases = [
        Case {
            name: "new orders created: held, one transaction of nothing but the statistics",
            records: creations(),
            states: absent.clone(),
            held: Default::default(),
            expected: vec![(150, 2)],
        },
        Case {
            name: "created and completed in the batch: an item per completion",
            records: [creations(), completions(150)].concat(),
            states: absent.clone(),
            held: Default::default(),
            expected: vec![(150 + 98, 100), (52, 54)],
        },
        Case {
            name: "held orders assigned: merged in memory, no item",
            records: assignments(0),
            states: stored.clone(),
            held: hold_all(creations()),
            expected: vec![(150, 2)],
        },
        Case {
            name: "held orders completed: an item each",
            records: completions(0),
            states: stored.clone(),
            held: hold_all(creations()),
            expected: vec![(98, 100), (52, 54)],
        },
        Case {
            name: "stored orders assigned: an item each, as without holding",
            records: assignments(0),
            states: stored.clone(),
            held: Default::default(),
            expected: vec![(98, 100), (52, 54)],
        },
        Case {
            name: "absent orders assigned: a check and a dead letter each, as without holding",
            records: assignments(0),
            states: absent.clone(),
            held: Default::default(),
            expected: vec![(49, 100), (49, 100), (49, 100), (3, 8)],
        },
    ];
    for mut case in cases {
        let got = holding_transactions(&case.records, &case.states, &mut case.held);
        assert_eq!(got, case.expected, "{}", case.name);
    }
}

/// Random events on up to 300 orders, some held, some stored, some absent: every
/// settled transaction is within DynamoDB's limits, and the statistics and the orders'
/// states are those of the plan that counts every order as an item (holding moves where
/// transactions end, nothing else).
#[test]
fn holding_plans_stay_within_the_limits_and_count_the_same() {
    use rand::{Rng, SeedableRng};
    for seed in 0..200u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let orders = rng.random_range(1..300usize);
        let ids: Vec<String> = (0..orders).map(|n| format!("o{n}")).collect();
        let mut states = HashMap::new();
        let mut held = crate::stats::hold::HeldOrders::default();
        let mut to_hold = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            match rng.random_range(0..3) {
                0 => {
                    states.insert(id.clone(), None);
                }
                1 => {
                    states.insert(id.clone(), created_state(1, 5));
                }
                _ => {
                    states.insert(id.clone(), None);
                    to_hold.push(created(n as u64, id, 1, 5));
                }
            }
        }
        if !to_hold.is_empty() {
            holding_transactions(&to_hold, &states, &mut held);
            for record in &to_hold {
                let id = record.parsed.as_ref().unwrap().order_id().to_string();
                states.insert(id.clone(), held.state(&id).cloned());
            }
        }
        let records: Vec<ParsedRecord> = (0..rng.random_range(1..600u64))
            .map(|n| {
                let id = &ids[rng.random_range(0..orders)];
                // No two alike: a copy of a dead letter is found by reading the
                // stored ones, which this leaves out.
                match rng.random_range(0..3) {
                    0 => created(1000 + n, id, 1, 5 + n as i64),
                    1 => assigned(1000 + n, id, &format!("d{n}"), 5),
                    _ => completed(1000 + n, id, 9 + n as i64),
                }
            })
            .collect();
        let before = held.clone();
        let transactions = holding_transactions(&records, &states, &mut held);
        assert_eq!(
            transactions.iter().map(|(r, _)| r).sum::<usize>(),
            records.len()
        );
        let totals = |holding: bool| {
            let mut states = states.clone();
            let mut totals = Totals::default();
            let mut rest = records.as_slice();
            while !rest.is_empty() {
                let chunk = if holding {
                    plan_chunk_holding("s0", rest, &states, &PlanLimits::default(), |id| {
                        before.contains(id)
                    })
                } else {
                    plan_chunk("s0", rest, &states)
                };
                totals.add(&chunk.delta);
                states.extend(chunk.after);
                rest = &rest[chunk.records..];
            }
            (totals, states)
        };
        let ((holding, a), (plain, b)) = (totals(true), totals(false));
        assert_eq!(holding, plain, "seed {seed}");
        assert_eq!(a, b, "seed {seed}");
    }
}
