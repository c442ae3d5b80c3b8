//! The strict DynamoDB layer: transaction conflicts, applied to the requests passing
//! through the proxy (see [`super::conflicts`] for what is modelled and what is not).
//!
//! A `TransactWriteItems` registers its items in flight, is held
//! [`DynamoDbLimits::transaction_hold`] (the embedded DynamoDB answers in microseconds,
//! so without a hold two calls would never overlap), forwarded, and releases its items
//! when the answer is back. Meanwhile a `PutItem`/`UpdateItem`/`DeleteItem` of one of
//! its items gets 400 `TransactionConflictException` and another transaction touching
//! one gets 400 `TransactionCanceledException` with reason `TransactionConflict`.
//!
//! A `Put` names its item by its attributes, so the layer needs the table's key schema:
//! it remembers the schemas in `DescribeTable` answers passing through, and otherwise
//! asks the service itself with a `DescribeTable` of its own (signed as the request
//! it is about: the emulator checks that a signature is present, not its value).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::conflicts::{
    self, ConflictsError, InFlight, KeySchema, KeySchemas, Writes, key_schema_of_description,
};
use super::{RefusalKind, Refusals};
use crate::faults::{
    Answer, Forward, LayerFuture, ProxyLayer, ProxyRequest, ProxyResponse, dynamodb_target,
};

/// DynamoDB behaviour of strict mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoDbLimits {
    /// How long a `TransactWriteItems` is held in flight before it is forwarded: the
    /// window in which overlapping writes conflict. Zero still registers the items for
    /// the time the service takes, which locally is too short to meet.
    pub transaction_hold: Duration,
}

impl Default for DynamoDbLimits {
    fn default() -> Self {
        DynamoDbLimits {
            transaction_hold: Duration::from_millis(20),
        }
    }
}

/// The strict DynamoDB [`ProxyLayer`]. The hold can change at run time.
#[derive(Debug)]
pub struct StrictDynamoDb {
    limits: Mutex<DynamoDbLimits>,
    in_flight: InFlight,
    schemas: KeySchemas,
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    refusals: Arc<Refusals>,
}

impl StrictDynamoDb {
    /// A layer in front of the DynamoDB at `upstream_url` (`http://host:port`, where it
    /// asks for key schemas), counting its refusals in `refusals`.
    pub fn new(
        limits: DynamoDbLimits,
        upstream_url: &str,
        refusals: Arc<Refusals>,
    ) -> StrictDynamoDb {
        StrictDynamoDb {
            limits: Mutex::new(limits),
            in_flight: InFlight::new(),
            schemas: KeySchemas::default(),
            upstream: upstream_url.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            refusals,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> DynamoDbLimits {
        self.lock().clone()
    }

    /// Changes how long transactions are held, from the next one on.
    pub fn set_transaction_hold(&self, hold: Duration) {
        self.lock().transaction_hold = hold;
    }

    /// How many items transactions in flight hold now: a test waits for a transaction
    /// to be in flight before sending what should conflict with it.
    pub fn items_in_flight(&self) -> usize {
        self.in_flight.held()
    }

    fn lock(&self) -> MutexGuard<'_, DynamoDbLimits> {
        self.limits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The items `request` writes, asking the service for a key schema it lacks. A
    /// request whose items cannot be told (malformed, a table that does not exist) is
    /// left to the service, which refuses it with its own error.
    async fn writes_of(&self, request: &ProxyRequest) -> Writes {
        for _ in 0..2 {
            match conflicts::writes(&request.operation, &request.body, |t| self.schemas.get(t)) {
                Ok(writes) => return writes,
                Err(ConflictsError::UnknownKeySchema(table)) => {
                    match self.describe_key_schema(request, &table).await {
                        Some(schema) => self.schemas.insert(&table, schema),
                        None => return Writes::Nothing,
                    }
                }
                Err(ConflictsError::Malformed(why)) => {
                    tracing::debug!(operation = %request.operation, %why, "strict DynamoDB: not checked");
                    return Writes::Nothing;
                }
            }
        }
        Writes::Nothing
    }

    /// The key schema of `table`, by a `DescribeTable` sent straight to the service.
    async fn describe_key_schema(&self, like: &ProxyRequest, table: &str) -> Option<KeySchema> {
        let body = json!({ "TableName": table }).to_string();
        let mut describe = Request::new(Full::new(Bytes::from(body)));
        *describe.method_mut() = hyper::Method::POST;
        *describe.uri_mut() = format!("{}/", self.upstream).parse().ok()?;
        let headers = describe.headers_mut();
        for name in [header::AUTHORIZATION] {
            if let Some(value) = like.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        for name in ["x-amz-date", "x-amz-security-token"] {
            if let Some(value) = like.headers.get(name) {
                headers.insert(name, value.clone());
            }
        }
        headers.insert(
            "x-amz-target",
            HeaderValue::from_str(&dynamodb_target("DescribeTable")).ok()?,
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        let response = self.client.request(describe).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        key_schema_of_description(&body)
    }

    fn refuse(&self, request: &ProxyRequest, body: &serde_json::Value) -> Answer {
        tracing::debug!(operation = %request.operation, "strict DynamoDB: transaction conflict");
        self.refusals
            .record(&request.operation, RefusalKind::TransactionConflict);
        Answer::Respond(ProxyResponse::aws_error_body(&request.operation, 400, body))
    }
}

impl ProxyLayer for StrictDynamoDb {
    fn call<'a>(&'a self, request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let describe = request.operation == dynamodb_target("DescribeTable");
            if request.operation == dynamodb_target("DeleteTable")
                && let Some(table) = request
                    .json()
                    .and_then(|body| body["TableName"].as_str().map(str::to_string))
            {
                // A table created again under the name may have another key.
                self.schemas.remove(&table);
            }
            match self.writes_of(&request).await {
                Writes::Nothing => {}
                Writes::Item(item) => {
                    if !self.in_flight.single_write_allowed(&item) {
                        return self.refuse(&request, &conflicts::conflict_body());
                    }
                }
                Writes::Transaction(items) => {
                    let _in_flight = match self.in_flight.begin_transaction(items) {
                        Ok(guard) => guard,
                        Err(cancelled) => return self.refuse(&request, &cancelled.body()),
                    };
                    let hold = self.lock().transaction_hold;
                    tokio::time::sleep(hold).await;
                    // The items stay in flight until the service has answered.
                    return forward.send(request).await;
                }
            }
            let answer = forward.send(request).await;
            if describe
                && let Some(response) = answer.response()
                && response.status.is_success()
                && let Some(schema) = key_schema_of_description(&response.body)
                && let Some(table) = response
                    .json()
                    .and_then(|body| body["Table"]["TableName"].as_str().map(str::to_string))
            {
                self.schemas.insert(&table, schema);
            }
            answer
        })
    }
}
