//! Reading ahead: a task that fetches the next batches of a shard while the current
//! one is processed, so GetRecords latency overlaps processing instead of adding to it.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::RetrievalError;
use super::polling::Batch;
use super::source::ShardSource;

/// Batches fetched ahead by default: one being processed, one ready, one in flight.
pub const DEFAULT_PREFETCH_DEPTH: usize = 2;

/// The receiving end of a prefetching task started by [`spawn_prefetcher`].
///
/// Dropping it stops the task at its next wait (it sees the channel closed).
#[derive(Debug)]
pub struct Prefetcher {
    batches: mpsc::Receiver<Result<Batch, RetrievalError>>,
    task: JoinHandle<()>,
}

impl Prefetcher {
    /// The next batch in shard order; `None` once the task has stopped and every
    /// batch it fetched has been received. After a `shard_end` batch or an error the
    /// task stops, so those are always the last item.
    pub async fn recv(&mut self) -> Option<Result<Batch, RetrievalError>> {
        self.batches.recv().await
    }

    /// Whether the task has stopped (batches may still be waiting in the channel).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the task to stop. Batches not yet received are dropped first, so a
    /// task waiting for room in the channel stops too. Propagates a panic of the task.
    pub async fn join(self) {
        let Prefetcher { batches, task } = self;
        drop(batches);
        if let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Starts a task that reads `reader`'s shard (polling or fan-out) ahead of its consumer, keeping up to
/// `depth` batches (at least 1; [`DEFAULT_PREFETCH_DEPTH`] is a good choice) ready in
/// a bounded channel: GetRecords for batch N+1 runs while batch N is processed.
///
/// The task stops when `cancel` is cancelled (promptly: it waits for the next batch,
/// for backoff and for room in the channel only together with the token), when the
/// [`Prefetcher`] is dropped, after delivering a `shard_end` batch, or after delivering
/// a [`RetrievalError`]. A batch is either delivered whole or not at all: a batch
/// fetched when the token fires is discarded, and the consumer resumes from its
/// checkpoint as always.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
/// use kcl_local::{LocalAws, LocalAwsOptions};
/// use kcl::internals::{spawn_prefetcher, RetrievalConfig, ShardReader, DEFAULT_PREFETCH_DEPTH};
/// use tokio_util::sync::CancellationToken;
///
/// let aws = LocalAws::start(LocalAwsOptions::default()).await?;
/// let kinesis = aws.clients().await.kinesis;
/// kcl::stream::create_stream(&kinesis, "events", 1, Duration::from_secs(10)).await?;
/// let shard_id = kcl::stream::list_shards(&kinesis, "events").await?[0].shard_id.clone();
/// let reader = ShardReader::new(
///     kinesis, "events", shard_id,
///     ExtendedSequenceNumber::new(SequencePosition::Latest), RetrievalConfig::default(),
/// );
///
/// let cancel = CancellationToken::new();
/// let mut prefetcher = spawn_prefetcher(reader, cancel.clone(), DEFAULT_PREFETCH_DEPTH);
/// let batch = prefetcher.recv().await.expect("a batch")?;
/// assert!(batch.records.is_empty() && !batch.shard_end);
/// cancel.cancel();
/// prefetcher.join().await;
/// # aws.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub fn spawn_prefetcher(
    reader: impl Into<ShardSource>,
    cancel: CancellationToken,
    depth: usize,
) -> Prefetcher {
    let (tx, batches) = mpsc::channel(depth.max(1));
    let task = tokio::spawn(prefetch(reader.into(), cancel, tx));
    Prefetcher { batches, task }
}

async fn prefetch(
    mut reader: ShardSource,
    cancel: CancellationToken,
    tx: mpsc::Sender<Result<Batch, RetrievalError>>,
) {
    let shard_id = reader.shard_id().to_string();
    loop {
        // Room first, then the fetch: at most `depth` batches exist ahead of the
        // consumer, and the permit makes the hand-over a plain synchronous send.
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            permit = tx.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the Prefetcher was dropped
            },
        };
        // `next_batch` is cancel-safe, so abandoning it here loses nothing.
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tx.closed() => break,
            result = reader.next_batch() => result,
        };
        let last = match &result {
            Ok(batch) => batch.shard_end,
            Err(_) => true,
        };
        permit.send(result);
        if last {
            break;
        }
    }
    tracing::debug!(%shard_id, cancelled = cancel.is_cancelled(), "prefetcher stopped");
}
