use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use kcl::checkpoint::ExtendedSequenceNumber;

use super::*;
use crate::events::parse;
use crate::stats::plan::{ParsedRecord, digest, plan_chunk, referenced_orders};

fn w1() -> LeaseOwnership {
    LeaseOwnership {
        worker_id: "w1".into(),
        epoch: 1,
    }
}

fn records(jsons: &[&str]) -> Vec<ParsedRecord> {
    jsons
        .iter()
        .enumerate()
        .map(|(i, j)| ParsedRecord {
            position: ExtendedSequenceNumber::at(format!("{}", 500 + i), i as u64),
            partition_key: "k".into(),
            raw: j.as_bytes().to_vec(),
            parsed: parse(j.as_bytes()),
        })
        .collect()
}

/// Every placeholder an expression uses is defined, and every one defined is used:
/// DynamoDB rejects both mistakes.
fn assert_placeholders(
    expressions: &[Option<&str>],
    names: Option<&HashMap<String, String>>,
    values: Option<&HashMap<String, AttributeValue>>,
) {
    let text: String = expressions
        .iter()
        .flatten()
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let used = |prefix: char| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_alphanumeric() || c == '#' || c == ':' || c == '_'))
            .filter(|t| t.starts_with(prefix))
            .map(str::to_string)
            .collect()
    };
    let defined_names: std::collections::BTreeSet<String> = names
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let defined_values: std::collections::BTreeSet<String> = values
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(used('#'), defined_names, "{text}");
    assert_eq!(used(':'), defined_values, "{text}");
}

#[test]
fn transactions_use_exactly_the_placeholders_they_define() {
    let recs = records(&[
        r#"{"type":"order_created","order_id":"o1","created_at":10,"pickup":{"x":1,"y":2},"dropoff":{"x":3,"y":4},"price_cents":250}"#,
        r#"{"type":"order_assigned","order_id":"o1","driver_id":"d","assigned_at":20}"#,
        r#"{"type":"order_assigned","order_id":"o2","driver_id":"d","assigned_at":20}"#,
        r#"{"type":"order_completed","order_id":"o3","completed_at":20}"#,
        "garbage",
    ]);
    let mut states: HashMap<_, _> = referenced_orders(&recs)
        .into_iter()
        .map(|id| (id, None))
        .collect();
    states.insert(
        "o3".to_string(),
        Some(OrderState {
            created_at: 5,
            price_cents: 100,
            created_shard: "parent".into(),
            assigned: true,
            completed: false,
            applied: vec![7],
        }),
    );
    let chunk = plan_chunk("s1", &recs, &states);
    let tables = StatsTables::for_application("App");
    for previous in [None, Some(ExtendedSequenceNumber::at("499", 0))] {
        let regions = chunk.delta.regions.clone();
        let items =
            transact_items(&tables, "s1", previous.as_ref(), &regions, &chunk, &w1(), 1).unwrap();
        // stats + o1 (update) + o2 (check) + o3 (update) + 2 dead letters + lease check
        assert_eq!(items.len(), 7);
        assert_eq!(items.len(), chunk.items());
        let fence = items.last().and_then(|i| i.condition_check()).unwrap();
        assert_eq!(fence.table_name(), "App");
        for item in &items {
            if let Some(u) = item.update() {
                assert_placeholders(
                    &[Some(u.update_expression()), u.condition_expression()],
                    u.expression_attribute_names(),
                    u.expression_attribute_values(),
                );
            }
            if let Some(put) = item.put().filter(|p| p.condition_expression().is_some()) {
                assert_placeholders(
                    &[put.condition_expression()],
                    put.expression_attribute_names(),
                    put.expression_attribute_values(),
                );
            }
            if let Some(c) = item.condition_check() {
                assert_placeholders(
                    &[Some(c.condition_expression())],
                    c.expression_attribute_names(),
                    c.expression_attribute_values(),
                );
            }
        }
        let stats = items[0].update().unwrap();
        assert_eq!(stats.table_name(), "App-Stats");
        assert!(stats.update_expression().contains(" ADD "));
        assert!(items[2].condition_check().is_some());
        // o1 is new: put whole; o3 exists: updated.
        assert_eq!(
            items[1].put().unwrap().item()["assigned_at"]
                .as_n()
                .unwrap(),
            "20"
        );
        assert!(items[3].update().is_some());
        let dead = items[4].put().unwrap();
        assert_eq!(dead.table_name(), "App-DeadLetters");
        // Keyed by the record's bytes (any copy of it is the same dead letter), put
        // only if absent; where it was read is kept beside.
        let raw = recs[2].raw.as_slice();
        assert_eq!(
            dead.item()["dl_id"].as_s().unwrap(),
            &format!("{:016x}-{}", digest(raw), raw.len())
        );
        assert_eq!(dead.item()["shard_id"].as_s().unwrap(), "s1");
        assert_eq!(dead.item()["sequence_number"].as_s().unwrap(), "502");
        assert_eq!(
            dead.condition_expression(),
            Some("attribute_not_exists(#k)")
        );
    }
}

