use md5::{Digest, Md5};

use super::decode::*;
use super::encode::*;
use super::wire::*;
use super::*;

/// Frames a hand-written `AggregatedRecord` protobuf with magic and a correct digest.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(message);
    out.extend_from_slice(&Md5::digest(message));
    out
}

fn len_field(field: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_len_delimited(&mut out, field, payload);
    out
}

fn varint_field(field: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_key(&mut out, field, WIRE_VARINT);
    write_varint(&mut out, value);
    out
}

fn record(partition_key_index: u64, data: &[u8]) -> Vec<u8> {
    [varint_field(1, partition_key_index), len_field(3, data)].concat()
}

fn user(partition_key: &str, explicit_hash_key: Option<&str>, data: &[u8]) -> UserRecord {
    UserRecord {
        partition_key: partition_key.to_owned(),
        explicit_hash_key: explicit_hash_key.map(str::to_owned),
        data: data.to_vec(),
    }
}

fn aggregate(records: &[UserRecord]) -> Aggregator {
    let mut aggregator = Aggregator::new();
    for r in records {
        let expected = aggregator.size_if_added(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            r.data.len(),
        );
        aggregator.add(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            r.data.clone(),
        );
        assert_eq!(aggregator.encoded_len(), expected);
    }
    aggregator
}

fn round_trip(records: &[UserRecord]) -> Vec<u8> {
    let aggregator = aggregate(records);
    let bytes = aggregator.encode();
    assert_eq!(bytes.len(), aggregator.encoded_len());
    assert_eq!(aggregator.len(), records.len());
    assert_eq!(deaggregate(&bytes).unwrap(), records);
    bytes
}

fn malformed_what(data: &[u8]) -> &'static str {
    match deaggregate(data) {
        Err(DeaggregationError::Malformed { what }) => what,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

/// xorshift64*: deterministic and good enough to vary sizes and keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

#[test]
fn round_trips_single_and_empty_data() {
    round_trip(&[user("k", None, b"")]);
    round_trip(&[user("k", None, b"x"), user("k", None, b"")]);
}

#[test]
fn round_trips_unicode_keys_and_explicit_hash_keys() {
    round_trip(&[
        user("ключ-🚚", None, "данные".as_bytes()),
        user("日本語", Some("0"), b"a"),
        user(
            "ключ-🚚",
            Some("340282366920938463463374607431768211455"),
            b"b",
        ),
        user("", Some(""), b"empty keys are the producer's business"),
    ]);
}

#[test]
fn round_trips_many_records_with_multibyte_indexes() {
    let records: Vec<_> = (0..1000)
        .map(|i| {
            let ehk = (i % 3 == 0).then(|| (i * 7919).to_string());
            user(&format!("pk-{i}"), ehk.as_deref(), &[i as u8; 5])
        })
        .collect();
    round_trip(&records);
}

#[test]
fn repeated_keys_are_stored_once() {
    let records = [
        user("a", Some("1"), b"1"),
        user("b", Some("1"), b"2"),
        user("a", None, b"3"),
        user("a", Some("2"), b"4"),
    ];
    let bytes = round_trip(&records);
    let message = AggregatedRecord::decode(&bytes[4..bytes.len() - 16]).unwrap();
    assert_eq!(message.partition_key_table, ["a", "b"]);
    assert_eq!(message.explicit_hash_key_table, ["1", "2"]);
    let indexes: Vec<_> = message
        .records
        .iter()
        .map(|r| (r.partition_key_index, r.explicit_hash_key_index))
        .collect();
    assert_eq!(
        indexes,
        [(0, Some(0)), (1, Some(0)), (0, None), (0, Some(1))]
    );
}

#[test]
fn encoded_len_is_exact_for_varied_inputs() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..300 {
        let mut records = Vec::new();
        for _ in 0..=rng.below(40) {
            // Key and data lengths straddle the 1/2/3-byte varint boundaries
            // (128 and 16384), and keys repeat often enough to hit the tables.
            let pk_len = [0, 1, 127, 128, 200][rng.below(5)];
            let pk = format!("{}{}", rng.below(8), "p".repeat(pk_len));
            let ehk = match rng.below(3) {
                0 => None,
                1 => Some(rng.below(4).to_string()),
                _ => Some(format!("{}{}", u128::MAX, "9".repeat(rng.below(130)))),
            };
            let data_len = [0, 1, 100, 127, 128, 16_383, 16_384, 20_000][rng.below(8)];
            let data: Vec<u8> = (0..data_len).map(|_| rng.next() as u8).collect();
            records.push(user(&pk, ehk.as_deref(), &data));
        }
        round_trip(&records);
    }
}

