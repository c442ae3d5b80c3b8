//! With the embedded Kinesis enforcing AWS's per-shard write limits (1 MiB/s, 1,000
//! records/s), a producer allowed above them is throttled: no record is lost, and the
//! retries show in the records' attempts.
//!
//! Only the embedded Kinesis has switchable limits; against an external one the test
//! says so and passes.

mod common;

use std::collections::HashSet;

use common::{config, payload, read_all, start, tag_of};
use kcl_local::LocalAwsOptions;
use kcl_local::testing::external_kinesis;
use producer::{Producer, UserRecordResult};

const THROTTLED: &str = "ProvisionedThroughputExceededException";

async fn run(aggregation: bool, rate_limit: u32, count: usize, size: usize) {
    let options = LocalAwsOptions {
        enforce_limits: true,
        ..LocalAwsOptions::from_env()
    };
    let (aws, kinesis, stream) = start(options, "throttled", 1).await;
    let config = config(&stream)
        .aggregation(aggregation)
        .rate_limit(rate_limit)
        .build()
        .unwrap();
    let producer = Producer::new(config, kinesis.clone());
    let started = std::time::Instant::now();
    let mut pending = Vec::new();
    for i in 0..count {
        pending.push(
            producer
                .put(format!("k{}", i % 100), payload(&i.to_string(), size))
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    let mut results: Vec<UserRecordResult> = Vec::new();
    for future in pending {
        results.push(
            future
                .await
                .expect("throttled records are retried, not lost"),
        );
    }
    let elapsed = started.elapsed();
    producer.shutdown().await;

    let throttled = results
        .iter()
        .filter(|r| {
            r.attempts
                .iter()
                .any(|a| a.error.as_ref().is_some_and(|e| e.code == THROTTLED))
        })
        .count();
    let most = results.iter().map(|r| r.attempts.len()).max().unwrap();
    eprintln!(
        "aggregation {aggregation}, rate limit {rate_limit}%: {count} records of {size} bytes in {elapsed:?}, {throttled} throttled at least once, at most {most} attempts"
    );
    assert!(throttled > 0, "the shard's limits were never hit");
    for result in &results {
        let (last, earlier) = result.attempts.split_last().unwrap();
        assert!(
            last.is_success() && earlier.iter().all(|a| !a.is_success()),
            "{result:?}"
        );
    }

    let (_, read) = read_all(&kinesis, &stream).await;
    let ids: HashSet<usize> = read
        .iter()
        .map(|r| tag_of(&r.data).parse().unwrap())
        .collect();
    assert_eq!(read.len(), count, "each record written exactly once");
    assert_eq!(ids.len(), count);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_plain_records_are_retried_until_written() {
    if external_kinesis() {
        eprintln!("skipped: write limits can only be switched on in the embedded Kinesis");
        return;
    }
    // 3,000 records at up to 2,000/s against a limit of 1,000/s.
    run(false, 200, 3_000, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_aggregates_are_retried_until_written() {
    if external_kinesis() {
        eprintln!("skipped: write limits can only be switched on in the embedded Kinesis");
        return;
    }
    // 4 MiB at the default 150% of 1 MiB/s.
    run(true, 150, 4_096, 1024).await;
}
