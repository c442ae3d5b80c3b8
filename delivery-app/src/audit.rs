//! A worker's audit log: one JSON line per statistics transaction it sends (before
//! sending), per outcome, and per checkpoint the lease table accepted. The chaos run
//! (`delivery-app chaos`) reads every worker's log to prove, from what was actually
//! accepted, that each shard's records were applied once and in order, that a child
//! shard started after its parents, and that no worker wrote after losing its lease.
//!
//! Times are milliseconds of the Unix clock, comparable across the processes of one
//! machine. A line is one `write` on a file opened for appending, so lines of a
//! killed worker are whole or absent.

use std::fs::File;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kcl::checkpoint::{ExtendedSequenceNumber, LeaseOwnership};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEntry {
    /// A statistics transaction, written just before it is sent.
    Attempt {
        /// Unique within this log.
        id: u64,
        /// The shard.
        shard: String,
        /// The writer and its lease epoch.
        worker: String,
        /// See [`LeaseOwnership::epoch`].
        epoch: u64,
        /// The watermark the transaction is conditioned on (`None`: nothing applied).
        previous: Option<String>,
        /// The watermark it sets: its last record.
        last: String,
        /// User records it covers.
        records: u64,
        /// When it was sent.
        start_ms: i64,
    },
    /// What became of attempt `id`.
    Outcome {
        /// The attempt.
        id: u64,
        /// Accepted or why not.
        result: AttemptResult,
        /// When the answer came.
        end_ms: i64,
    },
    /// A checkpoint the lease table accepted.
    Checkpoint {
        /// The shard.
        shard: String,
        /// The writer.
        worker: String,
        /// Its lease epoch.
        epoch: u64,
        /// The position checkpointed.
        position: String,
        /// When it was sent.
        start_ms: i64,
        /// When it was accepted.
        end_ms: i64,
    },
    /// A checkpoint the worker did not write because the lease was no longer its (a
    /// zombie stopped by kcl-rs, locally or by the lease table's condition).
    CheckpointRefused {
        /// The shard.
        shard: String,
        /// The writer.
        worker: String,
        /// Its lease epoch.
        epoch: u64,
        /// When it was refused.
        at_ms: i64,
    },
}

/// The outcome of a statistics transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    /// Accepted: applied.
    Applied,
    /// Refused by the lease check: the writer had lost the lease.
    LeaseLost,
    /// Refused by the watermark or an order's condition.
    Conflict,
    /// Failed otherwise (throttled, unreachable, ...); retried.
    Failed,
}

/// An append-only audit log file, shared by a worker's processors.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
    next_id: AtomicU64,
}

impl AuditLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AuditLog {
            file: Mutex::new(file),
            next_id: AtomicU64::new(1),
        })
    }

    /// Records a transaction about to be sent; returns its id for [`AuditLog::outcome`].
    pub fn attempt(
        &self,
        shard: &str,
        owner: &LeaseOwnership,
        previous: Option<&ExtendedSequenceNumber>,
        last: &ExtendedSequenceNumber,
        records: usize,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write(&AuditEntry::Attempt {
            id,
            shard: shard.to_string(),
            worker: owner.worker_id.clone(),
            epoch: owner.epoch,
            previous: previous.map(ToString::to_string),
            last: last.to_string(),
            records: records as u64,
            start_ms: now_ms(),
        });
        id
    }

    /// Records what became of attempt `id`.
    pub fn outcome(&self, id: u64, result: AttemptResult) {
        self.write(&AuditEntry::Outcome {
            id,
            result,
            end_ms: now_ms(),
        });
    }

    /// Records an accepted checkpoint sent at `start_ms`.
    pub fn checkpoint(
        &self,
        shard: &str,
        owner: &LeaseOwnership,
        position: &ExtendedSequenceNumber,
        start_ms: i64,
    ) {
        self.write(&AuditEntry::Checkpoint {
            shard: shard.to_string(),
            worker: owner.worker_id.clone(),
            epoch: owner.epoch,
            position: position.to_string(),
            start_ms,
            end_ms: now_ms(),
        });
    }

    /// Records a checkpoint refused because the lease was lost.
    pub fn checkpoint_refused(&self, shard: &str, owner: &LeaseOwnership) {
        self.write(&AuditEntry::CheckpointRefused {
            shard: shard.to_string(),
            worker: owner.worker_id.clone(),
            epoch: owner.epoch,
            at_ms: now_ms(),
        });
    }

    fn write(&self, entry: &AuditEntry) {
        let mut line = serde_json::to_string(entry).expect("audit entries serialize");
        line.push('\n');
        let mut file = self.file.lock().expect("not poisoned");
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

/// Reads an audit log. A last line cut short (the process was killed mid-write, which
/// one `write` of a small line makes unlikely) is ignored; any other bad line is an
/// error.
pub fn read(path: &Path) -> std::io::Result<Vec<AuditEntry>> {
    let lines: Vec<String> = std::io::BufReader::new(File::open(path)?)
        .lines()
        .collect::<Result<_, _>>()?;
    let mut entries = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(entry) => entries.push(entry),
            Err(_) if n + 1 == lines.len() => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), n + 1),
                ));
            }
        }
    }
    Ok(entries)
}

