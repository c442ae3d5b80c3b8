//! SubscribeToShard for the embedded Kinesis, served on its own GetRecords.
//!
//! ferrokinesis's SubscribeToShard reads its store directly, outside the ordering that
//! [`reads_after_writes`](super) gives GetRecords: a record whose PutRecords got its
//! sequence number before a concurrent one but was stored after it is skipped for good,
//! and so is one stored in a shard that a split or merge closed while the put was in
//! flight (the subscription has already reported the shard's end). It also names only
//! itself as the parent of a merge's child when read from the adjacent parent. Real
//! Kinesis does neither. So the embedded Kinesis answers SubscribeToShard here instead:
//! each session reads with GetShardIterator and GetRecords through the same ordered
//! router, and pushes what it reads as AWS event-stream frames:
//!
//! - an `initial-response` frame, then one `SubscribeToShardEvent` per GetRecords call
//!   (at once while records come back, every [`IDLE_POLL`] while the shard is quiet);
//! - `ContinuationSequenceNumber` is the last record's sequence number, as on AWS
//!   (before any record: the start position's, or empty for `TRIM_HORIZON`, `LATEST`
//!   and `AT_TIMESTAMP`);
//! - at the end of a closed shard a last event names its children from ListShards,
//!   each with both parents for a merge, and the stream ends;
//! - a session ends after [`LocalAwsOptions::subscription_session`](super::LocalAwsOptions);
//! - the consumer must exist and be ACTIVE (`ResourceNotFoundException`,
//!   `ResourceInUseException`), and one subscription per consumer and shard may be open
//!   (`ResourceInUseException`, as AWS); a failed read ends the stream with an
//!   exception frame.
//!
//! Events wait for the client: one frame is buffered, so a client that does not read
//! holds the session's reads back.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use ferrokinesis::event_stream::{
    encode_exception, encode_initial_response, encode_subscribe_event,
};
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often a quiet shard is read again within a session.
pub const IDLE_POLL: Duration = Duration::from_millis(50);

/// The adapter's state: a client for the embedded Kinesis itself (set once it
/// listens), the session length, and the open subscriptions.
#[derive(Clone)]
pub(crate) struct Subscriptions {
    client: Arc<OnceLock<Client>>,
    session: Duration,
    open: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Subscriptions {
    pub(crate) fn new(session: Duration) -> Subscriptions {
        Subscriptions {
            client: Arc::new(OnceLock::new()),
            session,
            open: Arc::default(),
        }
    }

    /// Points the adapter at the server's own address.
    pub(crate) async fn connect(&self, url: &str) {
        let clients = kcl::aws::Clients::connect(&kcl::aws::Endpoints::local(
            url.to_string(),
            url.to_string(),
        ))
        .await;
        let _ = self.client.set(clients.kinesis);
    }
}

/// Middleware: answers SubscribeToShard, passes everything else on.
pub(crate) async fn intercept(
    subscriptions: Subscriptions,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !target.ends_with(".SubscribeToShard") {
        return next.run(request).await;
    }
    let Some(client) = subscriptions.client.get().cloned() else {
        return error(500, "InternalFailure", "the server is starting");
    };
    let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
        Ok(body) => body,
        Err(_) => return error(400, "SerializationException", "unreadable body"),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "SerializationException", "the body is not JSON");
    };
    subscribe(subscriptions, client, &body).await
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({ "__type": code, "message": message }).to_string();
    (
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST),
        [("content-type", "application/x-amz-json-1.1")],
        body,
    )
        .into_response()
}

fn sdk_error<E: ProvideErrorMetadata>(e: &E, fallback: &str) -> Response {
    let code = e.code().unwrap_or("InternalFailure");
    let status = if code == "InternalFailure" { 500 } else { 400 };
    error(status, code, e.message().unwrap_or(fallback))
}

