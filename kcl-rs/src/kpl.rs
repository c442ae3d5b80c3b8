//! The KPL aggregated record format: many user records packed into one Kinesis record.
//!
//! The Kinesis Producer Library packs user records into a single Kinesis record laid out
//! as the 4 [`MAGIC`] bytes, a protobuf `AggregatedRecord`, and the 16-byte MD5 digest of
//! that protobuf (magic excluded):
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! message Tag {
//!   required string key   = 1;
//!   optional string value = 2;
//! }
//! ```
//!
//! Both sides of the toolkit use this one module: the consumer [`deaggregate`]s, the
//! producer fills an [`Aggregator`]. The protobuf subset is written by hand because it is
//! this small; names follow the `.proto` above.
//!
//! ```
//! use kcl::kpl::{Aggregator, deaggregate, is_aggregated};
//!
//! let mut aggregator = Aggregator::new();
//! aggregator.add("user-1", None, b"first".to_vec());
//! aggregator.add("user-1", Some("42"), b"second".to_vec());
//! let bytes = aggregator.encode();
//! assert_eq!(bytes.len(), aggregator.encoded_len());
//! assert!(is_aggregated(&bytes));
//!
//! let records = deaggregate(&bytes).unwrap();
//! assert_eq!(records[1].partition_key, "user-1");
//! assert_eq!(records[1].explicit_hash_key.as_deref(), Some("42"));
//! assert_eq!(records[1].data, b"second");
//! ```

use std::collections::HashMap;

use md5::{Digest, Md5};

/// The four bytes that open every KPL aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that closes an aggregated record.
const DIGEST_LEN: usize = 16;

/// How many times its protobuf's size the user records of one aggregate may take once
/// decoded (see [`deaggregate`]). A valid aggregate stays below about 171: a record of
/// empty data takes 6 bytes and repeats a partition key of at most 256 characters, so
/// at most 1,024 UTF-8 bytes (an explicit hash key adds at most 39 for 2 more bytes).
const MAX_DECODED_RATIO: usize = 256;

// Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_SGROUP: u8 = 3;
const WIRE_EGROUP: u8 = 4;
const WIRE_I32: u8 = 5;

// Field numbers of the messages in the module docs.
const AGGREGATED_RECORD_PARTITION_KEY_TABLE: u32 = 1;
const AGGREGATED_RECORD_EXPLICIT_HASH_KEY_TABLE: u32 = 2;
const AGGREGATED_RECORD_RECORDS: u32 = 3;
const RECORD_PARTITION_KEY_INDEX: u32 = 1;
const RECORD_EXPLICIT_HASH_KEY_INDEX: u32 = 2;
const RECORD_DATA: u32 = 3;
const RECORD_TAGS: u32 = 4;
const TAG_KEY: u32 = 1;
const TAG_VALUE: u32 = 2;

/// Whether `data` looks like a KPL aggregated record: the [`MAGIC`] prefix and room for
/// a non-empty protobuf plus the MD5 digest.
///
/// This is the same test the Java KCL applies before trying to deaggregate; a record that
/// passes it may still fail [`deaggregate`].
///
/// ```
/// use kcl::kpl::{MAGIC, is_aggregated};
///
/// assert!(!is_aggregated(b"plain record"));
/// let mut data = MAGIC.to_vec();
/// data.extend_from_slice(&[0; 17]);
/// assert!(is_aggregated(&data));
/// ```
pub fn is_aggregated(data: &[u8]) -> bool {
    // An empty protobuf is not enough: the KCL and the KPL's own deaggregators both treat
    // magic + digest alone as a plain record, so we do too.
    data.len() > MAGIC.len() + DIGEST_LEN && data.starts_with(&MAGIC)
}

/// One user record unpacked from an aggregated record.
///
/// Its position in the `Vec` returned by [`deaggregate`] is its sub-sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The partition key the producer gave this user record.
    pub partition_key: String,
    /// The explicit hash key the producer gave, if any, exactly as it was encoded
    /// (see [`parse_explicit_hash_key`]).
    pub explicit_hash_key: Option<String>,
    /// The user record's payload.
    pub data: Vec<u8>,
}

