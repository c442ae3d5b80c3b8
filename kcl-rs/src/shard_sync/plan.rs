//! Which leases to create, annotate and delete, from the shard list.
//!
//! A pure function of ListShards output and the lease table; the caller performs the
//! writes (conditional creates and deletes, so concurrent syncs by several workers are
//! harmless). The rules follow the Java KCL's lineage handling:
//! - a shard's lease is created after (or together with) its parents', and a child of a
//!   leased shard starts at `TRIM_HORIZON`, so that no record written after its parents
//!   closed is skipped;
//! - a finished lease stays until its shard has aged out of the stream and all of its
//!   children have started, because a child's consumer checks its parents' leases
//!   before reading (a missing parent lease reads as "done").

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use crate::leases::Lease;
use crate::stream::ShardInfo;

/// The lease table writes one sync needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncPlan {
    /// New leases, parents before children (free, counter 0).
    pub create: Vec<Lease>,
    /// Existing leases whose `childShardIds` lack children the shard list shows:
    /// `(lease key, full sorted child list)`, sorted by key.
    pub set_children: Vec<(String, Vec<String>)>,
    /// Finished leases no child needs any more, sorted.
    pub delete: Vec<String>,
}

impl SyncPlan {
    /// Whether the table is already in sync.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.set_children.is_empty() && self.delete.is_empty()
    }
}

