//! Where a shard consumer's batches come from: polling or enhanced fan-out, behind one
//! `next_batch`, so the prefetcher and the consumer cannot tell them apart.

use super::error::RetrievalError;
use super::fanout::FanOutReader;
use super::polling::{Batch, ShardReader};

/// A shard reader of either kind.
#[derive(Debug)]
pub enum ShardSource {
    /// GetRecords polling.
    Polling(Box<ShardReader>),
    /// SubscribeToShard.
    FanOut(Box<FanOutReader>),
}

impl ShardSource {
    /// The shard being read.
    pub fn shard_id(&self) -> &str {
        match self {
            ShardSource::Polling(reader) => reader.shard_id(),
            ShardSource::FanOut(reader) => reader.shard_id(),
        }
    }

    /// Records the reader's calls in `metrics`.
    pub(crate) fn set_metrics(&mut self, metrics: crate::metrics::ShardMetrics) {
        match self {
            ShardSource::Polling(reader) => reader.set_metrics(metrics),
            ShardSource::FanOut(reader) => reader.set_metrics(metrics),
        }
    }

    /// The next batch; both readers' `next_batch` are cancel-safe.
    pub async fn next_batch(&mut self) -> Result<Batch, RetrievalError> {
        match self {
            ShardSource::Polling(reader) => reader.next_batch().await,
            ShardSource::FanOut(reader) => reader.next_batch().await,
        }
    }
}

impl From<ShardReader> for ShardSource {
    fn from(reader: ShardReader) -> ShardSource {
        ShardSource::Polling(Box::new(reader))
    }
}

impl From<FanOutReader> for ShardSource {
    fn from(reader: FanOutReader) -> ShardSource {
        ShardSource::FanOut(Box::new(reader))
    }
}
