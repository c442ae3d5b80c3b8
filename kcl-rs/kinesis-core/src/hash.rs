//! Kinesis hash-key routing: the hash key of a partition key, and explicit hash keys.

use md5::{Digest, Md5};

/// The hash key Kinesis derives from a partition key: the MD5 digest of its UTF-8 bytes
/// read as a big-endian 128-bit integer.
///
/// A user record belongs to the shard whose hash key range holds this value, unless it
/// has an explicit hash key.
///
/// ```
/// use kinesis_core::kpl::partition_key_hash;
///
/// // MD5("") = d41d8cd98f00b204e9800998ecf8427e
/// assert_eq!(partition_key_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
/// ```
pub fn partition_key_hash(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// [`partition_key_hash`] of each key, computed together: several times faster than
/// one by one ([`crate::digest::md5_each`]).
///
/// ```
/// use kinesis_core::hash::{partition_key_hash, partition_key_hashes};
///
/// let keys = ["order-1", "order-2", "order-3"];
/// let hashes = partition_key_hashes(&keys);
/// assert_eq!(hashes, keys.map(partition_key_hash));
/// ```
pub fn partition_key_hashes(partition_keys: &[&str]) -> Vec<u128> {
    let bytes: Vec<&[u8]> = partition_keys.iter().map(|k| k.as_bytes()).collect();
    crate::digest::md5_each(&bytes)
        .into_iter()
        .map(u128::from_be_bytes)
        .collect()
}

/// Parses an explicit hash key: a decimal integer in `0..=2^128-1`, ASCII digits only
/// (no sign, no whitespace).
///
/// Leading zeros are accepted, as the Java KCL accepts them inside aggregated records,
/// but the Kinesis API's own `ExplicitHashKey` parameter requires the canonical form
/// (`0|[1-9][0-9]{0,38}`): a producer should send `value.to_string()`.
///
/// ```
/// use kinesis_core::kpl::parse_explicit_hash_key;
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

/// The hash key Kinesis routes a record by: its explicit hash key when it has one
/// (`None` when that is not a valid one), else the hash of its partition key.
///
/// ```
/// use kinesis_core::hash::{effective_hash_key, partition_key_hash};
///
/// assert_eq!(effective_hash_key("k", None), Some(partition_key_hash("k")));
/// assert_eq!(effective_hash_key("k", Some("7")), Some(7));
/// assert_eq!(effective_hash_key("k", Some("-7")), None);
/// ```
pub fn effective_hash_key(partition_key: &str, explicit_hash_key: Option<&str>) -> Option<u128> {
    match explicit_hash_key {
        Some(explicit) => parse_explicit_hash_key(explicit),
        None => Some(partition_key_hash(partition_key)),
    }
}
