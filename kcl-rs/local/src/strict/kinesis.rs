//! The strict Kinesis layer: AWS's read and control-plane limits and retention, applied
//! to the requests and answers passing through the proxy, so that it works in front of
//! the embedded Kinesis and an external one alike.
//!
//! Modelled (each limit a field of [`KinesisLimits`], AWS's value by default):
//! - GetRecords: 5 calls/s per shard, and 2 MiB/s per shard as a token bucket on the
//!   bytes returned that may go negative: a call returning 10 MiB leaves 8 MiB of debt,
//!   and the shard refuses reads until it is paid back at 2 MiB/s, about 4 s, which is
//!   how AWS documents it. A call is refused only while the shard is in debt, so one
//!   call may read more than what is left of the second's 2 MiB, as on AWS.
//! - GetShardIterator: 5 calls/s per shard. Both refuse with 400
//!   `ProvisionedThroughputExceededException`, "Rate exceeded for shard ... in stream
//!   ... under account ...". The shard of a GetRecords is known only by its iterator:
//!   the layer remembers iterator → shard from GetShardIterator and GetRecords answers
//!   (`NextShardIterator`) for the iterator lifetime. An iterator it never saw (made
//!   around the proxy) is forwarded unlimited.
//! - ListShards 100/s per stream, DescribeStream 10/s and DescribeStreamSummary 20/s per
//!   account: 400 `LimitExceededException`.
//! - SubscribeToShard: 1 call/s per consumer and shard, 400 `LimitExceededException`;
//!   a shard gone after the retention answers `ResourceNotFoundException`. The event
//!   stream itself passes through untouched (records past the retention are not cut
//!   out of it).
//! - Retention (see [`super::retention`]): records older than the retention are cut out
//!   of GetRecords answers; a shard closed longer ago than the retention is not listed
//!   by ListShards or DescribeStream, and GetShardIterator and GetRecords on it answer
//!   400 `ResourceNotFoundException`.
//!
//! Not modelled: the 1 MiB/s and 1,000 records/s write limits (the embedded emulator
//! enforces them, `enforce_limits`; an external one as it does), the 5 reads/s shared
//! by all consumers of a shard beyond what passes through this proxy, fan-out's 2 MiB/s
//! per consumer and shard, and the account-wide shard and stream limits.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::expiring::ExpiringMap;
use super::rate::{KeyedBuckets, Rate};
use super::retention::{ShardClosings, ShardKey, data_bytes, trim_records};
use super::{RefusalKind, Refusals};
use crate::faults::{Answer, Forward, LayerFuture, ProxyLayer, ProxyRequest, ProxyResponse};

/// One MiB.
const MIB: u64 = 1024 * 1024;

/// Kinesis limits of strict mode. A rate of 0 means unlimited.
#[derive(Clone, Debug, PartialEq)]
pub struct KinesisLimits {
    /// GetRecords calls per second per shard (AWS: 5).
    pub get_records_per_shard: u32,
    /// Bytes of record data GetRecords may return per second per shard (AWS: 2 MiB).
    pub read_bytes_per_shard: u64,
    /// GetShardIterator calls per second per shard (AWS: 5).
    pub get_shard_iterator_per_shard: u32,
    /// ListShards calls per second per stream (AWS: 100, as this project's issue
    /// states; AWS's current documentation says 1,000).
    pub list_shards_per_stream: u32,
    /// DescribeStream calls per second per account (AWS: 10).
    pub describe_stream_per_account: u32,
    /// DescribeStreamSummary calls per second per account (AWS: 20).
    pub describe_stream_summary_per_account: u32,
    /// SubscribeToShard calls per second per consumer and shard (AWS: 1).
    pub subscribe_to_shard_per_consumer_shard: u32,
    /// How long records are kept, and a closed shard after its close (AWS: 24 h by
    /// default). Tests set seconds.
    pub retention: Duration,
    /// How long a shard iterator (and a ListShards token) is remembered (AWS: 5 min).
    /// Fixed when the layer starts.
    pub iterator_lifetime: Duration,
}

impl Default for KinesisLimits {
    fn default() -> Self {
        KinesisLimits {
            get_records_per_shard: 5,
            read_bytes_per_shard: 2 * MIB,
            get_shard_iterator_per_shard: 5,
            list_shards_per_stream: 100,
            describe_stream_per_account: 10,
            describe_stream_summary_per_account: 20,
            subscribe_to_shard_per_consumer_shard: 1,
            retention: Duration::from_secs(24 * 3600),
            iterator_lifetime: Duration::from_secs(300),
        }
    }
}

/// The strict Kinesis [`ProxyLayer`]. Limits and retention can change at run time.
#[derive(Debug)]
pub struct StrictKinesis {
    state: Mutex<State>,
    account_id: String,
    refusals: Arc<Refusals>,
}

