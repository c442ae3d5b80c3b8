//! The producer loses nothing when Kinesis misbehaves: PutRecords (and ListShards)
//! throttled, answered with 5xx, dropped before or after Kinesis acted — through
//! `kcl_local::faults::FaultProxy` in front of the embedded Kinesis (or the external
//! one named by `KCL_TEST_KINESIS_ENDPOINT`). Every future resolves `Ok`, and every
//! user record is read back from the stream.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{config, read_all, start};
use kcl::aws::{Clients, Endpoints};
use kcl_local::LocalAwsOptions;
use kcl_local::faults::{Fault, FaultKind, FaultPlan, FaultProxy, Rule, kinesis_target};
use producer::Producer;

const KINDS: [FaultKind; 4] = [
    FaultKind::Throttling,
    FaultKind::ServerError,
    FaultKind::DroppedConnection,
    FaultKind::DroppedResponse,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_throttling_5xx_and_dropped_connections() {
    const KEYS: usize = 40;
    let (aws, direct, stream) = start(LocalAwsOptions::from_env(), "faults", 2).await;
    let puts = "Kinesis_20131202.PutRecords";
    let plan = FaultPlan::new(7)
        .with(Rule::new(puts, Fault::throughput_exceeded()).with_probability(0.15))
        .with(Rule::new(puts, Fault::internal_failure()).with_probability(0.1))
        .with(Rule::new(puts, Fault::service_unavailable()).with_probability(0.05))
        .with(Rule::new(puts, Fault::DropConnection).with_probability(0.1))
        .with(Rule::new(puts, Fault::DropResponse).with_probability(0.08))
        .with(Rule::kinesis("ListShards", Fault::DropConnection).with_probability(0.2));
    let proxy = FaultProxy::start(aws.endpoints().kinesis.as_deref().unwrap(), plan)
        .await
        .unwrap();
    let endpoints = Endpoints::local(proxy.url(), aws.endpoints().dynamodb.unwrap());
    let faulty = Clients::connect(&endpoints).await.kinesis;
    let producer_config = config(&stream)
        // Small aggregates and calls: many calls to fault.
        .aggregation_max_count(4)
        .collection_max_count(5)
        .retry_base_delay(Duration::from_millis(20))
        .retry_max_delay(Duration::from_millis(500))
        .build()
        .unwrap();
    let producer = Producer::new(producer_config, faulty);

    // Waves of one record per key, each flushed, until every kind of fault has hit
    // PutRecords (a handful of waves: each has a few calls, plus their retries).
    let mut futures = Vec::new();
    let mut waves = 0;
    while !KINDS
        .iter()
        .all(|&kind| proxy.counts().injected_of_kind(kind) > 0)
    {
        assert!(waves < 200, "faults not all injected: {:?}", proxy.counts());
        for k in 0..KEYS {
            let data = format!("k{k}:{waves}|{}", "x".repeat(50)).into_bytes();
            futures.push(producer.put(format!("k{k}"), data).await.unwrap());
        }
        producer.flush().await;
        waves += 1;
    }
    let mut retried = 0;
    for future in futures {
        let result = future.await.expect("every record is written");
        if result.attempts.len() > 1 {
            retried += 1;
        }
    }
    producer.shutdown().await;
    let counts = proxy.counts();
    assert!(retried > 0, "no record needed a retry: {counts:?}");
    assert!(counts.calls(&kinesis_target("ListShards")) > 0);

    // Everything is in the stream (a dropped answer may have written some twice), and
    // per key the first copies are in put order.
    let (_, records) = read_all(&direct, &stream).await;
    let mut seen = HashSet::new();
    let mut next: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let text = String::from_utf8_lossy(&record.data);
        let tag = text.split('|').next().unwrap().to_string();
        if !seen.insert(tag.clone()) {
            continue;
        }
        let (key, n) = tag.split_once(':').unwrap();
        assert_eq!(key, record.partition_key);
        let expected = next.entry(key.to_string()).or_default();
        assert_eq!(n.parse::<usize>().unwrap(), *expected, "{key} out of order");
        *expected += 1;
    }
    assert_eq!(
        seen.len(),
        KEYS * waves,
        "user records missing from the stream"
    );

    proxy.shutdown().await;
    aws.shutdown().await;
}
