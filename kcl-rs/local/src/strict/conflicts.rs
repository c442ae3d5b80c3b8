//! DynamoDB transaction conflicts: which items a write request writes or checks, and
//! the items of the `TransactWriteItems` calls in flight.
//!
//! Real DynamoDB refuses, while a transaction on an item is in progress:
//! - a `PutItem`, `UpdateItem` or `DeleteItem` of that item with 400
//!   `TransactionConflictException` ("Transaction is ongoing for the item");
//! - another `TransactWriteItems` touching that item with 400
//!   `TransactionCanceledException`, whose `CancellationReasons` hold one entry per item
//!   of the request, in order: `{"Code":"None"}` or `{"Code":"TransactionConflict",
//!   "Message":"Transaction is ongoing for the item"}`.
//!
//! The embedded DynamoDB serialises every request, so none of this happens there; the
//! strict layer registers a transaction's items in an [`InFlight`] tracker for as long
//! as it is forwarded (and holds it a moment longer) and refuses the overlapping calls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use crate::faults::DYNAMODB_TARGET_PREFIX;

/// The message of both refusals, as DynamoDB words it.
pub const ONGOING_TRANSACTION: &str = "Transaction is ongoing for the item";

/// The key attribute names of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    /// The partition (hash) key attribute.
    pub hash: String,
    /// The sort (range) key attribute, if the table has one.
    pub range: Option<String>,
}

/// One item: its table's name and its key, normalised so that two spellings of the
/// same key (attribute order, `"N": "1.50"` and `"N": "1.5"`) compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    /// The table name (a table ARN is reduced to the name).
    pub table: String,
    /// `(attribute, normalised value)`, sorted by attribute.
    pub key: Vec<(String, String)>,
}

impl ItemKey {
    /// The item of `table` with the key attributes of `key` (a DynamoDB JSON map).
    pub fn new(table: &str, key: &Map<String, Value>) -> Result<ItemKey, ConflictsError> {
        let table = table_name(table);
        let mut attributes = key
            .iter()
            .map(|(name, value)| Ok((name.clone(), normalise_key_value(value)?)))
            .collect::<Result<Vec<_>, ConflictsError>>()?;
        attributes.sort();
        Ok(ItemKey {
            table: table.to_string(),
            key: attributes,
        })
    }
}

/// Why the items of a request could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflictsError {
    /// A `Put` names an item by its attributes only: the table's key schema is needed
    /// (the caller learns it with `DescribeTable` and asks again).
    #[error("the key schema of table {0:?} is needed")]
    UnknownKeySchema(String),
    /// The request is not shaped as DynamoDB expects; the service will refuse it.
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// The items a DynamoDB request writes or checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writes {
    /// A request that writes no item (reads, control plane, batches).
    Nothing,
    /// A `PutItem`, `UpdateItem` or `DeleteItem` of one item.
    Item(ItemKey),
    /// A `TransactWriteItems`: its items in request order.
    Transaction(Vec<ItemKey>),
}

