//! The producer's metrics as a Prometheus scrape shows them: user and Kinesis records
//! put and PutRecords calls counted, the pending gauges back at zero once everything is
//! resolved and still there after the producer idled past the exporter's idle timeout
//! for gauges, every series labelled with its stream. One test per binary: the
//! recorder is process-global.

mod common;

use std::time::Duration;

use common::{config, deaggregate_all, read_raw, start};
use kcl_local::LocalAwsOptions;
use producer::Producer;
use producer::metrics::names;

/// The value of the series `name{labels}` in a Prometheus text scrape, if present.
fn value(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{{{labels}}} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|v| v.trim().parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_what_was_put() {
    let idle_timeout = Duration::from_secs(3);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(idle_timeout))
        .build_recorder();
    let scrape = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    producer::metrics::describe();

    let (aws, kinesis, stream) = start(LocalAwsOptions::default(), "metrics", 2).await;
    let producer = Producer::new(config(&stream).build().unwrap(), kinesis.clone());
    let count = 2_000;
    let mut pending = Vec::new();
    for i in 0..count {
        pending.push(
            producer
                .put(format!("key-{i}"), vec![7u8; 300])
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    for record in pending {
        record.await.unwrap();
    }
    let (_, raw) = read_raw(&kinesis, &stream).await;
    let kinesis_records = raw.len();
    assert_eq!(deaggregate_all(raw).len(), count);

    let text = scrape.render();
    let stream_label = format!("stream=\"{stream}\"");
    assert_eq!(
        value(&text, names::USER_RECORDS_PUT, &stream_label),
        Some(count as f64),
        "{text}"
    );
    assert_eq!(
        value(&text, names::KINESIS_RECORDS_PUT, &stream_label),
        Some(kinesis_records as f64),
        "aggregates as stored: {text}"
    );
    assert!(
        kinesis_records < count,
        "records were aggregated: {kinesis_records} Kinesis records"
    );
    let calls = value(
        &text,
        names::PUT_RECORDS_CALLS,
        &format!("{stream_label},result=\"success\""),
    )
    .expect("successful calls counted");
    assert!(calls >= 1.0, "{text}");
    assert_eq!(
        value(&text, names::USER_RECORDS_PENDING, &stream_label),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains(&format!("# HELP {}", names::USER_RECORDS_PUT)),
        "described: {text}"
    );

    // Nothing to wait for but time: an idle producer's gauges outlive the timeout.
    tokio::time::sleep(idle_timeout * 3 / 2).await;
    let text = scrape.render();
    assert_eq!(
        value(&text, names::USER_RECORDS_PENDING, &stream_label),
        Some(0.0),
        "kept while idle: {text}"
    );
    producer.shutdown().await;
    aws.shutdown().await;
}
