//! The shard map: which open shard takes a hash key, and the range of every shard.
//!
//! Built from ListShards. Open shards' ranges predict where a user record will land, so
//! that one aggregate is built per shard and its `ExplicitHashKey` routes it there. Every
//! listed shard's range, closed ones included, is kept to judge where a record actually
//! landed (see [`landing`]).

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;

use kinesis_core::stream::ShardInfo;

/// A shard id shared by the buffers keyed by it.
pub(crate) type ShardId = Arc<str>;

/// Open shards sorted by range, and the range of every shard listed.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardMap {
    open: Vec<(RangeInclusive<u128>, ShardId)>,
    ranges: HashMap<ShardId, RangeInclusive<u128>>,
}

impl ShardMap {
    /// The map of a ListShards answer.
    pub(crate) fn new(shards: &[ShardInfo]) -> Self {
        let mut open = Vec::new();
        let mut ranges = HashMap::new();
        for shard in shards {
            let id: ShardId = shard.shard_id.as_str().into();
            let range = shard.starting_hash_key..=shard.ending_hash_key;
            if shard.is_open() {
                open.push((range.clone(), Arc::clone(&id)));
            }
            ranges.insert(id, range);
        }
        open.sort_by_key(|(range, _)| *range.start());
        ShardMap { open, ranges }
    }

    /// The open shard whose range holds `hash_key`: where Kinesis will put a record with
    /// that hash key, as far as this map knows.
    pub(crate) fn predict(&self, hash_key: u128) -> Option<&ShardId> {
        self.predict_with_range(hash_key).map(|(id, _)| id)
    }

    /// [`predict`](Self::predict), with the predicted shard's hash key range.
    pub(crate) fn predict_with_range(
        &self,
        hash_key: u128,
    ) -> Option<(&ShardId, &RangeInclusive<u128>)> {
        // The last open shard starting at or below the key; open ranges do not overlap
        // in a consistent listing, and a gap (mid-reshard) predicts nothing.
        let after = self
            .open
            .partition_point(|(range, _)| *range.start() <= hash_key);
        let (range, id) = self.open.get(after.checked_sub(1)?)?;
        range.contains(&hash_key).then_some((id, range))
    }

    /// Whether `shard_id` is an open shard of this map.
    pub(crate) fn is_open(&self, shard_id: &str) -> bool {
        self.open.iter().any(|(_, id)| &**id == shard_id)
    }

    /// The id of any listed shard, open or closed, as the map shares it.
    pub(crate) fn id(&self, shard_id: &str) -> Option<&ShardId> {
        self.ranges.get_key_value(shard_id).map(|(id, _)| id)
    }

    /// The hash key range of any listed shard, open or closed.
    pub(crate) fn range_of(&self, shard_id: &str) -> Option<&RangeInclusive<u128>> {
        self.ranges.get(shard_id)
    }
}

/// What a successful put says about one user record of the Kinesis record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landing {
    /// The shard it landed in takes its hash key: every consumer will see it.
    InRange,
    /// The shard's range does not hold its hash key: a consumer that filters
    /// sub-records by the shard's range (the Java KCL) would drop it — and with it the
    /// rest of its aggregate; put them again.
    OutOfRange,
    /// The map does not know the shard, or is stale: decide after a refresh.
    Unknown,
}

/// Judges the user records, with hash keys `hash_keys`, of a Kinesis record that
/// Kinesis routed by `routing_hash` into `landed`: [`Landing::OutOfRange`] if one of
/// them is, else [`Landing::Unknown`] if one of them is, else [`Landing::InRange`].
///
/// A user record whose hash key is `routing_hash` is in range: Kinesis routed that very
/// key. For the others, the map is known to be current for this record when it
/// predicts `landed` for `routing_hash`. Only then is an out-of-range verdict trusted; a
/// stale map could send the record to the wrong shard again.
pub(crate) fn landing(
    map: Option<&ShardMap>,
    landed: &str,
    routing_hash: u128,
    hash_keys: impl IntoIterator<Item = u128>,
) -> Landing {
    let mut others = hash_keys
        .into_iter()
        .filter(|&key| key != routing_hash)
        .peekable();
    if others.peek().is_none() {
        return Landing::InRange;
    }
    let Some(map) = map else {
        return Landing::Unknown;
    };
    // Looked up once for the whole Kinesis record.
    let current = map.predict(routing_hash).is_some_and(|id| &**id == landed);
    let range = map.range_of(landed);
    let mut verdict = Landing::InRange;
    for key in others {
        match range {
            Some(range) if range.contains(&key) => {}
            Some(_) if current => return Landing::OutOfRange,
            _ => verdict = Landing::Unknown,
        }
    }
    verdict
}

/// Judges a Kinesis record held since it landed in `landed`, by a map refreshed after
/// it landed, from the hash keys of all its user records — those whose futures are
/// already resolved (expired meanwhile) included, since consumers judge the record as
/// it is stored.
///
/// A shard's range never changes, so the refreshed map's range of `landed` is the truth:
/// [`Landing::InRange`] when it holds every hash key (a consumer keeps the record),
/// [`Landing::OutOfRange`] when it misses one (a range-filtering consumer drops all of
/// it). A map that does not list `landed` (ListShards is eventually consistent) cannot
/// judge: [`Landing::Unknown`], wait for the next one.
pub(crate) fn judge_held(map: &ShardMap, landed: &str, hash_keys: &[u128]) -> Landing {
    match map.range_of(landed) {
        Some(range) if hash_keys.iter().all(|key| range.contains(key)) => Landing::InRange,
        Some(_) => Landing::OutOfRange,
        None => Landing::Unknown,
    }
}

