//! Which permissions AWS checks for one request: the IAM actions and the resources
//! (ARNs) they are checked on, read from the `X-Amz-Target` header and the JSON body.
//!
//! DynamoDB transactions are authorised per item, as the DynamoDB developer guide
//! ("Using IAM with DynamoDB transactions") says: a `Put` needs `dynamodb:PutItem`, an
//! `Update` `dynamodb:UpdateItem`, a `Delete` `dynamodb:DeleteItem`, a `ConditionCheck`
//! `dynamodb:ConditionCheckItem` and a `Get` `dynamodb:GetItem`, each on its item's
//! table. There is no `dynamodb:TransactWriteItems` IAM action: a policy naming it is
//! harmless, and one naming only it allows no transaction. `BatchGetItem` and
//! `BatchWriteItem` need their own action on every table they name.

use serde_json::{Map, Value};

use crate::faults::{DYNAMODB_TARGET_PREFIX, KINESIS_TARGET_PREFIX};

/// One permission AWS checks: `action` (e.g. `dynamodb:ConditionCheckItem`) on
/// `resource` (an ARN, or `*` for actions that name no resource).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permission {
    /// The IAM action, `service:Operation`.
    pub action: String,
    /// The resource ARN, or `*`.
    pub resource: String,
}

impl Permission {
    fn new(action: impl Into<String>, resource: impl Into<String>) -> Permission {
        Permission {
            action: action.into(),
            resource: resource.into(),
        }
    }
}

/// The partition of the ARNs the local AWS pretends to live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnScope {
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// The 12-digit account id.
    pub account: String,
}

impl ArnScope {
    /// `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`.
    pub fn stream_arn(&self, stream: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{stream}",
            self.region, self.account
        )
    }

    /// `arn:aws:dynamodb:REGION:ACCOUNT:table/NAME`; a name that already is an ARN
    /// (DynamoDB accepts table ARNs wherever it takes a `TableName`) is kept.
    pub fn table_arn(&self, table: &str) -> String {
        if table.starts_with("arn:") {
            table.to_string()
        } else {
            format!(
                "arn:aws:dynamodb:{}:{}:table/{table}",
                self.region, self.account
            )
        }
    }
}

/// Why the permissions of a request could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The target is neither a Kinesis nor a DynamoDB operation.
    #[error("unknown service for X-Amz-Target {0:?}")]
    UnknownService(String),
    /// The body is not a JSON object.
    #[error("request body is not a JSON object")]
    Body,
    /// The request names no stream (a `GetRecords`, or a `ListShards` with only a
    /// `NextToken`) and the caller did not know it either.
    #[error("{0} names no stream and none was given")]
    UnknownStream(String),
    /// A field the operation needs is missing.
    #[error("{operation} without {field}")]
    Missing {
        /// The operation.
        operation: String,
        /// The missing field.
        field: &'static str,
    },
}

/// Kinesis operations whose resource is `*`.
const KINESIS_WITHOUT_RESOURCE: &[&str] =
    &["ListStreams", "DescribeLimits", "DescribeAccountSettings"];

/// DynamoDB operations whose resource is `*`.
const DYNAMODB_WITHOUT_RESOURCE: &[&str] = &[
    "ListTables",
    "DescribeLimits",
    "DescribeEndpoints",
    "ListBackups",
    "ListGlobalTables",
    "ListExports",
    "ListImports",
];

/// The permissions AWS checks for a request with `target` (`X-Amz-Target`) and `body`.
/// `known_stream` is the stream the caller knows the request to be about when the body
/// does not say (the stream of a `GetRecords`'s iterator, of a `ListShards` token).
pub fn required_permissions(
    target: &str,
    body: &[u8],
    scope: &ArnScope,
    known_stream: Option<&str>,
) -> Result<Vec<Permission>, RequestError> {
    let object = || -> Result<Map<String, Value>, RequestError> {
        match serde_json::from_slice::<Value>(if body.is_empty() { b"{}" } else { body }) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(RequestError::Body),
        }
    };
    if let Some(operation) = target.strip_prefix(KINESIS_TARGET_PREFIX) {
        kinesis(operation, &object()?, scope, known_stream)
    } else if let Some(operation) = target.strip_prefix(DYNAMODB_TARGET_PREFIX) {
        dynamodb(operation, &object()?, scope)
    } else {
        Err(RequestError::UnknownService(target.to_string()))
    }
}

