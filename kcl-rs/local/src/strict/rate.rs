//! Token buckets, one per key (a shard, a stream, the account): the rate limits of the
//! strict layers. Pure: every call takes the time, so tests drive a clock of their own.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate: `per_second` tokens refilled each second, at most `burst` banked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens refilled per second (calls, or bytes).
    pub per_second: f64,
    /// The most tokens a bucket holds; a fresh bucket starts full.
    pub burst: f64,
}

impl Rate {
    /// `n` per second, with a burst of one second's worth: AWS's limits are stated per
    /// second and a quiet shard may take a second's calls at once.
    pub fn per_second(n: f64) -> Rate {
        Rate {
            per_second: n,
            burst: n,
        }
    }
}

/// One bucket. Its balance may go negative ([`TokenBucket::charge`]): a GetRecords
/// that returned 10 MiB leaves the shard's read bucket 8 MiB in debt, and the shard
/// refuses reads until the debt is paid back at 2 MiB/s, as AWS documents.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    balance: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            balance: rate.burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.balance = (self.balance + elapsed * rate.per_second).min(rate.burst);
        self.updated = now.max(self.updated);
    }

    /// The balance at `now`.
    pub fn balance(&mut self, rate: Rate, now: Instant) -> f64 {
        self.refill(rate, now);
        self.balance
    }

    /// Takes `n` tokens if the bucket holds them; a refusal takes nothing.
    pub fn try_take(&mut self, rate: Rate, now: Instant, n: f64) -> bool {
        self.refill(rate, now);
        if self.balance >= n {
            self.balance -= n;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is out of debt (balance above zero) at `now`.
    pub fn in_credit(&mut self, rate: Rate, now: Instant) -> bool {
        self.balance(rate, now) > 0.0
    }

    /// Takes `n` tokens whatever the balance: it may go negative.
    pub fn charge(&mut self, rate: Rate, now: Instant, n: f64) {
        self.refill(rate, now);
        self.balance -= n;
    }

    /// When the bucket was last used: idle full buckets can be forgotten.
    fn idle_since(&self) -> Instant {
        self.updated
    }
}

/// One bucket per key, created full on first use. Buckets idle long enough to be full
/// again are dropped now and then, so the map stays as small as the keys in use.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    buckets: HashMap<K, TokenBucket>,
    last_sweep: Option<Instant>,
}

impl<K> Default for KeyedBuckets<K> {
    fn default() -> Self {
        KeyedBuckets {
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedBuckets<K> {
    /// The bucket of `key` (created full).
    pub fn bucket(&mut self, key: &K, rate: Rate, now: Instant) -> &mut TokenBucket {
        self.sweep(rate, now);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::full(rate, now))
    }

    /// [`TokenBucket::try_take`] on the bucket of `key`.
    pub fn try_take(&mut self, key: &K, rate: Rate, now: Instant, n: f64) -> bool {
        self.bucket(key, rate, now).try_take(rate, now, n)
    }

    /// How many keys have a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn sweep(&mut self, rate: Rate, now: Instant) {
        const EVERY: Duration = Duration::from_secs(10);
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        // A bucket idle for longer than a full refill (from the deepest debt a bucket
        // realistically holds, 10 calls' worth) is as good as a fresh one.
        let refill = if rate.per_second > 0.0 {
            Duration::from_secs_f64((rate.burst * 10.0 / rate.per_second).min(3600.0))
        } else {
            Duration::from_secs(3600)
        };
        self.buckets
            .retain(|_, bucket| now.saturating_duration_since(bucket.idle_since()) < refill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_call_rate_admits_its_burst_then_its_rate() {
        let rate = Rate::per_second(5.0);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(rate, start);
        // (time in ms, admitted?) for calls in a tight loop, then spaced out.
        let table = [
            (0, true),
            (0, true),
            (0, true),
            (0, true),
            (0, true),
            (0, false),
            (100, false),
            (200, true),
            (300, false),
            (400, true),
            (2_000, true),
        ];
        for (millis, admitted) in table {
            assert_eq!(
                bucket.try_take(rate, at(start, millis), 1.0),
                admitted,
                "call at {millis} ms"
            );
        }
    }

    #[test]
    fn twenty_calls_a_second_for_three_seconds_admit_about_five_a_second() {
        let rate = Rate::per_second(5.0);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(rate, start);
        let admitted = (0..60)
            .filter(|i| bucket.try_take(rate, at(start, i * 50), 1.0))
            .count();
        // 5 banked plus 5 per second over 2.95 s.
        assert!((19..=20).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_large_read_leaves_a_debt_paid_back_at_the_rate() {
        const MIB: f64 = 1024.0 * 1024.0;
        let rate = Rate::per_second(2.0 * MIB);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(rate, start);
        assert!(bucket.in_credit(rate, start));
        bucket.charge(rate, start, 10.0 * MIB);
        // (time in ms, may read?): 8 MiB of debt at 2 MiB/s is 4 s.
        for (millis, credit) in [(0, false), (1_000, false), (3_900, false), (4_100, true)] {
            assert_eq!(
                bucket.in_credit(rate, at(start, millis)),
                credit,
                "{millis} ms"
            );
        }
        // Never above the burst, however long idle.
        assert_eq!(bucket.balance(rate, at(start, 60_000)), 2.0 * MIB);
    }

    #[test]
    fn keys_have_their_own_buckets_and_idle_ones_are_forgotten() {
        let rate = Rate::per_second(1.0);
        let start = Instant::now();
        let mut buckets = KeyedBuckets::default();
        assert!(buckets.try_take(&"a", rate, start, 1.0));
        assert!(!buckets.try_take(&"a", rate, start, 1.0));
        assert!(buckets.try_take(&"b", rate, start, 1.0));
        assert_eq!(buckets.len(), 2);
        assert!(buckets.try_take(&"c", rate, at(start, 3_600_000), 1.0));
        assert_eq!(buckets.len(), 1);
    }
}
