//! Whether a child shard's consumer may start: a pure decision per parent, from the
//! parent's lease and, when that is missing, the stream's shard list.
//!
//! A missing parent lease used to count as "done", so a merge child could start while
//! its other parent still had unread records (its lease not created yet: the child's
//! lease came from the first parent's `ChildShards`, and the creation of the second
//! parent's lease had failed or not happened yet). Now a missing parent is looked up in
//! ListShards: if the shard is still there, its lease is created (at `TRIM_HORIZON`,
//! with its lineage) and the child waits for it like for any other parent.

use std::collections::BTreeSet;

use crate::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use crate::leases::Lease;
use crate::shard_sync::plan::shard_lease;
use crate::stream::ShardInfo;

/// What the lease table says about one parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParentLease {
    /// Checkpointed at SHARD_END.
    Ended,
    /// Exists, not at SHARD_END yet.
    InProgress,
    /// No lease item.
    Missing,
    /// The lease table could not be read.
    Unreadable,
}

/// What ListShards said, when it was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Listing {
    /// Every shard of the stream.
    Listed(Vec<ShardInfo>),
    /// ListShards failed.
    Failed,
}

/// The next step for one parent.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ParentStep {
    /// The parent does not hold the child back.
    Done,
    /// Look again later.
    Wait,
    /// The parent's lease is missing: list the stream's shards, then decide again.
    ListShards,
    /// Create this lease for the parent (conditional: it may exist by now), then wait.
    Create(Box<Lease>),
}

/// Decides for `parent` of a child whose checkpoint is `child_checkpoint`; `listing` is
/// `None` until [`ParentStep::ListShards`] was asked for and done.
///
/// Only a child that reads from its start (`TRIM_HORIZON`) must come after its
/// parents: one at a sequence number has started already, and one at `LATEST` or
/// `AT_TIMESTAMP` was created without a leased ancestor, so a missing parent is not
/// something it waits for. A parent shard no longer listed was trimmed: nothing of it
/// is left to read.
pub(crate) fn parent_step(
    parent: &str,
    lease: ParentLease,
    child_checkpoint: &ExtendedSequenceNumber,
    listing: Option<&Listing>,
) -> ParentStep {
    match lease {
        ParentLease::Ended => return ParentStep::Done,
        ParentLease::InProgress | ParentLease::Unreadable => return ParentStep::Wait,
        ParentLease::Missing => {}
    }
    if child_checkpoint.position != SequencePosition::TrimHorizon {
        return ParentStep::Done;
    }
    let shards = match listing {
        None => return ParentStep::ListShards,
        Some(Listing::Failed) => return ParentStep::Wait,
        Some(Listing::Listed(shards)) => shards,
    };
    let Some(shard) = shards.iter().find(|s| s.shard_id == parent) else {
        return ParentStep::Done;
    };
    let children = shards
        .iter()
        .filter(|s| s.parents().iter().any(|p| p == parent))
        .map(|s| s.shard_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ParentStep::Create(Box::new(shard_lease(
        shard,
        ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        children,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], open: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| p.to_string()),
            adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
            starting_hash_key: 50,
            ending_hash_key: 99,
            starting_sequence_number: "1".into(),
            ending_sequence_number: (!open).then(|| "9".into()),
        }
    }

    #[test]
    fn a_child_waits_for_every_parent_and_a_missing_listed_parent_gets_its_lease() {
        use ParentLease::*;
        let th = ExtendedSequenceNumber::new(SequencePosition::TrimHorizon);
        let latest = ExtendedSequenceNumber::new(SequencePosition::Latest);
        let started = ExtendedSequenceNumber::at("123", 0);
        // s0 was split into s1 and s2; s2 and s3 were merged into s4. The child is s4.
        let listed = Listing::Listed(vec![
            shard("s0", &[], false),
            shard("s1", &["s0"], true),
            shard("s2", &["s0"], false),
            shard("s3", &[], false),
            shard("s4", &["s2", "s3"], true),
        ]);
        let trimmed = Listing::Listed(vec![]);
        let mut s2 = Lease::new("s2", th.clone());
        s2.parent_shard_ids = vec!["s0".into()];
        s2.hash_key_range = Some((50, 99));
        s2.child_shard_ids = vec!["s4".into()];
        let cases: Vec<(
            &str,
            ParentLease,
            &ExtendedSequenceNumber,
            Option<&Listing>,
            ParentStep,
        )> = vec![
            ("ended parent", Ended, &th, None, ParentStep::Done),
            (
                "parent in progress",
                InProgress,
                &th,
                None,
                ParentStep::Wait,
            ),
            (
                "lease table unreadable",
                Unreadable,
                &th,
                None,
                ParentStep::Wait,
            ),
            (
                "missing: look at the stream",
                Missing,
                &th,
                None,
                ParentStep::ListShards,
            ),
            (
                "missing, listing failed",
                Missing,
                &th,
                Some(&Listing::Failed),
                ParentStep::Wait,
            ),
            (
                "missing, listed: create with lineage",
                Missing,
                &th,
                Some(&listed),
                ParentStep::Create(Box::new(s2)),
            ),
            (
                "missing, trimmed away",
                Missing,
                &th,
                Some(&trimmed),
                ParentStep::Done,
            ),
            (
                "child started already",
                Missing,
                &started,
                None,
                ParentStep::Done,
            ),
            ("child at LATEST", Missing, &latest, None, ParentStep::Done),
            (
                "child at LATEST waits for a leased parent",
                InProgress,
                &latest,
                None,
                ParentStep::Wait,
            ),
        ];
        for (what, lease, child, listing, expected) in cases {
            assert_eq!(parent_step("s2", lease, child, listing), expected, "{what}");
        }
    }
}