#[derive(Debug)]
struct State {
    limits: KinesisLimits,
    get_records: KeyedBuckets<ShardKey>,
    read_bytes: KeyedBuckets<ShardKey>,
    get_shard_iterator: KeyedBuckets<ShardKey>,
    list_shards: KeyedBuckets<String>,
    describe_stream: KeyedBuckets<()>,
    describe_stream_summary: KeyedBuckets<()>,
    subscribe_to_shard: KeyedBuckets<(String, String)>,
    iterators: ExpiringMap<ShardKey>,
    list_tokens: ExpiringMap<String>,
    closings: ShardClosings,
    trimmed: u64,
}

/// A refusal before forwarding.
#[derive(Clone, Debug, PartialEq)]
struct Refusal {
    kind: RefusalKind,
    code: &'static str,
    message: String,
}

/// What to look at in the answer of a request let through.
#[derive(Clone, Debug, PartialEq)]
enum Pass {
    GetShardIterator(ShardKey),
    GetRecords(Option<ShardKey>),
    ListShards(Option<String>),
    DescribeStream,
    Resharded(Vec<ShardKey>),
    StreamDeleted(String),
    Other,
}

/// The operations the layer limits or learns from; others pass untouched.
const WATCHED: [&str; 9] = [
    "SubscribeToShard",
    "GetShardIterator",
    "GetRecords",
    "ListShards",
    "DescribeStream",
    "DescribeStreamSummary",
    "SplitShard",
    "MergeShards",
    "DeleteStream",
];

fn rate(per_second: f64) -> Option<Rate> {
    (per_second > 0.0).then(|| Rate::per_second(per_second))
}

/// The stream a request names, by `StreamName` or `StreamARN`.
fn stream_of(body: &Value) -> Option<String> {
    if let Some(name) = body.get("StreamName").and_then(Value::as_str) {
        return Some(name.to_string());
    }
    let arn = body.get("StreamARN").and_then(Value::as_str)?;
    arn.split_once(":stream/").map(|(_, name)| name.to_string())
}

fn shard_of(body: &Value, field: &str) -> Option<ShardKey> {
    let shard = body.get(field).and_then(Value::as_str)?;
    Some(ShardKey::new(stream_of(body)?, shard))
}

impl State {
    fn new(limits: KinesisLimits) -> State {
        State {
            iterators: ExpiringMap::new(limits.iterator_lifetime),
            list_tokens: ExpiringMap::new(limits.iterator_lifetime),
            limits,
            get_records: KeyedBuckets::default(),
            read_bytes: KeyedBuckets::default(),
            get_shard_iterator: KeyedBuckets::default(),
            list_shards: KeyedBuckets::default(),
            describe_stream: KeyedBuckets::default(),
            describe_stream_summary: KeyedBuckets::default(),
            subscribe_to_shard: KeyedBuckets::default(),
            closings: ShardClosings::default(),
            trimmed: 0,
        }
    }

