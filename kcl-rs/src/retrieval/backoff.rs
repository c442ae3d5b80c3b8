//! Retry delays: exponential backoff with full jitter.
//!
//! backon's `ExponentialBuilder::with_jitter` adds up to one extra bound to each delay
//! (a delay between the bound and twice it, which also overshoots `max`), and its
//! retry loop does not fit a reader that must re-acquire iterators between attempts
//! and be cancellable at every wait; the two small functions here do exactly what is
//! needed and leave the waiting to the caller's `select!`.

use std::time::Duration;

/// The bound of the delay after `failures` consecutive failures:
/// `initial · 2^(failures-1)`, at most `max`.
pub(crate) fn backoff_bound(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    initial.saturating_mul(1 << doublings).min(max)
}

/// "Full jitter": a delay drawn uniformly from zero to the bound, so readers throttled
/// together (many shards of one stream, one account limit) do not retry together.
pub(crate) fn full_jitter(bound: Duration) -> Duration {
    bound.mul_f64(rand::random::<f64>())
}

/// Sleeps the jittered backoff after `failures` consecutive failures of a reader of
/// `shard_id` (bound from `initial` doubling to `max`), tracing why.
pub(crate) async fn sleep_backoff(
    shard_id: &str,
    initial: Duration,
    max: Duration,
    failures: u32,
    message: &str,
) {
    let delay = full_jitter(backoff_bound(initial, max, failures));
    tracing::trace!(%shard_id, ?delay, failures, %message, "backoff");
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_bound_doubles_up_to_the_maximum() {
        let ms = Duration::from_millis;
        let bounds: Vec<Duration> = (1..=8)
            .map(|n| backoff_bound(ms(100), ms(5_000), n))
            .collect();
        assert_eq!(
            bounds,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1_600),
                ms(3_200),
                ms(5_000),
                ms(5_000)
            ]
        );
        assert_eq!(backoff_bound(ms(100), ms(5_000), u32::MAX), ms(5_000));
        assert_eq!(backoff_bound(ms(100), ms(5_000), 0), ms(100));
    }

    #[test]
    fn full_jitter_stays_within_the_bound() {
        let bound = Duration::from_millis(300);
        for _ in 0..1_000 {
            assert!(full_jitter(bound) <= bound);
        }
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }
}