#[test]
fn empty_aggregator_is_magic_and_digest() {
    let aggregator = Aggregator::new();
    assert!(aggregator.is_empty());
    let bytes = aggregator.encode();
    assert_eq!(bytes.len(), 20);
    assert_eq!(aggregator.encoded_len(), 20);
    assert!(!is_aggregated(&bytes));
    assert_eq!(
        deaggregate(&bytes),
        Err(DeaggregationError::TooShort { len: 20 })
    );
}

#[test]
fn rejects_missing_magic_and_short_input() {
    assert_eq!(deaggregate(b""), Err(DeaggregationError::NotAggregated));
    assert_eq!(
        deaggregate(&MAGIC[..3]),
        Err(DeaggregationError::NotAggregated)
    );
    let mut bytes = round_trip(&[user("k", None, b"d")]);
    bytes[0] = 0;
    assert_eq!(deaggregate(&bytes), Err(DeaggregationError::NotAggregated));
    assert_eq!(
        deaggregate(&MAGIC),
        Err(DeaggregationError::TooShort { len: 4 })
    );
    let mut short = MAGIC.to_vec();
    short.extend_from_slice(&[0; 16]);
    assert_eq!(
        deaggregate(&short),
        Err(DeaggregationError::TooShort { len: 20 })
    );
}

#[test]
fn rejects_bad_checksum_and_truncation() {
    let bytes = round_trip(&[user("k", None, b"data"), user("j", Some("5"), b"more")]);
    for i in MAGIC.len()..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[i] ^= 0x40;
        assert_eq!(deaggregate(&corrupt), Err(DeaggregationError::BadChecksum));
    }
    for len in 21..bytes.len() {
        assert_eq!(
            deaggregate(&bytes[..len]),
            Err(DeaggregationError::BadChecksum)
        );
    }
}

#[test]
fn rejects_index_out_of_range() {
    let pk = len_field(1, b"k");
    let bad_pk = frame(&[pk.clone(), len_field(3, &record(1, b"d"))].concat());
    assert_eq!(
        deaggregate(&bad_pk),
        Err(DeaggregationError::IndexOutOfRange {
            table: "partition_key_table",
            index: 1,
            len: 1
        })
    );
    let huge = frame(&[pk.clone(), len_field(3, &record(u64::MAX, b"d"))].concat());
    assert!(matches!(
        deaggregate(&huge),
        Err(DeaggregationError::IndexOutOfRange {
            index: u64::MAX,
            ..
        })
    ));
    let bad_ehk = [record(0, b"d"), varint_field(2, 0)].concat();
    assert_eq!(
        deaggregate(&frame(&[pk, len_field(3, &bad_ehk)].concat())),
        Err(DeaggregationError::IndexOutOfRange {
            table: "explicit_hash_key_table",
            index: 0,
            len: 0
        })
    );
}

#[test]
fn rejects_broken_varints_and_lengths() {
    assert_eq!(malformed_what(&frame(&[0x0A, 0x80])), "truncated varint");
    assert_eq!(malformed_what(&frame(&[0x80])), "truncated varint");
    let overflow = [&[0x08][..], &[0xFF; 9], &[0x02]].concat();
    assert_eq!(
        malformed_what(&frame(&len_field(3, &overflow))),
        "varint overflows 64 bits"
    );
    assert_eq!(
        malformed_what(&frame(&[0x0A, 0x05, b'a'])),
        "length beyond end of input"
    );
    // A length prefix near u64::MAX must not be trusted for an allocation.
    let huge = [&[0x1A][..], &[0xFF; 9], &[0x01]].concat();
    assert_eq!(malformed_what(&frame(&huge)), "length beyond end of input");
    // A record whose inner length runs past the record's own end.
    let inner = [varint_field(1, 0), vec![0x1A, 0x09, b'x']].concat();
    assert_eq!(
        malformed_what(&frame(&[len_field(1, b"k"), len_field(3, &inner)].concat())),
        "length beyond end of input"
    );
}

#[test]
fn rejects_missing_required_fields() {
    let pk = len_field(1, b"k");
    let no_index = len_field(3, &len_field(3, b"d"));
    assert_eq!(
        malformed_what(&frame(&[pk.clone(), no_index].concat())),
        "Record without required partition_key_index"
    );
    let no_data = len_field(3, &varint_field(1, 0));
    assert_eq!(
        malformed_what(&frame(&[pk.clone(), no_data].concat())),
        "Record without required data"
    );
    let tag_without_key = [record(0, b"d"), len_field(4, &len_field(2, b"v"))].concat();
    assert_eq!(
        malformed_what(&frame(&[pk, len_field(3, &tag_without_key)].concat())),
        "Tag without required key"
    );
}

