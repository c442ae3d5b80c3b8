//! The end-of-run checks of a chaos run, as pure functions of what the workers' audit
//! logs say was accepted, what the lease table was seen to hold, the shard lineage and
//! the statistics stored.
//!
//! - **Once, in order, per shard.** Every statistics transaction is conditioned on the
//!   shard's watermark and moves it to its last record, so the accepted ones must form
//!   one chain per shard, from "nothing applied" to the stored watermark, each starting
//!   where the previous ended: no fork (a record range applied twice), no accepted
//!   transaction off the chain, and the records they cover add up to what the
//!   statistics counted. Records of one partition key are in one shard at a time, so
//!   this is their order within a shard.
//! - **Parents before children.** A key moves to a child shard at a split or merge; its
//!   order holds if no transaction of a child started before the last one of each
//!   parent ended.
//! - **No write from a worker that had lost the lease.** Each write carries its
//!   writer's lease epoch (the lease counter its acquisition left). A write is stale
//!   if, before it was sent, the lease was seen held by another worker with a counter
//!   at or past the writer's epoch: the writer's ownership had ended by then (a later
//!   acquisition of its own would have a larger epoch). Along a shard's chain, epochs
//!   must also never go down.
//!
//! A worker killed between sending a transaction and logging its answer leaves an
//! attempt without an outcome, and a transaction whose answer was lost (the local AWS
//! restarting) is logged as failed though it may have been applied; such an attempt
//! may be on a chain but is never counted as a violation.

use std::collections::{BTreeMap, HashMap, HashSet};

use kcl::stream::ShardInfo;

use super::observe::LeaseObservation;
use crate::audit::{AttemptResult, AuditEntry};

/// One statistics transaction, attempt and outcome joined.
#[derive(Clone, Debug)]
struct Attempt {
    shard: String,
    worker: String,
    epoch: u64,
    previous: Option<String>,
    last: String,
    records: u64,
    start_ms: i64,
    /// `None`: no outcome logged (the worker was killed).
    outcome: Option<(AttemptResult, i64)>,
}

impl Attempt {
    fn applied(&self) -> bool {
        matches!(self.outcome, Some((AttemptResult::Applied, _)))
    }

    /// Applied, or perhaps: no answer (killed), or an error after which the request may
    /// still have been applied (a connection lost during the answer).
    fn maybe_applied(&self) -> bool {
        !matches!(
            self.outcome,
            Some((AttemptResult::LeaseLost | AttemptResult::Conflict, _))
        )
    }
}

/// What the stored statistics say, for the comparison with the audit.
#[derive(Clone, Debug, Default)]
pub struct StoredView {
    /// Each shard's watermark, as [`kcl::checkpoint::ExtendedSequenceNumber`] displays
    /// it.
    pub watermarks: HashMap<String, String>,
    /// Records the statistics account for: valid events, dead letters and skipped
    /// redeliveries.
    pub records: u64,
}

/// What the checks found.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Accepted statistics transactions.
    pub applied: u64,
    /// Shards whose chain was followed.
    pub shards: usize,
    /// Transactions refused because the writer had lost the lease.
    pub refused_lease_lost: u64,
    /// Transactions refused by a watermark or order condition (then re-planned).
    pub refused_conflict: u64,
    /// Checkpoints accepted.
    pub checkpoints: u64,
    /// Checkpoints refused because the worker had lost the lease.
    pub refused_checkpoints: u64,
    /// Parent → child pairs whose order was checked.
    pub handovers: usize,
    /// Writes checked against the lease observations.
    pub fenced_writes_checked: u64,
    /// Everything that broke a guarantee; empty when all held.
    pub violations: Vec<String>,
}