async fn subscribe(subscriptions: Subscriptions, client: Client, body: &Value) -> Response {
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    let (Some(consumer), Some(shard)) = (field("ConsumerARN"), field("ShardId")) else {
        return error(
            400,
            "InvalidArgumentException",
            "ConsumerARN and ShardId are required.",
        );
    };
    let Some(stream) = consumer
        .split_once(":stream/")
        .and_then(|(_, rest)| rest.split_once("/consumer/"))
        .map(|(stream, _)| stream.to_string())
    else {
        return error(400, "InvalidArgumentException", "Invalid ConsumerARN.");
    };
    match client
        .describe_stream_consumer()
        .consumer_arn(&consumer)
        .send()
        .await
    {
        Ok(out) => {
            let active = out.consumer_description.is_some_and(|d| {
                d.consumer_status == aws_sdk_kinesis::types::ConsumerStatus::Active
            });
            if !active {
                return error(400, "ResourceInUseException", "Consumer is not ACTIVE.");
            }
        }
        Err(e) => return sdk_error(&e.into_service_error(), "DescribeStreamConsumer failed"),
    }
    let position = body.get("StartingPosition").cloned().unwrap_or(Value::Null);
    let kind = position
        .get("Type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sequence = position
        .get("SequenceNumber")
        .and_then(Value::as_str)
        .map(str::to_string);
    let request = client
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::from(kind))
        .set_starting_sequence_number(sequence.clone())
        .set_timestamp(
            position
                .get("Timestamp")
                .and_then(Value::as_f64)
                .map(DateTime::from_secs_f64),
        );
    let iterator = match request.send().await {
        Ok(out) => out.shard_iterator,
        Err(e) => return sdk_error(&e.into_service_error(), "GetShardIterator failed"),
    };
    let key = (consumer.clone(), shard.clone());
    if !subscriptions
        .open
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone())
    {
        return error(
            400,
            "ResourceInUseException",
            &format!("Another active subscription exists for consumer {consumer} on shard {shard}"),
        );
    }
    let (frames, receiver) = mpsc::channel(1);
    let session = Session {
        client,
        stream,
        shard,
        continuation: sequence.unwrap_or_default(),
        deadline: Instant::now() + subscriptions.session,
        frames,
    };
    tokio::spawn(async move {
        session.run(iterator).await;
        subscriptions
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    });
    (
        [("content-type", "application/vnd.amazon.eventstream")],
        Body::new(Frames(receiver)),
    )
        .into_response()
}

/// One session: reads and pushes events until the deadline, the shard's end, a
/// failure, or the client's going away.
struct Session {
    client: Client,
    stream: String,
    shard: String,
    continuation: String,
    deadline: Instant,
    frames: mpsc::Sender<Bytes>,
}

impl Session {
    async fn run(mut self, mut iterator: Option<String>) {
        if !self.send(encode_initial_response()).await {
            return;
        }
        while Instant::now() < self.deadline {
            let Some(current) = iterator.take() else {
                let children = self.children().await;
                self.event(Vec::new(), 0, children).await;
                return;
            };
            let out = match self
                .client
                .get_records()
                .shard_iterator(&current)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let e = e.into_service_error();
                    if e.is_provisioned_throughput_exceeded_exception() {
                        iterator = Some(current);
                        tokio::time::sleep(IDLE_POLL).await;
                        continue;
                    }
                    let code = match e.code() {
                        Some("ResourceNotFoundException") => "ResourceNotFoundException",
                        _ => "InternalFailureException",
                    };
                    let message = e.message().unwrap_or("GetRecords failed").to_string();
                    self.send(encode_exception(code, &message)).await;
                    return;
                }
            };
            let quiet = out.records.is_empty();
            if let Some(last) = out.records.last() {
                self.continuation = last.sequence_number.clone();
            }
            iterator = out.next_shard_iterator.filter(|i| !i.is_empty());
            let children = match iterator {
                Some(_) => Vec::new(),
                None => self.children().await,
            };
            let ended = iterator.is_none();
            let millis_behind = out.millis_behind_latest.unwrap_or(0);
            if !self.event(out.records, millis_behind, children).await || ended {
                return;
            }
            if quiet {
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }

    /// The shard's children from ListShards, each with all its parents.
    async fn children(&self) -> Vec<Value> {
        let Ok(shards) = kcl::stream::list_shards(&self.client, &self.stream).await else {
            return Vec::new();
        };
        shards
            .iter()
            .filter(|s| s.parents().iter().any(|p| p == &self.shard))
            .map(|s| {
                json!({
                    "ShardId": s.shard_id,
                    "ParentShards": s.parents(),
                    "HashKeyRange": {
                        "StartingHashKey": s.starting_hash_key.to_string(),
                        "EndingHashKey": s.ending_hash_key.to_string(),
                    },
                })
            })
            .collect()
    }

    async fn event(
        &mut self,
        records: Vec<aws_sdk_kinesis::types::Record>,
        millis_behind: i64,
        children: Vec<Value>,
    ) -> bool {
        let records: Vec<Value> = records
            .into_iter()
            .map(|r| {
                let arrival = r
                    .approximate_arrival_timestamp
                    .map(|t| t.as_secs_f64())
                    .unwrap_or_default();
                json!({
                    "SequenceNumber": r.sequence_number,
                    "PartitionKey": r.partition_key,
                    "Data": crate::testing::base64_encode(r.data.as_ref()),
                    "ApproximateArrivalTimestamp": arrival,
                })
            })
            .collect();
        let mut event = json!({
            "Records": records,
            "ContinuationSequenceNumber": self.continuation,
            "MillisBehindLatest": millis_behind,
        });
        if !children.is_empty() {
            event["ChildShards"] = Value::Array(children);
        }
        let payload = event.to_string();
        self.send(encode_subscribe_event(
            payload.as_bytes(),
            "application/json",
        ))
        .await
    }

    /// Waits for room (the client reading); `false` once the client is gone.
    async fn send(&self, frame: Vec<u8>) -> bool {
        self.frames.send(Bytes::from(frame)).await.is_ok()
    }
}

/// The response body: frames as the session sends them.
struct Frames(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|f| Ok(Frame::data(f))))
    }
}