/// The items the request with `target` (`X-Amz-Target`) and `body` writes or checks.
/// `schema` gives a table's key schema, needed for `Put` only.
pub fn writes(
    target: &str,
    body: &[u8],
    schema: impl Fn(&str) -> Option<KeySchema>,
) -> Result<Writes, ConflictsError> {
    let Some(operation) = target.strip_prefix(DYNAMODB_TARGET_PREFIX) else {
        return Ok(Writes::Nothing);
    };
    if !matches!(
        operation,
        "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems"
    ) {
        return Ok(Writes::Nothing);
    }
    let body: Value =
        serde_json::from_slice(body).map_err(|e| ConflictsError::Malformed(e.to_string()))?;
    match operation {
        "PutItem" => item_of("Put", &body, &schema).map(Writes::Item),
        "UpdateItem" => item_of("Update", &body, &schema).map(Writes::Item),
        "DeleteItem" => item_of("Delete", &body, &schema).map(Writes::Item),
        _ => {
            let items = body
                .get("TransactItems")
                .and_then(Value::as_array)
                .ok_or_else(|| ConflictsError::Malformed("no TransactItems".into()))?;
            items
                .iter()
                .map(|item| {
                    let (kind, request) = item
                        .as_object()
                        .and_then(|item| item.iter().next())
                        .ok_or_else(|| ConflictsError::Malformed("empty transact item".into()))?;
                    item_of(kind, request, &schema)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Writes::Transaction)
        }
    }
}

/// The item of one `Put`/`Update`/`Delete`/`ConditionCheck` request (a single call's
/// body, or one entry of a transaction).
fn item_of(
    kind: &str,
    request: &Value,
    schema: &impl Fn(&str) -> Option<KeySchema>,
) -> Result<ItemKey, ConflictsError> {
    let malformed = |what: &str| ConflictsError::Malformed(format!("{kind} without {what}"));
    let table = request
        .get("TableName")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("TableName"))?;
    if kind != "Put" {
        let key = request
            .get("Key")
            .and_then(Value::as_object)
            .ok_or_else(|| malformed("Key"))?;
        return ItemKey::new(table, key);
    }
    let item = request
        .get("Item")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("Item"))?;
    let schema = schema(table_name(table))
        .ok_or_else(|| ConflictsError::UnknownKeySchema(table_name(table).into()))?;
    let mut key = Map::new();
    for attribute in std::iter::once(&schema.hash).chain(schema.range.as_ref()) {
        let value = item
            .get(attribute)
            .ok_or_else(|| malformed(&format!("key attribute {attribute}")))?;
        key.insert(attribute.clone(), value.clone());
    }
    ItemKey::new(table, &key)
}

/// The table name of a `TableName` that may be a table ARN.
fn table_name(table: &str) -> &str {
    match table.split_once(":table/") {
        Some((prefix, name)) if prefix.starts_with("arn:") => {
            name.split('/').next().unwrap_or(name)
        }
        _ => table,
    }
}

/// A key attribute value (`{"S": ..}`, `{"N": ..}` or `{"B": ..}`) as a string equal
/// for equal keys: numbers are compared as numbers, as DynamoDB does.
fn normalise_key_value(value: &Value) -> Result<String, ConflictsError> {
    let malformed = || ConflictsError::Malformed(format!("key value {value}"));
    let (kind, inner) = value
        .as_object()
        .filter(|v| v.len() == 1)
        .and_then(|v| v.iter().next())
        .ok_or_else(malformed)?;
    let text = inner.as_str().ok_or_else(malformed)?;
    match kind.as_str() {
        "S" | "B" => Ok(format!("{kind}:{text}")),
        "N" => canonical_number(text)
            .map(|n| format!("N:{n}"))
            .ok_or_else(malformed),
        _ => Err(malformed()),
    }
}

/// A decimal number (`-1.50E+2`) as `sign digits e exponent` with no leading or
/// trailing zeros in the digits, so equal numbers have equal text; zero is `0`.
fn canonical_number(text: &str) -> Option<String> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    // value = 0.digits × 10^(len(whole) + exponent)
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_matches('0');
    if significant.is_empty() {
        return Some("0".into());
    }
    let point = whole.len() as i64 + exponent - leading as i64;
    let sign = if negative { "-" } else { "" };
    Some(format!("{sign}0.{significant}e{point}"))
}

/// Why a `TransactWriteItems` was cancelled: one reason per item, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// For each item: whether another transaction in flight holds it.
    pub conflicts: Vec<bool>,
}

impl Cancelled {
    /// DynamoDB's message, e.g. `Transaction cancelled, please refer cancellation
    /// reasons for specific reasons [None, TransactionConflict]`.
    pub fn message(&self) -> String {
        let codes: Vec<&str> = self
            .conflicts
            .iter()
            .map(|&c| if c { "TransactionConflict" } else { "None" })
            .collect();
        format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            codes.join(", ")
        )
    }

    /// The answer's JSON body: `__type`, `Message` and `CancellationReasons`.
    pub fn body(&self) -> Value {
        let reasons: Vec<Value> = self
            .conflicts
            .iter()
            .map(|&c| {
                if c {
                    json!({"Code": "TransactionConflict", "Message": ONGOING_TRANSACTION})
                } else {
                    json!({"Code": "None"})
                }
            })
            .collect();
        json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": self.message(),
            "CancellationReasons": reasons,
        })
    }
}

