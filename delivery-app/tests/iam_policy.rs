//! docs/iam-policy.md against the code: every item of a statistics transaction, as
//! `items::transact_items` builds it, is allowed by the documented worker policy on its
//! own table (AWS authorizes a `TransactWriteItems` per item), and every policy block
//! parses, uses the placeholders and names only real actions.

use std::collections::{BTreeMap, HashMap};

use delivery_app::events::parse;
use delivery_app::stats::items::{StatsTables, transact_items};
use delivery_app::stats::plan::{OrderState, ParsedRecord, plan_chunk, referenced_orders};
use kcl::checkpoint::ExtendedSequenceNumber;
use serde_json::Value;

const DOC: &str = include_str!("../../docs/iam-policy.md");

/// The JSON policy under each `##` heading.
fn policies() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut heading = None;
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = Some(h.to_string());
        } else if line == "```json" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            let policy: Value = serde_json::from_str(&block.join("\n"))
                .unwrap_or_else(|e| panic!("the policy under {heading:?} does not parse: {e}"));
            let previous = out.insert(heading.clone().expect("a policy under a heading"), policy);
            assert!(previous.is_none(), "two policies under {heading:?}");
        }
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn allows(policy: &Value, action: &str, resource: &str) -> bool {
    policy["Statement"].as_array().unwrap().iter().any(|s| {
        s["Effect"] == "Allow"
            && strings(&s["Action"]).iter().any(|a| a == action)
            && strings(&s["Resource"]).iter().any(|r| r == resource)
    })
}

fn table(name: &str) -> String {
    format!("arn:aws:dynamodb:REGION:ACCOUNT:table/{name}")
}

fn record(seq: u64, json: &str) -> ParsedRecord {
    ParsedRecord {
        position: ExtendedSequenceNumber::at(seq.to_string(), 0),
        partition_key: "k".into(),
        raw: json.as_bytes().to_vec(),
        parsed: parse(json.as_bytes()),
    }
}

#[test]
fn every_item_of_a_statistics_transaction_is_allowed_by_the_worker_policy() {
    let policies = policies();
    let worker = &policies["delivery-app worker"];
    // A new order (Put), a transition of a stored one (Update), a rejection that
    // depends on a stored one (ConditionCheck), a dead letter (Put), the statistics item
    // (Update) and the lease check (ConditionCheck).
    let records = vec![
        record(
            1,
            r#"{"type":"order_created","order_id":"new","created_at":1,"pickup":{"x":1,"y":1},"dropoff":{"x":1,"y":1},"price_cents":5}"#,
        ),
        record(
            2,
            r#"{"type":"order_completed","order_id":"stored","completed_at":9}"#,
        ),
        record(
            3,
            r#"{"type":"order_assigned","order_id":"done","driver_id":"d","assigned_at":1}"#,
        ),
        record(4, "not json"),
    ];
    let stored = |assigned| {
        Some(OrderState {
            created_at: 1,
            price_cents: 5,
            created_shard: "s".into(),
            assigned,
            completed: false,
            applied: vec![1],
        })
    };
    let mut states: HashMap<_, _> = referenced_orders(&records)
        .into_iter()
        .map(|id| (id, None))
        .collect();
    states.insert("stored".into(), stored(false));
    states.insert("done".into(), stored(true));
    let chunk = plan_chunk("s", &records, &states);
    let tables = StatsTables::for_application("APP");
    let items = transact_items(
        &tables,
        "s",
        None,
        &chunk.delta.regions,
        &chunk,
        &kcl::checkpoint::LeaseOwnership {
            worker_id: "w".into(),
            epoch: 1,
        },
        1,
    )
    .unwrap();
    let mut seen = Vec::new();
    for item in &items {
        let (action, name) = if let Some(put) = item.put() {
            ("dynamodb:PutItem", put.table_name())
        } else if let Some(update) = item.update() {
            ("dynamodb:UpdateItem", update.table_name())
        } else if let Some(check) = item.condition_check() {
            ("dynamodb:ConditionCheckItem", check.table_name())
        } else {
            panic!("an item of a kind the policy does not cover: {item:?}")
        };
        assert!(
            allows(worker, action, &table(name)),
            "the worker policy does not allow {action} on {name}"
        );
        seen.push((action, name.to_string()));
    }
    // The case of issue 12: both were missing.
    assert!(
        seen.contains(&("dynamodb:ConditionCheckItem", "APP".to_string())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("dynamodb:PutItem", "APP-Orders".to_string())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("dynamodb:PutItem", "APP-DeadLetters".to_string())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("dynamodb:ConditionCheckItem", "APP-Orders".to_string())),
        "{seen:?}"
    );
}

#[test]
fn every_command_has_a_policy_on_named_resources_with_real_actions() {
    let policies = policies();
    for command in ["worker", "produce", "stats", "reshard", "create-stream"] {
        let policy = policies
            .get(&format!("delivery-app {command}"))
            .unwrap_or_else(|| panic!("no policy for {command}"));
        for statement in policy["Statement"].as_array().unwrap() {
            for resource in strings(&statement["Resource"]) {
                // The one wildcard: a stream consumer's ARN ends in its registration
                // time, unknown until it is registered.
                let named = resource
                    .strip_suffix("/consumer/APP:*")
                    .unwrap_or(&resource);
                assert!(
                    named.starts_with("arn:aws:")
                        && named.contains("REGION:ACCOUNT:")
                        && !named.contains('*'),
                    "{command}: {resource}"
                );
            }
            for action in strings(&statement["Action"]) {
                // Not an IAM action (a transaction is authorized per item), or a listing
                // of the whole account, which no command needs.
                assert!(
                    ![
                        "dynamodb:TransactWriteItems",
                        "dynamodb:ListTables",
                        "kinesis:ListStreams"
                    ]
                    .contains(&action.as_str()),
                    "{command}: {action}"
                );
            }
        }
    }
}