/// Why a record could not be deaggregated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeaggregationError {
    /// The data does not start with [`MAGIC`].
    #[error("record does not start with the KPL magic bytes")]
    NotAggregated,
    /// The data starts with [`MAGIC`] but has no room for a protobuf and an MD5 digest.
    #[error("aggregated record of {len} bytes is too short")]
    TooShort {
        /// Length of the whole record in bytes.
        len: usize,
    },
    /// The trailing MD5 digest does not match the protobuf bytes.
    #[error("aggregated record MD5 checksum mismatch")]
    BadChecksum,
    /// The protobuf is not a valid `AggregatedRecord`.
    #[error("malformed AggregatedRecord protobuf: {what}")]
    Malformed {
        /// What was wrong, naming the protobuf field where there is one.
        what: &'static str,
    },
    /// A `Record` points past the end of one of the key tables.
    #[error("{table} index {index} out of range for a table of {len} keys")]
    IndexOutOfRange {
        /// `"partition_key_table"` or `"explicit_hash_key_table"`.
        table: &'static str,
        /// The index found in the `Record`.
        index: u64,
        /// The number of keys in that table.
        len: usize,
    },
}

fn malformed(what: &'static str) -> DeaggregationError {
    DeaggregationError::Malformed { what }
}

/// Unpacks the user records of a KPL aggregated record, in sub-sequence number order.
///
/// Decoding is strict: the magic, the MD5 digest, the protobuf encoding, the required
/// fields, every key-table index and the UTF-8 of every string must be right, or the
/// whole record is rejected. Unknown fields are skipped as protobuf allows, and tags are
/// checked but dropped. Nothing here panics, whatever the input, and every length
/// prefix is checked against the bytes left before anything is read or allocated.
///
/// The user records can take more memory than the aggregate, since each gets its own
/// copy of a key that the aggregate stores once. An aggregate whose user records would
/// add up to more than 256 times its own size is rejected as [`Malformed`]: no valid
/// aggregate reaches that (records of empty data sharing a 256-character key of 4-byte
/// characters come to about 171 times), and the limit keeps a hostile 1 MiB record
/// from asking for more than 256 MiB.
///
/// An error does not mean the data is lost: a producer that is not the KPL may send data
/// that happens to start with the magic bytes. A consumer should deliver a record that
/// fails here as one plain record, unchanged, and count the failure — what the Java KCL
/// does for checksum and protobuf failures.
///
/// An aggregated record that holds no user records decodes to an empty `Vec`.
///
/// [`Malformed`]: DeaggregationError::Malformed
///
/// ```
/// use kcl::kpl::{Aggregator, DeaggregationError, deaggregate};
///
/// assert_eq!(deaggregate(b"plain"), Err(DeaggregationError::NotAggregated));
///
/// let mut aggregator = Aggregator::new();
/// aggregator.add("key", None, b"payload".to_vec());
/// let mut bytes = aggregator.encode();
/// assert_eq!(deaggregate(&bytes).unwrap()[0].data, b"payload");
///
/// *bytes.last_mut().unwrap() ^= 1;
/// assert_eq!(deaggregate(&bytes), Err(DeaggregationError::BadChecksum));
/// ```
pub fn deaggregate(data: &[u8]) -> Result<Vec<UserRecord>, DeaggregationError> {
    if !data.starts_with(&MAGIC) {
        return Err(DeaggregationError::NotAggregated);
    }
    if !is_aggregated(data) {
        return Err(DeaggregationError::TooShort { len: data.len() });
    }
    let (message, digest) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - DIGEST_LEN);
    if Md5::digest(message).as_slice() != digest {
        return Err(DeaggregationError::BadChecksum);
    }
    AggregatedRecord::decode(message)?.into_user_records(message.len())
}