/// Runs every check. `logs` are the audit logs by worker id.
pub fn check(
    logs: &BTreeMap<String, Vec<AuditEntry>>,
    observations: &[LeaseObservation],
    shards: &[ShardInfo],
    stored: &StoredView,
) -> Findings {
    let mut findings = Findings::default();
    let (attempts, checkpoints) = join(logs);
    findings.checkpoints = checkpoints.len() as u64;
    findings.refused_checkpoints = logs
        .values()
        .flatten()
        .filter(|e| matches!(e, AuditEntry::CheckpointRefused { .. }))
        .count() as u64;
    for a in &attempts {
        match a.outcome {
            Some((AttemptResult::Applied, _)) => findings.applied += 1,
            Some((AttemptResult::LeaseLost, _)) => findings.refused_lease_lost += 1,
            Some((AttemptResult::Conflict, _)) => findings.refused_conflict += 1,
            _ => {}
        }
    }
    let mut by_shard: BTreeMap<&str, Vec<&Attempt>> = BTreeMap::new();
    for a in &attempts {
        by_shard.entry(&a.shard).or_default().push(a);
    }
    let mut covered = 0;
    for (shard, list) in &by_shard {
        covered += follow_chain(shard, list, stored, &mut findings.violations);
    }
    findings.shards = by_shard.len();
    if covered != stored.records {
        findings.violations.push(format!(
            "the accepted transactions cover {covered} records, the statistics count {}",
            stored.records
        ));
    }
    findings.handovers = parents_before_children(&by_shard, shards, &mut findings.violations);
    let writes: Vec<Write> = attempts
        .iter()
        .filter(|a| a.applied())
        .map(|a| Write {
            what: "statistics transaction",
            shard: &a.shard,
            worker: &a.worker,
            epoch: a.epoch,
            start_ms: a.start_ms,
        })
        .chain(checkpoints)
        .collect();
    findings.fenced_writes_checked = writes.len() as u64;
    no_stale_writes(&writes, observations, &mut findings.violations);
    findings
}

/// The statistics transactions with their outcomes, and the accepted checkpoints.
fn join(logs: &BTreeMap<String, Vec<AuditEntry>>) -> (Vec<Attempt>, Vec<Write<'_>>) {
    let mut attempts = Vec::new();
    let mut checkpoints = Vec::new();
    for entries in logs.values() {
        let mut outcomes = HashMap::new();
        for e in entries {
            if let AuditEntry::Outcome { id, result, end_ms } = e {
                outcomes.insert(*id, (*result, *end_ms));
            }
        }
        for e in entries {
            match e {
                AuditEntry::Attempt {
                    id,
                    shard,
                    worker,
                    epoch,
                    previous,
                    last,
                    records,
                    start_ms,
                } => attempts.push(Attempt {
                    shard: shard.clone(),
                    worker: worker.clone(),
                    epoch: *epoch,
                    previous: previous.clone(),
                    last: last.clone(),
                    records: *records,
                    start_ms: *start_ms,
                    outcome: outcomes.get(id).copied(),
                }),
                AuditEntry::Checkpoint {
                    shard,
                    worker,
                    epoch,
                    start_ms,
                    ..
                } => checkpoints.push(Write {
                    what: "checkpoint",
                    shard,
                    worker,
                    epoch: *epoch,
                    start_ms: *start_ms,
                }),
                AuditEntry::Outcome { .. } | AuditEntry::CheckpointRefused { .. } => {}
            }
        }
    }
    (attempts, checkpoints)
}

/// Follows `shard`'s chain of accepted transactions; returns the records it covers.
fn follow_chain(
    shard: &str,
    attempts: &[&Attempt],
    stored: &StoredView,
    violations: &mut Vec<String>,
) -> u64 {
    let mut from: HashMap<Option<&str>, Vec<&Attempt>> = HashMap::new();
    for a in attempts {
        from.entry(a.previous.as_deref()).or_default().push(a);
    }
    // Whether a transaction that may have been applied starts where `a` ends: then the
    // watermark stood at `a.last`, which only a write from `a.previous` to `a.last` puts
    // there.
    let leads_on = |a: &Attempt| {
        from.get(&Some(a.last.as_str()))
            .is_some_and(|next| next.iter().any(|b| b.maybe_applied()))
    };
    let mut on_chain: HashSet<*const Attempt> = HashSet::new();
    let (mut at, mut covered, mut epoch) = (None::<&str>, 0, None::<(u64, &str)>);
    while let Some(next) = from.get(&at) {
        let applied: Vec<&&Attempt> = next.iter().filter(|a| a.applied()).collect();
        if applied.len() > 1 {
            violations.push(format!(
                "{shard}: {} transactions were accepted after {}: records applied twice",
                applied.len(),
                at.unwrap_or("the start")
            ));
        }
        // An attempt that may have been applied continues the chain only where no
        // accepted one does; of several (retries of one transaction), one that leads on.
        // Last, a refused attempt that leads on: its write stands although its answer
        // was a refusal. The SDK retries a request whose answer was lost; on AWS the
        // retry is recognised by its idempotency token (for 10 minutes) and answered
        // with success, but the local DynamoDB forgets tokens when it restarts, so the
        // retry meets the lease or watermark the first try left behind and is refused.
        // The write itself passed the lease check, so it is no stale owner's.
        let maybe = || next.iter().filter(|a| a.maybe_applied());
        let Some(a) = applied
            .first()
            .copied()
            .or_else(|| maybe().find(|a| leads_on(a)))
            .or_else(|| maybe().next())
            .or_else(|| next.iter().find(|a| leads_on(a)))
        else {
            break;
        };
        if !on_chain.insert(*a as *const Attempt) {
            violations.push(format!("{shard}: the chain loops at {}", a.last));
            break;
        }
        if let Some((e, w)) = epoch
            && a.epoch < e
        {
            violations.push(format!(
                "{shard}: {} (lease epoch {}) wrote after {w} (epoch {e}): a stale owner's write \
                 was accepted",
                a.worker, a.epoch
            ));
        }
        epoch = Some((a.epoch, &a.worker));
        covered += a.records;
        at = Some(&a.last);
    }
    for a in attempts.iter().filter(|a| a.applied()) {
        if !on_chain.contains(&(*a as *const Attempt)) {
            violations.push(format!(
                "{shard}: an accepted transaction of {} ({:?} → {}) is not on the chain",
                a.worker, a.previous, a.last
            ));
        }
    }
    let stored_mark = stored.watermarks.get(shard).map(String::as_str);
    if at != stored_mark {
        violations.push(format!(
            "{shard}: the accepted transactions end at {at:?}, the stored watermark is \
             {stored_mark:?}"
        ));
    }
    covered
}

