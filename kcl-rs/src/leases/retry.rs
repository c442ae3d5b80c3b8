//! Retrying one lease-table request within a deadline.
//!
//! A lease write that fails transiently (throttling, a transaction conflict with a
//! processor's fenced transaction, a 5xx, a hung connection) is worth repeating only
//! while the lease is still ours to write: until it would expire for the other workers.
//! So every retry here is bounded by a deadline the caller derives from the lease, each
//! attempt by its own timeout (a hung connection must leave time for another attempt),
//! and the pauses between attempts are exponential backoff with full jitter so workers
//! that collided do not collide again in step.

use std::future::Future;
use std::time::Duration;

use kinesis_core::backoff::{backoff_cap, full_jitter};
use tokio::time::Instant;

use super::lease::Lease;
use super::store::{Change, Expect, LeaseError, LeaseStore};

/// The first pause after a transient failure; the AWS SDKs for Java use 25 ms for
/// DynamoDB.
const FIRST_PAUSE: Duration = Duration::from_millis(25);

/// The timeout of one lease-table request, derived from the failover time: a fifth of
/// it (2 s at the default 10 s), so that a hung connection leaves room for further
/// attempts before the lease expires. Real DynamoDB answers in milliseconds.
pub(crate) fn attempt_timeout(failover_time: Duration) -> Duration {
    (failover_time / 5).max(Duration::from_millis(100))
}

/// The longest pause between two attempts: a quarter of an attempt's timeout (150 ms
/// at a failover time of 3 s, 500 ms at 10 s). A renewal has two thirds of the failover
/// time; with pauses drawn up to this (full jitter, 75 ms on average at 3 s) it makes
/// about 25 attempts under sustained conflicts, and 15 at the least.
fn max_pause(per_attempt: Duration) -> Duration {
    (per_attempt / 4).max(FIRST_PAUSE)
}

/// The pause after `failures` consecutive transient failures: exponential from
/// [`FIRST_PAUSE`] up to [`max_pause`], full jitter (uniform from zero), so workers that
/// collided on a lease do not retry in step.
fn pause(per_attempt: Duration, failures: u32) -> Duration {
    let cap = backoff_cap(FIRST_PAUSE, max_pause(per_attempt), failures);
    full_jitter(cap, rand::random())
}

/// Runs `attempt` until it succeeds, fails with a non-transient error, or `deadline`
/// passes (then the last transient error is returned). Each attempt is cut off after
/// `per_attempt` (or at the deadline), which counts as a transient failure.
pub(crate) async fn until_deadline<T, F, Fut>(
    deadline: Instant,
    per_attempt: Duration,
    mut attempt: F,
) -> Result<T, LeaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LeaseError>>,
{
    // What the service said last (throttling, a conflict): when the deadline ends the
    // retries, that is the answer, rather than an attempt cut off by the deadline.
    let mut said: Option<LeaseError> = None;
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = per_attempt.min(left);
        let error = match tokio::time::timeout(limit, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if e.is_transient() => {
                said = Some(e.clone());
                e
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => LeaseError::Transient {
                message: format!("no answer within {limit:?}"),
            },
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            tracing::debug!(error = %error, "lease-table request failed; retrying");
            tokio::time::sleep(pause(per_attempt, attempts).min(left)).await;
            if Instant::now() < deadline {
                continue;
            }
            // An attempt with no time left would only time out and hide this error.
        }
        tracing::debug!(attempts, elapsed = ?started.elapsed(), "lease-table request out of time");
        return Err(said.unwrap_or(error));
    }
}

/// One conditional write of lease `key`, retried like [`until_deadline`]. Returns the
/// lease as written and when the successful attempt was sent: the expiry clock of a
/// write starts when it was sent, not when its (possibly late) answer came.
pub(crate) async fn update_lease(
    store: &dyn LeaseStore,
    key: &str,
    expect: Expect,
    change: Change,
    deadline: Instant,
    per_attempt: Duration,
) -> Result<(Lease, std::time::Instant), LeaseError> {
    until_deadline(deadline, per_attempt, || {
        let sent_at = std::time::Instant::now();
        let write = store.update_lease(key, expect.clone(), change.clone());
        async move { write.await.map(|lease| (lease, sent_at)) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn transient() -> LeaseError {
        LeaseError::Transient {
            message: "TransactionConflictException".into(),
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let result = until_deadline(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(200),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 4 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(result, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_non_transient_error_ends_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = until_deadline(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(200),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(LeaseError::ConditionFailed { key: "k".into() })
            },
        )
        .await;
        assert_eq!(result, Err(LeaseError::ConditionFailed { key: "k".into() }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_deadline_ends_transient_failures_and_hung_attempts() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let slack = Duration::from_millis(100);
        let result: Result<(), _> = until_deadline(deadline, Duration::from_millis(50), || async {
            Err(transient())
        })
        .await;
        assert!(result.unwrap_err().is_transient());
        assert!(Instant::now() >= deadline && Instant::now() < deadline + slack);

        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_millis(300);
        let result: Result<(), _> = until_deadline(deadline, Duration::from_millis(80), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        })
        .await;
        assert!(result.unwrap_err().is_transient());
        assert!(
            calls.load(Ordering::SeqCst) >= 2,
            "a hung attempt is cut off and retried"
        );
        assert!(Instant::now() < deadline + slack);
    }

    #[tokio::test]
    async fn an_attempt_cut_off_by_the_deadline_keeps_what_the_service_said() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_millis(200);
        let result: Result<(), _> = until_deadline(deadline, Duration::from_millis(150), || {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err(LeaseError::Transient {
                        message: "ProvisionedThroughputExceededException".into(),
                    })
                } else {
                    std::future::pending().await
                }
            }
        })
        .await;
        assert_eq!(
            result,
            Err(LeaseError::Transient {
                message: "ProvisionedThroughputExceededException".into()
            })
        );
    }

    #[tokio::test]
    async fn the_deadline_returns_the_last_real_error_not_an_attempt_without_time() {
        // An attempt that takes a few milliseconds, like any real request: one started
        // with no time left would time out at once and hide the real error.
        let result: Result<(), _> = until_deadline(
            Instant::now() + Duration::from_millis(200),
            Duration::from_millis(50),
            || async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Err(transient())
            },
        )
        .await;
        assert_eq!(result, Err(transient()));
    }

    #[test]
    fn sustained_conflicts_get_many_attempts_none_after_a_long_pause() {
        // A renewal at failover 3 s has 2 s before expiry, attempts cut off at 600 ms.
        let per_attempt = attempt_timeout(Duration::from_secs(3));
        let window = Duration::from_secs(2);
        let trials = 100;
        let mut total = 0;
        for _ in 0..trials {
            let mut waited = Duration::ZERO;
            let mut attempts = 1;
            loop {
                let pause = pause(per_attempt, attempts);
                assert!(pause <= max_pause(per_attempt), "paused {pause:?}");
                waited += pause;
                if waited > window {
                    break;
                }
                attempts += 1;
            }
            assert!(attempts >= 15, "only {attempts} attempts in {window:?}");
            total += attempts;
        }
        assert!(
            total / trials >= 22,
            "{} attempts on average",
            total / trials
        );
    }

    #[test]
    fn attempt_timeout_fits_the_failover_time() {
        assert_eq!(
            attempt_timeout(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            attempt_timeout(Duration::from_secs(3)),
            Duration::from_millis(600)
        );
        assert_eq!(
            attempt_timeout(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
