//! Retry delays: exponential backoff with "full jitter", as the producer, the record
//! readers and the lease writes use them.
//!
//! A delay is drawn uniformly from zero to a cap that doubles with each consecutive
//! failure, up to a maximum. Uniform from zero spreads callers that failed together
//! (many shards throttled by one account limit, two workers' writes on one lease) best,
//! and keeps the pause below the maximum. `backon`'s jitter adds up to one more delay
//! on top of the cap instead, so its pauses lie between the cap and twice it. The
//! callers compute delays rather than run a retry loop because each has its own: a
//! producer re-queues records, a reader re-acquires iterators between attempts, a lease
//! write stops at the lease's expiry.
//!
//! ```
//! use std::time::Duration;
//! use kinesis_core::backoff::{backoff_cap, full_jitter};
//!
//! let ms = Duration::from_millis;
//! // The third consecutive failure: 100 ms doubled twice, at most 1 s.
//! let cap = backoff_cap(ms(100), ms(1_000), 3);
//! assert_eq!(cap, ms(400));
//! assert_eq!(full_jitter(cap, 0.5), ms(200));
//! ```

use std::time::Duration;

/// The cap of the delay after `failures` consecutive failures (1 for the first):
/// `base × 2^(failures−1)`, at most `max`.
pub fn backoff_cap(base: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1 << doublings).min(max)
}

/// A "full jitter" delay: uniform in `0..=cap` when `unit` is uniform in `0..=1`
/// (callers pass `rand::random::<f64>()`; a `unit` outside is clamped).
pub fn full_jitter(cap: Duration, unit: f64) -> Duration {
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let caps: Vec<_> = (1..=8)
            .map(|n| backoff_cap(base, max, n).as_millis())
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_cap(base, max, 0), base);
        assert_eq!(backoff_cap(base, max, u32::MAX), max);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        let cap = Duration::from_millis(800);
        assert_eq!(full_jitter(cap, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(cap, 0.5), Duration::from_millis(400));
        assert_eq!(full_jitter(cap, 1.0), cap);
        assert_eq!(full_jitter(cap, 7.0), cap);
        assert_eq!(full_jitter(Duration::ZERO, 0.5), Duration::ZERO);
    }
}