/// Checks every child's first transaction against its parents' last; returns the
/// number of parent → child pairs with transactions on both sides.
fn parents_before_children(
    by_shard: &BTreeMap<&str, Vec<&Attempt>>,
    shards: &[ShardInfo],
    violations: &mut Vec<String>,
) -> usize {
    let mut pairs = 0;
    for child in shards {
        let Some(first) = by_shard.get(child.shard_id.as_str()).and_then(|list| {
            list.iter()
                .filter(|a| a.applied())
                .map(|a| a.start_ms)
                .min()
        }) else {
            continue;
        };
        for parent in child.parents() {
            let Some(last) = by_shard.get(parent.as_str()).and_then(|list| {
                list.iter()
                    .filter_map(|a| match a.outcome {
                        Some((AttemptResult::Applied, end)) => Some(end),
                        _ => None,
                    })
                    .max()
            }) else {
                continue;
            };
            pairs += 1;
            if first < last {
                violations.push(format!(
                    "{}: its first transaction started at {first}, before the last of its \
                     parent {parent} ended at {last}",
                    child.shard_id
                ));
            }
        }
    }
    pairs
}

/// An observation that shows the lease not held by a writer: when it was seen, and the
/// highest counter of such observations up to then.
type Exclusion<'a> = (i64, u64, &'a LeaseObservation);

struct Write<'a> {
    what: &'static str,
    shard: &'a str,
    worker: &'a str,
    epoch: u64,
    start_ms: i64,
}

/// Flags every write sent after the lease was seen, with a counter at or past the
/// writer's epoch, held by another worker (and not being handed over by the writer).
fn no_stale_writes(
    writes: &[Write],
    observations: &[LeaseObservation],
    violations: &mut Vec<String>,
) {
    // Per (shard, writer): the observations that exclude the writer, by time, with the
    // highest counter seen so far.
    let writers: HashSet<(&str, &str)> = writes.iter().map(|w| (w.shard, w.worker)).collect();
    let mut by_shard: HashMap<&str, Vec<&LeaseObservation>> = HashMap::new();
    for o in observations {
        by_shard.entry(&o.shard).or_default().push(o);
    }
    for list in by_shard.values_mut() {
        list.sort_by_key(|o| o.seen_ms);
    }
    let mut excluding: HashMap<(&str, &str), Vec<Exclusion>> = HashMap::new();
    for (shard, worker) in writers {
        let mut best: Option<(u64, &LeaseObservation)> = None;
        let mut steps = Vec::new();
        for o in by_shard.get(shard).into_iter().flatten() {
            let holds =
                o.owner.as_deref() == Some(worker) || o.checkpoint_owner.as_deref() == Some(worker);
            if !holds && best.is_none_or(|(c, _)| o.counter > c) {
                best = Some((o.counter, o));
                steps.push((o.seen_ms, o.counter, *o));
            }
        }
        excluding.insert((shard, worker), steps);
    }
    for w in writes {
        let steps = &excluding[&(w.shard, w.worker)];
        // The last observation strictly before the write was sent.
        let before = steps.partition_point(|(seen, _, _)| *seen < w.start_ms);
        if let Some((seen, counter, o)) = before.checked_sub(1).map(|i| steps[i])
            && counter >= w.epoch
        {
            violations.push(format!(
                "{}: a {} by {} (lease epoch {}) sent at {} was accepted, but at {seen} the \
                 lease was {:?}'s with counter {counter}",
                w.shard, w.what, w.worker, w.epoch, w.start_ms, o.owner
            ));
        }
    }
}

#[cfg(test)]
mod tests;
