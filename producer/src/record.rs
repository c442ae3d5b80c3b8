//! A user record inside the producer: validated input, its hash key, its deadlines, its
//! attempts so far, and the channel that resolves its future.

use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use crate::config::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_SIZE, ProducerConfig};
use crate::error::PutError;
use crate::result::{Attempt, AttemptError, Attempts, UserRecordResult};

/// Checks a user record and returns its hash key: the explicit hash key if given,
/// otherwise MD5 of the partition key as a big-endian 128-bit integer.
pub(crate) fn validate(
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    data_len: usize,
) -> Result<u128, PutError> {
    if partition_key.is_empty() {
        return Err(PutError::EmptyPartitionKey);
    }
    // Bytes bound characters from above: count only when it can matter.
    if partition_key.len() > MAX_PARTITION_KEY_CHARS {
        let chars = partition_key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(PutError::PartitionKeyTooLong { chars });
        }
    }
    let bytes = data_len + partition_key.len();
    if bytes > MAX_RECORD_SIZE {
        return Err(PutError::RecordTooLarge { bytes });
    }
    kinesis_core::hash::effective_hash_key(partition_key, explicit_hash_key).ok_or_else(|| {
        PutError::InvalidExplicitHashKey {
            value: explicit_hash_key.unwrap_or_default().to_string(),
        }
    })
}

/// The producer's bounded buffer: permits for user records and for their bytes (data
/// plus partition key). `put` takes a record's room and forgets the permits; the
/// producer task gives the room of resolved records back, many at a time.
#[derive(Debug)]
pub(crate) struct Room {
    pub records: Semaphore,
    pub bytes: Semaphore,
}

impl Room {
    pub(crate) fn new(records: usize, bytes: usize) -> Self {
        Room {
            records: Semaphore::new(records),
            bytes: Semaphore::new(bytes),
        }
    }

    /// Gives back the room of `records` records of `bytes` bytes in all.
    pub(crate) fn give_back(&self, records: usize, bytes: usize) {
        if records > 0 {
            self.records.add_permits(records);
            self.bytes.add_permits(bytes);
        }
    }

    /// Fails every wait for room, now and later: the producer takes no more records.
    pub(crate) fn close(&self) {
        self.records.close();
        self.bytes.close();
    }
}

/// An accepted user record that has not been resolved yet.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Arrival order at the producer task; flushes wait for ids below their barrier.
    pub id: u64,
    pub partition_key: String,
    /// As the user gave it; written as is into an aggregate's key table.
    pub explicit_hash_key: Option<String>,
    pub hash_key: u128,
    pub data: Vec<u8>,
    /// When it must leave the buffers (arrival + max buffered time, or a retry's time).
    pub deadline: Instant,
    /// Arrival + TTL.
    pub expires_at: Instant,
    /// The put, or the end of the last attempt: the origin of the next attempt's delay.
    pub last_event: Instant,
    /// Its attempts so far, all failed: empty (no allocation) until one fails.
    pub attempts: Vec<Attempt>,
    respond: oneshot::Sender<Result<UserRecordResult, PutError>>,
}

/// A user record as handed to the producer task, before it is numbered.
pub(crate) struct NewRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub hash_key: u128,
    pub data: Vec<u8>,
}

impl Pending {
    pub(crate) fn new(
        record: NewRecord,
        config: &ProducerConfig,
        now: Instant,
        respond: oneshot::Sender<Result<UserRecordResult, PutError>>,
    ) -> Self {
        Pending {
            id: 0,
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            hash_key: record.hash_key,
            data: record.data,
            deadline: now + config.record_max_buffered_time,
            expires_at: now + config.record_ttl,
            last_event: now,
            attempts: Vec::new(),
            respond,
        }
    }

    /// The room the record takes in the buffer's bytes: data plus partition key.
    pub(crate) fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// Records a failed attempt that ran from `started` to `ended`.
    pub(crate) fn attempt(&mut self, started: Instant, ended: Instant, error: AttemptError) {
        let attempt = self.next_attempt(started, ended, Some(error));
        self.attempts.push(attempt);
    }

    /// Every attempt, the last one a success that ran from `started` to `ended`. No
    /// allocation when it is the first attempt.
    pub(crate) fn succeeded(&mut self, started: Instant, ended: Instant) -> Attempts {
        let last = self.next_attempt(started, ended, None);
        Attempts::with_last(std::mem::take(&mut self.attempts), last)
    }

    fn next_attempt(
        &mut self,
        started: Instant,
        ended: Instant,
        error: Option<AttemptError>,
    ) -> Attempt {
        let attempt = Attempt {
            delay: started.saturating_duration_since(self.last_event),
            duration: ended.saturating_duration_since(started),
            error,
        };
        self.last_event = ended;
        attempt
    }

    /// Resolves the record's future (the caller gives its room back).
    pub(crate) fn resolve(self, result: Result<UserRecordResult, PutError>) {
        // The caller may have dropped the future: the record is done either way.
        let _ = self.respond.send(result);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record whose future nobody awaits, for buffer tests.
    pub(crate) fn pending(id: u64, partition_key: &str, ehk: Option<&str>, data: &[u8]) -> Pending {
        let config = ProducerConfig::builder("s").build().unwrap();
        let hash_key = validate(partition_key, ehk, data.len()).unwrap();
        let record = NewRecord {
            partition_key: partition_key.into(),
            explicit_hash_key: ehk.map(str::to_string),
            hash_key,
            data: data.to_vec(),
        };
        let mut p = Pending::new(record, &config, Instant::now(), oneshot::channel().0);
        p.id = id;
        p
    }

    #[test]
    fn validation_rules() {
        let max = u128::MAX.to_string();
        let ok = |pk: &str, ehk: Option<&str>, len| validate(pk, ehk, len).is_ok();
        assert!(ok("k", None, 0));
        assert!(
            ok(&"é".repeat(256), None, 0),
            "256 characters of 2 bytes each"
        );
        assert!(ok("k", None, MAX_RECORD_SIZE - 1));
        assert!(ok("k", Some(&max), 1));
        assert!(ok("k", Some("007"), 1));
        assert_eq!(validate("", None, 1), Err(PutError::EmptyPartitionKey));
        assert_eq!(
            validate(&"k".repeat(257), None, 1),
            Err(PutError::PartitionKeyTooLong { chars: 257 })
        );
        assert_eq!(
            validate("kk", None, MAX_RECORD_SIZE - 1),
            Err(PutError::RecordTooLarge {
                bytes: MAX_RECORD_SIZE + 1
            })
        );
        for bad in [
            "",
            "-1",
            "1.0",
            " 1",
            "0x1",
            "340282366920938463463374607431768211456",
        ] {
            assert_eq!(
                validate("k", Some(bad), 1),
                Err(PutError::InvalidExplicitHashKey { value: bad.into() }),
                "{bad:?}"
            );
        }
        assert_eq!(validate("k", Some("42"), 1), Ok(42));
        assert_eq!(
            validate("a", None, 1),
            Ok(kinesis_core::kpl::partition_key_hash("a"))
        );
    }
}