#[test]
fn rejects_bad_wire_types_field_numbers_and_utf8() {
    let pk = len_field(1, b"k");
    // Field 5 as a group (start group, wire type 3).
    assert_eq!(
        malformed_what(&frame(&[0x2B, 0x2C])),
        "groups are not supported"
    );
    assert_eq!(malformed_what(&frame(&[0x2E])), "invalid wire type");
    assert_eq!(
        malformed_what(&frame(&[0x02, 0x00])),
        "invalid field number"
    );
    // partition_key_table sent as a varint.
    assert_eq!(
        malformed_what(&frame(&varint_field(1, 3))),
        "wrong wire type for a length-delimited field"
    );
    let index_as_bytes = [len_field(1, b"\x00"), len_field(3, b"d")].concat();
    assert_eq!(
        malformed_what(&frame(
            &[pk.clone(), len_field(3, &index_as_bytes)].concat()
        )),
        "wrong wire type for a uint64 field"
    );
    assert_eq!(
        malformed_what(&frame(&len_field(1, b"\xFF"))),
        "partition_key_table entry is not UTF-8"
    );
    assert_eq!(
        malformed_what(&frame(&len_field(2, b"\xC3"))),
        "explicit_hash_key_table entry is not UTF-8"
    );
    let bad_tag = [record(0, b"d"), len_field(4, &len_field(1, b"\xFF"))].concat();
    assert_eq!(
        malformed_what(&frame(&[pk, len_field(3, &bad_tag)].concat())),
        "Tag.key is not UTF-8"
    );
}

#[test]
fn skips_unknown_fields_and_accepts_tags() {
    let unknown = [
        varint_field(9, 300),
        vec![(10 << 3) | WIRE_I64, 1, 2, 3, 4, 5, 6, 7, 8],
        len_field(11, b"ignored"),
        vec![(12 << 3) | WIRE_I32, 1, 2, 3, 4],
        // A field number needing a multi-byte key.
        len_field(1000, b"x"),
    ]
    .concat();
    let tag = [
        len_field(1, b"tag"),
        len_field(2, b"value"),
        unknown.clone(),
    ]
    .concat();
    let record = [
        unknown.clone(),
        len_field(4, &tag),
        record(0, b"payload"),
        len_field(4, &len_field(1, b"key only")),
        varint_field(2, 0),
    ]
    .concat();
    // Records before the tables they index: protobuf allows any field order.
    let message = [
        unknown.clone(),
        len_field(3, &record),
        len_field(2, b"77"),
        unknown,
        len_field(1, b"pk"),
    ]
    .concat();
    assert_eq!(
        deaggregate(&frame(&message)),
        Ok(vec![user("pk", Some("77"), b"payload")])
    );
}

#[test]
fn repeated_singular_fields_take_the_last_value() {
    let record = [
        record(5, b"first"),
        varint_field(1, 1),
        len_field(3, b"last"),
    ]
    .concat();
    let message = [
        len_field(1, b"a"),
        len_field(1, b"b"),
        len_field(3, &record),
    ]
    .concat();
    assert_eq!(
        deaggregate(&frame(&message)),
        Ok(vec![user("b", None, b"last")])
    );
}

#[test]
fn bounds_the_memory_of_records_sharing_a_long_key() {
    // 256-character key, empty data: about 43 times the input, accepted.
    let long_key = "k".repeat(256);
    let records = vec![user(&long_key, None, b""); 1000];
    round_trip(&records);
    // The most a valid aggregate can take: 256 four-byte characters (1,024 bytes)
    // per 6-byte record, about 171 times; with the longest explicit hash key too.
    let widest_key = "🚚".repeat(256);
    round_trip(&vec![user(&widest_key, None, b""); 1000]);
    let ehk = u128::MAX.to_string();
    round_trip(&vec![user(&widest_key, Some(&ehk), b""); 1000]);
    // A 2000-byte key shared by 10,000 records: about 330 times the input.
    let mut message = len_field(1, &[b'k'; 2000]);
    for _ in 0..10_000 {
        message.extend(len_field(3, &record(0, b"")));
    }
    assert_eq!(
        malformed_what(&frame(&message)),
        "user records would take over 256 times the aggregate's size"
    );
}

#[test]
fn message_with_tables_but_no_records_is_empty() {
    assert_eq!(deaggregate(&frame(&len_field(1, b"k"))), Ok(vec![]));
}

#[test]
fn never_panics_on_damaged_protobufs() {
    let bytes = round_trip(&[
        user("ключ", Some("123"), b"data"),
        user("k2", None, &[0xAB; 200]),
    ]);
    let message = &bytes[4..bytes.len() - 16];
    let mut rng = Rng(42);
    for len in 0..message.len() {
        let _ = deaggregate(&frame(&message[..len]));
    }
    for _ in 0..5000 {
        let mut damaged = message.to_vec();
        for _ in 0..=rng.below(3) {
            let i = rng.below(damaged.len() as u64);
            damaged[i] = rng.next() as u8;
        }
        let _ = deaggregate(&frame(&damaged));
    }
}