fn kinesis(
    operation: &str,
    body: &Map<String, Value>,
    scope: &ArnScope,
    known_stream: Option<&str>,
) -> Result<Vec<Permission>, RequestError> {
    let action = format!("kinesis:{operation}");
    if KINESIS_WITHOUT_RESOURCE.contains(&operation) {
        return Ok(vec![Permission::new(action, "*")]);
    }
    // The consumer calls (SubscribeToShard, DescribeStreamConsumer and
    // DeregisterStreamConsumer by ARN) are on the consumer; by name, on the consumer of
    // that name, whose ARN ends in its registration time.
    let consumer_by_name = matches!(
        operation,
        "DescribeStreamConsumer" | "DeregisterStreamConsumer"
    )
    .then(|| str_field(body, "ConsumerName"))
    .flatten();
    let resource = if let Some(arn) = str_field(body, "ConsumerARN") {
        arn.to_string()
    } else if let (Some(stream), Some(name)) = (str_field(body, "StreamARN"), consumer_by_name) {
        format!("{stream}/consumer/{name}:*")
    } else if let Some(arn) = str_field(body, "StreamARN") {
        arn.to_string()
    } else if let Some(name) = str_field(body, "StreamName") {
        scope.stream_arn(name)
    } else if let Some(name) = known_stream {
        scope.stream_arn(name)
    } else {
        return Err(RequestError::UnknownStream(operation.to_string()));
    };
    Ok(vec![Permission::new(action, resource)])
}

