//! Multi-stream mode: one worker, one lease table, several streams (the Java KCL's
//! multi-stream mode).
//!
//! A [`StreamProvider`] names the streams and where each starts; the worker polls it
//! every [`WorkerConfig::stream_poll_interval`](crate::WorkerConfig::stream_poll_interval)
//! and looks each stream up (DescribeStreamSummary) to learn its account and creation
//! time. Leases are keyed `account:stream:creationEpoch:shardId`, the Java KCL's
//! multi-stream lease key, so a stream deleted and created again under the same name
//! starts over with new leases instead of resuming from the old checkpoints. Parent
//! and child shard ids stored on a lease are plain shard ids, as in the Java KCL.
//!
//! A stream that leaves the provider's list, or that Kinesis no longer has, stops being
//! synced at once; its leases are deleted once it has been gone for
//! [`WorkerConfig::former_stream_grace`](crate::WorkerConfig::former_stream_grace)
//! (by the worker that leads the fleet), and until then they are processed as usual
//! (those of a deleted stream end in read failures). Leases of streams this worker's
//! provider does not name are found the same way, so leases left by a stream removed
//! while no worker ran are cleaned up too.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kcl::{InitialPosition, StreamConfig, StreamList, Worker, WorkerConfig};
//! # let aws = kcl_local::LocalAws::start(kcl_local::LocalAwsOptions::from_env()).await?;
//! # let clients = aws.clients().await;
//! # struct Noop;
//! # impl kcl::RecordProcessor for Noop {
//! #     async fn process_records(&mut self, _: kcl::ProcessRecordsInput, _: &mut kcl::Checkpointer) {}
//! # }
//!
//! // A list the application may change while the worker runs.
//! let streams = StreamList::new([
//!     StreamConfig::new("Orders", InitialPosition::TrimHorizon),
//!     StreamConfig::new("Payments", InitialPosition::Latest),
//! ]);
//! let config = WorkerConfig::multi_stream_builder("OrdersAndPayments").build()?;
//! let worker = Worker::multi_stream(config, &clients, streams.clone(), |_: &str| Noop);
//! streams.set([StreamConfig::new("Orders", InitialPosition::TrimHorizon)]);
//! # drop(worker);
//! # aws.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod plan;
pub(crate) mod scoped;
pub(crate) mod tracker;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::types::StreamStatus;

pub use plan::{StreamPlan, plan_streams};

use crate::config::InitialPosition;

/// A stream as multi-stream lease keys name it: `account:stream:creationEpoch`.
///
/// ```
/// use kcl::StreamIdentifier;
///
/// let id: StreamIdentifier = "123456789012:Orders:1700000000".parse()?;
/// assert_eq!(id.stream_name, "Orders");
/// let key = id.lease_key("shardId-000000000001");
/// assert_eq!(key, "123456789012:Orders:1700000000:shardId-000000000001");
/// let (stream, shard) = StreamIdentifier::split_lease_key(&key).unwrap();
/// assert_eq!((stream, shard), (id, "shardId-000000000001"));
/// # Ok::<(), kcl::multi_stream::BadStreamIdentifier>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamIdentifier {
    /// The AWS account that owns the stream.
    pub account_id: String,
    /// The stream's name.
    pub stream_name: String,
    /// When the stream was created, in seconds since the Unix epoch.
    pub creation_epoch: i64,
}

impl StreamIdentifier {
    /// The lease key of one of the stream's shards: `account:stream:creationEpoch:shardId`.
    pub fn lease_key(&self, shard_id: &str) -> String {
        format!("{self}:{shard_id}")
    }

    /// The stream and shard of a multi-stream lease key; `None` for a key of another
    /// form (a single-stream lease's key is the bare shard id).
    pub fn split_lease_key(key: &str) -> Option<(StreamIdentifier, &str)> {
        let (stream, shard) = key.rsplit_once(':')?;
        let id = stream.parse().ok()?;
        (!shard.is_empty()).then_some((id, shard))
    }

    /// What every lease key of the stream begins with.
    pub(crate) fn key_prefix(&self) -> String {
        format!("{self}:")
    }
}

impl fmt::Display for StreamIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.account_id, self.stream_name, self.creation_epoch
        )
    }
}

/// A string that is not `account:stream:creationEpoch`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a stream identifier (account:stream:creationEpoch): {0:?}")]
pub struct BadStreamIdentifier(pub String);

impl FromStr for StreamIdentifier {
    type Err = BadStreamIdentifier;

    fn from_str(s: &str) -> Result<StreamIdentifier, BadStreamIdentifier> {
        let bad = || BadStreamIdentifier(s.to_string());
        let mut parts = s.split(':');
        let (Some(account), Some(stream), Some(epoch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        // Stream names are 1 to 128 of [a-zA-Z0-9_.-]; account ids are digits.
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 128
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        };
        if account.is_empty() || !valid_name(stream) {
            return Err(bad());
        }
        Ok(StreamIdentifier {
            account_id: account.to_string(),
            stream_name: stream.to_string(),
            creation_epoch: epoch.parse().map_err(|_| bad())?,
        })
    }
}

/// One stream of a multi-stream worker and where its shards without a checkpoint start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// The stream's name (in the worker's account and region).
    pub stream_name: String,
    /// Where its new shards start.
    pub initial_position: InitialPosition,
}

