//! A map whose entries live a fixed time: what the strict Kinesis layer remembers about
//! shard iterators and ListShards tokens, which Kinesis itself expires after 5 minutes.
//! Bounded by time: an entry older than the lifetime is never needed again (the
//! service would refuse the iterator or token), so it is dropped.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Keys (iterators, tokens) to values, each entry dropped `lifetime` after it was put.
#[derive(Debug)]
pub struct ExpiringMap<V> {
    lifetime: Duration,
    entries: HashMap<String, (V, Instant)>,
    /// Insertion order, for dropping the oldest first; may name keys already replaced.
    order: VecDeque<(Instant, String)>,
}

impl<V> ExpiringMap<V> {
    /// An empty map whose entries live `lifetime`.
    pub fn new(lifetime: Duration) -> ExpiringMap<V> {
        ExpiringMap {
            lifetime,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers `key → value` from `now` on.
    pub fn insert(&mut self, key: String, value: V, now: Instant) {
        self.expire(now);
        self.order.push_back((now, key.clone()));
        self.entries.insert(key, (value, now));
    }

    /// The value of `key`, if put less than the lifetime before `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.lifetime)
            .map(|(value, _)| value)
    }

    /// Drops every entry whose value fails `keep` (a deleted stream's shards).
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.entries.retain(|_, (value, _)| keep(value));
    }

    /// How many entries are held (expired ones may linger until the next insert).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.lifetime {
                break;
            }
            let (at, key) = self.order.pop_front().expect("a front entry");
            // Only if not put again since.
            if self.entries.get(&key).is_some_and(|(_, put)| *put == at) {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_their_lifetime_and_no_longer() {
        let start = Instant::now();
        let later = |secs| start + Duration::from_secs(secs);
        let mut map = ExpiringMap::new(Duration::from_secs(300));
        map.insert("it-1".into(), "shard-0", start);
        map.insert("it-2".into(), "shard-1", later(200));
        assert_eq!(map.get("it-1", later(299)), Some(&"shard-0"));
        assert_eq!(map.get("it-1", later(300)), None);
        assert_eq!(map.get("nope", start), None);
        // Inserting drops what expired: the map stays bounded by time.
        map.insert("it-3".into(), "shard-2", later(450));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("it-2", later(450)), Some(&"shard-1"));
        map.insert("it-4".into(), "shard-3", later(1_000));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn a_key_put_again_lives_from_its_last_put() {
        let start = Instant::now();
        let mut map = ExpiringMap::new(Duration::from_secs(10));
        map.insert("t".into(), 1, start);
        map.insert("t".into(), 2, start + Duration::from_secs(8));
        map.insert("u".into(), 3, start + Duration::from_secs(12));
        assert_eq!(map.get("t", start + Duration::from_secs(12)), Some(&2));
    }
}
