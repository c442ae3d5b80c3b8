//! The checkpointer a record processor uses to record its progress in the lease.

use crate::metrics::ShardMetrics;
use std::sync::Arc;
use std::time::Duration;

use crate::leases::LeaseError;
use crate::leases::handle::{HandleError, LeaseHandle, LostReason};
use crate::retrieval::KinesisClientRecord;

use super::ExtendedSequenceNumber;

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The lease is no longer this worker's: stop processing the shard.
    #[error("shard {shard_id}: lease lost ({reason:?}); checkpoint refused")]
    LeaseLost {
        /// The shard.
        shard_id: String,
        /// Why the lease was lost.
        reason: LostReason,
    },
    /// The position is after the last record delivered to the processor.
    #[error(
        "shard {shard_id}: checkpoint {requested} is beyond the last delivered record {delivered}"
    )]
    BeyondDelivered {
        /// The shard.
        shard_id: String,
        /// What was asked.
        requested: String,
        /// The last delivered record (or "nothing").
        delivered: String,
    },
    /// The position is before the last checkpoint.
    #[error("shard {shard_id}: checkpoint {requested} is behind the last checkpoint {last}")]
    BehindLast {
        /// The shard.
        shard_id: String,
        /// What was asked.
        requested: String,
        /// The current checkpoint.
        last: String,
    },
    /// `commit_prepared` without a prepared checkpoint.
    #[error("shard {shard_id}: no prepared checkpoint to commit")]
    NothingPrepared {
        /// The shard.
        shard_id: String,
    },
    /// The lease table failed even after retries; the checkpoint was not written.
    #[error("shard {shard_id}: checkpoint not written: {source}")]
    Store {
        /// The shard.
        shard_id: String,
        /// The store's error.
        source: LeaseError,
    },
}

/// The worker holding a shard's lease, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseOwnership {
    /// The worker id, as written to `leaseOwner` (and to `checkpointOwner` while it
    /// hands the lease over).
    pub worker_id: String,
    /// The `leaseCounter` the worker's acquiring write left. Every lease write bumps
    /// the counter, so of two ownerships of one shard the later has the larger epoch:
    /// a write tagged with an epoch smaller than one already seen comes from an owner
    /// that had lost the lease.
    pub epoch: u64,
}

/// Records progress in the shard's lease. Handed to
/// [`RecordProcessor`](crate::processor::RecordProcessor) callbacks.
///
/// Every checkpoint is a conditional write on the lease: after the lease was lost, or
/// after a zombie pause, it fails with [`CheckpointError::LeaseLost`] instead of
/// overwriting the new owner's progress. Transient lease-table errors are retried
/// (3 attempts with backoff) and then returned, never dropped silently.
pub struct Checkpointer {
    shard_id: String,
    handle: Arc<LeaseHandle>,
    last_checkpoint: ExtendedSequenceNumber,
    prepared: Option<ExtendedSequenceNumber>,
    last_delivered: Option<ExtendedSequenceNumber>,
    metrics: ShardMetrics,
}

impl Checkpointer {
    pub(crate) fn new(
        shard_id: &str,
        handle: Arc<LeaseHandle>,
        last_checkpoint: ExtendedSequenceNumber,
    ) -> Checkpointer {
        Checkpointer {
            shard_id: shard_id.to_string(),
            handle,
            last_checkpoint,
            prepared: None,
            last_delivered: None,
            metrics: ShardMetrics::detached(),
        }
    }

    /// Counts checkpoints in `metrics` (the shard consumer's).
    pub(crate) fn set_metrics(&mut self, metrics: ShardMetrics) {
        self.metrics = metrics;
    }

    /// The shard this checkpointer writes for.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The key of the lease it writes to: the shard id, or in multi-stream mode
    /// `account:stream:creationEpoch:shardId`. The key to fence your own writes with
    /// ([`ownership_check`](crate::leases::dynamo::ownership_check)).
    pub fn lease_key(&self) -> &str {
        self.handle.key()
    }

    /// Who this checkpointer writes as. Use it to fence your own side effects by the
    /// lease: see [`ownership_check`](crate::leases::dynamo::ownership_check).
    pub fn ownership(&self) -> LeaseOwnership {
        LeaseOwnership {
            worker_id: self.handle.worker_id().to_string(),
            epoch: self.handle.epoch(),
        }
    }

    /// The last committed checkpoint.
    pub fn last_checkpoint(&self) -> &ExtendedSequenceNumber {
        &self.last_checkpoint
    }

