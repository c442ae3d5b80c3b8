//! Each check on small hand-made histories: a clean one passes, and each kind of broken
//! guarantee is reported.

use super::*;

/// A history being written: audit logs by worker, lease observations.
#[derive(Default)]
struct History {
    logs: BTreeMap<String, Vec<AuditEntry>>,
    observations: Vec<LeaseObservation>,
    next_id: u64,
}

impl History {
    /// A transaction of `worker` on `shard` from `previous` to `last` (records), sent
    /// at `start`, answered with `result` at `start + 5` (no answer: `None`).
    #[allow(clippy::too_many_arguments)]
    fn tx(
        &mut self,
        worker: &str,
        epoch: u64,
        shard: &str,
        previous: Option<&str>,
        last: &str,
        records: u64,
        start: i64,
        result: Option<AttemptResult>,
    ) -> &mut Self {
        self.next_id += 1;
        let log = self.logs.entry(worker.to_string()).or_default();
        log.push(AuditEntry::Attempt {
            id: self.next_id,
            shard: shard.into(),
            worker: worker.into(),
            epoch,
            previous: previous.map(str::to_string),
            last: last.into(),
            records,
            start_ms: start,
        });
        if let Some(result) = result {
            log.push(AuditEntry::Outcome {
                id: self.next_id,
                result,
                end_ms: start + 5,
            });
        }
        self
    }

    fn checkpoint(&mut self, worker: &str, epoch: u64, shard: &str, start: i64) -> &mut Self {
        self.logs
            .entry(worker.to_string())
            .or_default()
            .push(AuditEntry::Checkpoint {
                shard: shard.into(),
                worker: worker.into(),
                epoch,
                position: "1.0".into(),
                start_ms: start,
                end_ms: start + 2,
            });
        self
    }

    fn refused(&mut self, worker: &str, epoch: u64, shard: &str, at: i64) -> &mut Self {
        self.logs
            .entry(worker.to_string())
            .or_default()
            .push(AuditEntry::CheckpointRefused {
                shard: shard.into(),
                worker: worker.into(),
                epoch,
                at_ms: at,
            });
        self
    }

    fn seen(
        &mut self,
        shard: &str,
        owner: &str,
        cp_owner: Option<&str>,
        counter: u64,
        at: i64,
    ) -> &mut Self {
        self.observations.push(LeaseObservation {
            shard: shard.into(),
            owner: Some(owner.into()),
            checkpoint_owner: cp_owner.map(str::to_string),
            counter,
            seen_ms: at,
        });
        self
    }

    fn check(&self, shards: &[ShardInfo], marks: &[(&str, &str)], records: u64) -> Findings {
        let stored = StoredView {
            watermarks: marks
                .iter()
                .map(|(s, m)| (s.to_string(), m.to_string()))
                .collect(),
            records,
        };
        check(&self.logs, &self.observations, shards, &stored)
    }
}

fn shard(id: &str, parents: &[&str]) -> ShardInfo {
    ShardInfo {
        shard_id: id.into(),
        parent_shard_id: parents.first().map(|p| p.to_string()),
        adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
        starting_hash_key: 0,
        ending_hash_key: u128::MAX,
        starting_sequence_number: "0".into(),
        ending_sequence_number: None,
    }
}

const OK: Option<AttemptResult> = Some(AttemptResult::Applied);

/// Shard `p` split into `c`: w1 (epoch 3) applies p up to "20.0", is paused, w2 takes
/// p over (epoch 9) and finishes it; w1's late write is refused; w2 then runs c.
fn clean() -> History {
    let mut h = History::default();
    h.seen("p", "w1", None, 3, 50)
        .tx("w1", 3, "p", None, "10.0", 10, 100, OK)
        .checkpoint("w1", 3, "p", 110)
        .tx("w1", 3, "p", Some("10.0"), "20.0", 10, 120, OK)
        .seen("p", "w2", None, 9, 300)
        .tx("w2", 9, "p", Some("20.0"), "25.0", 5, 310, OK)
        .tx(
            "w1",
            3,
            "p",
            Some("20.0"),
            "30.0",
            10,
            320,
            Some(AttemptResult::LeaseLost),
        )
        .refused("w1", 3, "p", 325)
        .checkpoint("w2", 9, "p", 330)
        .tx("w2", 4, "c", None, "40.0", 7, 400, OK);
    h
}

