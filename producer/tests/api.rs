//! The producer's contract: bad input refused at once, backpressure, flush and shutdown
//! resolving every record, expiry with attempts, explicit hash keys.

mod common;

use std::time::Duration;

use common::{config, payload, read_all, start, tag_of};
use kcl_local::LocalAwsOptions;
use producer::{Producer, PutError};
use tokio::time::timeout;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_at_once_and_affects_nothing_else() {
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "badinput", 1).await;
    let producer = Producer::new(config(&stream).build().unwrap(), kinesis.clone());
    let good = producer.put("before", b"before".to_vec()).await.unwrap();

    let cases: Vec<(Result<_, PutError>, PutError)> = vec![
        (
            producer.put("", b"x".to_vec()).await,
            PutError::EmptyPartitionKey,
        ),
        (
            producer.put("k".repeat(257), b"x".to_vec()).await,
            PutError::PartitionKeyTooLong { chars: 257 },
        ),
        (
            producer.put("kk", vec![0; MIB - 1]).await,
            PutError::RecordTooLarge { bytes: MIB + 1 },
        ),
        (
            producer.put_with_hash_key("k", "-1", b"x".to_vec()).await,
            PutError::InvalidExplicitHashKey { value: "-1".into() },
        ),
        (
            producer
                .put_with_hash_key(
                    "k",
                    "340282366920938463463374607431768211456",
                    b"x".to_vec(),
                )
                .await,
            PutError::InvalidExplicitHashKey {
                value: "340282366920938463463374607431768211456".into(),
            },
        ),
        (
            producer.put_with_hash_key("k", "", b"x".to_vec()).await,
            PutError::InvalidExplicitHashKey {
                value: String::new(),
            },
        ),
    ];
    for (i, (got, expected)) in cases.into_iter().enumerate() {
        assert_eq!(got.unwrap_err(), expected, "case {i}");
    }
    assert_eq!(
        producer.outstanding_records(),
        1,
        "refused records take no room"
    );

    // Limits are inclusive: 256 characters (of 4 bytes each) and exactly 1 MiB pass.
    let long_key = producer.put("🚚".repeat(256), b"x".to_vec()).await.unwrap();
    let largest = producer.put("k", vec![7; MIB - 1]).await.unwrap();
    let after = producer.put("after", b"after".to_vec()).await.unwrap();
    producer.flush().await;
    for future in [good, long_key, largest, after] {
        future.await.unwrap();
    }
    producer.shutdown().await;

    let (_, read) = read_all(&kinesis, &stream).await;
    let mut keys: Vec<_> = read
        .iter()
        .map(|r| (r.partition_key.chars().count(), r.data.len()))
        .collect();
    keys.sort();
    assert_eq!(keys, [(1, MIB - 1), (5, 5), (6, 6), (256, 1)]);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_waits_while_the_buffer_is_full() {
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "backpressure", 1).await;
    // Nothing leaves the buffer on its own within the test: only flushes send.
    let config = config(&stream)
        .record_max_buffered_time(Duration::from_secs(600))
        .max_outstanding_records(5)
        .max_outstanding_bytes(MIB)
        .build()
        .unwrap();
    let producer = Producer::new(config, kinesis);
    let mut pending = Vec::new();
    for i in 0..5 {
        pending.push(
            producer
                .put("k", payload(&i.to_string(), 10))
                .await
                .unwrap(),
        );
    }
    assert_eq!(producer.outstanding_records(), 5);
    assert_eq!(producer.outstanding_bytes(), 5 * 11);
    assert!(
        timeout(
            Duration::from_millis(300),
            producer.put("k", b"sixth".to_vec())
        )
        .await
        .is_err(),
        "a sixth record must wait for room"
    );
    producer.flush().await;
    for future in pending.drain(..) {
        future.await.unwrap();
    }
    assert_eq!(producer.outstanding_records(), 0);

    // The byte bound: 600 KiB fits, a second 600 KiB waits for the first.
    let first = producer.put("k", vec![1; 600 * 1024]).await.unwrap();
    assert!(
        timeout(
            Duration::from_millis(300),
            producer.put("k", vec![2; 600 * 1024])
        )
        .await
        .is_err()
    );
    producer.flush().await;
    first.await.unwrap();
    let second = timeout(
        Duration::from_secs(5),
        producer.put("k", vec![2; 600 * 1024]),
    )
    .await;
    let second = second.expect("room after the flush").unwrap();
    producer.flush().await;
    second.await.unwrap();
    producer.shutdown().await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_resolves_every_record_then_refuses_new_ones() {
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "shutdown", 2).await;
    let config = config(&stream)
        .record_max_buffered_time(Duration::from_secs(600))
        .build()
        .unwrap();
    let producer = Producer::new(config, kinesis.clone());
    let mut pending = Vec::new();
    for i in 0..1000 {
        pending.push(
            producer
                .put(format!("k{}", i % 7), payload(&i.to_string(), 50))
                .await
                .unwrap(),
        );
    }
    let clone = producer.clone();
    producer.shutdown().await;
    assert_eq!(producer.outstanding_records(), 0);
    for future in pending {
        // Resolved already: shutdown waited for it.
        let result = timeout(Duration::from_millis(1), future)
            .await
            .expect("resolved");
        result.unwrap();
    }
    assert_eq!(
        clone.put("k", b"late".to_vec()).await.unwrap_err(),
        PutError::ShutDown
    );
    assert_eq!(
        clone
            .put_with_hash_key("k", "1", b"late".to_vec())
            .await
            .unwrap_err(),
        PutError::ShutDown
    );
    // Invalid input is still reported as such.
    assert_eq!(
        clone.put("", b"x".to_vec()).await.unwrap_err(),
        PutError::EmptyPartitionKey
    );
    clone.flush().await;
    clone.shutdown().await;

    let (_, read) = read_all(&kinesis, &stream).await;
    let mut ids: Vec<usize> = read
        .iter()
        .map(|r| tag_of(&r.data).parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_still_sends_what_was_accepted() {
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "dropped", 1).await;
    let producer = Producer::new(config(&stream).build().unwrap(), kinesis.clone());
    let mut pending = Vec::new();
    for i in 0..100 {
        pending.push(
            producer
                .put("k", payload(&i.to_string(), 20))
                .await
                .unwrap(),
        );
    }
    drop(producer);
    for future in pending {
        timeout(Duration::from_secs(30), future)
            .await
            .unwrap()
            .unwrap();
    }
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_after_their_ttl_with_every_attempt() {
    let (aws, kinesis, _) = start(LocalAwsOptions::from_env(), "ttl", 1).await;
    // A stream that does not exist: every PutRecords fails, and is retried until the TTL.
    let missing = kcl_local::testing::unique("missing");
    let config = config(&missing)
        .record_ttl(Duration::from_secs(4))
        .retry_base_delay(Duration::from_millis(50))
        .retry_max_delay(Duration::from_millis(400))
        .build()
        .unwrap();
    let producer = Producer::new(config, kinesis);
    let started = std::time::Instant::now();
    let future = producer.put("k", b"never".to_vec()).await.unwrap();
    let err = future.await.unwrap_err();
    let elapsed = started.elapsed();
    let PutError::Expired { attempts } = &err else {
        panic!("expected Expired, got {err:?}");
    };
    assert!(attempts.len() >= 2, "{attempts:?}");
    for attempt in attempts {
        let error = attempt.error.as_ref().expect("failed attempt");
        assert_eq!(error.code, "ResourceNotFoundException", "{error:?}");
    }
    assert!(
        err.to_string().contains("ResourceNotFoundException"),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    producer.shutdown().await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_hash_keys_choose_the_shard() {
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "ehk", 4).await;
    let shards = kcl::stream::list_shards(&kinesis, &stream).await.unwrap();
    let producer = Producer::new(config(&stream).build().unwrap(), kinesis.clone());
    let mut pending = Vec::new();
    for shard in &shards {
        for hash_key in [shard.starting_hash_key, shard.ending_hash_key] {
            for copy in 0..3 {
                let data = format!("{hash_key}-{copy}").into_bytes();
                let future = producer
                    .put_with_hash_key("same-key", hash_key.to_string(), data)
                    .await;
                pending.push((shard.shard_id.clone(), future.unwrap()));
            }
        }
    }
    producer.flush().await;
    for (shard_id, future) in pending {
        let result = future.await.unwrap();
        assert_eq!(*result.shard_id, shard_id);
    }
    producer.shutdown().await;
    aws.shutdown().await;
}
