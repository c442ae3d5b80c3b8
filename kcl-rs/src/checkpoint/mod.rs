//! Checkpoint positions: where a shard's processing has got to.
//!
//! A position is a Kinesis sequence number plus a sub-sequence number (the index of a
//! user record inside a KPL aggregated record), or one of the sentinels the lease table
//! uses: `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP` (where a new lease starts) and
//! `SHARD_END` (the shard is closed and fully processed).

mod checkpointer;

pub use checkpointer::{CheckpointError, Checkpointer, LeaseOwnership};

use std::cmp::Ordering;
use std::fmt;

/// A sequence number or a sentinel, as stored in the lease table's `checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SequencePosition {
    /// Start at the oldest record still retained.
    TrimHorizon,
    /// Start after the newest record at the time the shard is first read.
    Latest,
    /// Start at the first record at or after the configured timestamp.
    AtTimestamp,
    /// The shard is closed and every record in it has been processed.
    ShardEnd,
    /// A Kinesis sequence number (a decimal string of up to 128 digits).
    Sequence(String),
}

impl SequencePosition {
    /// The lease-table spelling.
    pub fn as_str(&self) -> &str {
        match self {
            SequencePosition::TrimHorizon => "TRIM_HORIZON",
            SequencePosition::Latest => "LATEST",
            SequencePosition::AtTimestamp => "AT_TIMESTAMP",
            SequencePosition::ShardEnd => "SHARD_END",
            SequencePosition::Sequence(s) => s,
        }
    }

    /// Parses the lease-table spelling. Anything that is not a sentinel must be a
    /// non-empty decimal number.
    ///
    /// ```
    /// use kcl::checkpoint::SequencePosition;
    /// assert_eq!(SequencePosition::parse("SHARD_END"), Some(SequencePosition::ShardEnd));
    /// assert_eq!(SequencePosition::parse("4959"), Some(SequencePosition::Sequence("4959".into())));
    /// assert_eq!(SequencePosition::parse("12ab"), None);
    /// ```
    pub fn parse(s: &str) -> Option<SequencePosition> {
        Some(match s {
            "TRIM_HORIZON" => SequencePosition::TrimHorizon,
            "LATEST" => SequencePosition::Latest,
            "AT_TIMESTAMP" => SequencePosition::AtTimestamp,
            "SHARD_END" => SequencePosition::ShardEnd,
            n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                SequencePosition::Sequence(n.to_string())
            }
            _ => return None,
        })
    }
}

/// Compares two Kinesis sequence numbers (decimal strings without leading zeros, which
/// can exceed 128 bits, so they are compared as strings: longer is larger).
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A checkpoint: a position plus a sub-sequence number inside an aggregated record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExtendedSequenceNumber {
    /// The sequence number or sentinel.
    pub position: SequencePosition,
    /// Index of the user record inside an aggregated Kinesis record; 0 otherwise.
    pub sub_sequence: u64,
}

impl ExtendedSequenceNumber {
    /// A sentinel or sequence number with sub-sequence 0.
    pub fn new(position: SequencePosition) -> Self {
        ExtendedSequenceNumber {
            position,
            sub_sequence: 0,
        }
    }

    /// A concrete record position.
    pub fn at(sequence_number: impl Into<String>, sub_sequence: u64) -> Self {
        ExtendedSequenceNumber {
            position: SequencePosition::Sequence(sequence_number.into()),
            sub_sequence,
        }
    }

    /// `SHARD_END`.
    pub fn shard_end() -> Self {
        Self::new(SequencePosition::ShardEnd)
    }

    /// Whether this is `SHARD_END`.
    pub fn is_shard_end(&self) -> bool {
        self.position == SequencePosition::ShardEnd
    }

    /// Orders two record positions; `None` when either is a sentinel other than
    /// `SHARD_END` (which is after every record) or the start sentinels (before every one).
    ///
    /// ```
    /// use kcl::checkpoint::ExtendedSequenceNumber as E;
    /// use std::cmp::Ordering::*;
    /// assert_eq!(E::at("10", 0).compare(&E::at("9", 5)), Greater);
    /// assert_eq!(E::at("10", 1).compare(&E::at("10", 2)), Less);
    /// assert_eq!(E::shard_end().compare(&E::at("99", 0)), Greater);
    /// ```
    pub fn compare(&self, other: &Self) -> Ordering {
        use SequencePosition::*;
        let rank = |p: &SequencePosition| match p {
            TrimHorizon | Latest | AtTimestamp => 0,
            Sequence(_) => 1,
            ShardEnd => 2,
        };
        match (&self.position, &other.position) {
            (Sequence(a), Sequence(b)) => compare_sequence_numbers(a, b)
                .then_with(|| self.sub_sequence.cmp(&other.sub_sequence)),
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            SequencePosition::Sequence(s) => write!(f, "{s}.{}", self.sub_sequence),
            other => f.write_str(other.as_str()),
        }
    }
}