#[test]
fn statistics_items_decode() {
    let item: HashMap<String, AttributeValue> = [
        ("pk", AttributeValue::S("stats#s1".into())),
        ("shard_id", AttributeValue::S("s1".into())),
        ("applied_seq", AttributeValue::S("4959".into())),
        ("applied_sub", AttributeValue::N("3".into())),
        ("events", AttributeValue::N("7".into())),
        ("created_price_cents", AttributeValue::N("1234".into())),
        ("regions", AttributeValue::S("3_4:2 0_49:1".into())),
        ("dl_negative_price", AttributeValue::N("1".into())),
        ("updated_at", AttributeValue::N("99".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let stats = decode_stats(&item).unwrap();
    assert_eq!(stats.shard_id, "s1");
    assert_eq!(stats.watermark, Some(ExtendedSequenceNumber::at("4959", 3)));
    assert_eq!(stats.totals.sums.events, 7);
    assert_eq!(stats.totals.sums.created_price_cents, 1234);
    assert_eq!(stats.totals.regions[&Region { x: 3, y: 4 }], 2);
    assert_eq!(stats.totals.regions[&Region { x: 0, y: 49 }], 1);
    assert_eq!(stats.totals.dead_letters[&Reason::NegativePrice], 1);
    assert_eq!(stats.updated_at, 99);
    let mut bad = item.clone();
    bad.insert("events".into(), AttributeValue::N("1.5".into()));
    assert!(decode_stats(&bad).is_err());
}

#[test]
fn orders_decode() {
    let item: HashMap<String, AttributeValue> = [
        ("order_id", AttributeValue::S("o1".into())),
        ("created_at", AttributeValue::N("10".into())),
        ("price_cents", AttributeValue::N("250".into())),
        ("created_shard", AttributeValue::S("s0".into())),
        ("completed_at", AttributeValue::N("30".into())),
        (
            "event_digests",
            AttributeValue::Ns(vec!["18446744073709551615".into(), "12".into()]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (id, state) = decode_order(&item).unwrap();
    assert_eq!(id, "o1");
    let mut applied = state.applied.clone();
    applied.sort_unstable();
    assert_eq!(applied, vec![12, u64::MAX]);
    assert_eq!(
        state,
        OrderState {
            created_at: 10,
            price_cents: 250,
            created_shard: "s0".into(),
            assigned: false,
            completed: true,
            applied: state.applied.clone(),
        }
    );
    // An order stored before digests were kept has none; a malformed set is an error.
    let mut legacy = item.clone();
    legacy.remove("event_digests");
    assert_eq!(decode_order(&legacy).unwrap().1.applied, Vec::<u64>::new());
    for bad in [
        AttributeValue::Ns(vec!["-1".into()]),
        AttributeValue::Ns(vec!["1.5".into()]),
        AttributeValue::N("3".into()),
    ] {
        let mut bad_item = item.clone();
        bad_item.insert("event_digests".into(), bad);
        assert!(decode_order(&bad_item).is_err());
    }
}

/// The number set of an order write, whichever way the write carries it.
fn digests_of(write: &TransactWriteItem) -> Option<Vec<u64>> {
    let set = match (write.put(), write.update()) {
        (Some(put), _) => put.item().get(EVENT_DIGESTS).cloned(),
        (_, Some(update)) => {
            let expression = update.update_expression();
            let names = update.expression_attribute_names().unwrap();
            let name = names
                .iter()
                .find(|(_, attribute)| attribute.as_str() == EVENT_DIGESTS)
                .map(|(placeholder, _)| placeholder.clone())?;
            // `... ADD #aN :vN`
            let (_, added) = expression.split_once(" ADD ")?;
            let mut parts = added.split_whitespace();
            assert_eq!(parts.next(), Some(name.as_str()), "{expression}");
            let value = parts.next().unwrap();
            update
                .expression_attribute_values()
                .unwrap()
                .get(value)
                .cloned()
        }
        _ => None,
    }?;
    let mut digests: Vec<u64> = set
        .as_ns()
        .expect("a number set")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    digests.sort_unstable();
    Some(digests)
}

#[test]
fn order_writes_add_the_digests_of_the_events_they_apply() {
    let created = r#"{"type":"order_created","order_id":"o1","created_at":10,"pickup":{"x":1,"y":2},"dropoff":{"x":3,"y":4},"price_cents":250}"#;
    let assigned = r#"{"type":"order_assigned","order_id":"o2","driver_id":"d","assigned_at":20}"#;
    let completed = r#"{"type":"order_completed","order_id":"o2","completed_at":30}"#;
    let recs = records(&[created, assigned, completed, created]);
    let mut states: HashMap<_, _> = referenced_orders(&recs)
        .into_iter()
        .map(|id| (id, None))
        .collect();
    let o2 = OrderState {
        created_at: 5,
        price_cents: 100,
        created_shard: "s0".into(),
        assigned: false,
        completed: false,
        applied: vec![99],
    };
    states.insert("o2".to_string(), Some(o2));
    let chunk = plan_chunk("s1", &recs, &states);
    assert_eq!(chunk.delta.redeliveries_skipped, 1);
    let tables = StatsTables::for_application("App");
    let items =
        transact_items(&tables, "s1", None, &chunk.delta.regions, &chunk, &w1(), 1).unwrap();
    // stats, o1 (put), o2 (update), lease check
    assert_eq!(items.len(), 4);
    let d = |json: &str| crate::stats::plan::digest(json.as_bytes());
    // A new order: put with its digests.
    assert!(items[1].put().is_some());
    assert_eq!(digests_of(&items[1]), Some(vec![d(created)]));
    // An existing one: ADDed, next to the SET, still conditioned on its state.
    let update = items[2].update().unwrap();
    assert!(
        update.update_expression().starts_with("SET "),
        "{}",
        update.update_expression()
    );
    assert!(update.condition_expression().is_some());
    let mut expected = vec![d(assigned), d(completed)];
    expected.sort_unstable();
    assert_eq!(digests_of(&items[2]), Some(expected));
    assert_placeholders(
        &[
            Some(update.update_expression()),
            update.condition_expression(),
        ],
        update.expression_attribute_names(),
        update.expression_attribute_values(),
    );
    // What the write stores decodes back to the state after the chunk.
    let mut stored: HashMap<String, AttributeValue> = items[1].put().unwrap().item().clone();
    let (_, state) = decode_order(&stored).unwrap();
    assert_eq!(Some(state), chunk.after["o1"]);
    stored.remove(EVENT_DIGESTS);
    assert!(decode_order(&stored).unwrap().1.applied.is_empty());
}

#[test]
fn a_check_only_write_adds_no_digest() {
    let created = r#"{"type":"order_created","order_id":"o1","created_at":10,"pickup":{"x":1,"y":2},"dropoff":{"x":3,"y":4},"price_cents":250}"#;
    let recs = records(&[created]);
    let states = HashMap::from([(
        "o1".to_string(),
        Some(OrderState {
            created_at: 10,
            price_cents: 250,
            created_shard: "s0".into(),
            assigned: false,
            completed: false,
            applied: vec![crate::stats::plan::digest(created.as_bytes())],
        }),
    )]);
    let chunk = plan_chunk("s1", &recs, &states);
    let tables = StatsTables::for_application("App");
    let items =
        transact_items(&tables, "s1", None, &chunk.delta.regions, &chunk, &w1(), 1).unwrap();
    assert_eq!(items.len(), 3);
    let check = items[1].condition_check().expect("a check");
    assert_eq!(check.table_name(), "App-Orders");
    assert!(!check.condition_expression().contains("event_digests"));
    let stats = items[0].update().unwrap();
    let names = stats.expression_attribute_names().unwrap();
    assert!(names.values().any(|n| n == "redeliveries_skipped"));
}
