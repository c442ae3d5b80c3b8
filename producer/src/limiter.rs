//! Per-shard token buckets: bytes and records, refilled at the shard's write limits
//! scaled by [`ProducerConfig::rate_limit`](crate::ProducerConfig::rate_limit).
//!
//! A Kinesis record leaves the buffers only when its shard's buckets hold enough
//! tokens, so a throttled shard is not hammered with calls that Kinesis will refuse,
//! while other shards keep going.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{SHARD_BYTES_PER_SECOND, SHARD_RECORDS_PER_SECOND};

/// Tokens refilled continuously at `rate` per second, up to one second's worth.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_second: f64, now: Instant) -> Self {
        TokenBucket {
            rate: rate_per_second,
            capacity: rate_per_second,
            tokens: rate_per_second,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// When `amount` tokens will be there; `now` if they already are. A full bucket
    /// always lets one take through, even one larger than the capacity (it goes into
    /// debt), so that no record is stuck behind a low rate limit.
    fn ready_at(&mut self, amount: f64, now: Instant) -> Instant {
        self.refill(now);
        let needed = amount.min(self.capacity);
        if self.tokens >= needed {
            return now;
        }
        // A millisecond of margin, so a wake-up at this time finds the tokens there
        // despite rounding, instead of spinning.
        now + Duration::from_secs_f64((needed - self.tokens) / self.rate) + Duration::from_millis(1)
    }

    fn take(&mut self, amount: f64) {
        self.tokens -= amount;
    }
}

/// The two buckets of one shard.
#[derive(Debug, Clone)]
pub(crate) struct ShardLimiter {
    bytes: TokenBucket,
    records: TokenBucket,
}

impl ShardLimiter {
    /// Buckets for `rate_limit` percent of one shard's write limits.
    pub(crate) fn new(rate_limit: u32, now: Instant) -> Self {
        let scale = f64::from(rate_limit) / 100.0;
        ShardLimiter {
            bytes: TokenBucket::new(SHARD_BYTES_PER_SECOND as f64 * scale, now),
            records: TokenBucket::new(SHARD_RECORDS_PER_SECOND as f64 * scale, now),
        }
    }

    /// Takes the tokens for one Kinesis record of `bytes` (data plus partition key), or
    /// says when to try again.
    pub(crate) fn try_take(&mut self, bytes: usize, now: Instant) -> Result<(), Instant> {
        let at = self
            .bytes
            .ready_at(bytes as f64, now)
            .max(self.records.ready_at(1.0, now));
        if at > now {
            return Err(at);
        }
        self.bytes.take(bytes as f64);
        self.records.take(1.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn full_bucket_passes_one_second_of_bytes_then_waits() {
        let t0 = Instant::now();
        let mut limiter = ShardLimiter::new(100, t0);
        for _ in 0..16 {
            limiter.try_take(MIB / 16, t0).unwrap();
        }
        let retry = limiter.try_take(MIB / 16, t0).unwrap_err();
        let wait = retry - t0;
        // 64 KiB at 1 MiB/s: 62.5 ms (plus the margin).
        assert!(
            wait >= Duration::from_millis(62) && wait <= Duration::from_millis(65),
            "{wait:?}"
        );
        limiter.try_take(MIB / 16, retry).unwrap();
    }

    #[test]
    fn record_count_limit_applies_to_small_records() {
        let t0 = Instant::now();
        let mut limiter = ShardLimiter::new(100, t0);
        for _ in 0..1000 {
            limiter.try_take(10, t0).unwrap();
        }
        let retry = limiter.try_take(10, t0).unwrap_err();
        assert!(retry - t0 <= Duration::from_millis(3));
        // After a second the bucket is full again, and no fuller.
        let later = t0 + Duration::from_secs(5);
        for _ in 0..1000 {
            limiter.try_take(10, later).unwrap();
        }
        assert!(limiter.try_take(10, later).is_err());
    }

    #[test]
    fn rate_limit_scales_both_buckets() {
        let t0 = Instant::now();
        let mut limiter = ShardLimiter::new(150, t0);
        for _ in 0..1500 {
            limiter.try_take(1, t0).unwrap();
        }
        assert!(limiter.try_take(1, t0).is_err());
        let mut half = ShardLimiter::new(50, t0);
        half.try_take(MIB / 2, t0).unwrap();
        assert!(half.try_take(1, t0).is_err());
    }

    #[test]
    fn record_larger_than_capacity_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut limiter = ShardLimiter::new(10, t0);
        limiter.try_take(MIB, t0).unwrap();
        let retry = limiter.try_take(1, t0).unwrap_err();
        // 1 MiB taken from a 104,858-byte bucket refilling at 104,858 B/s: ~9 s of debt.
        assert!(retry - t0 > Duration::from_secs(8), "{:?}", retry - t0);
    }
}
