//! What a workload costs on AWS: proxies in front of a local AWS that count Kinesis
//! calls per operation and the DynamoDB request units each table consumes.
//!
//! The DynamoDB proxy asks for `ReturnConsumedCapacity` on every item operation that
//! did not (the embedded DynamoDB computes it as AWS does: 1 write unit per KB written,
//! 1 read unit per 4 KB read strongly, half that eventually, twice both in
//! transactions) and adds up what the answers report, per table, as read or write
//! units. Calls refused by a condition (a failed conditional write, a cancelled
//! transaction) report nothing here but are counted; on AWS they consume write units
//! too. A caller that asked for the capacity gets it as before.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
//! use kcl::leases::{DynamoLeaseStore, Lease, LeaseStore};
//! use kcl_local::meter::Metered;
//! use kcl_local::{LocalAws, LocalAwsOptions};
//!
//! let aws = LocalAws::start(LocalAwsOptions::default()).await?;
//! let metered = Metered::start(&aws.endpoints()).await?;
//! // The workload: here one lease written and read back.
//! let clients = kcl::Clients::connect(&metered.endpoints()).await;
//! let store = DynamoLeaseStore::new(clients.dynamodb.clone(), "app");
//! store.ensure_tables().await?;
//! let start = ExtendedSequenceNumber::new(SequencePosition::TrimHorizon);
//! store.create_lease(&Lease::new("shardId-000000000000", start)).await?;
//! store.get_lease("shardId-000000000000").await?;
//!
//! let app = metered.usage().tables["app"];
//! assert_eq!(app.write_units, 1.0); // a small item: 1 unit per KB written
//! assert_eq!(app.read_units, 1.0); // a strongly consistent read of up to 4 KB
//!
//! let kinesis = &clients.kinesis;
//! kcl::stream::create_stream(kinesis, "s", 1, std::time::Duration::from_secs(10)).await?;
//! let data = aws_sdk_kinesis::primitives::Blob::new(vec![7u8; 30 * 1024]);
//! kinesis.put_record().stream_name("s").partition_key("k").data(data).send().await?;
//! let usage = metered.usage();
//! assert_eq!((usage.kinesis_records_put, usage.put_payload_units), (1, 2)); // 30 KB: 2 × 25 KB
//! assert_eq!(usage.kinesis_calls["PutRecord"], 1);
//! metered.shutdown().await;
//! aws.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kcl::aws::Endpoints;
use serde_json::Value;

use crate::faults::{
    Answer, FaultPlan, FaultProxy, Forward, LayerFuture, ProxyLayer, ProxyRequest, action_of,
};

/// Request units and calls of one DynamoDB table.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TableUsage {
    /// Read request units consumed.
    pub read_units: f64,
    /// Write request units consumed.
    pub write_units: f64,
    /// Calls that touched the table (a transaction counts once per table it touches).
    pub calls: u64,
    /// Calls refused by a condition or cancelled (no capacity reported for them).
    pub refused: u64,
}

/// What a [`Metered`] pair of proxies saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Per DynamoDB table.
    pub tables: BTreeMap<String, TableUsage>,
    /// Kinesis calls per operation (`GetRecords`, `PutRecords`, ...).
    pub kinesis_calls: BTreeMap<String, u64>,
    /// Kinesis PUT payload units: each record put (PutRecord, PutRecords) counts one
    /// per 25 KB of data and partition key, rounded up, as Kinesis bills them.
    pub put_payload_units: u64,
    /// Records put into Kinesis (aggregates count once).
    pub kinesis_records_put: u64,
}

/// Kinesis bills PUT payload units of 25 KB.
const PUT_PAYLOAD_UNIT: usize = 25 * 1024;

/// The PUT payload units of one record: data (base64 in the request) and key.
fn payload_units(record: &Value) -> u64 {
    let data = record.get("Data").and_then(Value::as_str).map_or(0, |b64| {
        let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
        b64.len() / 4 * 3 - padding.min(2)
    });
    let key = record
        .get("PartitionKey")
        .and_then(Value::as_str)
        .map_or(0, str::len);
    (data + key).div_ceil(PUT_PAYLOAD_UNIT).max(1) as u64
}

/// The Kinesis layer: counts what puts would be billed.
#[derive(Default)]
struct PutLayer {
    /// (payload units, records)
    puts: Mutex<(u64, u64)>,
}

impl ProxyLayer for PutLayer {
    fn call<'a>(&'a self, request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let records: Vec<Value> = match action_of(&request.operation) {
                "PutRecords" => request
                    .json()
                    .and_then(|b| b.get("Records").and_then(Value::as_array).cloned())
                    .unwrap_or_default(),
                "PutRecord" => request.json().into_iter().collect(),
                _ => return forward.send(request).await,
            };
            let answer = forward.send(request).await;
            if answer.response().is_some_and(|r| r.status.is_success()) {
                let units: u64 = records.iter().map(payload_units).sum();
                let mut puts = self.puts.lock().unwrap_or_else(|p| p.into_inner());
                puts.0 += units;
                puts.1 += records.len() as u64;
            }
            answer
        })
    }
}

/// Item operations that take `ReturnConsumedCapacity`, and whether they read.
fn item_operation(action: &str) -> Option<bool> {
    match action {
        "GetItem" | "BatchGetItem" | "Query" | "Scan" | "TransactGetItems" => Some(true),
        "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems" => {
            Some(false)
        }
        _ => None,
    }
}