/// Whether the map predicts `landed` for `routing_hash`, i.e. whether it agrees with
/// where Kinesis just put a record.
pub(crate) fn is_current(map: Option<&ShardMap>, landed: &str, routing_hash: u128) -> bool {
    map.and_then(|m| m.predict(routing_hash))
        .is_some_and(|id| &**id == landed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn shard(id: &str, start: u128, end: u128, open: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_string(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            starting_hash_key: start,
            ending_hash_key: end,
            starting_sequence_number: "0".into(),
            ending_sequence_number: (!open).then(|| "9".into()),
        }
    }

    const HALF: u128 = u128::MAX / 2;

    /// Shard 0 was split into 1 (lower half) and 2 (upper half).
    fn after_split() -> ShardMap {
        ShardMap::new(&[
            shard("s2", HALF + 1, u128::MAX, true),
            shard("s0", 0, u128::MAX, false),
            shard("s1", 0, HALF, true),
        ])
    }

    #[test]
    fn predicts_open_shards_by_range() {
        let map = after_split();
        let cases = [
            (0, Some("s1")),
            (HALF, Some("s1")),
            (HALF + 1, Some("s2")),
            (u128::MAX, Some("s2")),
        ];
        for (hash_key, expected) in cases {
            assert_eq!(map.predict(hash_key).map(|s| &**s), expected, "{hash_key}");
        }
        assert!(map.is_open("s1") && !map.is_open("s0"));
        assert_eq!(map.range_of("s0"), Some(&(0..=u128::MAX)));
        assert_eq!(map.range_of("s9"), None);
    }

    #[test]
    fn gaps_and_empty_maps_predict_nothing() {
        let map = ShardMap::new(&[shard("a", 0, 10, true), shard("b", 20, 30, true)]);
        assert_eq!(map.predict(15), None);
        assert_eq!(map.predict(31), None);
        assert_eq!(map.predict(20).map(|s| &**s), Some("b"));
        assert_eq!(ShardMap::default().predict(0), None);
    }

    #[test]
    fn landing_verdicts() {
        let old = ShardMap::new(&[shard("s0", 0, u128::MAX, true)]);
        let new = after_split();
        let (low, high) = (5, HALF + 5);
        let cases = [
            // (map, landed, routing hash, user record hash, verdict)
            (Some(&new), "s1", low, low + 1, Landing::InRange),
            (Some(&new), "s1", low, high, Landing::OutOfRange),
            // A stale map predicts s0 for the routing key: do not trust it.
            (Some(&old), "s1", low, high, Landing::Unknown),
            (None, "s1", low, high, Landing::Unknown),
            // The record's own routing key is in range wherever it landed.
            (None, "s1", high, high, Landing::InRange),
            // Landed in a closed shard whose range holds it (a merge's parent).
            (Some(&new), "s0", low, high, Landing::InRange),
        ];
        for (i, (map, landed, routing, hash_key, verdict)) in cases.into_iter().enumerate() {
            assert_eq!(
                landing(map, landed, routing, [hash_key]),
                verdict,
                "case {i}"
            );
        }
        // A whole aggregate: the worst verdict of its user records.
        assert_eq!(
            landing(Some(&new), "s1", low, [low, low + 1, high, low]),
            Landing::OutOfRange
        );
        assert_eq!(
            landing(Some(&old), "s1", low, [low, low + 1, high]),
            Landing::Unknown
        );
        assert_eq!(
            landing(Some(&new), "s1", low, [low, low + 1]),
            Landing::InRange
        );
        assert_eq!(landing(None, "s1", low, [low, low]), Landing::InRange);
        assert!(is_current(Some(&new), "s2", high));
        assert!(!is_current(Some(&old), "s2", high));
        assert!(!is_current(None, "s2", high));
    }

    #[test]
    fn held_verdicts() {
        let map = after_split();
        let (low, high) = (5, HALF + 5);
        let cases: [(&str, &[u128], Landing); 7] = [
            // (landed, every user record's hash key, verdict)
            ("s1", &[low, low + 1], Landing::InRange),
            ("s2", &[high], Landing::InRange),
            // One stray user record and a consumer drops the whole aggregate.
            ("s1", &[low, high], Landing::OutOfRange),
            ("s2", &[high, low, high], Landing::OutOfRange),
            // A closed shard's range still judges (a merge's parent).
            ("s0", &[low, high], Landing::InRange),
            // A shard the refreshed map does not list: no verdict yet.
            ("s9", &[low], Landing::Unknown),
            ("s9", &[], Landing::Unknown),
        ];
        for (i, (landed, keys, verdict)) in cases.into_iter().enumerate() {
            assert_eq!(judge_held(&map, landed, keys), verdict, "case {i}");
        }
    }
}