/// The `AggregatedRecord` message, borrowing from the input.
struct AggregatedRecord<'a> {
    partition_key_table: Vec<&'a str>,
    explicit_hash_key_table: Vec<&'a str>,
    records: Vec<Record<'a>>,
}

/// The `Record` message, borrowing from the input.
struct Record<'a> {
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data: &'a [u8],
}

impl<'a> AggregatedRecord<'a> {
    fn decode(buf: &'a [u8]) -> Result<Self, DeaggregationError> {
        let mut message = AggregatedRecord {
            partition_key_table: Vec::new(),
            explicit_hash_key_table: Vec::new(),
            records: Vec::new(),
        };
        let mut reader = Reader::new(buf);
        while let Some((field, wire_type)) = reader.key()? {
            match field {
                AGGREGATED_RECORD_PARTITION_KEY_TABLE => {
                    let key = reader.string(wire_type, "partition_key_table entry is not UTF-8")?;
                    message.partition_key_table.push(key);
                }
                AGGREGATED_RECORD_EXPLICIT_HASH_KEY_TABLE => {
                    let key =
                        reader.string(wire_type, "explicit_hash_key_table entry is not UTF-8")?;
                    message.explicit_hash_key_table.push(key);
                }
                AGGREGATED_RECORD_RECORDS => {
                    let record = reader.bytes(wire_type)?;
                    message.records.push(Record::decode(record)?);
                }
                _ => reader.skip(wire_type)?,
            }
        }
        Ok(message)
    }

    // Indexes are resolved only after the whole message is read: protobuf lets the
    // repeated fields arrive in any order, so a table may follow the records using it.
    fn into_user_records(self, message_len: usize) -> Result<Vec<UserRecord>, DeaggregationError> {
        let lookup = |table: &[&'a str], name, index: u64| {
            usize::try_from(index)
                .ok()
                .and_then(|i| table.get(i).copied())
                .ok_or(DeaggregationError::IndexOutOfRange {
                    table: name,
                    index,
                    len: table.len(),
                })
        };
        let mut resolved = Vec::with_capacity(self.records.len());
        let mut decoded_len = 0usize;
        for record in &self.records {
            let partition_key = lookup(
                &self.partition_key_table,
                "partition_key_table",
                record.partition_key_index,
            )?;
            let explicit_hash_key = record
                .explicit_hash_key_index
                .map(|index| {
                    lookup(
                        &self.explicit_hash_key_table,
                        "explicit_hash_key_table",
                        index,
                    )
                })
                .transpose()?;
            decoded_len +=
                partition_key.len() + explicit_hash_key.map_or(0, str::len) + record.data.len();
            resolved.push((partition_key, explicit_hash_key, record.data));
        }
        // Sizes are summed before any key is copied, so the check comes before the memory.
        if decoded_len > MAX_DECODED_RATIO.saturating_mul(message_len) {
            return Err(malformed(
                "user records would take over 256 times the aggregate's size",
            ));
        }
        Ok(resolved
            .into_iter()
            .map(|(partition_key, explicit_hash_key, data)| UserRecord {
                partition_key: partition_key.to_owned(),
                explicit_hash_key: explicit_hash_key.map(str::to_owned),
                data: data.to_vec(),
            })
            .collect())
    }
}

impl<'a> Record<'a> {
    fn decode(buf: &'a [u8]) -> Result<Self, DeaggregationError> {
        // Singular fields that repeat take their last value, as protobuf specifies.
        let mut partition_key_index = None;
        let mut explicit_hash_key_index = None;
        let mut data = None;
        let mut reader = Reader::new(buf);
        while let Some((field, wire_type)) = reader.key()? {
            match field {
                RECORD_PARTITION_KEY_INDEX => {
                    partition_key_index = Some(reader.uint64(wire_type)?);
                }
                RECORD_EXPLICIT_HASH_KEY_INDEX => {
                    explicit_hash_key_index = Some(reader.uint64(wire_type)?);
                }
                RECORD_DATA => data = Some(reader.bytes(wire_type)?),
                RECORD_TAGS => check_tag(reader.bytes(wire_type)?)?,
                _ => reader.skip(wire_type)?,
            }
        }
        Ok(Record {
            partition_key_index: partition_key_index
                .ok_or(malformed("Record without required partition_key_index"))?,
            explicit_hash_key_index,
            data: data.ok_or(malformed("Record without required data"))?,
        })
    }
}

