//! A future that resolves `Ok` names a record consumers keep. An aggregate that lands
//! in a shard the producer's map does not know waits for a refreshed map; when the map
//! cannot be refreshed within the records' time to live they fail as expired, never
//! reported written where a consumer that filters by hash key range drops them.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{config, deaggregate_all, payload, read_raw, start, tag_of};
use kcl::aws::{Clients, Endpoints};
use kcl::stream;
use kcl_local::LocalAwsOptions;
use kcl_local::faults::{Fault, FaultPlan, FaultProxy, Rule, kinesis_target};
use producer::{Producer, PutError};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_in_an_unknown_shard_expires_when_the_map_cannot_be_refreshed() {
    let (aws, direct, stream_name) = start(LocalAwsOptions::from_env(), "truth", 1).await;
    let plan = FaultPlan::new(11);
    let proxy = FaultProxy::start(aws.endpoints().kinesis.as_deref().unwrap(), plan.clone())
        .await
        .unwrap();
    let endpoints = Endpoints::local(proxy.url(), aws.endpoints().dynamodb.unwrap());
    let faulty = Clients::connect(&endpoints).await.kinesis;
    let ttl = Duration::from_secs(3);
    let producer_config = config(&stream_name)
        .record_max_buffered_time(Duration::from_millis(20))
        .record_ttl(ttl)
        .retry_base_delay(Duration::from_millis(20))
        .retry_max_delay(Duration::from_millis(200))
        .build()
        .unwrap();
    let producer = Producer::new(producer_config, faulty);

    // The producer learns the one-shard map.
    let warm = producer.put("warm", payload("warm", 10)).await.unwrap();
    producer.flush().await;
    assert_eq!(&*warm.await.unwrap().shard_id, "shardId-000000000000");

    // The shard splits behind the producer's back, and ListShards stops answering.
    stream::split_shard(&direct, &stream_name, "shardId-000000000000", None, TIMEOUT)
        .await
        .unwrap();
    plan.add(Rule::kinesis("ListShards", Fault::internal_failure()));

    // One key from each child's range: the stale map aggregates them together, and
    // Kinesis routes the aggregate by the first one's hash key into the lower child,
    // whose range does not hold the second one.
    let low = producer
        .put_with_hash_key("pair", "1", payload("low", 50))
        .await
        .unwrap();
    let high = (u128::MAX - 1).to_string();
    let high = producer
        .put_with_hash_key("pair", high, payload("high", 50))
        .await
        .unwrap();
    let results = [
        ("low", tokio::time::timeout(TIMEOUT, low).await.unwrap()),
        ("high", tokio::time::timeout(TIMEOUT, high).await.unwrap()),
    ];
    assert!(
        proxy.counts().calls(&kinesis_target("ListShards")) > 1,
        "the producer tried to refresh its map"
    );

    // Read like a consumer that drops an aggregate with any user record outside its
    // shard's range (the Java KCL): every `Ok` must name a record it keeps.
    let (shards, raw) = read_raw(&direct, &stream_name).await;
    let ranges: HashMap<&str, _> = shards
        .iter()
        .map(|s| (s.shard_id.as_str(), s.starting_hash_key..=s.ending_hash_key))
        .collect();
    let mut kept = Vec::new();
    for record in raw {
        let range = &ranges[record.shard_id.as_str()];
        let location = (record.shard_id.clone(), record.sequence_number.clone());
        let users = deaggregate_all(vec![record]);
        if users.iter().all(|u| range.contains(&u.hash_key())) {
            kept.extend(
                users
                    .iter()
                    .map(|u| (tag_of(&u.data).to_string(), location.clone())),
            );
        }
    }
    for (tag, result) in &results {
        if let Ok(written) = result {
            let location = (
                written.shard_id.to_string(),
                written.sequence_number.to_string(),
            );
            assert!(
                kept.contains(&(tag.to_string(), location)),
                "{tag} reported written where a range-filtering consumer drops it: {written:?}"
            );
        }
    }
    for (tag, result) in &results {
        assert!(
            matches!(result, Err(PutError::Expired { .. })),
            "{tag}: with no shard map, the producer cannot know the record is kept: {result:?}"
        );
    }

    // Once ListShards answers again, the producer recovers: a new pair is written where
    // consumers keep it.
    plan.clear();
    let (low, high) = (
        producer
            .put_with_hash_key("pair", "2", payload("low2", 50))
            .await
            .unwrap(),
        producer
            .put_with_hash_key("pair", (u128::MAX - 2).to_string(), payload("high2", 50))
            .await
            .unwrap(),
    );
    producer.flush().await;
    let (low, high) = (low.await.unwrap(), high.await.unwrap());
    let shards = stream::list_shards(&direct, &stream_name).await.unwrap();
    for (written, key) in [(&low, 2u128), (&high, u128::MAX - 2)] {
        let shard = shards
            .iter()
            .find(|s| *s.shard_id == *written.shard_id)
            .unwrap();
        assert!(shard.is_open(), "{written:?}");
        assert!((shard.starting_hash_key..=shard.ending_hash_key).contains(&key));
    }
    producer.shutdown().await;
    proxy.shutdown().await;
    aws.shutdown().await;
}
