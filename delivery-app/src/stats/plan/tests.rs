use super::*;
use crate::events::parse;
use crate::stats::summary::Summary;

fn rec(n: u64, json: &str) -> ParsedRecord {
    ParsedRecord {
        position: ExtendedSequenceNumber::at(format!("{}", 1000 + n), 0),
        partition_key: "pk".into(),
        raw: json.as_bytes().to_vec(),
        parsed: parse(json.as_bytes()),
    }
}

fn created(n: u64, order: &str, at: i64, price: i64) -> ParsedRecord {
    rec(
        n,
        &format!(
            r#"{{"type":"order_created","order_id":"{order}","created_at":{at},"pickup":{{"x":1,"y":2}},"dropoff":{{"x":3,"y":4}},"price_cents":{price}}}"#
        ),
    )
}

fn assigned(n: u64, order: &str, at: i64) -> ParsedRecord {
    rec(
        n,
        &format!(
            r#"{{"type":"order_assigned","order_id":"{order}","driver_id":"d1","assigned_at":{at}}}"#
        ),
    )
}

fn completed(n: u64, order: &str, at: i64) -> ParsedRecord {
    rec(
        n,
        &format!(r#"{{"type":"order_completed","order_id":"{order}","completed_at":{at}}}"#),
    )
}

fn present(created_at: i64, price: i64, shard: &str, assigned: bool) -> Option<OrderState> {
    Some(OrderState {
        created_at,
        price_cents: price,
        created_shard: shard.into(),
        assigned,
        completed: false,
        applied: Vec::new(),
    })
}

fn states_for(
    records: &[ParsedRecord],
    known: &[(&str, Option<OrderState>)],
) -> HashMap<String, Option<OrderState>> {
    let mut states: HashMap<String, Option<OrderState>> = referenced_orders(records)
        .into_iter()
        .map(|id| (id, None))
        .collect();
    for (id, state) in known {
        states.insert(id.to_string(), state.clone());
    }
    states
}

/// (records, known states, expected: events, dead letters by reason, order ops as
/// (order, expect, is check only), response sum, completion sum)
#[test]
fn scenarios() {
    struct Case {
        name: &'static str,
        records: Vec<ParsedRecord>,
        known: Vec<(&'static str, Option<OrderState>)>,
        events: u64,
        dead: Vec<Reason>,
        ops: Vec<(&'static str, Expect, bool)>,
        response: i64,
        completion: i64,
        completed_price: i64,
        cross_shard: u64,
    }
    let absent = Expect::Absent;
    let fresh = Expect::Present {
        assigned: false,
        completed: false,
    };
    let cases = vec![
        Case {
            name: "a whole order in one chunk is one write",
            records: vec![
                created(0, "o1", 100, 999),
                assigned(1, "o1", 130),
                completed(2, "o1", 400),
            ],
            known: vec![],
            events: 3,
            dead: vec![],
            ops: vec![("o1", absent, false)],
            response: 30,
            completion: 300,
            completed_price: 999,
            cross_shard: 0,
        },
        Case {
            name: "a second creation (other bytes) is a duplicate",
            records: vec![created(0, "o1", 100, 5), created(1, "o1", 100, 6)],
            known: vec![],
            events: 1,
            dead: vec![Reason::DuplicateEvent],
            ops: vec![("o1", absent, false)],
            response: 0,
            completion: 0,
            completed_price: 0,
            cross_shard: 0,
        },
        Case {
            name: "assigned and completed before created, then created",
            records: vec![
                assigned(0, "o1", 10),
                completed(1, "o1", 20),
                created(2, "o1", 5, 1),
            ],
            known: vec![],
            events: 1,
            dead: vec![
                Reason::AssignedBeforeCreated,
                Reason::CompletedBeforeCreated,
            ],
            ops: vec![("o1", absent, false)],
            response: 0,
            completion: 0,
            completed_price: 0,
            cross_shard: 0,
        },
        Case {
            name: "a rejection on an existing order only checks it",
            records: vec![completed(0, "o1", 50)],
            known: vec![("o1", present(100, 7, "s0", true))],
            events: 0,
            dead: vec![Reason::CompletedBeforeCreated],
            ops: vec![(
                "o1",
                Expect::Present {
                    assigned: true,
                    completed: false,
                },
                true,
            )],
            response: 0,
            completion: 0,
            completed_price: 0,
            cross_shard: 0,
        },
        Case {
            name: "a completion of an order created in the parent shard",
            records: vec![assigned(0, "o1", 110), completed(1, "o1", 150)],
            known: vec![("o1", present(100, 700, "parent", false))],
            events: 2,
            dead: vec![],
            ops: vec![("o1", fresh, false)],
            response: 10,
            completion: 50,
            completed_price: 700,
            cross_shard: 1,
        },
        Case {
            name: "a second assignment is a duplicate",
            records: vec![assigned(0, "o1", 110)],
            known: vec![("o1", present(100, 700, "s0", true))],
            events: 0,
            dead: vec![Reason::DuplicateEvent],
            ops: vec![(
                "o1",
                Expect::Present {
                    assigned: true,
                    completed: false,
                },
                true,
            )],
            response: 0,
            completion: 0,
            completed_price: 0,
            cross_shard: 0,
        },
        Case {
            name: "bad input touches no order",
            records: vec![
                rec(0, "{oops"),
                rec(1, r#"{"type":"order_paid","order_id":"o9"}"#),
                rec(
                    2,
                    r#"{"type":"order_created","order_id":"o9","created_at":1,"pickup":{"x":1,"y":99},"dropoff":{"x":0,"y":0},"price_cents":1}"#,
                ),
                rec(
                    3,
                    r#"{"type":"order_created","order_id":"o9","created_at":1,"pickup":{"x":1,"y":9},"dropoff":{"x":0,"y":0},"price_cents":-100}"#,
                ),
            ],
            known: vec![],
            events: 0,
            dead: vec![
                Reason::MalformedJson,
                Reason::UnknownEventType,
                Reason::RegionOffGrid,
                Reason::NegativePrice,
            ],
            ops: vec![],
            response: 0,
            completion: 0,
            completed_price: 0,
            cross_shard: 0,
        },
    ];
    for case in cases {
        let states = states_for(&case.records, &case.known);
        let chunk = plan_chunk("s0", &case.records, &states);
        let name = case.name;
        assert_eq!(chunk.records, case.records.len(), "{name}");
        assert_eq!(
            &chunk.last,
            &case.records.last().unwrap().position,
            "{name}"
        );
        assert_eq!(chunk.delta.sums.events, case.events, "{name}");
        let dead: Vec<Reason> = chunk.dead_letters.iter().map(|d| d.reason).collect();
        assert_eq!(dead, case.dead, "{name}");
        assert_eq!(
            chunk.delta.dead_letter_count(),
            case.dead.len() as u64,
            "{name}"
        );
        let ops: Vec<_> = chunk
            .orders
            .iter()
            .map(|o| (o.order_id.as_str(), o.expect, o.is_check_only()))
            .collect();
        assert_eq!(ops, case.ops, "{name}");
        assert_eq!(chunk.delta.sums.response_ms_sum, case.response, "{name}");
        assert_eq!(
            chunk.delta.sums.completion_ms_sum, case.completion,
            "{name}"
        );
        assert_eq!(
            chunk.delta.sums.completed_price_cents, case.completed_price,
            "{name}"
        );
        assert_eq!(
            chunk.delta.cross_shard_completions, case.cross_shard,
            "{name}"
        );
    }
}

#[test]
fn chunks_stop_at_one_hundred_items() {
    let records: Vec<_> = (0..150)
        .map(|n| created(n, &format!("o{n}"), 1, 1))
        .collect();
    let states = states_for(&records, &[]);
    let first = plan_chunk("s0", &records, &states);
    assert_eq!(first.records, 98);
    assert_eq!(first.items(), MAX_TRANSACTION_ITEMS);
    assert_eq!(first.last, records[97].position);
    let second = plan_chunk("s0", &records[98..], &states);
    assert_eq!(second.records, 52);
    assert_eq!(
        first.delta.sums.orders_created + second.delta.sums.orders_created,
        150
    );
}

#[test]
fn a_rejection_and_its_check_count_two_items() {
    // 49 orders assigned before created: 49 checks + 49 dead letters + stats + lease
    // check = 100; the 50th would need two more.
    let records: Vec<_> = (0..60).map(|n| assigned(n, &format!("o{n}"), 1)).collect();
    let states = states_for(&records, &[]);
    let chunk = plan_chunk("s0", &records, &states);
    assert_eq!(chunk.records, 49);
    assert_eq!(chunk.items(), 100);
}

#[test]
fn large_dead_letters_are_truncated_and_bounded_by_bytes() {
    // Distinct records: copies of one would be one dead letter.
    let big = |n: u64| {
        format!(
            "{{\"type\":\"x\",\"n\":{n},\"pad\":\"{}\"}}",
            "a".repeat(200_000)
        )
    };
    let records: Vec<_> = (0..80).map(|n| rec(n, &big(n))).collect();
    let chunk = plan_chunk("s0", &records, &HashMap::new());
    assert!(
        chunk.records < 80 && chunk.records > 10,
        "{}",
        chunk.records
    );
    assert!(
        chunk
            .dead_letters
            .iter()
            .all(|d| d.raw.len() == MAX_DEAD_LETTER_RAW)
    );
    assert_eq!(chunk.dead_letters[0].raw_len, big(0).len());
    assert_eq!(
        chunk.dead_letters[0].id,
        format!("{:016x}-{}", digest(big(0).as_bytes()), big(0).len())
    );
}

#[test]
fn states_after_follow_the_transitions() {
    let records = vec![created(0, "o1", 100, 5), assigned(1, "o1", 120)];
    let states = states_for(&records, &[]);
    let chunk = plan_chunk("s7", &records, &states);
    let digests = vec![digest(&records[0].raw), digest(&records[1].raw)];
    assert_eq!(
        chunk.after["o1"],
        Some(OrderState {
            created_at: 100,
            price_cents: 5,
            created_shard: "s7".into(),
            assigned: true,
            completed: false,
            applied: digests.clone(),
        })
    );
    assert_eq!(chunk.orders[0].digests, digests);
}

#[test]
fn digests_are_fnv_1a_64() {
    // Reference values of the FNV-1a 64-bit hash.
    assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(digest(b"foobar"), 0x8594_4171_f739_67e8);
    assert_ne!(digest(b"ab"), digest(b"ba"));
}

/// A copy of `record` at another position: what a producer puts again after a lost
/// answer.
fn copy(n: u64, record: &ParsedRecord) -> ParsedRecord {
    rec(n, std::str::from_utf8(&record.raw).unwrap())
}

/// The state of `o1` (created at 100, price 700, in `s0`) after `applied`.
fn with_applied(applied: &[&ParsedRecord], assigned: bool, completed: bool) -> OrderState {
    OrderState {
        created_at: 100,
        price_cents: 700,
        created_shard: "s0".into(),
        assigned,
        completed,
        applied: applied.iter().map(|r| digest(&r.raw)).collect(),
    }
}

/// Exact copies of applied events are skipped and counted; other duplicates are dead
/// letters.
#[test]
fn redeliveries() {
    struct Case {
        name: &'static str,
        records: Vec<ParsedRecord>,
        /// The state of `o1` before the records.
        before: Option<OrderState>,
        events: u64,
        skipped: u64,
        dead: Vec<Reason>,
        /// `o1`'s op: whether it is check-only and how many digests it adds.
        check_only: bool,
        digests: usize,
        /// `o1`'s state after the chunk; `None`: unchanged.
        after: Option<OrderState>,
    }
    let c = created(0, "o1", 100, 700);
    let a = assigned(1, "o1", 130);
    let d = completed(2, "o1", 400);
    let cases = vec![
        Case {
            name: "an exact copy of an applied creation",
            records: vec![copy(10, &c)],
            before: Some(with_applied(&[&c], false, false)),
            events: 0,
            skipped: 1,
            dead: vec![],
            check_only: true,
            digests: 0,
            after: None,
        },
        Case {
            name: "an exact copy of an applied assignment",
            records: vec![copy(10, &a)],
            before: Some(with_applied(&[&c, &a], true, false)),
            events: 0,
            skipped: 1,
            dead: vec![],
            check_only: true,
            digests: 0,
            after: None,
        },
        Case {
            name: "an exact copy of an applied completion",
            records: vec![copy(10, &d)],
            before: Some(with_applied(&[&c, &a, &d], true, true)),
            events: 0,
            skipped: 1,
            dead: vec![],
            check_only: true,
            digests: 0,
            after: None,
        },
        Case {
            name: "a copy of the creation after the order is completed",
            records: vec![copy(10, &c)],
            before: Some(with_applied(&[&c, &a, &d], true, true)),
            events: 0,
            skipped: 1,
            dead: vec![],
            check_only: true,
            digests: 0,
            after: None,
        },
        Case {
            name: "copies later in the same chunk",
            records: vec![
                c.clone(),
                copy(3, &c),
                a.clone(),
                copy(4, &a),
                copy(5, &c),
                d.clone(),
                copy(6, &d),
            ],
            before: None,
            events: 3,
            skipped: 4,
            dead: vec![],
            check_only: false,
            digests: 3,
            after: Some(with_applied(&[&c, &a, &d], true, true)),
        },
        Case {
            name: "a copy of a stored event next to a new transition",
            records: vec![d.clone(), copy(3, &a)],
            before: Some(with_applied(&[&c, &a], true, false)),
            events: 1,
            skipped: 1,
            dead: vec![],
            check_only: false,
            digests: 1,
            after: Some(with_applied(&[&c, &a, &d], true, true)),
        },
        Case {
            name: "the same order and type with other bytes is a duplicate",
            records: vec![
                created(10, "o1", 100, 701),
                assigned(11, "o1", 131),
                completed(12, "o1", 401),
            ],
            before: Some(with_applied(&[&c, &a, &d], true, true)),
            events: 0,
            skipped: 0,
            dead: vec![Reason::DuplicateEvent; 3],
            check_only: true,
            digests: 0,
            after: None,
        },
        Case {
            name: "an order stored without digests cannot tell a copy",
            records: vec![copy(10, &c)],
            before: Some(with_applied(&[], false, false)),
            events: 0,
            skipped: 0,
            dead: vec![Reason::DuplicateEvent],
            check_only: true,
            digests: 0,
            after: None,
        },
        Case {
            name: "a copy of a rejected event is one dead letter",
            records: vec![copy(10, &a), copy(11, &a)],
            before: None,
            events: 0,
            skipped: 1,
            dead: vec![Reason::AssignedBeforeCreated],
            check_only: true,
            digests: 0,
            after: None,
        },
        Case {
            name: "a rejected event's copy stays rejected once the order fits it",
            records: vec![a.clone(), c.clone(), copy(12, &a)],
            before: None,
            events: 1,
            skipped: 1,
            dead: vec![Reason::AssignedBeforeCreated],
            check_only: false,
            digests: 1,
            after: Some(with_applied(&[&c], false, false)),
        },
        Case {
            name: "a copy of a duplicate is one dead letter",
            records: vec![created(10, "o1", 100, 701), created(11, "o1", 100, 701)],
            before: Some(with_applied(&[&c], false, false)),
            events: 0,
            skipped: 1,
            dead: vec![Reason::DuplicateEvent],
            check_only: true,
            digests: 0,
            after: None,
        },
    ];
    for case in cases {
        let name = case.name;
        let states = states_for(&case.records, &[("o1", case.before.clone())]);
        let chunk = plan_chunk("s0", &case.records, &states);
        assert_eq!(chunk.records, case.records.len(), "{name}");
        assert_eq!(chunk.delta.sums.events, case.events, "{name}");
        assert_eq!(chunk.delta.redeliveries_skipped, case.skipped, "{name}");
        let dead: Vec<Reason> = chunk.dead_letters.iter().map(|d| d.reason).collect();
        assert_eq!(dead, case.dead, "{name}");
        assert_eq!(chunk.orders.len(), 1, "{name}");
        let op = &chunk.orders[0];
        assert_eq!(op.expect, Expect::of(&case.before), "{name}");
        assert_eq!(op.is_check_only(), case.check_only, "{name}");
        assert_eq!(op.digests.len(), case.digests, "{name}");
        assert_eq!(
            chunk.after["o1"],
            case.after.or(case.before.clone()),
            "{name}"
        );
        // Items: stats, the order's op, the dead letters, the lease check.
        assert_eq!(chunk.items(), 3 + case.dead.len(), "{name}");
    }
}

#[test]
fn a_redelivery_alone_still_checks_its_order() {
    let c = created(0, "o1", 100, 700);
    let records = vec![copy(1, &c)];
    let before = with_applied(&[&c], true, false);
    let states = states_for(&records, &[("o1", Some(before.clone()))]);
    let chunk = plan_chunk("s0", &records, &states);
    assert_eq!(
        chunk.orders,
        vec![OrderWrite {
            order_id: "o1".into(),
            expect: Expect::Present {
                assigned: true,
                completed: false,
            },
            created: None,
            assigned: None,
            completed_at: None,
            digests: vec![],
        }]
    );
    assert_eq!(chunk.delta.redeliveries_skipped, 1);
    assert_eq!(chunk.delta.records(), 1);
    assert_eq!(chunk.delta.sums, Summary::default());
    assert!(chunk.delta.regions.is_empty());
    assert_eq!(chunk.last, records[0].position);
    assert_eq!(chunk.after["o1"], Some(before));
}

/// Records already dead-lettered (found by the caller in the dead-letter table) are
/// redeliveries: skipped and counted, with nothing else written; a dead letter's id is
/// the same for every copy of its record.
#[test]
fn copies_of_stored_dead_letters_are_skipped() {
    let garbage = rec(0, "not json");
    let early = assigned(1, "o1", 130);
    let records = vec![copy(5, &garbage), copy(6, &early), created(7, "o2", 1, 1)];
    let states = states_for(&records, &[("o1", None), ("o2", None)]);
    let fresh = plan_chunk("s0", &records, &states);
    assert_eq!(fresh.dead_letters.len(), 2);
    for (dead, original) in fresh.dead_letters.iter().zip([&garbage, &early]) {
        let again = super::reject::dead_letter(
            original,
            digest(&original.raw),
            Rejection::new(Reason::MalformedJson, "", None),
        );
        assert_eq!(dead.id, again.id, "same record, same dead letter");
        assert_ne!(dead.position, again.position);
    }
    let limits = PlanLimits {
        dead_lettered: [digest(&garbage.raw), digest(&early.raw)].into(),
        ..PlanLimits::default()
    };
    let chunk = plan_chunk_within("s0", &records, &states, &limits);
    assert_eq!(chunk.records, 3);
    assert!(chunk.dead_letters.is_empty());
    assert_eq!(chunk.delta.redeliveries_skipped, 2);
    assert_eq!(chunk.delta.sums.events, 1);
    // Only the creation's order is written; the copies depend on nothing.
    let written: Vec<&str> = chunk.orders.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(written, ["o2"]);
}
