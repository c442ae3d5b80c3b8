//! A user record inside the producer: validated input, its hash key, its deadlines, its
//! attempts so far, and the channel that resolves its future.

use tokio::sync::{AcquireError, Semaphore, SemaphorePermit, oneshot};
use tokio::time::Instant;

use crate::config::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_SIZE, ProducerConfig};
use crate::error::PutError;
use crate::result::{Attempt, AttemptError, Attempts, UserRecordResult};

/// Checks a user record and returns its explicit hash key, parsed. Without one the
/// record is routed by its partition key's MD5, which the producer task computes for
/// many records at once ([`Pending::hash_pending`]).
pub(crate) fn validate(
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    data_len: usize,
) -> Result<Option<u128>, PutError> {
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
    let Some(key) = explicit_hash_key else {
        return Ok(None);
    };
    match kinesis_core::hash::parse_explicit_hash_key(key) {
        Some(hash_key) => Ok(Some(hash_key)),
        None => Err(PutError::InvalidExplicitHashKey {
            value: key.to_string(),
        }),
    }
}

/// Computes the hash keys of the records routed by their partition keys, all at once.
pub(crate) fn hash_partition_keys<'a>(records: impl IntoIterator<Item = &'a mut Pending>) {
    let mut records: Vec<&mut Pending> = records.into_iter().filter(|r| r.hash_pending).collect();
    if records.is_empty() {
        return;
    }
    let hashes = {
        let keys: Vec<&str> = records.iter().map(|r| r.partition_key.as_str()).collect();
        kinesis_core::hash::partition_key_hashes(&keys)
    };
    for (record, hash_key) in records.iter_mut().zip(hashes) {
        record.hash_key = hash_key;
        record.hash_pending = false;
    }
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

    /// Takes the room of one record of `bytes` bytes, for good (given back with
    /// [`Room::give_back`]): the record first, then its bytes, always in this order, so
    /// no two puts can each hold what the other waits for. With room to spare the
    /// permits are taken without building a wait; otherwise it waits behind the puts
    /// already waiting. Cancel-safe: dropped before it returns, it takes nothing. Fails
    /// once the room is closed.
    pub(crate) async fn take(&self, bytes: usize) -> Result<(), AcquireError> {
        let records = permits(&self.records, 1).await?;
        let bytes = permits(&self.bytes, bytes as u32).await?;
        records.forget();
        bytes.forget();
        Ok(())
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

/// `n` permits of `semaphore`: at once when they are there, else after a wait.
async fn permits(semaphore: &Semaphore, n: u32) -> Result<SemaphorePermit<'_>, AcquireError> {
    match semaphore.try_acquire_many(n) {
        Ok(permits) => Ok(permits),
        Err(_) => semaphore.acquire_many(n).await,
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
    /// Valid once `hash_pending` is false.
    pub hash_key: u128,
    /// Routed by its partition key, whose hash the producer task has yet to compute
    /// (with the other records of its pass, [`hash_partition_keys`]).
    pub hash_pending: bool,
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
    /// The explicit hash key, parsed; `None`: the partition key's hash, computed later.
    pub hash_key: Option<u128>,
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
            hash_key: record.hash_key.unwrap_or_default(),
            hash_pending: record.hash_key.is_none(),
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
        hash_partition_keys([&mut p]);
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
        assert_eq!(validate("k", Some("42"), 1), Ok(Some(42)));
        assert_eq!(validate("a", None, 1), Ok(None));
    }

    #[test]
    fn partition_keys_are_hashed_together_and_explicit_keys_kept() {
        let mut records: Vec<Pending> = (0..40)
            .map(|i| pending(i, &format!("key-{i}"), None, b"d"))
            .collect();
        records.push(pending(40, "k", Some("7"), b"d"));
        for record in &mut records[..40] {
            record.hash_pending = true;
            record.hash_key = 0;
        }
        hash_partition_keys(&mut records);
        for record in &records[..40] {
            assert!(!record.hash_pending);
            assert_eq!(
                record.hash_key,
                kinesis_core::kpl::partition_key_hash(&record.partition_key)
            );
        }
        assert_eq!(records[40].hash_key, 7);
    }
}
