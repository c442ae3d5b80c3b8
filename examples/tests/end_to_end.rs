//! A producer and a consumer written as a user writes them, from the crate roots of
//! `producer` and `kcl` only: records put through KPL aggregation, and one plain
//! record put directly, all reach a `Worker`'s processor with their keys and payloads.
//! `.ci/fresh-resolution` runs this test outside the workspace with a freshly resolved
//! lock file, so a new SDK release that breaks either crate fails it.

use std::collections::BTreeMap;
use std::time::Duration;

use kcl::{
    CancellationToken, Checkpointer, InitialPosition, ProcessRecordsInput, RecordProcessor, Worker,
    WorkerConfig,
};
use kcl_local::testing::wait_for;
use kcl_local::{LocalAws, LocalAwsOptions};
use producer::{Producer, ProducerConfig};
use tokio::sync::mpsc;

/// Forwards (partition key, payload, aggregated) of every record, then checkpoints.
struct Forward(mpsc::UnboundedSender<(String, String, bool)>);

impl RecordProcessor for Forward {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        for r in input.records {
            let data = String::from_utf8_lossy(&r.data).into_owned();
            let _ = self.0.send((r.partition_key, data, r.aggregated));
        }
        checkpointer.checkpoint().await.expect("checkpoint");
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        let _ = checkpointer.checkpoint().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_reach_the_processor() {
    let deadline = Duration::from_secs(60);
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    kcl::stream::create_stream(&clients.kinesis, "Orders", 2, deadline)
        .await
        .unwrap();

    let producer = Producer::new(
        ProducerConfig::builder("Orders").build().unwrap(),
        clients.kinesis.clone(),
    );
    let mut futures = Vec::new();
    for i in 0..20 {
        let key = format!("customer-{}", i % 4);
        futures.push(
            producer
                .put(key, format!("order {i}").into_bytes())
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    for f in futures {
        f.await.unwrap();
    }
    producer.shutdown().await;
    // One record without the producer: a plain record, not an aggregate.
    clients
        .kinesis
        .put_record()
        .stream_name("Orders")
        .partition_key("plain")
        .data(aws_sdk_kinesis::primitives::Blob::new("plain order"))
        .send()
        .await
        .unwrap();

    let config = WorkerConfig::builder("Orders", "OrdersApp")
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::new(config, &clients, move |_: &str| Forward(tx.clone()));
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));

    let mut seen = BTreeMap::new();
    wait_for("all 21 records", deadline, || {
        while let Ok((key, data, aggregated)) = rx.try_recv() {
            seen.insert(data, (key, aggregated));
        }
        let done = seen.len() == 21;
        async move { done.then_some(()) }
    })
    .await;
    cancel.cancel();
    running.await.unwrap().unwrap();
    aws.shutdown().await;

    for i in 0..20 {
        let (key, _) = &seen[&format!("order {i}")];
        assert_eq!(key, &format!("customer-{}", i % 4));
    }
    assert!(seen.values().any(|(_, aggregated)| *aggregated));
    assert_eq!(seen["plain order"], ("plain".to_string(), false));
}