#[test]
fn varint_len_matches_write_varint() {
    for value in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let mut out = Vec::new();
        write_varint(&mut out, value);
        assert_eq!(out.len(), varint_len(value), "{value}");
        assert_eq!(Reader::new(&out).varint(), Ok(value));
    }
}

#[test]
fn partition_key_hash_is_big_endian_md5() {
    // MD5("a") = 0cc175b9c0f1b6a831c399e269772661
    assert_eq!(partition_key_hash("a"), 0x0cc175b9c0f1b6a831c399e269772661);
}

#[test]
fn parses_explicit_hash_keys() {
    assert_eq!(parse_explicit_hash_key("12345"), Some(12345));
    assert_eq!(parse_explicit_hash_key("007"), Some(7));
    assert_eq!(
        parse_explicit_hash_key(&u128::MAX.to_string()),
        Some(u128::MAX)
    );
    for bad in [
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1e3",
        "0x10",
        "١",
        "99999999999999999999999999999999999999999",
    ] {
        assert_eq!(parse_explicit_hash_key(bad), None, "{bad:?}");
    }
}

#[test]
fn sizing_without_the_data_encodes_the_same_bytes() {
    let records = [
        user("a", None, b"one"),
        user("b", Some("12345"), b"two two"),
        user("a", Some("12345"), b""),
        user("c", Some("999"), &[7u8; 300]),
    ];
    let owned = aggregate(&records);
    let mut sized = Aggregator::new();
    for r in &records {
        sized.add_len(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            r.data.len(),
        );
        assert_eq!(sized.encoded_len(), {
            let mut prefix = Aggregator::new();
            for q in &records[..sized.len()] {
                prefix.add(
                    &q.partition_key,
                    q.explicit_hash_key.as_deref(),
                    q.data.clone(),
                );
            }
            prefix.encoded_len()
        });
    }
    let bytes = sized.encode_with(records.iter().map(|r| r.data.as_slice()));
    assert_eq!(bytes, owned.encode());
    assert_eq!(bytes.len(), sized.encoded_len());
}

#[test]
fn adding_within_a_limit_sizes_as_size_if_added_and_keeps_key_order() {
    // Enough keys to grow the key tables several times, each repeated.
    let records: Vec<UserRecord> = (0..3000)
        .map(|i| {
            let key = format!("key-{}", (i * 7) % 1100);
            let ehk = (i % 3 == 0).then(|| format!("{}", i % 50));
            user(&key, ehk.as_deref(), &vec![i as u8; i % 40])
        })
        .collect();
    let limit = 40_000;
    let mut within = Aggregator::new();
    let mut added = 0;
    for r in &records {
        let expected = within.size_if_added(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            r.data.len(),
        );
        let before = within.encoded_len();
        let took = within.add_len_within(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            r.data.len(),
            limit,
        );
        assert_eq!(took, expected <= limit);
        assert_eq!(within.encoded_len(), if took { expected } else { before });
        if !took {
            break;
        }
        added += 1;
    }
    assert!(added > 500 && added < records.len(), "{added}");
    let bytes = within.encode_with(records[..added].iter().map(|r| r.data.as_slice()));
    assert_eq!(bytes, aggregate(&records[..added]).encode());
    assert_eq!(deaggregate(&bytes).unwrap(), records[..added]);
}

#[test]
fn digests_filled_together_equal_each_record_encoded_alone() {
    let records: Vec<Vec<Vec<u8>>> = (0..19usize)
        .map(|n| {
            (0..n * 7)
                .map(|i| vec![(n + i) as u8; (i * 13) % 400])
                .collect()
        })
        .collect();
    let aggregators: Vec<Aggregator> = records
        .iter()
        .map(|data| {
            let mut aggregator = Aggregator::new();
            for (i, d) in data.iter().enumerate() {
                aggregator.add(&format!("key-{}", i % 5), None, d.clone());
            }
            aggregator
        })
        .collect();
    let mut undigested: Vec<Vec<u8>> = aggregators
        .iter()
        .zip(&records)
        .map(|(a, data)| a.encode_undigested_with(data.iter().map(Vec::as_slice)))
        .collect();
    let mut slices: Vec<&mut [u8]> = undigested.iter_mut().map(Vec::as_mut_slice).collect();
    fill_digests(&mut slices);
    for (aggregator, filled) in aggregators.iter().zip(&undigested) {
        assert_eq!(*filled, aggregator.encode());
    }
}
