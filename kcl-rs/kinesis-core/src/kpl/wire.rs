//! Wire constants of the KPL format and the protobuf primitives both directions use.

/// The four bytes that open every KPL aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that closes an aggregated record.
pub(super) const DIGEST_LEN: usize = 16;

/// How many times its protobuf's size the user records of one aggregate may take once
/// decoded (see [`deaggregate`](super::deaggregate)). A valid aggregate stays below
/// about 171: a record of empty data takes 6 bytes and repeats a partition key of at
/// most 256 characters, so at most 1,024 UTF-8 bytes (an explicit hash key adds at most
/// 39 for 2 more bytes).
pub(super) const MAX_DECODED_RATIO: usize = 256;

// Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
pub(super) const WIRE_VARINT: u8 = 0;
pub(super) const WIRE_I64: u8 = 1;
pub(super) const WIRE_LEN: u8 = 2;
pub(super) const WIRE_SGROUP: u8 = 3;
pub(super) const WIRE_EGROUP: u8 = 4;
pub(super) const WIRE_I32: u8 = 5;

// Field numbers of the messages in the module docs.
pub(super) const AGGREGATED_RECORD_PARTITION_KEY_TABLE: u32 = 1;
pub(super) const AGGREGATED_RECORD_EXPLICIT_HASH_KEY_TABLE: u32 = 2;
pub(super) const AGGREGATED_RECORD_RECORDS: u32 = 3;
pub(super) const RECORD_PARTITION_KEY_INDEX: u32 = 1;
pub(super) const RECORD_EXPLICIT_HASH_KEY_INDEX: u32 = 2;
pub(super) const RECORD_DATA: u32 = 3;
pub(super) const RECORD_TAGS: u32 = 4;
pub(super) const TAG_KEY: u32 = 1;
pub(super) const TAG_VALUE: u32 = 2;

/// Bytes a `Record` message takes, without its own key and length prefix.
pub(super) fn record_len(
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data_len: usize,
) -> usize {
    // Each varint field is a one-byte key plus the varint.
    1 + varint_len(partition_key_index)
        + explicit_hash_key_index.map_or(0, |index| 1 + varint_len(index))
        + len_delimited_field_len(data_len)
}

/// Bytes a varint takes for `value`: 7 bits per byte.
pub(super) fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Bytes a length-delimited field with a `len`-byte payload takes. All our field numbers
/// are below 16, so the key is one byte.
pub(super) fn len_delimited_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

pub(super) fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(super) fn write_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    write_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

pub(super) fn write_len_delimited(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    write_key(out, field, WIRE_LEN);
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}