/// Plans the lease table writes that bring it in line with `shards` (every shard of the
/// stream, open and closed, in any order). `initial` is where the application starts
/// reading shards that have no leased ancestor: `TRIM_HORIZON`, `LATEST` or
/// `AT_TIMESTAMP`.
///
/// Create, for each shard without a lease, parents first:
/// - at `TRIM_HORIZON` if a parent has a lease or gets one in this plan: the child
///   must read all of its data once its parents end;
/// - otherwise at `initial` if the shard is open;
/// - otherwise (closed, no leased parent) at `initial`, unless `initial` is `LATEST`:
///   a new application reading from LATEST has nothing to read in a closed shard.
///
/// New leases carry the shard's parents, hash key range and (for a closed shard) the
/// children the list shows.
///
/// Set children: for an existing lease whose shard has children in the list that its
/// `childShardIds` lacks.
///
/// Delete a lease only if it is checkpointed at `SHARD_END`, its shard is no longer
/// listed (trimmed past retention; deleting a listed one would have the next sync
/// create it again and reprocess it), and it has children (from the list or its
/// `childShardIds`) which all have leases at a sequence number or `SHARD_END`, i.e.
/// have started. Anything else is kept: a lease not at `SHARD_END` whose shard is gone
/// is worth a log line, but not ours to delete; a finished lease with no known child
/// cannot be shown to be unneeded.
///
/// ```
/// use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
/// use kcl::internals::plan_sync;
/// use kcl::stream::ShardInfo;
///
/// let shard = |id: &str, parent: Option<&str>, range: (u128, u128), open: bool| ShardInfo {
///     shard_id: id.into(),
///     parent_shard_id: parent.map(Into::into),
///     adjacent_parent_shard_id: None,
///     starting_hash_key: range.0,
///     ending_hash_key: range.1,
///     starting_sequence_number: "1".into(),
///     ending_sequence_number: (!open).then(|| "9".into()),
/// };
/// // shardId-0 was split into shardId-1 and shardId-2.
/// let shards = [
///     shard("shardId-0", None, (0, 99), false),
///     shard("shardId-1", Some("shardId-0"), (0, 49), true),
///     shard("shardId-2", Some("shardId-0"), (50, 99), true),
/// ];
///
/// // A new application reading from LATEST skips the closed parent.
/// let latest = ExtendedSequenceNumber::new(SequencePosition::Latest);
/// let plan = plan_sync(&shards, &[], &latest);
/// let created: Vec<_> = plan.create.iter().map(|l| (l.key.as_str(), l.checkpoint.to_string())).collect();
/// assert_eq!(created, [("shardId-1", "LATEST".to_string()), ("shardId-2", "LATEST".to_string())]);
/// assert_eq!(plan.create[0].parent_shard_ids, ["shardId-0"]);
///
/// // Once the parent is leased, a later sync has nothing to do.
/// let plan = plan_sync(&shards, &plan.create, &latest);
/// assert!(plan.is_empty());
/// ```
pub fn plan_sync(
    shards: &[ShardInfo],
    leases: &[Lease],
    initial: &ExtendedSequenceNumber,
) -> SyncPlan {
    let by_id: BTreeMap<&str, &ShardInfo> =
        shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let leased: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    // Children as the shard list shows them, also for parents no longer listed.
    let mut listed_children: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for shard in by_id.values() {
        for parent in shard_parents(shard) {
            listed_children
                .entry(parent)
                .or_default()
                .insert(&shard.shard_id);
        }
    }
    let children_of = |id: &str| -> Vec<String> {
        listed_children
            .get(id)
            .into_iter()
            .flatten()
            .map(|c| c.to_string())
            .collect()
    };

    let mut plan = SyncPlan::default();
    let mut has_lease: HashMap<&str, bool> = HashMap::new();
    for shard in parents_first(&by_id) {
        let id = shard.shard_id.as_str();
        if leased.contains_key(id) {
            has_lease.insert(id, true);
            continue;
        }
        // A parent no longer listed still counts if its lease is in the table.
        let parent_leased = shard_parents(shard).any(|p| {
            has_lease
                .get(p)
                .copied()
                .unwrap_or_else(|| leased.contains_key(p))
        });
        let start = if parent_leased {
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon)
        } else if shard.is_open() || initial.position != SequencePosition::Latest {
            initial.clone()
        } else {
            has_lease.insert(id, false);
            continue;
        };
        has_lease.insert(id, true);
        plan.create.push(shard_lease(shard, start, children_of(id)));
    }

    let mut sorted: Vec<&Lease> = leased.values().copied().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for lease in sorted {
        let mut children: BTreeSet<String> = lease.child_shard_ids.iter().cloned().collect();
        let known = children.len();
        children.extend(children_of(&lease.key));
        let deletable = lease.checkpoint.is_shard_end()
            && !by_id.contains_key(lease.key.as_str())
            && !children.is_empty()
            && children.iter().all(|child| {
                leased.get(child.as_str()).is_some_and(|c| {
                    matches!(
                        c.checkpoint.position,
                        SequencePosition::Sequence(_) | SequencePosition::ShardEnd
                    )
                })
            });
        if deletable {
            plan.delete.push(lease.key.clone());
        } else if children.len() > known {
            plan.set_children
                .push((lease.key.clone(), children.into_iter().collect()));
        }
    }
    plan
}

fn shard_parents(shard: &ShardInfo) -> impl Iterator<Item = &str> {
    shard
        .parent_shard_id
        .iter()
        .chain(shard.adjacent_parent_shard_id.iter())
        .map(String::as_str)
}

/// The listed shards ordered so that every listed parent comes before its children,
/// ties by shard id, whatever order ListShards returned them in. A (malformed) lineage
/// cycle cannot be ordered; its shards come last, by id.
fn parents_first<'a>(by_id: &BTreeMap<&'a str, &'a ShardInfo>) -> Vec<&'a ShardInfo> {
    let mut pending_parents: HashMap<&str, usize> = HashMap::new();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for (&id, shard) in by_id {
        let listed: BTreeSet<&str> = shard_parents(shard)
            .filter(|p| by_id.contains_key(p) && *p != id)
            .collect();
        pending_parents.insert(id, listed.len());
        for parent in listed {
            children.entry(parent).or_default().push(id);
        }
    }
    let mut ready: BTreeSet<&str> = pending_parents
        .iter()
        .filter(|&(_, &n)| n == 0)
        .map(|(&id, _)| id)
        .collect();
    let mut order = Vec::with_capacity(by_id.len());
    while let Some(id) = ready.pop_first() {
        order.push(by_id[id]);
        for &child in children.get(id).into_iter().flatten() {
            let pending = pending_parents.get_mut(child).expect("every listed shard");
            *pending -= 1;
            if *pending == 0 {
                ready.insert(child);
            }
        }
    }
    if order.len() < by_id.len() {
        let placed: BTreeSet<&str> = order.iter().map(|s| s.shard_id.as_str()).collect();
        order.extend(
            by_id
                .iter()
                .filter(|(id, _)| !placed.contains(*id))
                .map(|(_, s)| *s),
        );
    }
    order
}