/// The outcome of a transaction cancelled by a condition other than the lease check,
/// from the shard's watermark read afterwards and the transaction's `last` record.
///
/// The lease check passed, so the writer still held the lease and nobody else could
/// move the watermark: if it stands exactly at `last`, this very transaction moved it.
/// That happens when its answer was lost and the SDK's retry, no longer recognised by
/// its idempotency token (DynamoDB restarted; on AWS a token lasts 10 minutes), met
/// the watermark the first try had written.
///
/// ```
/// use delivery_app::audit::{AttemptResult, conflict_outcome};
/// use kcl::checkpoint::ExtendedSequenceNumber;
///
/// let last = ExtendedSequenceNumber::at("42", 1);
/// assert_eq!(conflict_outcome(Some(&last), &last), AttemptResult::Applied);
/// assert_eq!(conflict_outcome(None, &last), AttemptResult::Conflict);
/// ```
pub fn conflict_outcome(
    watermark: Option<&ExtendedSequenceNumber>,
    last: &ExtendedSequenceNumber,
) -> AttemptResult {
    match watermark {
        Some(w) if w.compare(last).is_eq() => AttemptResult::Applied,
        _ => AttemptResult::Conflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_the_file() {
        let dir = std::env::temp_dir().join(format!("audit-test-{}", std::process::id()));
        let path = dir.join("w1.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::open(&path).unwrap();
        let owner = LeaseOwnership {
            worker_id: "w1".into(),
            epoch: 7,
        };
        let last = ExtendedSequenceNumber::at("42", 0);
        let id = log.attempt("s1", &owner, None, &last, 3);
        log.outcome(id, AttemptResult::Applied);
        log.checkpoint("s1", &owner, &last, 5);
        log.checkpoint_refused("s1", &owner);
        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 4);
        assert!(matches!(
            &entries[3],
            AuditEntry::CheckpointRefused { epoch: 7, .. }
        ));
        assert!(matches!(
            &entries[0],
            AuditEntry::Attempt { id: 1, previous: None, last, records: 3, epoch: 7, .. } if last == "42.0"
        ));
        assert!(matches!(
            entries[1],
            AuditEntry::Outcome {
                id: 1,
                result: AttemptResult::Applied,
                ..
            }
        ));
        assert!(matches!(
            &entries[2],
            AuditEntry::Checkpoint { start_ms: 5, .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_conflict_is_applied_only_when_the_watermark_is_its_own_end() {
        let at = |seq: &str, sub| ExtendedSequenceNumber::at(seq, sub);
        let last = at("100", 2);
        let table = [
            (None, AttemptResult::Conflict),
            (Some(at("90", 0)), AttemptResult::Conflict),
            (Some(at("100", 1)), AttemptResult::Conflict),
            (Some(at("100", 2)), AttemptResult::Applied),
            (Some(at("100", 3)), AttemptResult::Conflict),
            (Some(at("120", 0)), AttemptResult::Conflict),
        ];
        for (watermark, expected) in table {
            assert_eq!(
                conflict_outcome(watermark.as_ref(), &last),
                expected,
                "{watermark:?}"
            );
        }
    }
}