impl StreamConfig {
    /// A stream and its initial position.
    pub fn new(stream_name: impl Into<String>, initial_position: InitialPosition) -> StreamConfig {
        StreamConfig {
            stream_name: stream_name.into(),
            initial_position,
        }
    }
}

/// An error of a [`StreamProvider`] (the worker logs it and keeps its current streams).
pub type ProviderError = Box<dyn std::error::Error + Send + Sync>;

/// The streams a multi-stream worker reads, asked again every
/// [`WorkerConfig::stream_poll_interval`](crate::WorkerConfig::stream_poll_interval).
/// Every worker of the application should answer the same. [`StreamList`] is one
/// that the application changes in memory; implement the trait to read the list from
/// elsewhere (a configuration service, a table, a naming convention).
///
/// ```
/// use kcl::{InitialPosition, StreamConfig, StreamProvider};
///
/// struct FromEnv;
///
/// impl StreamProvider for FromEnv {
///     async fn streams(&self) -> Result<Vec<StreamConfig>, kcl::multi_stream::ProviderError> {
///         let names = std::env::var("STREAMS")?;
///         Ok(names.split(',').map(|n| StreamConfig::new(n, InitialPosition::TrimHorizon)).collect())
///     }
/// }
/// ```
pub trait StreamProvider: Send + Sync + 'static {
    /// The streams to read now.
    fn streams(&self) -> impl Future<Output = Result<Vec<StreamConfig>, ProviderError>> + Send;
}

/// A [`StreamProvider`] the application changes in memory: clones share the list.
#[derive(Clone, Debug, Default)]
pub struct StreamList(Arc<Mutex<Vec<StreamConfig>>>);

impl StreamList {
    /// A list of these streams.
    pub fn new(streams: impl IntoIterator<Item = StreamConfig>) -> StreamList {
        StreamList(Arc::new(Mutex::new(streams.into_iter().collect())))
    }

    /// Replaces the list; workers see it at their next poll.
    pub fn set(&self, streams: impl IntoIterator<Item = StreamConfig>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = streams.into_iter().collect();
    }

    /// The list now.
    pub fn get(&self) -> Vec<StreamConfig> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl StreamProvider for StreamList {
    async fn streams(&self) -> Result<Vec<StreamConfig>, ProviderError> {
        Ok(self.get())
    }
}

/// The object-safe form the worker keeps.
pub(crate) trait DynProvider: Send + Sync {
    fn streams_boxed(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<StreamConfig>, ProviderError>> + Send + '_>>;
}

impl<P: StreamProvider> DynProvider for P {
    fn streams_boxed(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<StreamConfig>, ProviderError>> + Send + '_>> {
        Box::pin(self.streams())
    }
}

/// What DescribeStreamSummary says of a named stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// It exists and can be read (ACTIVE or UPDATING).
    Readable(StreamIdentifier),
    /// It exists but cannot be read yet or any more (CREATING, DELETING).
    NotReadable,
    /// Kinesis does not have it.
    Missing,
}

/// Looks a stream up: its identifier from the ARN's account and the creation time.
pub(crate) async fn look_up(kinesis: &Client, stream_name: &str) -> Result<Lookup, String> {
    let summary = match kinesis
        .describe_stream_summary()
        .stream_name(stream_name)
        .send()
        .await
    {
        Ok(output) => output,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            return Ok(Lookup::Missing);
        }
        Err(e) => {
            return Err(format!(
                "DescribeStreamSummary on {stream_name}: {}",
                DisplayErrorContext(&e)
            ));
        }
    };
    let Some(d) = summary.stream_description_summary() else {
        return Err(format!(
            "DescribeStreamSummary on {stream_name}: no description"
        ));
    };
    if !matches!(
        d.stream_status(),
        StreamStatus::Active | StreamStatus::Updating
    ) {
        return Ok(Lookup::NotReadable);
    }
    // arn:aws:kinesis:region:account:stream/name
    let Some(account) = d.stream_arn().split(':').nth(4).filter(|a| !a.is_empty()) else {
        return Err(format!(
            "DescribeStreamSummary on {stream_name}: no account in ARN {:?}",
            d.stream_arn()
        ));
    };
    Ok(Lookup::Readable(StreamIdentifier {
        account_id: account.to_string(),
        stream_name: d.stream_name().to_string(),
        creation_epoch: d.stream_creation_timestamp().secs(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_lease_keys_round_trip() {
        let id = StreamIdentifier {
            account_id: "000000000000".into(),
            stream_name: "a.b-c_1".into(),
            creation_epoch: 1_700_000_000,
        };
        assert_eq!(id.to_string(), "000000000000:a.b-c_1:1700000000");
        assert_eq!(id.to_string().parse::<StreamIdentifier>().unwrap(), id);
        let key = id.lease_key("shardId-000000000007");
        assert_eq!(
            StreamIdentifier::split_lease_key(&key),
            Some((id.clone(), "shardId-000000000007"))
        );
        assert!(key.starts_with(&id.key_prefix()));
    }

    #[test]
    fn other_keys_are_not_multi_stream_keys() {
        for key in [
            "shardId-000000000000",
            "a:b:shardId-1",
            "a:b:notanumber:shardId-1",
            ":b:1:shardId-1",
            "a:b c:1:shardId-1",
            "a:b:1:",
            "a:b:1:c:shardId-1",
        ] {
            assert_eq!(StreamIdentifier::split_lease_key(key), None, "{key}");
        }
    }
}