/// The tables a request names (for counting calls and refusals).
fn tables_of(body: &Value) -> Vec<String> {
    let mut tables = Vec::new();
    if let Some(t) = body.get("TableName").and_then(Value::as_str) {
        tables.push(t.to_string());
    }
    if let Some(map) = body.get("RequestItems").and_then(Value::as_object) {
        tables.extend(map.keys().cloned());
    }
    if let Some(items) = body.get("TransactItems").and_then(Value::as_array) {
        for item in items {
            if let Some(op) = item.as_object().and_then(|o| o.values().next())
                && let Some(t) = op.get("TableName").and_then(Value::as_str)
            {
                tables.push(t.to_string());
            }
        }
    }
    tables.sort();
    tables.dedup();
    tables
}

/// The DynamoDB layer: asks for the consumed capacity and adds it up.
#[derive(Default)]
struct CapacityLayer {
    tables: Mutex<BTreeMap<String, TableUsage>>,
}

impl CapacityLayer {
    fn record(&self, reads: bool, named: &[String], answer: &Answer) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let Some(response) = answer.response() else {
            return;
        };
        for table in named {
            let usage = tables.entry(table.clone()).or_default();
            usage.calls += 1;
            if !response.status.is_success() {
                usage.refused += 1;
            }
        }
        if !response.status.is_success() {
            return;
        }
        let Some(body) = response.json() else {
            return;
        };
        let consumed = match body.get("ConsumedCapacity") {
            Some(Value::Array(all)) => all.clone(),
            Some(one @ Value::Object(_)) => vec![one.clone()],
            _ => Vec::new(),
        };
        for c in consumed {
            let Some(table) = c.get("TableName").and_then(Value::as_str) else {
                continue;
            };
            let number = |k: &str| c.get(k).and_then(Value::as_f64);
            let usage = tables.entry(table.to_string()).or_default();
            match (number("ReadCapacityUnits"), number("WriteCapacityUnits")) {
                (None, None) => {
                    let units = number("CapacityUnits").unwrap_or(0.0);
                    if reads {
                        usage.read_units += units;
                    } else {
                        usage.write_units += units;
                    }
                }
                (read, write) => {
                    usage.read_units += read.unwrap_or(0.0);
                    usage.write_units += write.unwrap_or(0.0);
                }
            }
        }
    }
}

impl ProxyLayer for CapacityLayer {
    fn call<'a>(&'a self, mut request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let Some(reads) = item_operation(action_of(&request.operation)) else {
                return forward.send(request).await;
            };
            let mut body = request.json();
            let named = body.as_ref().map(tables_of).unwrap_or_default();
            if let Some(Value::Object(fields)) = body.as_mut()
                && !fields.contains_key("ReturnConsumedCapacity")
            {
                fields.insert("ReturnConsumedCapacity".into(), Value::from("TOTAL"));
                request.body = serde_json::to_vec(fields).unwrap_or_default().into();
            }
            let answer = forward.send(request).await;
            self.record(reads, &named, &answer);
            answer
        })
    }
}

/// Two counting proxies in front of a local AWS's endpoints: give
/// [`Metered::endpoints`] to the workload, read [`Metered::usage`] after.
pub struct Metered {
    kinesis: FaultProxy,
    dynamodb: FaultProxy,
    capacity: Arc<CapacityLayer>,
    puts: Arc<PutLayer>,
}

impl Metered {
    /// Proxies in front of `endpoints` (both must be set).
    pub async fn start(endpoints: &Endpoints) -> std::io::Result<Metered> {
        let missing = || std::io::Error::other("both endpoints are needed");
        let kinesis_url = endpoints.kinesis.clone().ok_or_else(missing)?;
        let dynamodb_url = endpoints.dynamodb.clone().ok_or_else(missing)?;
        let capacity = Arc::new(CapacityLayer::default());
        let puts = Arc::new(PutLayer::default());
        let kinesis = FaultProxy::start_layered(
            &kinesis_url,
            FaultPlan::default(),
            vec![puts.clone() as Arc<dyn ProxyLayer>],
        )
        .await?;
        let dynamodb = FaultProxy::start_layered(
            &dynamodb_url,
            FaultPlan::default(),
            vec![capacity.clone() as Arc<dyn ProxyLayer>],
        )
        .await?;
        Ok(Metered {
            kinesis,
            dynamodb,
            capacity,
            puts,
        })
    }

    /// The endpoints to meter.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints::local(self.kinesis.url(), self.dynamodb.url())
    }

    /// What was used so far.
    pub fn usage(&self) -> Usage {
        let tables = self
            .capacity
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let kinesis_calls = self
            .kinesis
            .counts()
            .calls
            .into_iter()
            .map(|(op, n)| (action_of(&op).to_string(), n))
            .collect();
        let (put_payload_units, kinesis_records_put) =
            *self.puts.puts.lock().unwrap_or_else(|p| p.into_inner());
        Usage {
            tables,
            kinesis_calls,
            put_payload_units,
            kinesis_records_put,
        }
    }

    /// Stops both proxies.
    pub async fn shutdown(self) {
        self.kinesis.shutdown().await;
        self.dynamodb.shutdown().await;
    }
}