    /// The last record delivered to the processor, if any.
    pub fn last_delivered(&self) -> Option<&ExtendedSequenceNumber> {
        self.last_delivered.as_ref()
    }

    pub(crate) fn set_last_delivered(&mut self, position: ExtendedSequenceNumber) {
        self.last_delivered = Some(position);
    }

    /// Checkpoints everything delivered so far. A no-op when nothing new was delivered.
    pub async fn checkpoint(&mut self) -> Result<(), CheckpointError> {
        match self.last_delivered.clone() {
            Some(position) if position.compare(&self.last_checkpoint).is_gt() => {
                self.write(position, false).await
            }
            _ => Ok(()),
        }
    }

    /// Checkpoints at a record: it and everything before it are done.
    pub async fn checkpoint_record(
        &mut self,
        record: &KinesisClientRecord,
    ) -> Result<(), CheckpointError> {
        self.checkpoint_at(record.extended_sequence_number()).await
    }

    /// Checkpoints at a sequence number and sub-sequence number.
    pub async fn checkpoint_at(
        &mut self,
        position: ExtendedSequenceNumber,
    ) -> Result<(), CheckpointError> {
        self.validate(&position)?;
        self.write(position, false).await
    }

    /// First phase of a two-phase checkpoint: records `position` as the lease's
    /// `pendingCheckpoint`, to be committed with [`Checkpointer::commit_prepared`]. A
    /// processor that restarts sees the pending checkpoint in its initialization input.
    pub async fn prepare_checkpoint(
        &mut self,
        position: ExtendedSequenceNumber,
    ) -> Result<(), CheckpointError> {
        self.validate(&position)?;
        self.write(position, true).await
    }

    /// Second phase: commits the prepared checkpoint.
    pub async fn commit_prepared(&mut self) -> Result<(), CheckpointError> {
        let Some(position) = self.prepared.clone() else {
            return Err(CheckpointError::NothingPrepared {
                shard_id: self.shard_id.clone(),
            });
        };
        self.write(position, false).await
    }

    fn validate(&self, position: &ExtendedSequenceNumber) -> Result<(), CheckpointError> {
        let delivered = self.last_delivered.as_ref();
        if delivered.is_none_or(|d| position.compare(d).is_gt()) {
            return Err(CheckpointError::BeyondDelivered {
                shard_id: self.shard_id.clone(),
                requested: position.to_string(),
                delivered: delivered.map_or("nothing".to_string(), ToString::to_string),
            });
        }
        if position.compare(&self.last_checkpoint).is_lt() {
            return Err(CheckpointError::BehindLast {
                shard_id: self.shard_id.clone(),
                requested: position.to_string(),
                last: self.last_checkpoint.to_string(),
            });
        }
        Ok(())
    }

    /// Writes SHARD_END (the framework does this after `shard_ended`).
    pub(crate) async fn checkpoint_shard_end(&mut self) -> Result<(), CheckpointError> {
        self.write(ExtendedSequenceNumber::shard_end(), false).await
    }

    async fn write(
        &mut self,
        position: ExtendedSequenceNumber,
        prepare: bool,
    ) -> Result<(), CheckpointError> {
        let written = self.try_write(position, prepare).await;
        match &written {
            Ok(()) => self.metrics.checkpoints_succeeded.increment(1),
            Err(_) => self.metrics.checkpoints_failed.increment(1),
        }
        written
    }

    async fn try_write(
        &mut self,
        position: ExtendedSequenceNumber,
        prepare: bool,
    ) -> Result<(), CheckpointError> {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=3 {
            let result = if prepare {
                self.handle.prepare_checkpoint(position.clone()).await
            } else {
                self.handle.checkpoint(position.clone()).await
            };
            match result {
                Ok(_) => {
                    if prepare {
                        self.prepared = Some(position);
                    } else {
                        self.last_checkpoint = position;
                        self.prepared = None;
                    }
                    return Ok(());
                }
                Err(HandleError::Lost { reason, .. }) => {
                    return Err(CheckpointError::LeaseLost {
                        shard_id: self.shard_id.clone(),
                        reason,
                    });
                }
                Err(HandleError::Store(e)) if e.is_transient() && attempt < 3 => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "checkpoint failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(HandleError::Store(source)) => {
                    return Err(CheckpointError::Store {
                        shard_id: self.shard_id.clone(),
                        source,
                    });
                }
                Err(HandleError::WrongPhase { .. }) => break,
            }
        }
        Err(CheckpointError::LeaseLost {
            shard_id: self.shard_id.clone(),
            reason: LostReason::TakenOver,
        })
    }
}
