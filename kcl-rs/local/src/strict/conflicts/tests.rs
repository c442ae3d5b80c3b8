use super::*;
use crate::faults::{dynamodb_target, kinesis_target};

fn leases_schema(table: &str) -> Option<KeySchema> {
    match table {
        "leases" => Some(KeySchema {
            hash: "leaseKey".into(),
            range: None,
        }),
        "events" => Some(KeySchema {
            hash: "pk".into(),
            range: Some("sk".into()),
        }),
        _ => None,
    }
}

fn key(table: &str, attributes: &[(&str, &str)]) -> ItemKey {
    ItemKey {
        table: table.into(),
        key: attributes
            .iter()
            .map(|(a, v)| (a.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn numbers_compare_as_numbers() {
    let table = [
        ("1", Some("0.1e1")),
        ("1.0", Some("0.1e1")),
        ("01.50", Some("0.15e1")),
        ("150", Some("0.15e3")),
        ("1.5E2", Some("0.15e3")),
        ("15e+1", Some("0.15e3")),
        ("-0.015", Some("-0.15e-1")),
        ("0", Some("0")),
        ("-0.00", Some("0")),
        (".5", Some("0.5e0")),
        ("", None),
        ("1x", None),
        ("1e", None),
    ];
    for (text, expected) in table {
        assert_eq!(canonical_number(text).as_deref(), expected, "{text}");
    }
}

#[test]
fn requests_name_the_items_they_write() {
    let shard = key("leases", &[("leaseKey", "S:shard-1")]);
    let table: Vec<(String, &str, Result<Writes, ConflictsError>)> = vec![
        (
            dynamodb_target("UpdateItem"),
            r#"{"TableName":"leases","Key":{"leaseKey":{"S":"shard-1"}},"UpdateExpression":"SET a = :a"}"#,
            Ok(Writes::Item(shard.clone())),
        ),
        (
            dynamodb_target("DeleteItem"),
            r#"{"TableName":"arn:aws:dynamodb:r:1:table/leases","Key":{"leaseKey":{"S":"shard-1"}}}"#,
            Ok(Writes::Item(shard.clone())),
        ),
        (
            dynamodb_target("PutItem"),
            r#"{"TableName":"leases","Item":{"owner":{"S":"w"},"leaseKey":{"S":"shard-1"}}}"#,
            Ok(Writes::Item(shard.clone())),
        ),
        (
            dynamodb_target("PutItem"),
            r#"{"TableName":"events","Item":{"sk":{"N":"1.0"},"pk":{"S":"a"},"x":{"S":"y"}}}"#,
            Ok(Writes::Item(key(
                "events",
                &[("pk", "S:a"), ("sk", "N:0.1e1")],
            ))),
        ),
        (
            dynamodb_target("PutItem"),
            r#"{"TableName":"unknown","Item":{"id":{"S":"a"}}}"#,
            Err(ConflictsError::UnknownKeySchema("unknown".into())),
        ),
        (
            dynamodb_target("PutItem"),
            r#"{"TableName":"leases","Item":{"owner":{"S":"w"}}}"#,
            Err(ConflictsError::Malformed(
                "Put without key attribute leaseKey".into(),
            )),
        ),
        (
            dynamodb_target("TransactWriteItems"),
            r#"{"TransactItems":[
                {"ConditionCheck":{"TableName":"leases","Key":{"leaseKey":{"S":"shard-1"}},"ConditionExpression":"x"}},
                {"Update":{"TableName":"events","Key":{"sk":{"N":"2"},"pk":{"S":"a"}}}},
                {"Put":{"TableName":"events","Item":{"pk":{"S":"b"},"sk":{"N":"3"}}}},
                {"Delete":{"TableName":"other","Key":{"id":{"B":"AAE="}}}}]}"#,
            Ok(Writes::Transaction(vec![
                shard.clone(),
                key("events", &[("pk", "S:a"), ("sk", "N:0.2e1")]),
                key("events", &[("pk", "S:b"), ("sk", "N:0.3e1")]),
                key("other", &[("id", "B:AAE=")]),
            ])),
        ),
        (
            dynamodb_target("GetItem"),
            r#"{"TableName":"leases","Key":{"leaseKey":{"S":"shard-1"}}}"#,
            Ok(Writes::Nothing),
        ),
        (
            dynamodb_target("Scan"),
            "not even json",
            Ok(Writes::Nothing),
        ),
        (kinesis_target("PutRecords"), "{}", Ok(Writes::Nothing)),
        (
            dynamodb_target("UpdateItem"),
            r#"{"TableName":"leases","Key":{"leaseKey":{"SS":["a"]}}}"#,
            Err(ConflictsError::Malformed(
                r#"key value {"SS":["a"]}"#.into(),
            )),
        ),
    ];
    for (target, body, expected) in table {
        assert_eq!(
            writes(&target, body.as_bytes(), leases_schema),
            expected,
            "{target} {body}"
        );
    }
}

#[test]
fn single_writes_conflict_with_transactions_in_flight_until_they_end() {
    let in_flight = InFlight::new();
    let a = key("leases", &[("leaseKey", "S:a")]);
    let b = key("leases", &[("leaseKey", "S:b")]);
    assert!(in_flight.single_write_allowed(&a));
    let guard = in_flight.begin_transaction(vec![a.clone()]).unwrap();
    assert!(!in_flight.single_write_allowed(&a));
    assert!(in_flight.single_write_allowed(&b));
    drop(guard);
    assert!(in_flight.single_write_allowed(&a));
    assert_eq!(in_flight.held(), 0);
}

#[test]
fn overlapping_transactions_are_cancelled_with_one_reason_per_item() {
    let in_flight = InFlight::new();
    let a = key("t", &[("id", "S:a")]);
    let b = key("t", &[("id", "S:b")]);
    let c = key("t", &[("id", "S:c")]);
    let first = in_flight.begin_transaction(vec![b.clone()]).unwrap();
    let cancelled = in_flight
        .begin_transaction(vec![a.clone(), b.clone(), c.clone()])
        .unwrap_err();
    assert_eq!(cancelled.conflicts, vec![false, true, false]);
    // A cancelled transaction holds nothing.
    assert_eq!(in_flight.held(), 1);
    assert!(in_flight.single_write_allowed(&a));
    drop(first);
    let second = in_flight.begin_transaction(vec![a, b.clone(), c]).unwrap();
    assert_eq!(in_flight.held(), 3);
    drop(second);
    assert_eq!(in_flight.held(), 0);
    // The same item twice (DynamoDB's ValidationException upstream) is released too.
    drop(in_flight.begin_transaction(vec![b.clone(), b]).unwrap());
    assert_eq!(in_flight.held(), 0);
}

#[test]
fn refusals_have_dynamodbs_shapes() {
    let cancelled = Cancelled {
        conflicts: vec![false, true],
    };
    assert_eq!(
        cancelled.body(),
        json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons [None, TransactionConflict]",
            "CancellationReasons": [
                {"Code": "None"},
                {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
            ]
        })
    );
    assert_eq!(
        conflict_body(),
        json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
            "message": "Transaction is ongoing for the item"
        })
    );
}

#[test]
fn key_schemas_are_read_from_describe_table() {
    let table = [
        (
            r#"{"Table":{"TableName":"leases","KeySchema":[{"AttributeName":"leaseKey","KeyType":"HASH"}]}}"#,
            Some(KeySchema {
                hash: "leaseKey".into(),
                range: None,
            }),
        ),
        (
            r#"{"Table":{"KeySchema":[{"AttributeName":"sk","KeyType":"RANGE"},{"AttributeName":"pk","KeyType":"HASH"}]}}"#,
            Some(KeySchema {
                hash: "pk".into(),
                range: Some("sk".into()),
            }),
        ),
        (r#"{"Table":{"KeySchema":[]}}"#, None),
        (r#"{"__type":"ResourceNotFoundException"}"#, None),
    ];
    for (body, expected) in table {
        assert_eq!(
            key_schema_of_description(body.as_bytes()),
            expected,
            "{body}"
        );
    }
    let cache = KeySchemas::default();
    assert_eq!(cache.get("leases"), None);
    cache.insert("leases", leases_schema("leases").unwrap());
    assert_eq!(cache.get("leases"), leases_schema("leases"));
}
