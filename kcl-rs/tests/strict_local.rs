//! Strict mode of the local AWS, seen from an SDK client: each Kinesis limit refuses at
//! its rate with AWS's error code, refusals are counted, retention trims records and
//! removes a closed shard. Clients here have SDK retries off, so that every refusal
//! reaches the test. Runs against the embedded Kinesis or the external one named by
//! `KCL_TEST_KINESIS_ENDPOINT`.

use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use kcl::stream;
use kcl_local::strict::{KinesisLimits, RefusalKind, StrictOptions};
use kcl_local::testing::{unique, wait_for};
use kcl_local::{LocalAws, LocalAwsOptions};

const DEADLINE: Duration = Duration::from_secs(30);

async fn strict_aws(limits: KinesisLimits) -> LocalAws {
    let options = LocalAwsOptions::strict().with_strict(StrictOptions {
        kinesis: limits,
        ..StrictOptions::default()
    });
    LocalAws::start(options).await.unwrap()
}

/// A Kinesis client through the strict proxy that never retries.
async fn single_attempt(aws: &LocalAws) -> Client {
    let endpoints = aws.endpoints();
    let config = kcl::aws::sdk_config(&endpoints).await;
    let kinesis = aws_sdk_kinesis::config::Builder::from(&config)
        .endpoint_url(endpoints.kinesis.unwrap())
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(kinesis)
}

async fn new_stream(aws: &LocalAws, shards: i32) -> String {
    let name = unique("strict");
    stream::create_stream(&aws.clients().await.kinesis, &name, shards, DEADLINE)
        .await
        .unwrap();
    name
}

fn shard_id(n: u32) -> String {
    format!("shardId-{n:012}")
}

async fn iterator(client: &Client, stream: &str, shard: &str) -> String {
    client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator()
        .unwrap()
        .to_string()
}

/// Error code of each call: `None` for a success.
type Outcomes = Vec<Option<String>>;

fn accepted(outcomes: &Outcomes) -> usize {
    outcomes.iter().filter(|o| o.is_none()).count()
}

fn refused_with(outcomes: &Outcomes, code: &str) -> usize {
    outcomes
        .iter()
        .filter(|o| o.as_deref() == Some(code))
        .count()
}

async fn get_records_loop(client: &Client, iterator: &str, calls: usize) -> (Outcomes, Duration) {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..calls {
        let result = client.get_records().shard_iterator(iterator).send().await;
        outcomes.push(result.err().map(|e| e.code().unwrap_or("?").to_string()));
    }
    (outcomes, started.elapsed())
}