/// The JSON body of DynamoDB's 400 `TransactionConflictException` for a single write.
pub fn conflict_body() -> Value {
    json!({
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
        "message": ONGOING_TRANSACTION,
    })
}

/// The items of the transactions in flight. Cheap to clone; clones share the state.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    items: Arc<Mutex<HashSet<ItemKey>>>,
}

/// A transaction registered in flight; its items are released when this is dropped.
#[derive(Debug)]
#[must_use = "the transaction is in flight only while its guard lives"]
pub struct TransactionGuard {
    items: Vec<ItemKey>,
    in_flight: InFlight,
}

impl Drop for TransactionGuard {
    fn drop(&mut self) {
        let mut held = self.in_flight.lock();
        for item in &self.items {
            held.remove(item);
        }
    }
}

impl InFlight {
    /// An empty tracker.
    pub fn new() -> InFlight {
        InFlight::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ItemKey>> {
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a single write of `item` may go ahead: `false` while a transaction in
    /// flight holds it (answer [`conflict_body`]).
    pub fn single_write_allowed(&self, item: &ItemKey) -> bool {
        !self.lock().contains(item)
    }

    /// Registers a transaction's `items` atomically, or cancels it when another
    /// transaction in flight holds any of them (answer [`Cancelled::body`]).
    pub fn begin_transaction(&self, items: Vec<ItemKey>) -> Result<TransactionGuard, Cancelled> {
        let mut held = self.lock();
        let conflicts: Vec<bool> = items.iter().map(|item| held.contains(item)).collect();
        if conflicts.iter().any(|&c| c) {
            return Err(Cancelled { conflicts });
        }
        // Two actions on one item are DynamoDB's own ValidationException: the
        // upstream answers it; register the item once so the guard releases it once.
        let unique: Vec<ItemKey> = {
            let mut seen = HashSet::new();
            items
                .into_iter()
                .filter(|item| seen.insert(item.clone()))
                .collect()
        };
        held.extend(unique.iter().cloned());
        Ok(TransactionGuard {
            items: unique,
            in_flight: self.clone(),
        })
    }

    /// How many items are held now.
    pub fn held(&self) -> usize {
        self.lock().len()
    }
}

/// Per table, the key schema learnt so far. Cheap to clone; clones share the cache.
#[derive(Debug, Clone, Default)]
pub struct KeySchemas {
    tables: Arc<Mutex<HashMap<String, KeySchema>>>,
}

impl KeySchemas {
    /// The schema of `table`, if learnt.
    pub fn get(&self, table: &str) -> Option<KeySchema> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
            .cloned()
    }

    /// Forgets the schema of `table` (deleted: it may come back with another).
    pub fn remove(&self, table: &str) {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(table);
    }

    /// Remembers the schema of `table`.
    pub fn insert(&self, table: &str, schema: KeySchema) {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.to_string(), schema);
    }
}

/// The key schema in a `DescribeTable` answer's body (`Table.KeySchema`).
pub fn key_schema_of_description(body: &[u8]) -> Option<KeySchema> {
    let body: Value = serde_json::from_slice(body).ok()?;
    let mut hash = None;
    let mut range = None;
    for element in body.get("Table")?.get("KeySchema")?.as_array()? {
        let name = element.get("AttributeName")?.as_str()?.to_string();
        match element.get("KeyType")?.as_str()? {
            "HASH" => hash = Some(name),
            "RANGE" => range = Some(name),
            _ => return None,
        }
    }
    Some(KeySchema { hash: hash?, range })
}

#[cfg(test)]
mod tests;
