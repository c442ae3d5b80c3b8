//! The checks of the `deaggregate` fuzz target, shared with kcl-rs's normal test suite
//! (`kcl-rs/tests/fuzz_regressions.rs` replays the kept corpus through them).
//!
//! Each input is tried twice: as a whole Kinesis record, and framed as a well-formed
//! aggregate (magic, the input as the protobuf, its MD5 digest) so that mutations get
//! past the checksum into the protobuf parser. For each:
//! - `kcl::kpl::deaggregate` never panics and agrees with `is_aggregated`;
//! - what decodes survives the round trip: an `Aggregator` fed the decoded user records
//!   predicts its size exactly and encodes something that decodes to the same records;
//! - `kcl::retrieval::deaggregate_records` on an SDK record carrying the bytes delivers
//!   exactly the decoded user records, or else the record itself, unchanged, once.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::Record;
use kcl::kpl::{self, Aggregator, DeaggregationError, MAGIC, UserRecord};
use md5::{Digest, Md5};

const SEQUENCE_NUMBER: &str = "49590338271490256608559692538361571095921575989136588898";

/// Runs every check on one input; panics on a violation.
pub fn check(data: &[u8]) {
    check_record(data);
    check_record(&frame(data));
}

/// A well-framed aggregate whose protobuf is `message`.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(message);
    out.extend_from_slice(&Md5::digest(message));
    out
}

fn check_record(data: &[u8]) {
    let decoded = kpl::deaggregate(data);
    match &decoded {
        Err(DeaggregationError::NotAggregated) => assert!(!data.starts_with(&MAGIC)),
        Err(DeaggregationError::TooShort { len }) => {
            assert_eq!(*len, data.len());
            assert!(data.starts_with(&MAGIC) && !kpl::is_aggregated(data));
        }
        _ => assert!(kpl::is_aggregated(data), "{decoded:?}"),
    }
    if let Ok(users) = &decoded {
        round_trip(users);
    }
    check_deaggregate_records(data, &decoded);
}

fn round_trip(users: &[UserRecord]) {
    // An empty aggregator encodes to magic and digest alone, which readers take for a
    // plain record (see `is_aggregated`): nothing to round-trip.
    if users.is_empty() {
        return;
    }
    let mut aggregator = Aggregator::new();
    for user in users {
        let expected = aggregator.size_if_added(
            &user.partition_key,
            user.explicit_hash_key.as_deref(),
            user.data.len(),
        );
        aggregator.add(
            &user.partition_key,
            user.explicit_hash_key.as_deref(),
            user.data.clone(),
        );
        assert_eq!(aggregator.encoded_len(), expected);
    }
    let bytes = aggregator.encode();
    assert_eq!(bytes.len(), aggregator.encoded_len());
    assert_eq!(kpl::deaggregate(&bytes).as_deref(), Ok(users));
}

fn check_deaggregate_records(data: &[u8], decoded: &Result<Vec<UserRecord>, DeaggregationError>) {
    let record = Record::builder()
        .sequence_number(SEQUENCE_NUMBER)
        .partition_key("pk")
        .data(Blob::new(data.to_vec()))
        .build()
        .expect("all required fields set");
    let out = kcl::retrieval::deaggregate_records([record], None);
    match decoded {
        Ok(users) => {
            assert_eq!(out.undecodable_aggregates, 0);
            assert_eq!(out.records.len(), users.len());
            for (i, (record, user)) in out.records.iter().zip(users).enumerate() {
                assert_eq!(record.sequence_number, SEQUENCE_NUMBER);
                assert_eq!(record.sub_sequence_number, i as u64);
                assert!(record.aggregated);
                assert_eq!(record.partition_key, user.partition_key);
                assert_eq!(record.explicit_hash_key, user.explicit_hash_key);
                assert_eq!(record.data, user.data);
            }
        }
        Err(_) => {
            assert_eq!(
                out.undecodable_aggregates,
                usize::from(kpl::is_aggregated(data))
            );
            assert_eq!(out.records.len(), 1);
            let record = &out.records[0];
            assert_eq!(record.sequence_number, SEQUENCE_NUMBER);
            assert_eq!((record.sub_sequence_number, record.aggregated), (0, false));
            assert_eq!(record.partition_key, "pk");
            assert_eq!(record.explicit_hash_key, None);
            assert_eq!(record.data, data);
        }
    }
}