/// Validates a `Tag` message. Tags carry nothing a consumer uses, so they are dropped, but
/// a broken one still means a broken record.
fn check_tag(buf: &[u8]) -> Result<(), DeaggregationError> {
    let mut has_key = false;
    let mut reader = Reader::new(buf);
    while let Some((field, wire_type)) = reader.key()? {
        match field {
            TAG_KEY => {
                reader.string(wire_type, "Tag.key is not UTF-8")?;
                has_key = true;
            }
            TAG_VALUE => {
                reader.string(wire_type, "Tag.value is not UTF-8")?;
            }
            _ => reader.skip(wire_type)?,
        }
    }
    if has_key {
        Ok(())
    } else {
        Err(malformed("Tag without required key"))
    }
}

/// A cursor over protobuf wire format that never reads past its slice.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn varint(&mut self) -> Result<u64, DeaggregationError> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            // The tenth byte holds bit 63 alone; anything more overflows 64 bits.
            if i == 9 && byte > 1 {
                return Err(malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        // Fewer than ten bytes and the last has its continuation bit set.
        Err(malformed("truncated varint"))
    }

    /// The next field number and wire type, or `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DeaggregationError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3)
            .ok()
            .filter(|&f| f != 0 && f < 1 << 29)
            .ok_or(malformed("invalid field number"))?;
        Ok(Some((field, (key & 7) as u8)))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], DeaggregationError> {
        // Checked against what is left before slicing, so a huge length prefix is an error
        // rather than an allocation or a panic.
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.buf.len())
            .ok_or(malformed("length beyond end of input"))?;
        let (taken, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(taken)
    }

    fn expect(wire_type: u8, expected: u8, what: &'static str) -> Result<(), DeaggregationError> {
        if wire_type == expected {
            Ok(())
        } else {
            // Protobuf parsers skip a known field with the wrong wire type as unknown; no
            // encoder of this format emits one, so we treat it as corruption instead.
            Err(DeaggregationError::Malformed { what })
        }
    }

    fn uint64(&mut self, wire_type: u8) -> Result<u64, DeaggregationError> {
        Self::expect(wire_type, WIRE_VARINT, "wrong wire type for a uint64 field")?;
        self.varint()
    }

    fn bytes(&mut self, wire_type: u8) -> Result<&'a [u8], DeaggregationError> {
        Self::expect(
            wire_type,
            WIRE_LEN,
            "wrong wire type for a length-delimited field",
        )?;
        let len = self.varint()?;
        self.take(len)
    }

    /// A string field; `not_utf8` names the field in the error for invalid UTF-8.
    fn string(
        &mut self,
        wire_type: u8,
        not_utf8: &'static str,
    ) -> Result<&'a str, DeaggregationError> {
        let bytes = self.bytes(wire_type)?;
        std::str::from_utf8(bytes).map_err(|_| malformed(not_utf8))
    }

    fn skip(&mut self, wire_type: u8) -> Result<(), DeaggregationError> {
        match wire_type {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_I64 => self.take(8).map(drop),
            WIRE_LEN => {
                let len = self.varint()?;
                self.take(len).map(drop)
            }
            WIRE_I32 => self.take(4).map(drop),
            // Groups are deprecated and absent from this format's schema; skipping one
            // properly means matching nested start/end tags, which no producer needs.
            WIRE_SGROUP | WIRE_EGROUP => Err(malformed("groups are not supported")),
            _ => Err(malformed("invalid wire type")),
        }
    }
}

