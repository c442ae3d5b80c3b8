//! The dashboard's state as pure functions of what was read: the shard views (lineage,
//! owner, checkpoint, load), the workers and their leases, and the decisions seen
//! between two reads (splits, merges, lease moves).

use std::collections::BTreeMap;

use kcl::leases::Lease;
use kcl::stream::ShardInfo;
use serde::Serialize;

use crate::clock::now_ms;
use crate::report::StatsJson;

/// One shard as the page draws it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShardView {
    /// The shard.
    pub shard_id: String,
    /// Its parents (one after a split, two after a merge).
    pub parents: Vec<String>,
    /// Still open (no ending sequence number).
    pub open: bool,
    /// Its hash key range as fractions of the key space, `[start, end)`.
    pub range: (f64, f64),
    /// The worker holding its lease.
    pub owner: Option<String>,
    /// Its checkpoint (`SHARD_END` when finished, `TRIM_HORIZON` before any record).
    pub checkpoint: Option<String>,
    /// Records/s its owner last wrote on the lease.
    pub records_per_sec: Option<f64>,
    /// Milliseconds behind the tip its owner last wrote on the lease.
    pub millis_behind_latest: Option<i64>,
}

/// A worker and the shards it holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerView {
    /// The worker.
    pub worker_id: String,
    /// In the group (heartbeating); `false` for an owner of leases that left.
    pub member: bool,
    /// The shards whose leases it holds.
    pub shards: Vec<String>,
}

/// Something that happened, for the decisions panel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// When it was seen, ms since the epoch.
    pub at_ms: i64,
    /// What.
    pub text: String,
}

/// Everything the page shows.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// When it was read, ms since the epoch.
    pub at_ms: i64,
    /// The stream.
    pub stream: String,
    /// The application.
    pub app: String,
    /// Every shard ListShards names, parents before children.
    pub shards: Vec<ShardView>,
    /// The workers: group members and lease owners.
    pub workers: Vec<WorkerView>,
    /// The statistics, as `delivery-app stats --json` prints them.
    pub stats: Option<StatsJson>,
    /// Orders per pickup region: `(x, y, orders)`.
    pub heatmap: Vec<(u8, u8, u64)>,
    /// Recent decisions, newest first.
    pub decisions: Vec<Decision>,
    /// What could not be read this time.
    pub error: Option<String>,
}

impl Snapshot {
    /// Nothing read yet.
    pub fn empty(stream: &str, app: &str) -> Snapshot {
        Snapshot {
            at_ms: now_ms(),
            stream: stream.to_string(),
            app: app.to_string(),
            shards: Vec::new(),
            workers: Vec::new(),
            stats: None,
            heatmap: Vec::new(),
            decisions: Vec::new(),
            error: None,
        }
    }
}

/// The key space's fraction at `key`.
fn fraction(key: u128) -> f64 {
    key as f64 / u128::MAX as f64
}

/// The shards and workers from ListShards, the lease table and the group.
pub(super) fn snapshot(
    stream: &str,
    app: &str,
    shards: &[ShardInfo],
    leases: &[Lease],
    members: &[String],
) -> Snapshot {
    let by_key: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let views: Vec<ShardView> = shards
        .iter()
        .map(|s| {
            let lease = by_key.get(s.shard_id.as_str());
            ShardView {
                shard_id: s.shard_id.clone(),
                parents: s
                    .parent_shard_id
                    .iter()
                    .chain(&s.adjacent_parent_shard_id)
                    .cloned()
                    .collect(),
                open: s.ending_sequence_number.is_none(),
                range: (
                    fraction(s.starting_hash_key),
                    fraction(s.ending_hash_key.saturating_add(1)),
                ),
                owner: lease.and_then(|l| l.owner.clone()),
                checkpoint: lease.map(|l| l.checkpoint.to_string()),
                records_per_sec: lease
                    .and_then(|l| l.load.as_ref())
                    .map(|l| l.records_per_sec),
                millis_behind_latest: lease
                    .and_then(|l| l.load.as_ref())
                    .map(|l| l.millis_behind_latest),
            }
        })
        .collect();
    let mut workers: BTreeMap<String, WorkerView> = members
        .iter()
        .map(|id| {
            (
                id.clone(),
                WorkerView {
                    worker_id: id.clone(),
                    member: true,
                    shards: Vec::new(),
                },
            )
        })
        .collect();
    for lease in leases {
        if let Some(owner) = &lease.owner {
            workers
                .entry(owner.clone())
                .or_insert_with(|| WorkerView {
                    worker_id: owner.clone(),
                    member: false,
                    shards: Vec::new(),
                })
                .shards
                .push(lease.key.clone());
        }
    }
    Snapshot {
        shards: views,
        workers: workers.into_values().collect(),
        ..Snapshot::empty(stream, app)
    }
}

