//! Watching the lease table during a chaos run: who owned which lease when, as the
//! fencing check needs it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kcl::leases::LeaseStore;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

/// A lease as one scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseObservation {
    /// The shard.
    pub shard: String,
    /// `leaseOwner`.
    pub owner: Option<String>,
    /// `checkpointOwner` (the previous owner during a graceful handoff).
    pub checkpoint_owner: Option<String>,
    /// `leaseCounter`.
    pub counter: u64,
    /// When the scan's answer arrived (Unix ms): the lease was in this state at some
    /// moment before.
    pub seen_ms: i64,
}

/// How often an unchanged owner is kept again (its counter grows with every renewal).
const KEEP_EVERY_MS: i64 = 1_000;

/// Scans the lease table every `every` until `cancel`, and returns what it saw. Scans
/// that fail (the table not created yet, the local AWS restarting) are skipped.
///
/// To stay small over a long run it keeps a lease's observation when its owner or
/// checkpoint owner changed, or at most once a second when only its counter did. The
/// fencing check then compares a write with an earlier observation, never a later one,
/// so what is dropped can only hide a violation, not invent one.
pub async fn observe_leases(
    leases: Arc<dyn LeaseStore>,
    every: Duration,
    cancel: CancellationToken,
) -> Vec<LeaseObservation> {
    let mut seen = Vec::new();
    let mut last: HashMap<String, LeaseObservation> = HashMap::new();
    loop {
        if let Ok(all) = leases.list_leases().await {
            let seen_ms = now_ms();
            for lease in all {
                let observation = LeaseObservation {
                    shard: lease.key,
                    owner: lease.owner,
                    checkpoint_owner: lease.checkpoint_owner,
                    counter: lease.counter,
                    seen_ms,
                };
                let keep = last.get(&observation.shard).is_none_or(|previous| {
                    previous.owner != observation.owner
                        || previous.checkpoint_owner != observation.checkpoint_owner
                        || (previous.counter != observation.counter
                            && seen_ms - previous.seen_ms >= KEEP_EVERY_MS)
                });
                if keep {
                    last.insert(observation.shard.clone(), observation.clone());
                    seen.push(observation);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return seen,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