/// Builds one aggregated Kinesis record from user records, for the producer.
///
/// Partition keys and explicit hash keys go into deduplicated tables, as the KPL does, so
/// a key repeated across user records costs its bytes once. [`Aggregator::encoded_len`]
/// is exact at every step, which lets a producer stop adding just below the Kinesis
/// record size limit: check [`Aggregator::size_if_added`] first, and [`Aggregator::encode`]
/// and start a new aggregator when the next record would not fit.
///
/// Keys are written as given: checking that a partition key is 1–256 characters and that
/// an explicit hash key is a valid decimal (see [`parse_explicit_hash_key`]) is the
/// producer's job. Tags are never written.
///
/// ```
/// use kcl::kpl::Aggregator;
///
/// const MAX_RECORD_LEN: usize = 1024 * 1024;
/// let mut aggregator = Aggregator::new();
/// let payload = vec![7u8; 100];
/// if aggregator.size_if_added("key", None, payload.len()) <= MAX_RECORD_LEN {
///     aggregator.add("key", None, payload);
/// }
/// assert_eq!(aggregator.len(), 1);
/// let record = std::mem::take(&mut aggregator).encode();
/// assert!(aggregator.is_empty());
/// // magic, table entry "key", record { index, data }, digest
/// assert_eq!(record.len(), 4 + (2 + 3) + 2 + (2 + 2 + 100) + 16);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Aggregator {
    partition_key_table: KeyTable,
    explicit_hash_key_table: KeyTable,
    records: Vec<PendingRecord>,
    /// Length of the `AggregatedRecord` protobuf so far.
    message_len: usize,
}

#[derive(Debug, Clone)]
struct PendingRecord {
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data: Vec<u8>,
}

/// A repeated string field whose entries are unique, with each entry's index.
#[derive(Debug, Clone, Default)]
struct KeyTable {
    keys: Vec<String>,
    indexes: HashMap<String, u64>,
}

impl KeyTable {
    /// The index `key` has or would get, and whether it is already in the table.
    fn index_of(&self, key: &str) -> (u64, bool) {
        match self.indexes.get(key) {
            Some(&index) => (index, true),
            None => (self.keys.len() as u64, false),
        }
    }

    fn insert(&mut self, key: &str) -> u64 {
        let (index, present) = self.index_of(key);
        if !present {
            self.keys.push(key.to_owned());
            self.indexes.insert(key.to_owned(), index);
        }
        index
    }
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of user records added so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no user record has been added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The exact length of what [`Aggregator::encode`] would return now.
    ///
    /// An empty aggregator encodes to 20 bytes (magic and digest), which readers do not
    /// take for an aggregated record (see [`is_aggregated`]): send nothing instead.
    pub fn encoded_len(&self) -> usize {
        MAGIC.len() + self.message_len + DIGEST_LEN
    }

