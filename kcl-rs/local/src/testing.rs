//! Helpers for tests against the local AWS: names that never collide, waiting on a
//! condition with a deadline, which Kinesis the tests run against, replaying a kept
//! fuzz corpus, and base64 for fixtures. Used by this workspace's own tests; handy for
//! a consumer's tests too.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{KinesisBackend, LocalAwsOptions};

/// A name unique across tests and test processes (streams and tables are shared when
/// tests run against an external Kinesis).
///
/// ```
/// let (a, b) = (kcl_local::testing::unique("orders"), kcl_local::testing::unique("orders"));
/// assert!(a.starts_with("orders-") && a != b);
/// ```
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 50 ms until it returns `Some`, and panics naming `what` after
/// `deadline`: for waiting on an event (a lease owned, a record seen) in a test.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the tests run against an external Kinesis (kinesis-mock in CI, named by
/// [`EXTERNAL_KINESIS_ENV`](super::EXTERNAL_KINESIS_ENV)): slower, so tests keep their
/// volumes smaller there.
pub fn external_kinesis() -> bool {
    LocalAwsOptions::from_env().kinesis != KinesisBackend::Embedded
}

/// Runs `check` on every file of `dir` (a fuzz target's kept corpus) and panics naming
/// the inputs whose check panicked. A folder with fewer than `at_least` files fails
/// too, so that a missing or emptied corpus does not pass by checking nothing.
pub fn replay_corpus(
    dir: &Path,
    at_least: usize,
    check: impl Fn(&[u8]) + std::panic::RefUnwindSafe,
) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable folder entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= at_least,
        "only {} inputs in {}",
        files.len(),
        dir.display()
    );
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(
                file.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "inputs failing the fuzz checks: {failed:?}"
    );
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64, for test fixtures and the embedded SubscribeToShard's
/// record data (no base64 crate in the workspace).
///
/// ```
/// use kcl_local::testing::{base64_decode, base64_encode};
/// assert_eq!(base64_encode(b"Ma"), "TWE=");
/// assert_eq!(base64_decode("TWE="), b"Ma");
/// ```
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64 (panics on a character outside the alphabet).
pub fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for byte in text.bytes().filter(|&b| b != b'=') {
        let value = BASE64
            .iter()
            .position(|&a| a == byte)
            .expect("base64 character");
        acc = (acc << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