    /// Whether `action` with `body` may pass at `now`, and what to learn from its answer.
    fn admit(
        &mut self,
        action: &str,
        body: &Value,
        now: Instant,
        wall: SystemTime,
        account: &str,
    ) -> Result<Pass, Refusal> {
        let limits = self.limits.clone();
        let gone = |closings: &ShardClosings, shard: &ShardKey| {
            if closings.is_gone(shard, limits.retention, wall) {
                Err(Refusal {
                    kind: RefusalKind::ShardGone,
                    code: "ResourceNotFoundException",
                    message: format!(
                        "Shard {} in stream {} under account {account} does not exist",
                        shard.shard, shard.stream
                    ),
                })
            } else {
                Ok(())
            }
        };
        let throughput = |shard: &ShardKey, kind| Refusal {
            kind,
            code: "ProvisionedThroughputExceededException",
            message: format!(
                "Rate exceeded for shard {} in stream {} under account {account}.",
                shard.shard, shard.stream
            ),
        };
        let control = |stream: Option<&str>| Refusal {
            kind: RefusalKind::ControlPlaneRate,
            code: "LimitExceededException",
            message: match stream {
                Some(stream) => {
                    format!("Rate exceeded for stream {stream} under account {account}.")
                }
                None => format!("Rate exceeded for account {account}."),
            },
        };
        match action {
            "GetShardIterator" => {
                let Some(shard) = shard_of(body, "ShardId") else {
                    return Ok(Pass::Other); // the service answers the malformed request
                };
                gone(&self.closings, &shard)?;
                if let Some(rate) = rate(limits.get_shard_iterator_per_shard.into())
                    && !self.get_shard_iterator.try_take(&shard, rate, now, 1.0)
                {
                    return Err(throughput(&shard, RefusalKind::ReadCallRate));
                }
                Ok(Pass::GetShardIterator(shard))
            }
            "GetRecords" => {
                let shard = body
                    .get("ShardIterator")
                    .and_then(Value::as_str)
                    .and_then(|iterator| self.iterators.get(iterator, now))
                    .cloned();
                if let Some(shard) = &shard {
                    gone(&self.closings, shard)?;
                    // Bytes first: a refused call must not spend a call token.
                    if let Some(rate) = rate(limits.read_bytes_per_shard as f64)
                        && !self
                            .read_bytes
                            .bucket(shard, rate, now)
                            .in_credit(rate, now)
                    {
                        return Err(throughput(shard, RefusalKind::ReadThroughput));
                    }
                    if let Some(rate) = rate(limits.get_records_per_shard.into())
                        && !self.get_records.try_take(shard, rate, now, 1.0)
                    {
                        return Err(throughput(shard, RefusalKind::ReadCallRate));
                    }
                }
                Ok(Pass::GetRecords(shard))
            }
            "ListShards" => {
                let stream = stream_of(body).or_else(|| {
                    body.get("NextToken")
                        .and_then(Value::as_str)
                        .and_then(|token| self.list_tokens.get(token, now))
                        .cloned()
                });
                if let (Some(stream), Some(rate)) =
                    (&stream, rate(limits.list_shards_per_stream.into()))
                    && !self.list_shards.try_take(stream, rate, now, 1.0)
                {
                    return Err(control(Some(stream)));
                }
                Ok(Pass::ListShards(stream))
            }
            "DescribeStream" | "DescribeStreamSummary" => {
                let (buckets, limit, pass) = if action == "DescribeStream" {
                    let limit = limits.describe_stream_per_account;
                    (&mut self.describe_stream, limit, Pass::DescribeStream)
                } else {
                    let limit = limits.describe_stream_summary_per_account;
                    (&mut self.describe_stream_summary, limit, Pass::Other)
                };
                if let Some(rate) = rate(limit.into())
                    && !buckets.try_take(&(), rate, now, 1.0)
                {
                    return Err(control(stream_of(body).as_deref()));
                }
                Ok(pass)
            }
            "SubscribeToShard" => {
                let consumer = body.get("ConsumerARN").and_then(Value::as_str);
                let shard = body.get("ShardId").and_then(Value::as_str);
                let (Some(consumer), Some(shard)) = (consumer, shard) else {
                    return Ok(Pass::Other); // the service answers the malformed request
                };
                if let Some(stream) = consumer
                    .split_once(":stream/")
                    .and_then(|(_, rest)| rest.split_once("/consumer/"))
                    .map(|(stream, _)| stream)
                {
                    gone(&self.closings, &ShardKey::new(stream.to_string(), shard))?;
                }
                if let Some(rate) = rate(limits.subscribe_to_shard_per_consumer_shard.into())
                    && !self.subscribe_to_shard.try_take(
                        &(consumer.to_string(), shard.to_string()),
                        rate,
                        now,
                        1.0,
                    )
                {
                    return Err(Refusal {
                        kind: RefusalKind::ReadCallRate,
                        code: "LimitExceededException",
                        message: format!(
                            "Rate exceeded for consumer {consumer} and shard {shard}: 1 SubscribeToShard call per second."
                        ),
                    });
                }
                Ok(Pass::Other)
            }
            "SplitShard" => Ok(Pass::Resharded(
                shard_of(body, "ShardToSplit").into_iter().collect(),
            )),
            "MergeShards" => Ok(Pass::Resharded(
                [
                    shard_of(body, "ShardToMerge"),
                    shard_of(body, "AdjacentShardToMerge"),
                ]
                .into_iter()
                .flatten()
                .collect(),
            )),
            "DeleteStream" => Ok(stream_of(body).map_or(Pass::Other, Pass::StreamDeleted)),
            _ => Ok(Pass::Other),
        }
    }