/// Splits and merges: shards that appeared since `before`, by their parents.
pub fn lineage_changes(before: &[ShardView], after: &[ShardView]) -> Vec<String> {
    let known: Vec<&str> = before.iter().map(|s| s.shard_id.as_str()).collect();
    let new: Vec<&ShardView> = after
        .iter()
        .filter(|s| !known.contains(&s.shard_id.as_str()))
        .collect();
    let mut changes = Vec::new();
    let mut reported: Vec<&str> = Vec::new();
    for shard in &new {
        if reported.contains(&shard.shard_id.as_str()) {
            continue;
        }
        match shard.parents.as_slice() {
            [a, b] => changes.push(format!("merge: {a} + {b} → {}", shard.shard_id)),
            [parent] => {
                let siblings: Vec<&str> = new
                    .iter()
                    .filter(|s| s.parents.as_slice() == [parent.clone()])
                    .map(|s| s.shard_id.as_str())
                    .collect();
                reported.extend(&siblings);
                changes.push(format!("split: {parent} → {}", siblings.join(" + ")));
            }
            _ => changes.push(format!("new shard {}", shard.shard_id)),
        }
    }
    changes
}

/// Leases whose owner changed since `before`.
pub fn lease_moves(before: &[ShardView], after: &[ShardView]) -> Vec<String> {
    let owners: BTreeMap<&str, &Option<String>> = before
        .iter()
        .map(|s| (s.shard_id.as_str(), &s.owner))
        .collect();
    after
        .iter()
        .filter_map(|s| {
            let was = owners.get(s.shard_id.as_str())?;
            if *was == &s.owner {
                return None;
            }
            let name = |o: &Option<String>| o.clone().unwrap_or_else(|| "nobody".into());
            Some(format!(
                "lease {}: {} → {}",
                s.shard_id,
                name(was),
                name(&s.owner)
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], owner: Option<&str>) -> ShardView {
        ShardView {
            shard_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            open: true,
            range: (0.0, 1.0),
            owner: owner.map(str::to_string),
            checkpoint: None,
            records_per_sec: None,
            millis_behind_latest: None,
        }
    }

    #[test]
    fn changes_between_two_reads() {
        let s0 = shard("s0", &[], Some("w1"));
        let s1 = shard("s1", &[], Some("w2"));
        struct Case {
            name: &'static str,
            before: Vec<ShardView>,
            after: Vec<ShardView>,
            lineage: Vec<&'static str>,
            moves: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "nothing changed",
                before: vec![s0.clone(), s1.clone()],
                after: vec![s0.clone(), s1.clone()],
                lineage: vec![],
                moves: vec![],
            },
            Case {
                name: "a split: both children in one line",
                before: vec![s0.clone(), s1.clone()],
                after: vec![
                    s0.clone(),
                    s1.clone(),
                    shard("s2", &["s0"], None),
                    shard("s3", &["s0"], None),
                ],
                lineage: vec!["split: s0 → s2 + s3"],
                moves: vec![],
            },
            Case {
                name: "a merge",
                before: vec![s0.clone(), s1.clone()],
                after: vec![s0.clone(), s1.clone(), shard("s4", &["s0", "s1"], None)],
                lineage: vec!["merge: s0 + s1 → s4"],
                moves: vec![],
            },
            Case {
                name: "a failover and a lease given up",
                before: vec![s0.clone(), s1.clone()],
                after: vec![shard("s0", &[], Some("w2")), shard("s1", &[], None)],
                lineage: vec![],
                moves: vec!["lease s0: w1 → w2", "lease s1: w2 → nobody"],
            },
        ];
        for case in cases {
            assert_eq!(
                lineage_changes(&case.before, &case.after),
                case.lineage,
                "{}",
                case.name
            );
            assert_eq!(
                lease_moves(&case.before, &case.after),
                case.moves,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn workers_are_members_and_owners() {
        let mut held = Lease::new(
            "s0",
            kcl::checkpoint::ExtendedSequenceNumber::new(
                kcl::checkpoint::SequencePosition::TrimHorizon,
            ),
        );
        held.owner = Some("gone".into());
        let snapshot = snapshot("S", "A", &[], &[held], &["w1".to_string()]);
        assert_eq!(
            snapshot.workers,
            vec![
                WorkerView {
                    worker_id: "gone".into(),
                    member: false,
                    shards: vec!["s0".into()],
                },
                WorkerView {
                    worker_id: "w1".into(),
                    member: true,
                    shards: vec![],
                },
            ]
        );
    }
}