    /// The exact [`Aggregator::encoded_len`] after adding a user record with these keys
    /// and `data_len` bytes of data, without adding it.
    pub fn size_if_added(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> usize {
        self.encoded_len() + self.added_message_len(partition_key, explicit_hash_key, data_len)
    }

    /// Adds a user record; its sub-sequence number will be the current [`Aggregator::len`].
    pub fn add(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: impl Into<Vec<u8>>,
    ) {
        let data = data.into();
        self.message_len += self.added_message_len(partition_key, explicit_hash_key, data.len());
        self.records.push(PendingRecord {
            partition_key_index: self.partition_key_table.insert(partition_key),
            explicit_hash_key_index: explicit_hash_key
                .map(|key| self.explicit_hash_key_table.insert(key)),
            data,
        });
    }

    /// How much the protobuf grows if this user record is added.
    fn added_message_len(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> usize {
        // A key new to its table costs a table entry; either way the record pays for
        // its index, whose varint length depends on the index's value.
        let mut added = 0;
        let (partition_key_index, present) = self.partition_key_table.index_of(partition_key);
        if !present {
            added += len_delimited_field_len(partition_key.len());
        }
        let explicit_hash_key_index = explicit_hash_key.map(|key| {
            let (index, present) = self.explicit_hash_key_table.index_of(key);
            if !present {
                added += len_delimited_field_len(key.len());
            }
            index
        });
        let record_len = record_len(partition_key_index, explicit_hash_key_index, data_len);
        added + len_delimited_field_len(record_len)
    }

    /// The aggregated record: magic, `AggregatedRecord` protobuf, MD5 digest.
    ///
    /// Fields are written in field-number order and keys in first-use order, as the
    /// official aggregators do, so the same user records give the same bytes
    /// (`tests/kpl_vectors.rs` checks this against `aws_kinesis_agg`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        for key in &self.partition_key_table.keys {
            write_len_delimited(
                &mut out,
                AGGREGATED_RECORD_PARTITION_KEY_TABLE,
                key.as_bytes(),
            );
        }
        for key in &self.explicit_hash_key_table.keys {
            write_len_delimited(
                &mut out,
                AGGREGATED_RECORD_EXPLICIT_HASH_KEY_TABLE,
                key.as_bytes(),
            );
        }
        for record in &self.records {
            let record_len = record_len(
                record.partition_key_index,
                record.explicit_hash_key_index,
                record.data.len(),
            );
            write_key(&mut out, AGGREGATED_RECORD_RECORDS, WIRE_LEN);
            write_varint(&mut out, record_len as u64);
            write_key(&mut out, RECORD_PARTITION_KEY_INDEX, WIRE_VARINT);
            write_varint(&mut out, record.partition_key_index);
            if let Some(index) = record.explicit_hash_key_index {
                write_key(&mut out, RECORD_EXPLICIT_HASH_KEY_INDEX, WIRE_VARINT);
                write_varint(&mut out, index);
            }
            write_len_delimited(&mut out, RECORD_DATA, &record.data);
        }
        let digest = Md5::digest(&out[MAGIC.len()..]);
        out.extend_from_slice(&digest);
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }
}

/// Bytes a `Record` message takes, without its own key and length prefix.
fn record_len(
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
fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Bytes a length-delimited field with a `len`-byte payload takes. All our field numbers
/// are below 16, so the key is one byte.
fn len_delimited_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    write_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn write_len_delimited(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    write_key(out, field, WIRE_LEN);
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// The hash key Kinesis derives from a partition key: the MD5 digest of its UTF-8 bytes
/// read as a big-endian 128-bit integer.
///
/// A user record belongs to the shard whose hash key range holds this value, unless it
/// has an explicit hash key.
///
/// ```
/// use kcl::kpl::partition_key_hash;
///
/// // MD5("") = d41d8cd98f00b204e9800998ecf8427e
/// assert_eq!(partition_key_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
/// ```
pub fn partition_key_hash(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Parses an explicit hash key: a decimal integer in `0..=2^128-1`, ASCII digits only
/// (no sign, no whitespace).
///
/// Leading zeros are accepted, as the Java KCL accepts them inside aggregated records,
/// but the Kinesis API's own `ExplicitHashKey` parameter requires the canonical form
/// (`0|[1-9][0-9]{0,38}`): a producer should send `value.to_string()`.
///
/// ```
/// use kcl::kpl::parse_explicit_hash_key;
///
/// assert_eq!(parse_explicit_hash_key("0"), Some(0));
/// assert_eq!(
///     parse_explicit_hash_key("340282366920938463463374607431768211455"),
///     Some(u128::MAX),
/// );
/// assert_eq!(parse_explicit_hash_key("340282366920938463463374607431768211456"), None);
/// assert_eq!(parse_explicit_hash_key("+1"), None);
/// assert_eq!(parse_explicit_hash_key(""), None);
/// ```
pub fn parse_explicit_hash_key(s: &str) -> Option<u128> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u128, |value, byte| {
        let digit = (byte as char).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u128::from(digit))
    })
}

#[cfg(test)]
mod tests {
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
}