fn dynamodb(
    operation: &str,
    body: &Map<String, Value>,
    scope: &ArnScope,
) -> Result<Vec<Permission>, RequestError> {
    let missing = |field| RequestError::Missing {
        operation: operation.to_string(),
        field,
    };
    let action = format!("dynamodb:{operation}");
    match operation {
        _ if DYNAMODB_WITHOUT_RESOURCE.contains(&operation) => {
            Ok(vec![Permission::new(action, "*")])
        }
        "TransactWriteItems" | "TransactGetItems" => {
            let items = body
                .get("TransactItems")
                .and_then(Value::as_array)
                .ok_or_else(|| missing("TransactItems"))?;
            let mut permissions = Vec::with_capacity(items.len());
            for item in items {
                let (kind, request) = item
                    .as_object()
                    .and_then(|item| item.iter().next())
                    .ok_or_else(|| missing("an item operation"))?;
                let item_action = match kind.as_str() {
                    "Put" => "dynamodb:PutItem",
                    "Update" => "dynamodb:UpdateItem",
                    "Delete" => "dynamodb:DeleteItem",
                    "ConditionCheck" => "dynamodb:ConditionCheckItem",
                    "Get" => "dynamodb:GetItem",
                    _ => return Err(missing("a known item operation")),
                };
                let table = request
                    .get("TableName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing("TableName"))?;
                permissions.push(Permission::new(item_action, scope.table_arn(table)));
            }
            Ok(permissions)
        }
        "BatchGetItem" | "BatchWriteItem" => {
            let tables = body
                .get("RequestItems")
                .and_then(Value::as_object)
                .ok_or_else(|| missing("RequestItems"))?;
            Ok(tables
                .keys()
                .map(|table| Permission::new(action.clone(), scope.table_arn(table)))
                .collect())
        }
        _ => {
            let table = str_field(body, "TableName")
                .or_else(|| str_field(body, "ResourceArn"))
                .ok_or_else(|| missing("TableName"))?;
            let mut resource = scope.table_arn(table);
            if matches!(operation, "Query" | "Scan")
                && let Some(index) = str_field(body, "IndexName")
            {
                resource = format!("{resource}/index/{index}");
            }
            Ok(vec![Permission::new(action, resource)])
        }
    }
}

fn str_field<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{dynamodb_target, kinesis_target};

    fn scope() -> ArnScope {
        ArnScope {
            region: "us-east-1".into(),
            account: "000000000000".into(),
        }
    }

    const TABLE: &str = "arn:aws:dynamodb:us-east-1:000000000000:table/";
    const STREAM: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/";

    fn perms(list: &[(&str, &str)]) -> Vec<Permission> {
        list.iter().map(|(a, r)| Permission::new(*a, *r)).collect()
    }

    #[test]
    fn dynamodb_requests_map_to_actions_on_tables_and_indexes() {
        let leases = format!("{TABLE}leases");
        let table: Vec<(&str, &str, Vec<Permission>)> = vec![
            (
                "GetItem",
                r#"{"TableName":"leases","Key":{}}"#,
                perms(&[("dynamodb:GetItem", &leases)]),
            ),
            (
                "UpdateItem",
                r#"{"TableName":"leases"}"#,
                perms(&[("dynamodb:UpdateItem", &leases)]),
            ),
            (
                "Scan",
                r#"{"TableName":"leases"}"#,
                perms(&[("dynamodb:Scan", &leases)]),
            ),
            (
                "Query",
                r#"{"TableName":"leases","IndexName":"byOwner"}"#,
                perms(&[("dynamodb:Query", &format!("{leases}/index/byOwner"))]),
            ),
            (
                "DescribeTable",
                r#"{"TableName":"arn:aws:dynamodb:eu-west-1:1:table/x"}"#,
                perms(&[(
                    "dynamodb:DescribeTable",
                    "arn:aws:dynamodb:eu-west-1:1:table/x",
                )]),
            ),
            ("ListTables", "", perms(&[("dynamodb:ListTables", "*")])),
            (
                "TransactWriteItems",
                r#"{"TransactItems":[
                    {"ConditionCheck":{"TableName":"leases","Key":{}}},
                    {"Update":{"TableName":"orders","Key":{}}},
                    {"Put":{"TableName":"dead","Item":{}}},
                    {"Delete":{"TableName":"orders","Key":{}}}]}"#,
                perms(&[
                    ("dynamodb:ConditionCheckItem", &leases),
                    ("dynamodb:UpdateItem", &format!("{TABLE}orders")),
                    ("dynamodb:PutItem", &format!("{TABLE}dead")),
                    ("dynamodb:DeleteItem", &format!("{TABLE}orders")),
                ]),
            ),
            (
                "TransactGetItems",
                r#"{"TransactItems":[{"Get":{"TableName":"leases","Key":{}}}]}"#,
                perms(&[("dynamodb:GetItem", &leases)]),
            ),
            (
                "BatchGetItem",
                r#"{"RequestItems":{"a":{"Keys":[]},"b":{"Keys":[]}}}"#,
                perms(&[
                    ("dynamodb:BatchGetItem", &format!("{TABLE}a")),
                    ("dynamodb:BatchGetItem", &format!("{TABLE}b")),
                ]),
            ),
        ];
        for (operation, body, expected) in table {
            let got =
                required_permissions(&dynamodb_target(operation), body.as_bytes(), &scope(), None);
            assert_eq!(got, Ok(expected), "{operation}");
        }
    }

    #[test]
    fn kinesis_requests_map_to_actions_on_streams() {
        let orders = format!("{STREAM}orders");
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, Expected);
        type Expected = Result<Vec<Permission>, RequestError>;
        let table: Vec<Case> = vec![
            (
                "ListShards",
                r#"{"StreamName":"orders"}"#,
                None,
                Ok(perms(&[("kinesis:ListShards", &orders)])),
            ),
            (
                "ListShards",
                r#"{"StreamARN":"arn:aws:kinesis:eu-west-1:1:stream/x"}"#,
                None,
                Ok(perms(&[(
                    "kinesis:ListShards",
                    "arn:aws:kinesis:eu-west-1:1:stream/x",
                )])),
            ),
            (
                "ListShards",
                r#"{"NextToken":"t"}"#,
                Some("orders"),
                Ok(perms(&[("kinesis:ListShards", &orders)])),
            ),
            (
                "GetRecords",
                r#"{"ShardIterator":"i"}"#,
                Some("orders"),
                Ok(perms(&[("kinesis:GetRecords", &orders)])),
            ),
            (
                "GetRecords",
                r#"{"ShardIterator":"i"}"#,
                None,
                Err(RequestError::UnknownStream("GetRecords".into())),
            ),
            (
                "ListStreams",
                "{}",
                None,
                Ok(perms(&[("kinesis:ListStreams", "*")])),
            ),
        ];
        for (operation, body, known, expected) in table {
            let got =
                required_permissions(&kinesis_target(operation), body.as_bytes(), &scope(), known);
            assert_eq!(got, expected, "{operation} {body}");
        }
    }

    #[test]
    fn malformed_requests_are_errors() {
        let table = [
            (dynamodb_target("GetItem"), "[]", RequestError::Body),
            (
                dynamodb_target("GetItem"),
                "{}",
                RequestError::Missing {
                    operation: "GetItem".into(),
                    field: "TableName",
                },
            ),
            (
                "Other_1.Op".to_string(),
                "{}",
                RequestError::UnknownService("Other_1.Op".into()),
            ),
        ];
        for (target, body, expected) in table {
            assert_eq!(
                required_permissions(&target, body.as_bytes(), &scope(), None),
                Err(expected)
            );
        }
    }
}
