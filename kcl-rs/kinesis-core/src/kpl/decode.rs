//! Decoding: [`is_aggregated`] and [`deaggregate`].

use super::wire::*;

/// Whether `data` looks like a KPL aggregated record: the [`MAGIC`] prefix and room for
/// a non-empty protobuf plus the MD5 digest.
///
/// This is the same test the Java KCL applies before trying to deaggregate; a record that
/// passes it may still fail [`deaggregate`].
///
/// ```
/// use kinesis_core::kpl::{MAGIC, is_aggregated};
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
    /// (see [`parse_explicit_hash_key`](crate::hash::parse_explicit_hash_key)).
    pub explicit_hash_key: Option<String>,
    /// The user record's payload.
    pub data: Vec<u8>,
}

/// Why a record could not be deaggregated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
/// use kinesis_core::kpl::{Aggregator, DeaggregationError, deaggregate};
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
    deaggregate_each(&[data])
        .pop()
        .expect("a result per record")
}

/// [`deaggregate`] of each record, with the checksums of all of them computed together
/// ([`crate::digest::md5_each`]): several times faster than one by one.
///
/// ```
/// use kinesis_core::kpl::{Aggregator, DeaggregationError, deaggregate_each};
///
/// let mut aggregator = Aggregator::new();
/// aggregator.add("key", None, b"payload".to_vec());
/// let bytes = aggregator.encode();
/// let results = deaggregate_each(&[&bytes, b"plain", &bytes]);
/// assert_eq!(results[0].as_ref().unwrap()[0].data, b"payload");
/// assert_eq!(results[1], Err(DeaggregationError::NotAggregated));
/// assert_eq!(results[2], results[0]);
/// ```
pub fn deaggregate_each(records: &[&[u8]]) -> Vec<Result<Vec<UserRecord>, DeaggregationError>> {
    let framed: Vec<_> = records.iter().map(|data| framed(data)).collect();
    let messages: Vec<&[u8]> = framed
        .iter()
        .filter_map(|f| f.as_ref().ok().map(|(message, _)| *message))
        .collect();
    let mut digests = crate::digest::md5_each(&messages).into_iter();
    framed
        .into_iter()
        .map(|f| {
            let (message, digest) = f?;
            let computed = digests.next().expect("a digest per framed record");
            if computed[..] != *digest {
                return Err(DeaggregationError::BadChecksum);
            }
            AggregatedRecord::decode(message)?.into_user_records(message.len())
        })
        .collect()
}

/// An aggregated record's message and digest, or why it is not one.
fn framed(data: &[u8]) -> Result<(&[u8], &[u8]), DeaggregationError> {
    if !data.starts_with(&MAGIC) {
        return Err(DeaggregationError::NotAggregated);
    }
    if !is_aggregated(data) {
        return Err(DeaggregationError::TooShort { len: data.len() });
    }
    Ok(data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - DIGEST_LEN))
}

/// The `AggregatedRecord` message, borrowing from the input.
pub(super) struct AggregatedRecord<'a> {
    pub(super) partition_key_table: Vec<&'a str>,
    pub(super) explicit_hash_key_table: Vec<&'a str>,
    pub(super) records: Vec<Record<'a>>,
}

/// The `Record` message, borrowing from the input.
pub(super) struct Record<'a> {
    pub(super) partition_key_index: u64,
    pub(super) explicit_hash_key_index: Option<u64>,
    data: &'a [u8],
}

impl<'a> AggregatedRecord<'a> {
    pub(super) fn decode(buf: &'a [u8]) -> Result<Self, DeaggregationError> {
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
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(super) fn varint(&mut self) -> Result<u64, DeaggregationError> {
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