/// A new lease for a listed `shard` starting at `start`: its parents and hash key range
/// from the listing, and its `children` (sorted) as far as the listing shows them,
/// known now so that the lease can be deleted later without waiting for its consumer
/// to report them at SHARD_END.
pub(crate) fn shard_lease(
    shard: &ShardInfo,
    start: ExtendedSequenceNumber,
    children: Vec<String>,
) -> Lease {
    let mut lease = Lease::new(&shard.shard_id, start);
    lease.parent_shard_ids = shard.parents();
    lease.hash_key_range = Some((shard.starting_hash_key, shard.ending_hash_key));
    lease.child_shard_ids = children;
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIM: SequencePosition = SequencePosition::TrimHorizon;
    const LATEST: SequencePosition = SequencePosition::Latest;
    const AT_TS: SequencePosition = SequencePosition::AtTimestamp;
    const END: SequencePosition = SequencePosition::ShardEnd;

    fn shard(id: &str, parents: &[&str], range: (u128, u128), open: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_string(),
            parent_shard_id: parents.first().map(|p| p.to_string()),
            adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
            starting_hash_key: range.0,
            ending_hash_key: range.1,
            starting_sequence_number: "100".to_string(),
            ending_sequence_number: (!open).then(|| "200".to_string()),
        }
    }

    /// A stream with history: s0 split into s2 (open) and s3; s3 merged with s1 into
    /// s4 (open).
    fn history() -> Vec<ShardInfo> {
        vec![
            shard("s0", &[], (0, 99), false),
            shard("s1", &[], (100, 199), false),
            shard("s2", &["s0"], (0, 49), true),
            shard("s3", &["s0"], (50, 99), false),
            shard("s4", &["s3", "s1"], (50, 199), true),
        ]
    }

    fn lease(key: &str, at: SequencePosition) -> Lease {
        Lease::new(key, ExtendedSequenceNumber::new(at))
    }

    fn at_seq(key: &str) -> Lease {
        Lease::new(key, ExtendedSequenceNumber::at("150", 0))
    }

    fn with_children(mut lease: Lease, children: &[&str]) -> Lease {
        lease.child_shard_ids = children.iter().map(|c| c.to_string()).collect();
        lease
    }

    fn with_parents(mut lease: Lease, parents: &[&str]) -> Lease {
        lease.parent_shard_ids = parents.iter().map(|p| p.to_string()).collect();
        lease
    }

    struct Scenario {
        name: &'static str,
        shards: Vec<ShardInfo>,
        leases: Vec<Lease>,
        initial: SequencePosition,
        /// (key, start, parents), in any order.
        create: Vec<(&'static str, SequencePosition, Vec<&'static str>)>,
        set_children: Vec<(&'static str, Vec<&'static str>)>,
        delete: Vec<&'static str>,
    }

    fn scenarios() -> Vec<Scenario> {
        vec![
            Scenario {
                name: "new app at TRIM_HORIZON: every shard, roots at TRIM_HORIZON",
                shards: history(),
                leases: vec![],
                initial: TRIM,
                create: vec![
                    ("s0", TRIM, vec![]),
                    ("s1", TRIM, vec![]),
                    ("s2", TRIM, vec!["s0"]),
                    ("s3", TRIM, vec!["s0"]),
                    ("s4", TRIM, vec!["s3", "s1"]),
                ],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "new app at LATEST: closed shards skipped, open ones at LATEST",
                shards: history(),
                leases: vec![],
                initial: LATEST,
                create: vec![("s2", LATEST, vec!["s0"]), ("s4", LATEST, vec!["s3", "s1"])],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "new app at AT_TIMESTAMP: roots at AT_TIMESTAMP, children at TRIM_HORIZON",
                shards: history(),
                leases: vec![],
                initial: AT_TS,
                create: vec![
                    ("s0", AT_TS, vec![]),
                    ("s1", AT_TS, vec![]),
                    ("s2", TRIM, vec!["s0"]),
                    ("s3", TRIM, vec!["s0"]),
                    ("s4", TRIM, vec!["s3", "s1"]),
                ],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "shards listed children before parents: same plan",
                shards: history().into_iter().rev().collect(),
                leases: vec![],
                initial: TRIM,
                create: vec![
                    ("s0", TRIM, vec![]),
                    ("s1", TRIM, vec![]),
                    ("s2", TRIM, vec!["s0"]),
                    ("s3", TRIM, vec!["s0"]),
                    ("s4", TRIM, vec!["s3", "s1"]),
                ],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "existing table + a split: children at TRIM_HORIZON, parent annotated",
                shards: vec![
                    shard("s0", &[], (0, 99), false),
                    shard("s1", &[], (100, 199), true),
                    shard("s2", &["s0"], (0, 49), true),
                    shard("s3", &["s0"], (50, 99), true),
                ],
                leases: vec![at_seq("s0"), at_seq("s1")],
                initial: LATEST,
                create: vec![("s2", TRIM, vec!["s0"]), ("s3", TRIM, vec!["s0"])],
                set_children: vec![("s0", vec!["s2", "s3"])],
                delete: vec![],
            },
            Scenario {
                name: "merge: the child has both parents, both annotated",
                shards: vec![
                    shard("s0", &[], (0, 99), false),
                    shard("s1", &[], (100, 199), false),
                    shard("s2", &["s0", "s1"], (0, 199), true),
                ],
                leases: vec![at_seq("s0"), at_seq("s1")],
                initial: LATEST,
                create: vec![("s2", TRIM, vec!["s0", "s1"])],
                set_children: vec![("s0", vec!["s2"]), ("s1", vec!["s2"])],
                delete: vec![],
            },
            Scenario {
                name: "merge with one leased parent: the child still starts at TRIM_HORIZON",
                shards: vec![
                    shard("s0", &[], (0, 99), false),
                    shard("s1", &[], (100, 199), false),
                    shard("s2", &["s0", "s1"], (0, 199), true),
                ],
                leases: vec![at_seq("s1")],
                initial: LATEST,
                create: vec![("s2", TRIM, vec!["s0", "s1"])],
                set_children: vec![("s1", vec!["s2"])],
                delete: vec![],
            },
            Scenario {
                name: "a closed shard under a leased parent gets a lease, and so its child",
                shards: vec![
                    shard("s0", &[], (0, 99), false),
                    shard("s1", &["s0"], (0, 99), false),
                    shard("s2", &["s1"], (0, 99), true),
                ],
                leases: vec![with_children(lease("s0", END), &["s1"])],
                initial: LATEST,
                create: vec![("s1", TRIM, vec!["s0"]), ("s2", TRIM, vec!["s1"])],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "parent trimmed from the list but leased: child at TRIM_HORIZON",
                shards: vec![shard("s2", &["s0"], (0, 99), true)],
                leases: vec![at_seq("s0")],
                initial: LATEST,
                create: vec![("s2", TRIM, vec!["s0"])],
                set_children: vec![("s0", vec!["s2"])],
                delete: vec![],
            },
            Scenario {
                name: "parent trimmed and never leased: child at initial",
                shards: vec![shard("s2", &["s0"], (0, 99), true)],
                leases: vec![],
                initial: LATEST,
                create: vec![("s2", LATEST, vec!["s0"])],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "nothing to do when every lease exists with its children",
                shards: history(),
                leases: vec![
                    with_children(lease("s0", END), &["s2", "s3"]),
                    with_children(lease("s1", END), &["s4"]),
                    at_seq("s2"),
                    with_children(lease("s3", END), &["s4"]),
                    at_seq("s4"),
                ],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "delete: finished, shard trimmed, every child started",
                shards: vec![
                    shard("s2", &["s0"], (0, 49), true),
                    shard("s3", &["s0"], (50, 99), false),
                ],
                leases: vec![
                    with_children(lease("s0", END), &["s2", "s3"]),
                    at_seq("s2"),
                    lease("s3", END),
                ],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec!["s0"],
            },
            Scenario {
                name: "delete: children known only from childShardIds, all trimmed too",
                shards: vec![],
                leases: vec![
                    with_children(lease("s0", END), &["s1"]),
                    with_parents(at_seq("s1"), &["s0"]),
                ],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec!["s0"],
            },
            Scenario {
                name: "delete: both merge parents once the child started",
                shards: vec![shard("s2", &["s0", "s1"], (0, 199), true)],
                leases: vec![lease("s0", END), lease("s1", END), at_seq("s2")],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec!["s0", "s1"],
            },
            Scenario {
                name: "keep: a child has no lease yet (it gets one now)",
                shards: vec![
                    shard("s2", &["s0"], (0, 49), true),
                    shard("s3", &["s0"], (50, 99), true),
                ],
                leases: vec![with_children(lease("s0", END), &["s2", "s3"]), at_seq("s2")],
                initial: LATEST,
                create: vec![("s3", TRIM, vec!["s0"])],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "keep: a child listed only in childShardIds has no lease",
                shards: vec![],
                leases: vec![with_children(lease("s0", END), &["s1"])],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "keep: a child has not started (TRIM_HORIZON, LATEST, AT_TIMESTAMP)",
                shards: vec![
                    shard("s1", &["s0"], (0, 49), true),
                    shard("s2", &["s0"], (50, 99), true),
                    shard("s4", &["s3"], (0, 99), true),
                    shard("s6", &["s5"], (0, 99), true),
                ],
                leases: vec![
                    lease("s0", END),
                    at_seq("s1"),
                    lease("s2", TRIM),
                    lease("s3", END),
                    lease("s4", LATEST),
                    lease("s5", END),
                    lease("s6", AT_TS),
                ],
                initial: TRIM,
                create: vec![],
                set_children: vec![
                    ("s0", vec!["s1", "s2"]),
                    ("s3", vec!["s4"]),
                    ("s5", vec!["s6"]),
                ],
                delete: vec![],
            },
            Scenario {
                name: "keep: not at SHARD_END even though the shard is gone",
                shards: vec![shard("s1", &["s0"], (0, 99), true)],
                leases: vec![with_children(at_seq("s0"), &["s1"]), at_seq("s1")],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "keep: finished, children started, but the shard is still listed",
                shards: vec![
                    shard("s0", &[], (0, 99), false),
                    shard("s1", &["s0"], (0, 99), true),
                ],
                leases: vec![with_children(lease("s0", END), &["s1"]), at_seq("s1")],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "keep: finished, shard gone, no child known anywhere",
                shards: vec![shard("s9", &[], (0, 99), true)],
                leases: vec![lease("s0", END), at_seq("s9")],
                initial: TRIM,
                create: vec![],
                set_children: vec![],
                delete: vec![],
            },
            Scenario {
                name: "new closed lease records its listed children at creation",
                shards: vec![
                    shard("s0", &[], (0, 99), false),
                    shard("s1", &["s0"], (0, 99), true),
                ],
                leases: vec![],
                initial: TRIM,
                create: vec![("s0", TRIM, vec![]), ("s1", TRIM, vec!["s0"])],
                set_children: vec![],
                delete: vec![],
            },
        ]
    }

    #[test]
    fn scenarios_table() {
        for s in scenarios() {
            let initial = ExtendedSequenceNumber::new(s.initial.clone());
            let plan = plan_sync(&s.shards, &s.leases, &initial);

            let mut created: Vec<(&str, SequencePosition, Vec<&str>)> = plan
                .create
                .iter()
                .map(|l| {
                    let parents = l.parent_shard_ids.iter().map(String::as_str).collect();
                    (l.key.as_str(), l.checkpoint.position.clone(), parents)
                })
                .collect();
            created.sort_by_key(|c| c.0);
            let mut want = s.create.clone();
            want.sort_by_key(|c| c.0);
            assert_eq!(created, want, "{}: create", s.name);

            let set_children: Vec<(&str, Vec<&str>)> = plan
                .set_children
                .iter()
                .map(|(k, c)| (k.as_str(), c.iter().map(String::as_str).collect()))
                .collect();
            assert_eq!(set_children, s.set_children, "{}: set_children", s.name);
            assert_eq!(plan.delete, s.delete, "{}: delete", s.name);

            check_invariants(s.name, &s.shards, &s.leases, &plan);
            assert_eq!(
                plan,
                plan_sync(&s.shards, &s.leases, &initial),
                "{}",
                s.name
            );
        }
    }

    fn check_invariants(name: &str, shards: &[ShardInfo], leases: &[Lease], plan: &SyncPlan) {
        for (i, lease) in plan.create.iter().enumerate() {
            let shard = shards.iter().find(|s| s.shard_id == lease.key).unwrap();
            assert!(!leases.iter().any(|l| l.key == lease.key), "{name}: exists");
            assert_eq!((lease.owner.as_deref(), lease.counter), (None, 0), "{name}");
            assert_eq!(
                lease.hash_key_range,
                Some((shard.starting_hash_key, shard.ending_hash_key)),
                "{name}"
            );
            let mut children: Vec<&str> = shards
                .iter()
                .filter(|c| c.parents().contains(&lease.key))
                .map(|c| c.shard_id.as_str())
                .collect();
            children.sort();
            assert_eq!(
                lease.child_shard_ids, children,
                "{name}: children of {}",
                lease.key
            );
            for parent in &lease.parent_shard_ids {
                if let Some(j) = plan.create.iter().position(|l| &l.key == parent) {
                    assert!(
                        j < i,
                        "{name}: {} created before its parent {parent}",
                        lease.key
                    );
                }
            }
        }
        for key in &plan.delete {
            let lease = leases.iter().find(|l| &l.key == key).unwrap();
            assert!(
                lease.checkpoint.is_shard_end(),
                "{name}: deleting unfinished {key}"
            );
            assert!(
                !shards.iter().any(|s| &s.shard_id == key),
                "{name}: listed {key}"
            );
            assert!(!plan.set_children.iter().any(|(k, _)| k == key), "{name}");
        }
    }

    /// Syncing again after applying a plan changes nothing more: the plan is complete.
    #[test]
    fn applying_a_plan_reaches_a_fixed_point() {
        for s in scenarios() {
            let initial = ExtendedSequenceNumber::new(s.initial.clone());
            let plan = plan_sync(&s.shards, &s.leases, &initial);
            let mut leases: Vec<Lease> = s
                .leases
                .iter()
                .filter(|l| !plan.delete.contains(&l.key))
                .cloned()
                .collect();
            for (key, children) in &plan.set_children {
                let lease = leases.iter_mut().find(|l| &l.key == key).unwrap();
                lease.child_shard_ids = children.clone();
            }
            leases.extend(plan.create.iter().cloned());
            let again = plan_sync(&s.shards, &leases, &initial);
            assert!(again.is_empty(), "{}: second sync {again:?}", s.name);
        }
    }
}
