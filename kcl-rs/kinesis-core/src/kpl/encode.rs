//! Encoding: the [`Aggregator`] and its exact sizes.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::wire::*;

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
/// [`parse_explicit_hash_key`]: crate::hash::parse_explicit_hash_key
///
/// ```
/// use kinesis_core::kpl::Aggregator;
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
    /// Empty when added with [`Aggregator::add_len`] (the caller keeps the data).
    data: Vec<u8>,
    data_len: usize,
}

/// A repeated string field whose entries are unique, with each entry's index. The keys
/// are stored back to back in one string, in index order, and found through a hash
/// table of their indexes: a new key costs no allocation of its own.
#[derive(Debug, Clone, Default)]
struct KeyTable {
    /// Every key, in index order.
    keys: String,
    /// Where each key ends in `keys`, by index.
    ends: Vec<usize>,
    /// The indexes, by their key's hash.
    indexes: HashTable<usize>,
    hasher: DefaultHashBuilder,
}

/// Where a key is, or would go, in a [`KeyTable`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    index: u64,
    present: bool,
}

impl KeyTable {
    /// Key `index` of `keys`, whose key ends are `ends`.
    fn key<'a>(keys: &'a str, ends: &[usize], index: usize) -> &'a str {
        let start = index.checked_sub(1).map_or(0, |previous| ends[previous]);
        &keys[start..ends[index]]
    }

    /// The index `key` has or would get, and whether it is already in the table.
    fn slot(&self, key: &str) -> Slot {
        let hash = self.hasher.hash_one(key);
        let found = self.indexes.find(hash, |&index| {
            Self::key(&self.keys, &self.ends, index) == key
        });
        match found {
            Some(&index) => Slot {
                hash,
                index: index as u64,
                present: true,
            },
            None => Slot {
                hash,
                index: self.ends.len() as u64,
                present: false,
            },
        }
    }

    /// Inserts `key`, whose [`KeyTable::slot`] is `slot`, if new; returns its index.
    fn insert(&mut self, key: &str, slot: Slot) -> u64 {
        if !slot.present {
            let KeyTable {
                keys,
                ends,
                indexes,
                hasher,
            } = self;
            keys.push_str(key);
            ends.push(keys.len());
            indexes.insert_unique(slot.hash, ends.len() - 1, |&index| {
                hasher.hash_one(Self::key(keys, ends, index))
            });
        }
        slot.index
    }

    /// Removes every key, keeping the allocations.
    fn clear(&mut self) {
        self.keys.clear();
        self.ends.clear();
        self.indexes.clear();
    }

    /// The keys in index order.
    fn in_order(&self) -> impl Iterator<Item = &str> {
        (0..self.ends.len()).map(|index| Self::key(&self.keys, &self.ends, index))
    }
}

/// Where a user record's keys go in the tables, and how much it adds to the message.
#[derive(Debug, Clone, Copy)]
struct Placement {
    partition_key: Slot,
    explicit_hash_key: Option<Slot>,
    added_message_len: usize,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the aggregator but keeps its allocations, so the next aggregate of a
    /// similar size is filled without regrowing its tables.
    ///
    /// ```
    /// use kinesis_core::kpl::Aggregator;
    ///
    /// let mut aggregator = Aggregator::new();
    /// aggregator.add("key", None, vec![1, 2, 3]);
    /// aggregator.clear();
    /// assert!(aggregator.is_empty());
    /// assert_eq!(aggregator.encoded_len(), Aggregator::new().encoded_len());
    /// ```
    pub fn clear(&mut self) {
        self.partition_key_table.clear();
        self.explicit_hash_key_table.clear();
        self.records.clear();
        self.message_len = 0;
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
    /// take for an aggregated record (see [`is_aggregated`](super::is_aggregated)): send
    /// nothing instead.
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
        self.encoded_len()
            + self
                .place(partition_key, explicit_hash_key, data_len)
                .added_message_len
    }

    /// Adds a user record; its sub-sequence number will be the current [`Aggregator::len`].
    pub fn add(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: impl Into<Vec<u8>>,
    ) {
        let data = data.into();
        let placement = self.place(partition_key, explicit_hash_key, data.len());
        self.push(
            partition_key,
            explicit_hash_key,
            data.len(),
            data,
            placement,
        );
    }

    /// Adds a user record of `data_len` bytes without taking its data: for a producer
    /// that keeps every user record's data anyway (for retries) and gives it back to
    /// [`Aggregator::encode_with`], saving a copy per record. Do not mix with
    /// [`Aggregator::add`] in one aggregator.
    pub fn add_len(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) {
        self.add_len_within(partition_key, explicit_hash_key, data_len, usize::MAX);
    }

    /// [`Aggregator::add_len`] if the [`Aggregator::encoded_len`] stays within
    /// `max_encoded_len` with the record; returns whether it was added. One lookup of
    /// the keys where [`Aggregator::size_if_added`] then [`Aggregator::add_len`] take two.
    ///
    /// ```
    /// use kinesis_core::kpl::Aggregator;
    ///
    /// let mut aggregator = Aggregator::new();
    /// assert!(aggregator.add_len_within("key", None, 100, 1024));
    /// assert!(!aggregator.add_len_within("key", None, 1000, 1024), "too large now");
    /// assert_eq!(aggregator.len(), 1);
    /// let record = aggregator.encode_with([[7u8; 100].as_slice()]);
    /// assert_eq!(record.len(), aggregator.encoded_len());
    /// ```
    pub fn add_len_within(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
        max_encoded_len: usize,
    ) -> bool {
        let placement = self.place(partition_key, explicit_hash_key, data_len);
        if self.encoded_len() + placement.added_message_len > max_encoded_len {
            return false;
        }
        self.push(
            partition_key,
            explicit_hash_key,
            data_len,
            Vec::new(),
            placement,
        );
        true
    }

