//! The lease record: one per shard, the unit of ownership and of checkpointing.

use crate::checkpoint::ExtendedSequenceNumber;

/// Observed load of a shard, measured by the worker that reads it and written on the
/// lease at renewal so operators and auto-scalers can see it without CloudWatch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShardLoad {
    /// Smoothed records per second delivered from the shard.
    pub records_per_sec: f64,
    /// Smoothed bytes per second delivered from the shard.
    pub bytes_per_sec: f64,
    /// MillisBehindLatest of the last GetRecords.
    pub millis_behind_latest: i64,
}

/// One lease item of the lease table.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub key: String,
    /// Worker holding the lease (`leaseOwner`); `None` when free.
    pub owner: Option<String>,
    /// Fencing token (`leaseCounter`), bumped by every renew, take, release and
    /// checkpoint.
    pub counter: u64,
    /// Last committed position (`checkpoint` + `checkpointSubSequenceNumber`).
    pub checkpoint: ExtendedSequenceNumber,
    /// First phase of a two-phase checkpoint (`pendingCheckpoint` + sub-sequence).
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// Owner changes since the last checkpoint (`ownerSwitchesSinceCheckpoint`).
    pub owner_switches_since_checkpoint: u64,
    /// Parents of the shard (`parentShardId`): one after a split, two after a merge.
    pub parent_shard_ids: Vec<String>,
    /// Children of the shard once it is closed (`childShardIds`).
    pub child_shard_ids: Vec<String>,
    /// The shard's hash key range (`startingHashKey`, `endingHashKey`).
    pub hash_key_range: Option<(u128, u128)>,
    /// During a graceful handoff, the previous owner that still has to checkpoint and
    /// let go (`checkpointOwner`). The new owner does not process until it is gone.
    pub checkpoint_owner: Option<String>,
    /// The current ownership's epoch (`leaseEpoch`): the `leaseCounter` left by the
    /// write that began it (a take or a handoff request). Fences by ownership, not by
    /// worker id: a worker that lost the lease and took it again has a new epoch.
    pub epoch: Option<u64>,
    /// During a graceful handoff, the previous owner's epoch (`checkpointOwnerEpoch`):
    /// its last checkpoints are fenced by it.
    pub checkpoint_owner_epoch: Option<u64>,
    /// Last reported load of the shard.
    pub load: Option<ShardLoad>,
}

/// Where a lease is in its lifecycle, derived from its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState<'a> {
    /// No owner: any worker may take it.
    Free,
    /// Held by `owner`.
    Held {
        /// The holder.
        owner: &'a str,
    },
    /// `to` asked `from` to hand the lease over; `from` finishes its batch,
    /// checkpoints and clears `checkpointOwner`, then `to` starts.
    HandingOff {
        /// The current processor, still allowed to checkpoint.
        from: &'a str,
        /// The new owner, renewing the lease meanwhile.
        to: &'a str,
    },
    /// Checkpointed at `SHARD_END`: nothing left to process; kept until its children
    /// have started and the shard is gone.
    Finished,
}

impl Lease {
    /// A new, free lease for a shard, starting at `initial` (TRIM_HORIZON, LATEST, ...).
    pub fn new(key: impl Into<String>, initial: ExtendedSequenceNumber) -> Lease {
        Lease {
            key: key.into(),
            owner: None,
            counter: 0,
            checkpoint: initial,
            pending_checkpoint: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: Vec::new(),
            child_shard_ids: Vec::new(),
            hash_key_range: None,
            checkpoint_owner: None,
            epoch: None,
            checkpoint_owner_epoch: None,
            load: None,
        }
    }

    /// The lifecycle state.
    pub fn state(&self) -> LeaseState<'_> {
        if self.checkpoint.is_shard_end() {
            return LeaseState::Finished;
        }
        match (&self.owner, &self.checkpoint_owner) {
            (None, _) => LeaseState::Free,
            (Some(to), Some(from)) if from != to => LeaseState::HandingOff { from, to },
            (Some(owner), _) => LeaseState::Held { owner },
        }
    }
}
