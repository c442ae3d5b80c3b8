//! The KPL aggregated record format against vectors from the official Python
//! implementation (`aws_kinesis_agg`), committed under `tests/fixtures/kpl/`;
//! `generate.py` there says how they were made and how to remake them.

use std::path::PathBuf;

use kcl::kpl::{Aggregator, DeaggregationError, UserRecord, deaggregate, is_aggregated};
use kcl_local::testing::base64_decode;
use serde_json::Value;

/// Every vector `generate.py` writes, so a missing file fails rather than shrinks the test.
const VECTORS: [&str; 7] = [
    "distinct_keys",
    "repeated_keys",
    "explicit_hash_keys",
    "empty_data",
    "unicode_keys",
    "large",
    "bad_checksum",
];

struct Vector {
    name: &'static str,
    aggregated: Vec<u8>,
    records: Vec<UserRecord>,
    expected_error: Option<String>,
}

fn load(name: &'static str) -> Vector {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kpl")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let json: Value = serde_json::from_str(&text).unwrap();
    let str_field = |v: &Value, key: &str| -> String {
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {key}"))
            .to_owned()
    };
    let records = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| UserRecord {
            partition_key: str_field(r, "partition_key"),
            explicit_hash_key: r["explicit_hash_key"].as_str().map(str::to_owned),
            data: base64_decode(&str_field(r, "data")),
        })
        .collect();
    Vector {
        name,
        aggregated: base64_decode(&str_field(&json, "aggregated")),
        records,
        expected_error: json["expected_error"].as_str().map(str::to_owned),
    }
}

fn encode_with_ours(records: &[UserRecord]) -> Vec<u8> {
    let mut aggregator = Aggregator::new();
    for r in records {
        aggregator.add(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            r.data.clone(),
        );
    }
    let bytes = aggregator.encode();
    assert_eq!(bytes.len(), aggregator.encoded_len());
    bytes
}

#[test]
fn decodes_python_vectors() {
    for vector in VECTORS.map(load) {
        let name = vector.name;
        assert!(is_aggregated(&vector.aggregated), "{name}");
        match vector.expected_error.as_deref() {
            None => {
                let decoded =
                    deaggregate(&vector.aggregated).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(decoded.len(), vector.records.len(), "{name}: count");
                for (i, (got, want)) in decoded.iter().zip(&vector.records).enumerate() {
                    assert_eq!(got, want, "{name}: sub-sequence number {i}");
                }
            }
            Some("BadChecksum") => assert_eq!(
                deaggregate(&vector.aggregated),
                Err(DeaggregationError::BadChecksum),
                "{name}"
            ),
            Some(other) => panic!("{name}: unknown expected_error {other}"),
        }
    }
}

#[test]
fn our_encoding_round_trips_the_same_records() {
    for vector in VECTORS.map(load) {
        let ours = encode_with_ours(&vector.records);
        assert_eq!(
            deaggregate(&ours).unwrap(),
            vector.records,
            "{}",
            vector.name
        );
    }
}

#[test]
fn our_encoding_is_byte_identical_to_python() {
    // Both write fields in field-number order and the key tables in first-use order, so
    // the bytes agree, not just the decoded records.
    for vector in VECTORS.map(load) {
        if vector.expected_error.is_none() {
            assert_eq!(
                encode_with_ours(&vector.records),
                vector.aggregated,
                "{}",
                vector.name
            );
        }
    }
}