#[test]
fn a_clean_history_passes_and_is_counted() {
    let h = clean();
    let f = h.check(
        &[shard("p", &[]), shard("c", &["p"])],
        &[("p", "25.0"), ("c", "40.0")],
        32,
    );
    assert!(f.violations.is_empty(), "{:?}", f.violations);
    assert_eq!(f.applied, 4);
    assert_eq!(f.refused_lease_lost, 1);
    assert_eq!(f.checkpoints, 2);
    assert_eq!(f.refused_checkpoints, 1);
    assert_eq!(f.shards, 2);
    assert_eq!(f.handovers, 1);
    assert_eq!(f.fenced_writes_checked, 6);
}

#[test]
fn a_record_range_applied_twice_is_reported() {
    let mut h = clean();
    h.tx("w3", 12, "p", Some("10.0"), "20.0", 10, 200, OK);
    let f = h.check(&[shard("p", &[])], &[("p", "25.0"), ("c", "40.0")], 32);
    assert!(
        f.violations.iter().any(|v| v.contains("applied twice")),
        "{:?}",
        f.violations
    );
}

#[test]
fn a_stale_owners_accepted_write_is_reported_and_a_handoff_is_not() {
    // w1 writes after w2 was seen holding the lease at a counter past w1's epoch.
    let mut h = clean();
    h.tx("w1", 3, "p", Some("25.0"), "28.0", 3, 340, OK);
    let f = h.check(&[shard("p", &[])], &[("p", "28.0"), ("c", "40.0")], 35);
    assert!(
        f.violations
            .iter()
            .any(|v| v.contains("p: a statistics transaction by w1")),
        "{:?}",
        f.violations
    );
    assert!(
        f.violations.iter().any(|v| v.contains("stale owner")),
        "the epoch going down along the chain: {:?}",
        f.violations
    );

    // A stale checkpoint alone is caught too.
    let mut h = clean();
    h.checkpoint("w1", 3, "p", 400);
    let f = h.check(&[shard("p", &[])], &[("p", "25.0"), ("c", "40.0")], 32);
    assert!(
        f.violations
            .iter()
            .any(|v| v.contains("a checkpoint by w1")),
        "{:?}",
        f.violations
    );

    // The previous owner finishing a graceful handoff may write; so may a worker that
    // took the lease again (a larger epoch).
    let mut h = History::default();
    h.seen("p", "w2", Some("w1"), 7, 100)
        .tx("w1", 3, "p", None, "10.0", 10, 150, OK)
        .checkpoint("w1", 3, "p", 160)
        .seen("p", "w2", None, 8, 200)
        .tx("w2", 7, "p", Some("10.0"), "20.0", 10, 250, OK)
        .seen("p", "w1", None, 11, 300)
        .tx("w1", 11, "p", Some("20.0"), "30.0", 10, 350, OK);
    let f = h.check(&[shard("p", &[])], &[("p", "30.0")], 30);
    assert!(f.violations.is_empty(), "{:?}", f.violations);
}

#[test]
fn a_child_started_before_its_parent_ended_is_reported() {
    let mut h = clean();
    h.tx("w3", 2, "c2", None, "50.0", 1, 200, OK);
    let f = h.check(
        &[shard("p", &[]), shard("c2", &["p", "q"])],
        &[("p", "25.0"), ("c", "40.0"), ("c2", "50.0")],
        33,
    );
    assert!(
        f.violations
            .iter()
            .any(|v| v.contains("c2: its first transaction started at 200")),
        "{:?}",
        f.violations
    );
}

