//! A user record inside the producer: validated input, its hash key, its deadlines, its
//! attempts so far, and the channel that resolves its future.

use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use crate::config::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_SIZE, ProducerConfig};
use crate::error::PutError;
use crate::result::{Attempt, AttemptError, UserRecordResult};

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

/// Capacity a record holds in the producer's bounded buffer; dropping it frees the room.
#[derive(Debug, Default)]
pub(crate) struct Permits {
    _records: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Permits {
    pub(crate) fn new(records: OwnedSemaphorePermit, bytes: OwnedSemaphorePermit) -> Self {
        Permits {
            _records: Some(records),
            _bytes: Some(bytes),
        }
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
    pub attempts: Vec<Attempt>,
    respond: oneshot::Sender<Result<UserRecordResult, PutError>>,
    _permits: Permits,
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
        permits: Permits,
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
            _permits: permits,
        }
    }

    /// Records an attempt that ran from `started` to `ended`.
    pub(crate) fn attempt(
        &mut self,
        started: Instant,
        ended: Instant,
        error: Option<AttemptError>,
    ) {
        self.attempts.push(Attempt {
            delay: started.saturating_duration_since(self.last_event),
            duration: ended.saturating_duration_since(started),
            error,
        });
        self.last_event = ended;
    }

    /// Resolves the record's future; its buffer room is freed as it is dropped.
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
        let mut p = Pending::new(
            record,
            &config,
            Instant::now(),
            oneshot::channel().0,
            Permits::default(),
        );
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
