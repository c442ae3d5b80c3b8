//! Split and merge while a producer writes: every future resolves, every record is in
//! the stream, and even a consumer that drops an aggregate whose user records are not
//! all inside its shard's hash key range (as the Java KCL does) loses none.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{config, deaggregate_all, payload, read_raw, start, tag_of};
use kcl::stream::{self, ShardInfo};
use kcl_local::LocalAwsOptions;
use kcl_local::testing::external_kinesis;
use producer::{Producer, WRONG_SHARD};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

fn open_children_of<'a>(shards: &'a [ShardInfo], parent: &str) -> Vec<&'a ShardInfo> {
    let mut children: Vec<_> = shards
        .iter()
        .filter(|s| s.is_open() && s.parents().iter().any(|p| p == parent))
        .collect();
    children.sort_by_key(|s| s.starting_hash_key);
    children
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_while_writing_lose_nothing() {
    let (max_count, pause) = if external_kinesis() {
        (100_000, 40)
    } else {
        (200_000, 10)
    };
    let (aws, kinesis, stream_name) = start(LocalAwsOptions::from_env(), "reshard", 2).await;
    let config = config(&stream_name)
        .record_max_buffered_time(Duration::from_millis(50))
        .build()
        .unwrap();
    let producer = Producer::new(config, kinesis.clone());

    // About 100 records every `pause` ms over keys spread across the whole key space,
    // from before the split until after the merge.
    let stop = CancellationToken::new();
    let writer = {
        let (producer, stop) = (producer.clone(), stop.clone());
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..max_count {
                if stop.is_cancelled() {
                    break;
                }
                let future = producer
                    .put(format!("k{}", i % 500), payload(&i.to_string(), 200))
                    .await;
                pending.push(future.unwrap());
                if i % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            pending
        })
    };

    let phase = Duration::from_millis(1000);
    tokio::time::sleep(phase).await;
    stream::split_shard(
        &kinesis,
        &stream_name,
        "shardId-000000000000",
        None,
        TIMEOUT,
    )
    .await
    .unwrap();
    tokio::time::sleep(phase).await;
    let shards = stream::list_shards(&kinesis, &stream_name).await.unwrap();
    let upper_child = open_children_of(&shards, "shardId-000000000000")[1]
        .shard_id
        .clone();
    stream::merge_shards(
        &kinesis,
        &stream_name,
        &upper_child,
        "shardId-000000000001",
        TIMEOUT,
    )
    .await
    .unwrap();
    tokio::time::sleep(phase).await;
    stop.cancel();

    let pending = writer.await.unwrap();
    let count = pending.len();
    assert!(count < max_count, "the writer must outlast both reshards");
    producer.flush().await;
    let mut results = Vec::with_capacity(count);
    for future in pending {
        results.push(future.await.expect("every future resolves to a write"));
    }
    producer.shutdown().await;

    // Read like a consumer that filters by hash key range, as the Java KCL does: an
    // aggregate with any user record outside its shard's range is dropped whole.
    let (shards, raw) = read_raw(&kinesis, &stream_name).await;
    let ranges: HashMap<&str, _> = shards
        .iter()
        .map(|s| (s.shard_id.as_str(), s.starting_hash_key..=s.ending_hash_key))
        .collect();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut kept_ids: HashSet<usize> = HashSet::new();
    let mut kept_records: HashSet<(String, String)> = HashSet::new();
    for record in raw {
        let range = &ranges[record.shard_id.as_str()];
        let location = (record.shard_id.clone(), record.sequence_number.clone());
        let users = deaggregate_all(vec![record]);
        let ids: Vec<usize> = users
            .iter()
            .map(|u| tag_of(&u.data).parse().unwrap())
            .collect();
        for &id in &ids {
            *seen.entry(id).or_default() += 1;
        }
        if users.iter().all(|u| range.contains(&u.hash_key())) {
            kept_ids.extend(ids);
            kept_records.insert(location);
        }
    }
    let lost: Vec<_> = (0..count)
        .filter(|id| !seen.contains_key(id))
        .take(10)
        .collect();
    assert!(lost.is_empty(), "never written: {lost:?}");
    let filtered_out: Vec<_> = (0..count)
        .filter(|id| !kept_ids.contains(id))
        .take(10)
        .collect();
    assert!(
        filtered_out.is_empty(),
        "only in aggregates a range-filtering consumer drops: {filtered_out:?}"
    );
    // And each future names a copy that such a consumer keeps.
    for (id, result) in results.iter().enumerate() {
        let location = (
            result.shard_id.to_string(),
            result.sequence_number.to_string(),
        );
        assert!(kept_records.contains(&location), "record {id}: {result:?}");
    }

    // The producer followed the reshards: results name the children and the merge.
    let merged = open_children_of(&shards, "shardId-000000000001")[0]
        .shard_id
        .clone();
    let landed: HashSet<&str> = results.iter().map(|r| &*r.shard_id).collect();
    assert!(
        landed.contains(merged.as_str()),
        "nothing reported in {merged}: {landed:?}"
    );
    let put_again = results
        .iter()
        .filter(|r| {
            r.attempts
                .iter()
                .any(|a| a.error.as_ref().is_some_and(|e| e.code == WRONG_SHARD))
        })
        .count();
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    eprintln!(
        "{count} records over {} shards: {put_again} put again after landing in a shard whose range does not hold them all, {duplicates} read twice",
        shards.len()
    );
    aws.shutdown().await;
}
