//! Round trip: user records of mixed sizes and keys put through aggregation come back
//! from raw GetRecords + `kcl::kpl::deaggregate` exactly once each, where the futures
//! said, in the shard their hash key belongs to, in put order per key.
//!
//! 100,000 records on the embedded Kinesis; 3,000 against an external one
//! (`KCL_TEST_KINESIS_ENDPOINT`, kinesis-mock in CI, which is slow).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Rng, config, deaggregate_all, payload, read_raw, start, tag_of};
use kcl_local::LocalAwsOptions;
use kcl_local::testing::external_kinesis;
use producer::{Producer, RecordFuture};

/// What was put: partition key, explicit hash key.
type Key = (String, Option<String>);

fn key_of(rng: &mut Rng, i: usize, ehks: &[String]) -> Key {
    match rng.below(100) {
        0..85 => (format!("key-{}", rng.below(500)), None),
        85..90 => (format!("ключ-{}-🚚", rng.below(20)), None),
        90..95 => {
            let k = rng.below(ehks.len() as u64) as usize;
            (format!("ehk-{k}"), Some(ehks[k].clone()))
        }
        _ => {
            // Distinct keys, some near the 256-character limit.
            let pad = "x".repeat(rng.below(240) as usize);
            (format!("uniq-{i}-{pad}"), None)
        }
    }
}

fn size_of(rng: &mut Rng) -> usize {
    match rng.below(10_000) {
        0..7000 => 10 + rng.below(400) as usize,
        7000..9900 => 400 + rng.below(1600) as usize,
        9900..9998 => 2000 + rng.below(58_000) as usize,
        // A few too large for any aggregate: they go alone.
        _ => 100_000 + rng.below(200_000) as usize,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_records_come_back_exactly_once_in_order_per_key() {
    let (count, shards) = if external_kinesis() {
        (3_000, 2)
    } else {
        (100_000, 4)
    };
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "roundtrip", shards).await;
    let producer = Producer::new(config(&stream).build().unwrap(), kinesis.clone());

    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let ehks: Vec<String> = (0..50)
        .map(|i| match i {
            0 => "0".to_string(),
            1 => u128::MAX.to_string(),
            _ => rng.u128().to_string(),
        })
        .collect();
    let started = Instant::now();
    let mut put: Vec<Key> = Vec::with_capacity(count);
    let mut futures: Vec<RecordFuture> = Vec::with_capacity(count);
    for i in 0..count {
        let key = key_of(&mut rng, i, &ehks);
        let data = payload(&i.to_string(), size_of(&mut rng));
        let future = match &key.1 {
            Some(ehk) => {
                producer
                    .put_with_hash_key(key.0.clone(), ehk.clone(), data)
                    .await
            }
            None => producer.put(key.0.clone(), data).await,
        };
        futures.push(future.unwrap());
        put.push(key);
    }
    producer.flush().await;
    assert_eq!(producer.outstanding_records(), 0);
    let mut results = Vec::with_capacity(count);
    for future in futures {
        results.push(future.await.unwrap());
    }
    let put_time = started.elapsed();
    producer.shutdown().await;

    let (shard_list, raw) = read_raw(&kinesis, &stream).await;
    let ranges: HashMap<_, _> = shard_list
        .iter()
        .map(|s| (s.shard_id.clone(), s.starting_hash_key..=s.ending_hash_key))
        .collect();
    let aggregates = raw
        .iter()
        .filter(|r| kcl::kpl::is_aggregated(&r.data))
        .count();
    for record in &raw {
        if kcl::kpl::is_aggregated(&record.data) {
            assert!(
                record.data.len() <= 51_200,
                "aggregate of {} bytes",
                record.data.len()
            );
        }
    }
    let kinesis_records = raw.len();
    let read = deaggregate_all(raw);

    let mut seen = vec![false; count];
    let mut last_per_key: HashMap<Key, usize> = HashMap::new();
    for user in &read {
        let id: usize = tag_of(&user.data).parse().unwrap();
        assert!(!seen[id], "record {id} read twice");
        seen[id] = true;
        let key = put[id].clone();
        assert_eq!(user.partition_key, key.0, "record {id}'s partition key");
        // A plain Kinesis record does not show its explicit hash key to readers.
        if user.sub_sequence_number.is_some() {
            assert_eq!(
                user.explicit_hash_key, key.1,
                "record {id}'s explicit hash key"
            );
        }
        let hash_key = match &key.1 {
            Some(ehk) => kcl::kpl::parse_explicit_hash_key(ehk).unwrap(),
            None => kcl::kpl::partition_key_hash(&key.0),
        };
        let result = &results[id];
        assert_eq!(
            (
                &*result.shard_id,
                &*result.sequence_number,
                result.sub_sequence_number
            ),
            (
                user.shard_id.as_str(),
                user.sequence_number.as_str(),
                user.sub_sequence_number
            ),
            "record {id}'s future and where it was read"
        );
        assert!(
            ranges[&user.shard_id].contains(&hash_key),
            "record {id} outside its shard's range"
        );
        // Read order within a shard is sequence order; per key, ids must increase.
        if let Some(previous) = last_per_key.insert(key, id) {
            assert!(
                previous < id,
                "record {id} read after {previous} of the same key: {:?} {:?}",
                results[id],
                results[previous]
            );
        }
    }
    let missing: Vec<_> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| i)
        .take(10)
        .collect();
    assert!(missing.is_empty(), "records never read: {missing:?}...");
    assert!(
        results
            .iter()
            .all(|r| r.attempts.len() == 1 && r.attempts[0].is_success())
    );
    assert!(
        aggregates > 0 && kinesis_records < count / 5,
        "{kinesis_records} Kinesis records for {count}"
    );
    eprintln!(
        "{count} user records in {kinesis_records} Kinesis records ({aggregates} aggregated) on {} shards, put in {put_time:?}",
        ranges.len()
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_aggregation_every_user_record_is_a_plain_kinesis_record() {
    let count = if external_kinesis() { 500 } else { 5_000 };
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "plain", 2).await;
    let config = config(&stream).aggregation(false).build().unwrap();
    let producer = Producer::new(config, kinesis.clone());
    let mut futures = Vec::new();
    for i in 0..count {
        let future = producer
            .put(format!("key-{}", i % 50), payload(&i.to_string(), 100))
            .await;
        futures.push(future.unwrap());
    }
    producer.flush().await;
    for future in futures {
        let result = future.await.unwrap();
        assert_eq!(result.sub_sequence_number, None);
    }
    producer.shutdown().await;
    let (_, raw) = read_raw(&kinesis, &stream).await;
    assert_eq!(raw.len(), count);
    assert!(raw.iter().all(|r| !kcl::kpl::is_aggregated(&r.data)));
    let mut last: HashMap<String, usize> = HashMap::new();
    for record in &raw {
        let id: usize = tag_of(&record.data).parse().unwrap();
        assert_eq!(record.partition_key, format!("key-{}", id % 50));
        if let Some(previous) = last.insert(record.partition_key.clone(), id) {
            assert!(previous < id, "{id} after {previous}");
        }
    }
    // Let the emulator see the stream idle before it stops.
    tokio::time::sleep(Duration::from_millis(10)).await;
    aws.shutdown().await;
}
