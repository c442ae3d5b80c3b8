//! The producer handle: `put`, `flush`, `shutdown`, and the bounded buffer behind them.

use std::sync::Arc;

use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ProducerConfig;
use crate::engine::{Command, Engine};
use crate::error::PutError;
use crate::record::{NewRecord, Pending, Room, validate};
use crate::result::RecordFuture;

/// A KPL-like producer writing user records to one Kinesis stream.
///
/// [`put`](Producer::put) hands a record over and returns a [`RecordFuture`] for its
/// result; a background task aggregates, batches, rate-limits and retries. Clones share
/// the same buffers and task. The task ends after [`shutdown`](Producer::shutdown), or
/// once every clone is dropped and the records already accepted are resolved.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use kcl_local::{LocalAws, LocalAwsOptions};
/// use producer::{Producer, ProducerConfig};
///
/// let aws = LocalAws::start(LocalAwsOptions::default()).await?;
/// let kinesis = aws.clients().await.kinesis;
/// kinesis_core::stream::create_stream(&kinesis, "orders", 2, Duration::from_secs(10)).await?;
///
/// let producer = Producer::new(ProducerConfig::builder("orders").build()?, kinesis);
/// let mut results = Vec::new();
/// for i in 0..10 {
///     // Waits only when the buffer is full; the returned future resolves later.
///     results.push(producer.put(format!("customer-{}", i % 3), format!("order {i}")).await?);
/// }
/// producer.flush().await;
/// for result in results {
///     let written = result.await?;
///     assert!(written.shard_id.starts_with("shardId-"));
///     assert_eq!(written.attempts.len(), 1);
/// }
/// producer.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<ProducerConfig>,
    /// To the producer task. Unbounded: `room` bounds what is outstanding, this only
    /// carries records across, in order.
    commands: mpsc::UnboundedSender<Command>,
    room: Arc<Room>,
    cancel: CancellationToken,
    stopped: watch::Receiver<bool>,
}

impl Producer {
    /// Starts a producer for `config.stream_name`, writing through `client`.
    ///
    /// Spawns the producer task, which lists the stream's shards first. Records put
    /// meanwhile wait for that shard map; should listing fail, they go out unaggregated
    /// (as the KPL's do) while it is retried. Must be called within a Tokio runtime.
    pub fn new(config: ProducerConfig, client: Client) -> Producer {
        let config = Arc::new(config);
        let room = Arc::new(Room::new(
            config.max_outstanding_records,
            config.max_outstanding_bytes,
        ));
        let (commands, receiver) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let (stopped_tx, stopped) = watch::channel(false);
        let engine = Engine::new(
            Arc::clone(&config),
            client,
            receiver,
            cancel.clone(),
            Arc::clone(&room),
            stopped_tx,
        );
        tokio::spawn(engine.run());
        Producer {
            inner: Arc::new(Inner {
                config,
                commands,
                room,
                cancel,
                stopped,
            }),
        }
    }

    /// The configuration the producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Puts a user record routed by the MD5 hash of `partition_key`.
    ///
    /// Invalid input is refused at once (see [`PutError`]) and affects nothing else.
    /// Otherwise this waits while the buffer is full
    /// ([`max_outstanding_records`](ProducerConfig::max_outstanding_records) or
    /// [`max_outstanding_bytes`](ProducerConfig::max_outstanding_bytes)), then returns
    /// the record's [`RecordFuture`]. Records put one after another from one task keep
    /// their order per partition key.
    ///
    /// Cancel-safe: if this future is dropped before it returns, the record was not
    /// accepted.
    pub async fn put(
        &self,
        partition_key: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Result<RecordFuture, PutError> {
        self.submit(partition_key.into(), None, data.into()).await
    }

    /// Puts a user record routed by `explicit_hash_key`, a decimal integer in
    /// `0..=2^128-1`, instead of its partition key's hash. Otherwise as
    /// [`put`](Producer::put).
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::time::Duration;
    /// # use kcl_local::{LocalAws, LocalAwsOptions};
    /// # use producer::{Producer, ProducerConfig};
    /// # let aws = LocalAws::start(LocalAwsOptions::default()).await?;
    /// # let kinesis = aws.clients().await.kinesis;
    /// # kinesis_core::stream::create_stream(&kinesis, "events", 2, Duration::from_secs(10)).await?;
    /// let producer = Producer::new(ProducerConfig::builder("events").build()?, kinesis);
    /// // Hash key 0 belongs to the first shard, whatever the partition key.
    /// let pending = producer.put_with_hash_key("any-key", "0", b"event".to_vec()).await?;
    /// producer.flush().await;
    /// assert_eq!(&*pending.await?.shard_id, "shardId-000000000000");
    /// # producer.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_with_hash_key(
        &self,
        partition_key: impl Into<String>,
        explicit_hash_key: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Result<RecordFuture, PutError> {
        self.submit(
            partition_key.into(),
            Some(explicit_hash_key.into()),
            data.into(),
        )
        .await
    }

    async fn submit(
        &self,
        partition_key: String,
        explicit_hash_key: Option<String>,
        data: Vec<u8>,
    ) -> Result<RecordFuture, PutError> {
        let hash_key = validate(&partition_key, explicit_hash_key.as_deref(), data.len())?;
        let size = data.len() + partition_key.len();
        let inner = &self.inner;
        let room = &inner.room;
        // A record is one unit of the calling task's cooperative budget (tokio's): a
        // task putting in a loop yields every 128 records, letting the producer task
        // take them in passes of that size.
        tokio::task::consume_budget().await;
        // Nothing awaits after this (cancel-safe): the room goes with the record, and
        // the producer task gives it back once the record is resolved.
        room.take(size).await.map_err(|_| PutError::ShutDown)?;
        let (respond, receiver) = oneshot::channel();
        let record = NewRecord {
            partition_key,
            explicit_hash_key,
            hash_key,
            data,
        };
        let pending = Pending::new(record, &inner.config, Instant::now(), respond);
        if inner.commands.send(Command::Put(pending)).is_err() {
            room.give_back(1, size);
            return Err(PutError::ShutDown);
        }
        Ok(RecordFuture::new(receiver))
    }

    /// Sends everything buffered without waiting out the buffered time, and returns once
    /// every record accepted before the call is resolved (written, or failed for good).
    /// Records put meanwhile are buffered as usual.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.commands.send(Command::Flush(done)).is_ok() {
            // An error means the task is gone, and with it everything it held.
            let _ = wait.await;
        }
    }

    /// Refuses new records ([`PutError::ShutDown`]), flushes, and returns once every
    /// accepted record is resolved and the producer task has stopped. No call in flight
    /// is abandoned. Records still being retried keep their backoff, so this can take
    /// up to [`record_ttl`](ProducerConfig::record_ttl). Idempotent.
    pub async fn shutdown(&self) {
        self.inner.room.close();
        self.inner.cancel.cancel();
        let mut stopped = self.inner.stopped.clone();
        // An error means the task has dropped its end: stopped as well.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// User records accepted (or being accepted) and not yet resolved.
    pub fn outstanding_records(&self) -> usize {
        self.inner.config.max_outstanding_records - self.inner.room.records.available_permits()
    }

    /// Bytes (data plus partition keys) of the outstanding user records.
    pub fn outstanding_bytes(&self) -> usize {
        self.inner.config.max_outstanding_bytes - self.inner.room.bytes.available_permits()
    }
}