    /// Learns from a successful answer and rewrites it where retention says so.
    fn observe(
        &mut self,
        pass: Pass,
        response: &mut ProxyResponse,
        now: Instant,
        wall: SystemTime,
    ) {
        let retention = self.limits.retention;
        match pass {
            Pass::Other => {}
            Pass::Resharded(parents) => {
                for parent in parents {
                    self.closings.closed(parent, wall);
                }
            }
            Pass::StreamDeleted(stream) => {
                self.closings.forget_stream(&stream);
                self.iterators.retain(|shard| shard.stream != stream);
            }
            Pass::GetShardIterator(shard) => {
                if let Some(iterator) = response
                    .json()
                    .as_ref()
                    .and_then(|a| a.get("ShardIterator"))
                    .and_then(Value::as_str)
                {
                    self.iterators.insert(iterator.to_string(), shard, now);
                }
            }
            Pass::GetRecords(shard) => {
                let Some(mut answer) = response.json() else {
                    return;
                };
                let trimmed = trim_records(&mut answer, retention, wall);
                if let Some(shard) = shard {
                    if let Some(rate) = rate(self.limits.read_bytes_per_shard as f64) {
                        let bytes = data_bytes(&answer) as f64;
                        self.read_bytes
                            .bucket(&shard, rate, now)
                            .charge(rate, now, bytes);
                    }
                    if let Some(next) = answer.get("NextShardIterator").and_then(Value::as_str) {
                        self.iterators.insert(next.to_string(), shard, now);
                    }
                }
                if trimmed > 0 {
                    self.trimmed += trimmed as u64;
                    response.set_json(&answer);
                }
            }
            Pass::ListShards(stream) => {
                let Some(stream) = stream else { return };
                let Some(mut answer) = response.json() else {
                    return;
                };
                if let Some(token) = answer.get("NextToken").and_then(Value::as_str) {
                    self.list_tokens
                        .insert(token.to_string(), stream.clone(), now);
                }
                if let Some(shards) = answer.get_mut("Shards").and_then(Value::as_array_mut)
                    && self
                        .closings
                        .learn_and_filter(&stream, shards, retention, wall)
                        > 0
                {
                    response.set_json(&answer);
                }
            }
            Pass::DescribeStream => {
                let Some(mut answer) = response.json() else {
                    return;
                };
                let Some(description) = answer.get_mut("StreamDescription") else {
                    return;
                };
                let Some(stream) = description
                    .get("StreamName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                else {
                    return;
                };
                if let Some(shards) = description.get_mut("Shards").and_then(Value::as_array_mut)
                    && self
                        .closings
                        .learn_and_filter(&stream, shards, retention, wall)
                        > 0
                {
                    response.set_json(&answer);
                }
            }
        }
    }
}

impl StrictKinesis {
    /// A layer enforcing `limits`, naming `account_id` in its messages and counting its
    /// refusals in `refusals`.
    pub fn new(
        limits: KinesisLimits,
        account_id: String,
        refusals: Arc<Refusals>,
    ) -> StrictKinesis {
        StrictKinesis {
            state: Mutex::new(State::new(limits)),
            account_id,
            refusals,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> KinesisLimits {
        self.lock().limits.clone()
    }

    /// Changes the limits from now on (the iterator lifetime stays as it was).
    pub fn set_limits(&self, limits: KinesisLimits) {
        self.lock().limits = limits;
    }

    /// The retention in force.
    pub fn retention(&self) -> Duration {
        self.lock().limits.retention
    }

    /// Changes the retention from now on: records and closed shards older than it are
    /// gone at once.
    pub fn set_retention(&self, retention: Duration) {
        self.lock().limits.retention = retention;
    }

    /// Records cut out of GetRecords answers by retention so far.
    pub fn trimmed_records(&self) -> u64 {
        self.lock().trimmed
    }

    /// The stream of a shard iterator this layer saw handed out, while it lives: what
    /// IAM checks a GetRecords against.
    pub fn stream_of_iterator(&self, iterator: &str) -> Option<String> {
        let state = self.lock();
        state
            .iterators
            .get(iterator, Instant::now())
            .map(|shard| shard.stream.clone())
    }

    /// The stream of a ListShards `NextToken` this layer saw handed out, while it lives.
    pub fn stream_of_list_token(&self, token: &str) -> Option<String> {
        self.lock().list_tokens.get(token, Instant::now()).cloned()
    }

    /// When the layer saw `shard` of `stream` close, if it did.
    pub fn shard_closed_at(&self, stream: &str, shard: &str) -> Option<SystemTime> {
        self.lock()
            .closings
            .closed_at(&ShardKey::new(stream, shard))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ProxyLayer for StrictKinesis {
    fn call<'a>(&'a self, request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            if !WATCHED.contains(&request.action()) {
                // Writes and the rest: nothing to limit or learn, no body to parse.
                return forward.send(request).await;
            }
            let body = request.json().unwrap_or(Value::Null);
            let admitted = self.lock().admit(
                request.action(),
                &body,
                Instant::now(),
                SystemTime::now(),
                &self.account_id,
            );
            let pass = match admitted {
                Ok(pass) => pass,
                Err(refusal) => {
                    tracing::debug!(operation = %request.operation, ?refusal, "strict Kinesis: refused");
                    self.refusals.record(&request.operation, refusal.kind);
                    return Answer::aws_error(
                        &request.operation,
                        400,
                        refusal.code,
                        &refusal.message,
                    );
                }
            };
            let mut answer = forward.send(request).await;
            if let Some(response) = answer.success_mut() {
                self.lock()
                    .observe(pass, response, Instant::now(), SystemTime::now());
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests;
