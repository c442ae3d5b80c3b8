//! What a multi-stream worker does about its streams at one poll: a pure function of
//! what the provider lists, what runs, what the lease table holds and since when each
//! former stream has been gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::StreamIdentifier;

/// The decisions of one poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPlan {
    /// Streams to start syncing (listed, not running here).
    pub start: Vec<StreamIdentifier>,
    /// Streams to stop syncing (running here, no longer listed or no longer existing).
    pub stop: Vec<StreamIdentifier>,
    /// Former streams whose leases are to be deleted now: gone for the grace period.
    pub delete: Vec<StreamIdentifier>,
    /// Since when each former stream still in the lease table has been gone (carried
    /// to the next poll).
    pub gone_since: BTreeMap<StreamIdentifier, Instant>,
}

/// Plans one poll.
///
/// - `listed`: the streams the provider names that exist and can be read (a stream
///   whose look-up failed is passed as last known: a failing DescribeStreamSummary
///   must not make a stream look gone).
/// - `unsure`: listed names whose look-up failed and that never resolved: streams of
///   these names are never judged gone.
/// - `running`: the streams this worker syncs now.
/// - `in_table`: the streams the lease table has leases of, when this worker read the
///   table (the leader does); `None` otherwise, and then nothing is deleted and every
///   clock is dropped (a worker that leads again starts them over: no deletion comes
///   from a grace counted while another worker led).
/// - `gone_since`: the previous poll's [`StreamPlan::gone_since`].
pub fn plan_streams(
    listed: &BTreeSet<StreamIdentifier>,
    unsure: &BTreeSet<String>,
    running: &BTreeSet<StreamIdentifier>,
    in_table: Option<&BTreeSet<StreamIdentifier>>,
    gone_since: &BTreeMap<StreamIdentifier, Instant>,
    now: Instant,
    grace: Duration,
) -> StreamPlan {
    let start = listed.difference(running).cloned().collect();
    let stop = running.difference(listed).cloned().collect();
    let Some(in_table) = in_table else {
        return StreamPlan {
            start,
            stop,
            ..StreamPlan::default()
        };
    };
    let mut delete = Vec::new();
    let mut still_gone = BTreeMap::new();
    let judged = in_table
        .difference(listed)
        .filter(|id| !unsure.contains(&id.stream_name));
    for former in judged {
        let since = gone_since.get(former).copied().unwrap_or(now);
        if now.duration_since(since) >= grace {
            delete.push(former.clone());
        }
        // Kept until the table no longer has its leases: a delete that failed is
        // tried again at the next poll.
        still_gone.insert(former.clone(), since);
    }
    StreamPlan {
        start,
        stop,
        delete,
        gone_since: still_gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> StreamIdentifier {
        StreamIdentifier {
            account_id: "1".into(),
            stream_name: name.into(),
            creation_epoch: 10,
        }
    }

    fn set(names: &[&str]) -> BTreeSet<StreamIdentifier> {
        names.iter().map(|n| id(n)).collect()
    }

    fn ids(names: &[&str]) -> Vec<StreamIdentifier> {
        names.iter().map(|n| id(n)).collect()
    }

    #[test]
    fn plans_from_a_table_of_cases() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let at = |secs| t0 + Duration::from_secs(secs);
        struct Case {
            name: &'static str,
            listed: &'static [&'static str],
            running: &'static [&'static str],
            unsure: &'static [&'static str],
            in_table: Option<&'static [&'static str]>,
            gone: &'static [(&'static str, u64)],
            now: u64,
            start: &'static [&'static str],
            stop: &'static [&'static str],
            delete: &'static [&'static str],
            gone_after: &'static [(&'static str, u64)],
        }
        let cases = [
            Case {
                name: "first poll: everything listed starts",
                listed: &["a", "b"],
                unsure: &[],
                running: &[],
                in_table: Some(&[]),
                gone: &[],
                now: 0,
                start: &["a", "b"],
                stop: &[],
                delete: &[],
                gone_after: &[],
            },
            Case {
                name: "a removed stream stops and its clock starts",
                listed: &["a"],
                unsure: &[],
                running: &["a", "b"],
                in_table: Some(&["a", "b"]),
                gone: &[],
                now: 5,
                start: &[],
                stop: &["b"],
                delete: &[],
                gone_after: &[("b", 5)],
            },
            Case {
                name: "not yet past the grace: kept",
                listed: &["a"],
                unsure: &[],
                running: &["a"],
                in_table: Some(&["a", "b"]),
                gone: &[("b", 5)],
                now: 64,
                start: &[],
                stop: &[],
                delete: &[],
                gone_after: &[("b", 5)],
            },
            Case {
                name: "past the grace: deleted, and remembered until the table is clean",
                listed: &["a"],
                unsure: &[],
                running: &["a"],
                in_table: Some(&["a", "b"]),
                gone: &[("b", 5)],
                now: 65,
                start: &[],
                stop: &[],
                delete: &["b"],
                gone_after: &[("b", 5)],
            },
            Case {
                name: "leases gone from the table: forgotten",
                listed: &["a"],
                unsure: &[],
                running: &["a"],
                in_table: Some(&["a"]),
                gone: &[("b", 5)],
                now: 70,
                start: &[],
                stop: &[],
                delete: &[],
                gone_after: &[],
            },
            Case {
                name: "listed again before the grace: not deleted, started again",
                listed: &["a", "b"],
                unsure: &[],
                running: &["a"],
                in_table: Some(&["a", "b"]),
                gone: &[("b", 5)],
                now: 100,
                start: &["b"],
                stop: &[],
                delete: &[],
                gone_after: &[],
            },
            Case {
                name: "leases of a stream no provider names (left from earlier runs)",
                listed: &["a"],
                unsure: &[],
                running: &["a"],
                in_table: Some(&["a", "old"]),
                gone: &[],
                now: 7,
                start: &[],
                stop: &[],
                delete: &[],
                gone_after: &[("old", 7)],
            },
            Case {
                name: "not the leader: no table, nothing deleted, clocks dropped",
                listed: &["a"],
                unsure: &[],
                running: &["a", "b"],
                in_table: None,
                gone: &[("c", 0)],
                now: 500,
                start: &[],
                stop: &["b"],
                delete: &[],
                gone_after: &[],
            },
            Case {
                name: "a listed name whose look-up fails is never judged gone",
                listed: &["a"],
                unsure: &["b"],
                running: &["a"],
                in_table: Some(&["a", "b"]),
                gone: &[("b", 0)],
                now: 500,
                start: &[],
                stop: &[],
                delete: &[],
                gone_after: &[],
            },
            Case {
                name: "an empty list: every stream stops, deleted only after the grace",
                listed: &[],
                unsure: &[],
                running: &["a"],
                in_table: Some(&["a"]),
                gone: &[],
                now: 9,
                start: &[],
                stop: &["a"],
                delete: &[],
                gone_after: &[("a", 9)],
            },
        ];
        for case in cases {
            let gone = case.gone.iter().map(|(n, s)| (id(n), at(*s))).collect();
            let in_table = case.in_table.map(set);
            let unsure = case.unsure.iter().map(|n| n.to_string()).collect();
            let plan = plan_streams(
                &set(case.listed),
                &unsure,
                &set(case.running),
                in_table.as_ref(),
                &gone,
                at(case.now),
                grace,
            );
            assert_eq!(plan.start, ids(case.start), "{}", case.name);
            assert_eq!(plan.stop, ids(case.stop), "{}", case.name);
            assert_eq!(plan.delete, ids(case.delete), "{}", case.name);
            let gone_after: BTreeMap<_, _> = case
                .gone_after
                .iter()
                .map(|(n, s)| (id(n), at(*s)))
                .collect();
            assert_eq!(plan.gone_since, gone_after, "{}", case.name);
        }
    }
}
