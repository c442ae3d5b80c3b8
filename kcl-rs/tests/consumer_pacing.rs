//! Read pacing: a shard is never read by more than 5 GetRecords calls per second (the
//! service's limit), also when every call returns a few records, while a reader that
//! is behind (full batches) reads on at once.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::internals::{RetrievalConfig, ShardReader};
use kcl::stream;
use kcl_local::LocalAws;
use kcl_local::faults::{FaultProxy, kinesis_target};
use kcl_local::testing::unique;

mod common;
use common::strict;

const WAIT: Duration = Duration::from_secs(60);

struct Env {
    aws: LocalAws,
    stream: String,
    shard: String,
}

impl Env {
    async fn start() -> Env {
        let aws = strict::local_aws().await;
        let stream = unique("pacing");
        let kinesis = strict::admin(&aws).await.kinesis;
        stream::create_stream(&kinesis, &stream, 1, WAIT)
            .await
            .unwrap();
        let shard = stream::list_shards(&kinesis, &stream).await.unwrap()[0]
            .shard_id
            .clone();
        Env { aws, stream, shard }
    }

    /// The strict proxy in front of Kinesis: it counts the calls.
    fn proxy(&self) -> &FaultProxy {
        self.aws.strict().expect("strict mode").kinesis_proxy()
    }

    /// A reader whose calls go through the strict proxy, signed as the worker policy:
    /// a call over the 5-per-second limit is refused there.
    async fn reader(&self, config: RetrievalConfig) -> ShardReader {
        let app = unique("pacing-app");
        let kinesis = strict::worker_clients(&self.aws, &self.stream, &app)
            .await
            .kinesis;
        ShardReader::new(
            kinesis,
            &self.stream,
            &self.shard,
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
            config,
        )
    }

    async fn put(&self, data: String) {
        strict::admin(&self.aws)
            .await
            .kinesis
            .put_record()
            .stream_name(&self.stream)
            .partition_key("k")
            .data(Blob::new(data))
            .send()
            .await
            .unwrap();
    }

    fn get_records_calls(&self) -> u64 {
        self.proxy().calls(&kinesis_target("GetRecords"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_reader_on_a_trickling_shard_calls_at_most_five_times_a_second() {
    let env = Env::start().await;
    let mut reader = env.reader(RetrievalConfig::default()).await;
    const RECORDS: usize = 80; // one every 50 ms: 4 s
    let producer = {
        let kinesis = strict::admin(&env.aws).await.kinesis;
        let stream = env.stream.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for i in 0..RECORDS {
                tick.tick().await;
                kinesis
                    .put_record()
                    .stream_name(&stream)
                    .partition_key("k")
                    .data(Blob::new(format!("r{i}")))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    let (calls_before, started) = (env.get_records_calls(), Instant::now());
    let mut delivered = Vec::new();
    tokio::time::timeout(WAIT, async {
        while delivered.len() < RECORDS {
            let batch = reader.next_batch().await.unwrap();
            delivered.extend(
                batch
                    .records
                    .into_iter()
                    .map(|r| String::from_utf8(r.data).unwrap()),
            );
        }
    })
    .await
    .expect("every record delivered");
    let (calls, elapsed) = (env.get_records_calls() - calls_before, started.elapsed());
    producer.await.unwrap();
    let expected: Vec<String> = (0..RECORDS).map(|i| format!("r{i}")).collect();
    assert_eq!(delivered, expected);
    // +1 for the call at each edge of the window.
    let allowed = 5.0 * elapsed.as_secs_f64() + 2.0;
    assert!(
        calls as f64 <= allowed,
        "{calls} GetRecords calls in {elapsed:?}: more than 5 per second"
    );
    // The service's own count agrees: strict mode refused none of them.
    let strict = env.aws.strict().expect("strict mode");
    assert_eq!(strict.refusals("GetRecords"), 0);
    env.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_is_behind_is_not_paced() {
    let env = Env::start().await;
    // What is measured is the reader's own pacing, not the service's limit: raised here
    // so that AWS's 5 calls per second (which a behind reader with batches this small
    // would meet, and back off from) does not decide the time.
    let strict = env.aws.strict().expect("strict mode").kinesis();
    strict.set_limits(kcl_local::strict::KinesisLimits {
        get_records_per_shard: 1_000,
        ..strict.limits()
    });
    const RECORDS: usize = 300;
    for i in 0..RECORDS {
        env.put(format!("r{i}")).await;
    }
    // 30 full batches: paced at 5 calls per second they would take 6 s.
    let mut reader = env
        .reader(RetrievalConfig {
            max_records: 10,
            ..RetrievalConfig::default()
        })
        .await;
    let started = Instant::now();
    let mut delivered = 0;
    while delivered < RECORDS {
        let batch = reader.next_batch().await.unwrap();
        assert_eq!(batch.records.len(), 10, "full batches");
        delivered += batch.records.len();
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "30 full batches took {elapsed:?}"
    );
    env.aws.shutdown().await;
}