#[test]
fn unanswered_and_failed_attempts_may_continue_a_chain() {
    let mut h = History::default();
    // w1 is killed after sending (no outcome); the transaction was applied.
    h.tx("w1", 1, "s", None, "10.0", 10, 100, None)
        // w2's answer is lost (reported as failed) though applied; its retry conflicts.
        .tx(
            "w2",
            5,
            "s",
            Some("10.0"),
            "20.0",
            10,
            200,
            Some(AttemptResult::Failed),
        )
        .tx(
            "w2",
            5,
            "s",
            Some("10.0"),
            "20.0",
            10,
            300,
            Some(AttemptResult::Conflict),
        )
        .tx("w2", 5, "s", Some("20.0"), "30.0", 10, 400, OK);
    let f = h.check(&[shard("s", &[])], &[("s", "30.0")], 30);
    assert!(f.violations.is_empty(), "{:?}", f.violations);
    assert_eq!(f.refused_conflict, 1);
}

#[test]
fn a_refused_retry_of_an_applied_transaction_continues_the_chain_only_when_it_leads_on() {
    let mut h = History::default();
    h.tx("w1", 1, "s", None, "10.0", 10, 100, OK)
        // w1's first try was applied but its answer lost; the SDK's retry met the lease
        // w2 had taken meanwhile and was refused. w2 goes on from w1's end.
        .tx(
            "w1",
            1,
            "s",
            Some("10.0"),
            "20.0",
            10,
            200,
            Some(AttemptResult::LeaseLost),
        )
        .tx("w2", 2, "s", Some("20.0"), "30.0", 10, 300, OK);
    let f = h.check(&[shard("s", &[])], &[("s", "30.0")], 30);
    assert!(f.violations.is_empty(), "{:?}", f.violations);
    assert_eq!(f.refused_lease_lost, 1);

    // A refusal nothing continues from is not followed: the chain ends before it.
    let mut h = History::default();
    h.tx("w1", 1, "s", None, "10.0", 10, 100, OK).tx(
        "w1",
        1,
        "s",
        Some("10.0"),
        "20.0",
        10,
        200,
        Some(AttemptResult::LeaseLost),
    );
    let f = h.check(&[shard("s", &[])], &[("s", "10.0")], 10);
    assert!(f.violations.is_empty(), "{:?}", f.violations);
    // And it is no excuse for a stale owner: an accepted write after it from an older
    // epoch is still reported.
    let mut h = History::default();
    h.tx("w2", 2, "s", None, "10.0", 10, 100, OK)
        .tx(
            "w2",
            2,
            "s",
            Some("10.0"),
            "20.0",
            10,
            200,
            Some(AttemptResult::Conflict),
        )
        .tx("w1", 1, "s", Some("20.0"), "30.0", 10, 300, OK);
    let f = h.check(&[shard("s", &[])], &[("s", "30.0")], 30);
    assert!(
        f.violations.iter().any(|v| v.contains("stale owner")),
        "{:?}",
        f.violations
    );
}

#[test]
fn audit_and_statistics_must_agree() {
    let h = clean();
    let f = h.check(&[], &[("p", "20.0"), ("c", "40.0")], 31);
    assert!(
        f.violations.iter().any(|v| v.contains("stored watermark")),
        "{:?}",
        f.violations
    );
    assert!(
        f.violations.iter().any(|v| v.contains("cover 32 records")),
        "{:?}",
        f.violations
    );
    // An accepted transaction that does not follow from the last one.
    let mut h = clean();
    h.tx("w2", 9, "p", Some("99.0"), "120.0", 3, 335, OK);
    let f = h.check(&[], &[("p", "25.0"), ("c", "40.0")], 32);
    assert!(
        f.violations.iter().any(|v| v.contains("not on the chain")),
        "{:?}",
        f.violations
    );
}