    fn push(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
        data: Vec<u8>,
        placement: Placement,
    ) {
        self.message_len += placement.added_message_len;
        let partition_key_index = self
            .partition_key_table
            .insert(partition_key, placement.partition_key);
        let explicit_hash_key_index = explicit_hash_key
            .zip(placement.explicit_hash_key)
            .map(|(key, slot)| self.explicit_hash_key_table.insert(key, slot));
        self.records.push(PendingRecord {
            partition_key_index,
            explicit_hash_key_index,
            data,
            data_len,
        });
    }

    /// Where a user record's keys go, and how much the protobuf grows if it is added.
    fn place(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> Placement {
        // A key new to its table costs a table entry; either way the record pays for
        // its index, whose varint length depends on the index's value.
        let mut added = 0;
        let partition_key_slot = self.partition_key_table.slot(partition_key);
        if !partition_key_slot.present {
            added += len_delimited_field_len(partition_key.len());
        }
        let explicit_hash_key_slot = explicit_hash_key.map(|key| {
            let slot = self.explicit_hash_key_table.slot(key);
            if !slot.present {
                added += len_delimited_field_len(key.len());
            }
            slot
        });
        let record_len = record_len(
            partition_key_slot.index,
            explicit_hash_key_slot.map(|slot| slot.index),
            data_len,
        );
        Placement {
            partition_key: partition_key_slot,
            explicit_hash_key: explicit_hash_key_slot,
            added_message_len: added + len_delimited_field_len(record_len),
        }
    }

    /// The aggregated record: magic, `AggregatedRecord` protobuf, MD5 digest.
    ///
    /// Fields are written in field-number order and keys in first-use order, as the
    /// official aggregators do, so the same user records give the same bytes
    /// (`tests/kpl_vectors.rs` checks this against `aws_kinesis_agg`).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(self.records.iter().map(|r| r.data.as_slice()))
    }

    /// [`Aggregator::encode`] for an aggregator filled with [`Aggregator::add_len`]:
    /// `data` yields each user record's data, in the order added.
    ///
    /// # Panics
    /// If `data` yields fewer records than were added, or one of another length.
    pub fn encode_with<'a>(&self, data: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = self.encode_undigested_with(data);
        fill_digests(&mut [&mut out]);
        out
    }

    /// [`Aggregator::encode_with`] with the MD5 digest left as zeros, for
    /// [`fill_digests`] to compute together with other records' digests (many at once
    /// run several times faster than one by one).
    ///
    /// # Panics
    /// As [`Aggregator::encode_with`].
    pub fn encode_undigested_with<'a>(&self, data: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        for key in self.partition_key_table.in_order() {
            write_len_delimited(
                &mut out,
                AGGREGATED_RECORD_PARTITION_KEY_TABLE,
                key.as_bytes(),
            );
        }
        for key in self.explicit_hash_key_table.in_order() {
            write_len_delimited(
                &mut out,
                AGGREGATED_RECORD_EXPLICIT_HASH_KEY_TABLE,
                key.as_bytes(),
            );
        }
        let mut data = data.into_iter();
        for record in &self.records {
            let bytes = data.next().expect("as many records' data as were added");
            assert_eq!(
                bytes.len(),
                record.data_len,
                "a record's data changed length"
            );
            let record_len = record_len(
                record.partition_key_index,
                record.explicit_hash_key_index,
                record.data_len,
            );
            write_key(&mut out, AGGREGATED_RECORD_RECORDS, WIRE_LEN);
            write_varint(&mut out, record_len as u64);
            write_key(&mut out, RECORD_PARTITION_KEY_INDEX, WIRE_VARINT);
            write_varint(&mut out, record.partition_key_index);
            if let Some(index) = record.explicit_hash_key_index {
                write_key(&mut out, RECORD_EXPLICIT_HASH_KEY_INDEX, WIRE_VARINT);
                write_varint(&mut out, index);
            }
            write_len_delimited(&mut out, RECORD_DATA, bytes);
        }
        out.extend_from_slice(&[0; DIGEST_LEN]);
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }
}

/// Writes the MD5 digest of each aggregated record made by
/// [`Aggregator::encode_undigested_with`], all of them at once
/// ([`crate::digest::md5_each`]).
///
/// # Panics
/// If a record is shorter than the magic and a digest.
pub fn fill_digests(records: &mut [&mut [u8]]) {
    let messages: Vec<&[u8]> = records
        .iter()
        .map(|r| &r[MAGIC.len()..r.len() - DIGEST_LEN])
        .collect();
    let digests = crate::digest::md5_each(&messages);
    for (record, digest) in records.iter_mut().zip(digests) {
        let end = record.len() - DIGEST_LEN;
        record[end..].copy_from_slice(&digest);
    }
}