/// At most `per_second` a second after a full bucket of `per_second`, over `elapsed`.
fn most_admitted(per_second: f64, elapsed: Duration) -> usize {
    (per_second + per_second * elapsed.as_secs_f64()).ceil() as usize + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_records_is_limited_to_five_a_second_per_shard_and_shards_are_independent() {
    let aws = strict_aws(KinesisLimits::default()).await;
    let strict = aws.strict().unwrap();
    let name = new_stream(&aws, 2).await;
    let client = single_attempt(&aws).await;
    let first = iterator(&client, &name, &shard_id(0)).await;
    let second = iterator(&client, &name, &shard_id(1)).await;

    let (outcomes, elapsed) = get_records_loop(&client, &first, 20).await;
    let admitted = accepted(&outcomes);
    assert!(
        (5..=most_admitted(5.0, elapsed)).contains(&admitted),
        "{admitted} of 20 in {elapsed:?}"
    );
    let throttled = refused_with(&outcomes, "ProvisionedThroughputExceededException");
    assert_eq!(throttled, 20 - admitted, "{outcomes:?}");
    assert_eq!(
        strict.refusals_of("GetRecords", RefusalKind::ReadCallRate),
        throttled as u64
    );

    // The other shard has its own five.
    let (outcomes, _) = get_records_loop(&client, &second, 5).await;
    assert_eq!(accepted(&outcomes), 5, "{outcomes:?}");
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shard_iterator_is_limited_per_shard_with_aws_message() {
    let aws = strict_aws(KinesisLimits::default()).await;
    let name = new_stream(&aws, 1).await;
    let client = single_attempt(&aws).await;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut message = None;
    for _ in 0..20 {
        let result = client
            .get_shard_iterator()
            .stream_name(&name)
            .shard_id(shard_id(0))
            .shard_iterator_type(ShardIteratorType::Latest)
            .send()
            .await;
        if let Err(e) = &result {
            message = e.message().map(str::to_string);
        }
        outcomes.push(result.err().map(|e| e.code().unwrap_or("?").to_string()));
    }
    let admitted = accepted(&outcomes);
    assert!((5..=most_admitted(5.0, started.elapsed())).contains(&admitted));
    assert_eq!(
        refused_with(&outcomes, "ProvisionedThroughputExceededException"),
        20 - admitted
    );
    assert_eq!(
        message.unwrap(),
        format!(
            "Rate exceeded for shard {} in stream {name} under account 000000000000.",
            shard_id(0)
        )
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_calls_are_limited_with_limit_exceeded() {
    // Lowered limits, so that a loaded machine still makes the calls within a second.
    let aws = strict_aws(KinesisLimits {
        list_shards_per_stream: 3,
        describe_stream_per_account: 2,
        describe_stream_summary_per_account: 2,
        ..KinesisLimits::default()
    })
    .await;
    let strict = aws.strict().unwrap();
    let (one, two) = (new_stream(&aws, 1).await, new_stream(&aws, 1).await);
    let client = single_attempt(&aws).await;
    // Creating the streams polled DescribeStreamSummary (and may have been refused,
    // and retried): count from here, with buckets full again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused_before = strict.refusal_counts().total();

    let started = Instant::now();
    let list = |stream: String| {
        let client = client.clone();
        async move {
            let mut outcomes = Vec::new();
            for _ in 0..8 {
                let result = client.list_shards().stream_name(&stream).send().await;
                outcomes.push(result.err().map(|e| e.code().unwrap_or("?").to_string()));
            }
            outcomes
        }
    };
    let (first, second) = (list(one.clone()).await, list(two).await);
    let most = most_admitted(3.0, started.elapsed());
    for outcomes in [&first, &second] {
        assert!((3..=most).contains(&accepted(outcomes)), "{outcomes:?}");
        assert_eq!(
            refused_with(outcomes, "LimitExceededException"),
            8 - accepted(outcomes)
        );
    }

    let started = Instant::now();
    let mut describe = Vec::new();
    let mut summary = Vec::new();
    for _ in 0..6 {
        let result = client.describe_stream().stream_name(&one).send().await;
        describe.push(result.err().map(|e| e.code().unwrap_or("?").to_string()));
        let result = client
            .describe_stream_summary()
            .stream_name(&one)
            .send()
            .await;
        summary.push(result.err().map(|e| e.code().unwrap_or("?").to_string()));
    }
    let most = most_admitted(2.0, started.elapsed());
    for outcomes in [&describe, &summary] {
        assert!((2..=most).contains(&accepted(outcomes)), "{outcomes:?}");
        assert_eq!(
            refused_with(outcomes, "LimitExceededException"),
            6 - accepted(outcomes)
        );
    }
    assert_eq!(
        strict.refusals("ListShards")
            + strict.refusals("DescribeStream")
            + strict.refusals("DescribeStreamSummary")
            - refused_before,
        (16 - accepted(&first) - accepted(&second) + 12 - accepted(&describe) - accepted(&summary))
            as u64
    );
    assert_eq!(
        strict.refusal_counts().kind(RefusalKind::ControlPlaneRate),
        strict.refusal_counts().total()
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_over_the_byte_rate_blocks_the_shard_until_paid_back() {
    // 100 KiB/s instead of 2 MiB/s: the same model, with writes the write limit allows.
    const RATE: usize = 100 * 1024;
    let aws = strict_aws(KinesisLimits {
        read_bytes_per_shard: RATE as u64,
        ..KinesisLimits::default()
    })
    .await;
    let strict = aws.strict().unwrap();
    let name = new_stream(&aws, 1).await;
    let kinesis = aws.clients().await.kinesis;
    for i in 0..4u8 {
        kinesis
            .put_record()
            .stream_name(&name)
            .partition_key("k")
            .data(Blob::new(vec![i; RATE]))
            .send()
            .await
            .unwrap();
    }
    let client = single_attempt(&aws).await;
    let it = iterator(&client, &name, &shard_id(0)).await;
    let read_at = Instant::now();
    let read = client
        .get_records()
        .shard_iterator(&it)
        .send()
        .await
        .unwrap();
    assert_eq!(read.records().len(), 4);
    // 400 KiB read at 100 KiB/s: 3 s of debt. The next call is refused.
    let next = read.next_shard_iterator().unwrap().to_string();
    let refused = client
        .get_records()
        .shard_iterator(&next)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some("ProvisionedThroughputExceededException")
    );
    assert_eq!(
        strict.refusals_of("GetRecords", RefusalKind::ReadThroughput),
        1
    );
    wait_for("the read debt to be paid back", DEADLINE, || {
        let (client, next) = (client.clone(), next.clone());
        async move { client.get_records().shard_iterator(next).send().await.ok() }
    })
    .await;
    let blocked = read_at.elapsed();
    assert!(
        blocked >= Duration::from_millis(2_500),
        "reads resumed after {blocked:?}"
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_old_records_and_the_iterator_starts_at_the_trim_horizon() {
    let aws = strict_aws(KinesisLimits::default()).await;
    let strict = aws.strict().unwrap();
    let name = new_stream(&aws, 1).await;
    let kinesis = aws.clients().await.kinesis;
    let put = |data: &'static str| {
        kinesis
            .put_record()
            .stream_name(&name)
            .partition_key("k")
            .data(Blob::new(data))
            .send()
    };
    let old = put("old").await.unwrap();
    // The record must age: this is the passage of time under test, not a wait on an event.
    // Older than the retention set below, while the new record has 2.5 s before it is
    // trimmed too: time for the reads below even on a loaded machine.
    tokio::time::sleep(Duration::from_secs(3)).await;
    put("new").await.unwrap();
    strict.kinesis().set_retention(Duration::from_millis(2_500));

    let client = single_attempt(&aws).await;
    let read = client
        .get_records()
        .shard_iterator(iterator(&client, &name, &shard_id(0)).await)
        .send()
        .await
        .unwrap();
    let data: Vec<&[u8]> = read.records().iter().map(|r| r.data().as_ref()).collect();
    assert_eq!(data, [b"new".as_slice()]);
    // An iterator at the trimmed record reads from the trim horizon.
    let at_old = client
        .get_shard_iterator()
        .stream_name(&name)
        .shard_id(shard_id(0))
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(old.sequence_number())
        .send()
        .await
        .unwrap();
    let read = client
        .get_records()
        .shard_iterator(at_old.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(read.records().len(), 1);
    assert_eq!(read.records()[0].data().as_ref(), b"new");
    assert_eq!(strict.kinesis().trimmed_records(), 2);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_closed_longer_than_the_retention_is_gone() {
    let aws = strict_aws(KinesisLimits::default()).await;
    let strict = aws.strict().unwrap();
    let name = new_stream(&aws, 1).await;
    let kinesis = aws.clients().await.kinesis;
    let parent = shard_id(0);
    let client = single_attempt(&aws).await;
    let parent_iterator = iterator(&client, &name, &parent).await;
    stream::split_shard(&kinesis, &name, &parent, None, DEADLINE)
        .await
        .unwrap();
    assert!(strict.kinesis().shard_closed_at(&name, &parent).is_some());
    assert_eq!(stream::list_shards(&kinesis, &name).await.unwrap().len(), 3);

    strict.kinesis().set_retention(Duration::from_secs(1));
    let shards = wait_for("the parent to leave ListShards", DEADLINE, || {
        let (kinesis, name, parent) = (kinesis.clone(), name.clone(), parent.clone());
        async move {
            let shards = stream::list_shards(&kinesis, &name).await.unwrap();
            (!shards.iter().any(|s| s.shard_id == parent)).then_some(shards)
        }
    })
    .await;
    assert_eq!(shards.len(), 2);
    assert!(
        shards
            .iter()
            .all(|s| s.parent_shard_id.as_deref() == Some(parent.as_str()))
    );

    let described = kinesis
        .describe_stream()
        .stream_name(&name)
        .send()
        .await
        .unwrap();
    let listed = described.stream_description().unwrap().shards();
    assert!(listed.iter().all(|s| s.shard_id() != parent));

    let gone = client
        .get_shard_iterator()
        .stream_name(&name)
        .shard_id(&parent)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some("ResourceNotFoundException"));
    let gone = client
        .get_records()
        .shard_iterator(parent_iterator)
        .send()
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some("ResourceNotFoundException"));
    assert_eq!(strict.refusal_counts().kind(RefusalKind::ShardGone), 2);
    // The children are readable.
    iterator(&client, &name, &shards[0].shard_id).await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_closed_around_the_proxy_is_learned_from_the_first_listing() {
    let aws = strict_aws(KinesisLimits::default()).await;
    let strict = aws.strict().unwrap();
    let name = new_stream(&aws, 1).await;
    let direct = kcl::aws::Clients::connect(&aws.direct_endpoints())
        .await
        .kinesis;
    let parent = shard_id(0);
    stream::split_shard(&direct, &name, &parent, None, DEADLINE)
        .await
        .unwrap();
    let kinesis = aws.clients().await.kinesis;
    assert!(strict.kinesis().shard_closed_at(&name, &parent).is_none());
    assert_eq!(stream::list_shards(&kinesis, &name).await.unwrap().len(), 3);
    assert!(strict.kinesis().shard_closed_at(&name, &parent).is_some());

    strict.kinesis().set_retention(Duration::from_millis(500));
    wait_for("the parent to leave ListShards", DEADLINE, || {
        let (kinesis, name, parent) = (kinesis.clone(), name.clone(), parent.clone());
        async move {
            let shards = stream::list_shards(&kinesis, &name).await.unwrap();
            (!shards.iter().any(|s| s.shard_id == parent)).then_some(())
        }
    })
    .await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_works_in_front_of_an_external_kinesis() {
    let external = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let options = LocalAwsOptions {
        kinesis: kcl_local::KinesisBackend::External(external.endpoints().kinesis.unwrap()),
        ..LocalAwsOptions::strict()
    };
    let aws = LocalAws::start(options).await.unwrap();
    assert_ne!(aws.endpoints().kinesis, aws.direct_endpoints().kinesis);
    let name = new_stream(&aws, 1).await;
    let client = single_attempt(&aws).await;
    let it = iterator(&client, &name, &shard_id(0)).await;
    let (outcomes, elapsed) = get_records_loop(&client, &it, 10).await;
    assert!((5..=most_admitted(5.0, elapsed)).contains(&accepted(&outcomes)));
    assert_eq!(
        aws.strict().unwrap().refusals("GetRecords"),
        (10 - accepted(&outcomes)) as u64
    );
    aws.shutdown().await;
    external.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_limited_per_shard_by_the_embedded_kinesis() {
    if kcl_local::testing::external_kinesis() {
        return; // an external Kinesis enforces its own write limits, or none
    }
    let aws = strict_aws(KinesisLimits::default()).await;
    let name = new_stream(&aws, 1).await;
    let client = single_attempt(&aws).await;
    // 1,500 records to one shard at once: over its 1,000 records per second.
    let mut failed = 0;
    for batch in 0..3 {
        let entries = (0..500).map(|i| {
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key("k")
                .data(Blob::new(format!("{batch}-{i}")))
                .build()
                .unwrap()
        });
        let put = client
            .put_records()
            .stream_name(&name)
            .set_records(Some(entries.collect()))
            .send()
            .await
            .unwrap();
        failed += put
            .records()
            .iter()
            .filter(|r| r.error_code() == Some("ProvisionedThroughputExceededException"))
            .count();
    }
    assert!(failed >= 400, "{failed} of 1,500 refused");
    aws.shutdown().await;
}

#[tokio::test]
async fn waiting_for_active_outlasts_a_refused_describe_stream_summary() {
    let aws = strict_aws(KinesisLimits {
        describe_stream_summary_per_account: 1,
        ..KinesisLimits::default()
    })
    .await;
    let strict = aws.strict().unwrap();
    // Clients that never retry on their own: each refusal reaches the waiting loop.
    let client = single_attempt(&aws).await;
    let waits: Vec<_> = (0..4)
        .map(|_| {
            let (client, name) = (client.clone(), unique("busy"));
            tokio::spawn(async move {
                let result = stream::create_stream(&client, &name, 1, DEADLINE).await;
                (name, result)
            })
        })
        .collect();
    for wait in waits {
        let (name, result) = wait.await.unwrap();
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    assert!(
        strict.refusal_counts().total() > 0,
        "four streams polled at once at one call per second: some polls were refused"
    );
    aws.shutdown().await;
}
