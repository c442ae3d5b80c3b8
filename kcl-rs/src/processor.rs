//! The user's side: a [`RecordProcessor`] per shard lease, made by a
//! [`RecordProcessorFactory`].
//!
//! Callbacks are plain async methods; each has a default that does nothing except
//! `process_records`. The order for one lease is always:
//! `initialize`, then `process_records` any number of times, then exactly one of
//! `shard_ended` (the shard is closed and fully read; the framework writes the
//! `SHARD_END` checkpoint after it returns), `lease_lost` (another worker has the lease:
//! do not checkpoint) or `shutdown_requested` (this worker is stopping or handing the
//! lease to another worker: checkpoint what you have processed).
//!
//! A callback that panics ends the shard's consumer without a checkpoint: the lease is
//! let go and the shard is read again, by a new processor, from the last checkpoint.

use std::future::Future;

use crate::checkpoint::{Checkpointer, ExtendedSequenceNumber};
use crate::retrieval::KinesisClientRecord;

/// Passed to [`RecordProcessor::initialize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitializationInput {
    /// The shard this processor reads.
    pub shard_id: String,
    /// The stream the shard belongs to (in multi-stream mode, shard ids repeat across
    /// streams: this tells them apart).
    pub stream_name: String,
    /// Where processing resumes: the lease's checkpoint (records after it follow).
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared but uncommitted checkpoint left by a previous processor, if any.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The shard's parents: none for a shard the stream was created with, one after a
    /// split, two after a merge. Their records were all processed before this shard's.
    pub parent_shard_ids: Vec<String>,
    /// The shard's hash key range (inclusive), when the lease records it: the keys
    /// whose records this shard holds.
    pub hash_key_range: Option<(u128, u128)>,
}

/// Passed to [`RecordProcessor::process_records`].
#[derive(Clone, Debug)]
pub struct ProcessRecordsInput {
    /// User records in shard order (KPL aggregates already split into sub-records).
    pub records: Vec<KinesisClientRecord>,
    /// How far behind the tip of the shard this batch is, in milliseconds.
    pub millis_behind_latest: Option<i64>,
    /// Records of this batch that began with the KPL magic but did not decode; each is
    /// in `records` as one plain record with its original bytes.
    pub undecodable_aggregates: usize,
    /// User records of this batch left out because their KPL aggregate was stored in a
    /// shard that does not own all of them (a producer with a stale shard map after a
    /// split puts them again, routed right, as the KPL does); the Java KCL drops them
    /// too. A batch left empty by this is not delivered unless
    /// `call_process_records_even_for_empty` is set.
    pub foreign_records_dropped: usize,
}

/// Processes the records of one shard. One instance per lease; never shared.
///
/// ```
/// use kcl::checkpoint::Checkpointer;
/// use kcl::processor::{ProcessRecordsInput, RecordProcessor};
///
/// struct Printer;
///
/// impl RecordProcessor for Printer {
///     async fn process_records(&mut self, input: ProcessRecordsInput, checkpointer: &mut Checkpointer) {
///         for record in &input.records {
///             println!("{} {}", record.partition_key, String::from_utf8_lossy(&record.data));
///         }
///         if let Err(e) = checkpointer.checkpoint().await {
///             eprintln!("checkpoint failed: {e}"); // e.g. the lease was lost
///         }
///     }
///
///     async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
///         let _ = checkpointer.checkpoint().await;
///     }
/// }
/// ```
pub trait RecordProcessor: Send + 'static {
    /// Called once before any records.
    fn initialize(&mut self, input: InitializationInput) -> impl Future<Output = ()> + Send {
        let _ = input;
        async {}
    }

    /// Called with each batch of records. Checkpoint through `checkpointer` as often as
    /// your duplicate tolerance requires.
    fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = ()> + Send;

    /// The lease was lost: another worker owns the shard now. Do not checkpoint (it
    /// would fail); release what you hold for this shard.
    fn lease_lost(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Every record of the (closed) shard has been delivered. The framework writes the
    /// `SHARD_END` checkpoint after this returns, so the children can start even if you
    /// do not checkpoint here.
    fn shard_ended(&mut self, checkpointer: &mut Checkpointer) -> impl Future<Output = ()> + Send {
        let _ = checkpointer;
        async {}
    }

    /// The worker is shutting down, or another worker asked for this lease. Flush and
    /// checkpoint what you have processed: whatever you do not checkpoint is processed
    /// again by the next owner.
    fn shutdown_requested(
        &mut self,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = ()> + Send {
        let _ = checkpointer;
        async {}
    }
}

/// Makes one [`RecordProcessor`] per shard lease. Closures `Fn(&str) -> P` are
/// factories.
pub trait RecordProcessorFactory: Send + Sync + 'static {
    /// The processor type.
    type Processor: RecordProcessor;

    /// A processor for the shard whose lease is `lease_key`: the shard id, or in
    /// multi-stream mode `account:stream:creationEpoch:shardId` (see
    /// [`StreamIdentifier::split_lease_key`](crate::StreamIdentifier::split_lease_key);
    /// [`InitializationInput`] names the stream and the shard either way).
    fn create_processor(&self, lease_key: &str) -> Self::Processor;
}

impl<P, F> RecordProcessorFactory for F
where
    P: RecordProcessor,
    F: Fn(&str) -> P + Send + Sync + 'static,
{
    type Processor = P;

    fn create_processor(&self, lease_key: &str) -> P {
        self(lease_key)
    }
}
