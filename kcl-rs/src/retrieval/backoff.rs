//! A reader's pause after consecutive failures: exponential with full jitter
//! (`kinesis_core::backoff`), slept here so that the caller's `select!` can cancel it.

use std::time::Duration;

use kinesis_core::backoff::{backoff_cap, full_jitter};

/// Sleeps the jittered backoff after `failures` consecutive failures of a reader of
/// `shard_id` (bound from `initial` doubling to `max`), tracing why.
pub(crate) async fn sleep_backoff(
    shard_id: &str,
    initial: Duration,
    max: Duration,
    failures: u32,
    message: &str,
) {
    let delay = full_jitter(backoff_cap(initial, max, failures), rand::random());
    tracing::trace!(%shard_id, ?delay, failures, %message, "backoff");
    tokio::time::sleep(delay).await;
}
