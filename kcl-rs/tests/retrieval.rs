//! Reading a shard by polling: start positions, the resume rule, KPL aggregates, shard
//! end after a split, iterator expiry and the prefetching task — against the embedded
//! Kinesis, or the external one named by `KCL_TEST_KINESIS_ENDPOINT`.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::internals::{Batch, ChildShardRef, RetrievalConfig, ShardReader, spawn_prefetcher};
use kcl::kpl::{Aggregator, MAGIC};
use kcl::retrieval::{KinesisClientRecord, RetrievalError};
use kcl::stream;
use kcl_local::{EXTERNAL_KINESIS_ENV, KinesisBackend, LocalAws, LocalAwsOptions};
use tokio_util::sync::CancellationToken;

mod common;
use common::strict;
use kcl_local::testing::unique;

const WAIT: Duration = Duration::from_secs(30);

/// A running Kinesis with one stream of `shards` shards.
struct Fixture {
    aws: LocalAws,
    /// The administrator's, straight to Kinesis: set-up and looking.
    kinesis: Client,
    /// Through the strict proxy, signed as the documented worker policy: the readers'.
    reader_kinesis: Client,
    stream: String,
}

impl Fixture {
    async fn start(options: LocalAwsOptions, prefix: &str, shards: i32) -> Fixture {
        let aws = LocalAws::start(options).await.unwrap();
        let kinesis = strict::admin(&aws).await.kinesis;
        let stream = unique(prefix);
        let reader_kinesis = strict::worker_clients(&aws, &stream, &unique("retr-app"))
            .await
            .kinesis;
        stream::create_stream(&kinesis, &stream, shards, WAIT)
            .await
            .unwrap();
        Fixture {
            aws,
            kinesis,
            reader_kinesis,
            stream,
        }
    }

    async fn first_shard(&self) -> String {
        stream::list_shards(&self.kinesis, &self.stream)
            .await
            .unwrap()[0]
            .shard_id
            .clone()
    }

    /// Puts one record and returns its sequence number.
    async fn put(&self, partition_key: &str, data: impl Into<Vec<u8>>) -> String {
        self.kinesis
            .put_record()
            .stream_name(&self.stream)
            .partition_key(partition_key)
            .data(Blob::new(data.into()))
            .send()
            .await
            .unwrap()
            .sequence_number
    }

    async fn put_texts(&self, texts: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut sequence_numbers = Vec::new();
        for text in texts {
            sequence_numbers.push(self.put("pk", text).await);
        }
        sequence_numbers
    }

    fn reader(&self, shard_id: &str, start: ExtendedSequenceNumber) -> ShardReader {
        self.reader_with(shard_id, start, RetrievalConfig::default())
    }

    fn reader_with(
        &self,
        shard_id: &str,
        start: ExtendedSequenceNumber,
        config: RetrievalConfig,
    ) -> ShardReader {
        ShardReader::new(
            self.reader_kinesis.clone(),
            &self.stream,
            shard_id,
            start,
            config,
        )
    }
}

fn start_at(position: SequencePosition) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::new(position)
}

fn texts(n: std::ops::Range<usize>, prefix: &str) -> Vec<String> {
    n.map(|i| format!("{prefix}-{i}")).collect()
}

fn data_of(records: &[KinesisClientRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

fn assert_strictly_increasing(records: &[KinesisClientRecord]) {
    for pair in records.windows(2) {
        let (a, b) = (
            pair[0].extended_sequence_number(),
            pair[1].extended_sequence_number(),
        );
        assert!(a.compare(&b).is_lt(), "{a} is not before {b}");
    }
}

/// What several batches delivered together.
#[derive(Default)]
struct Collected {
    records: Vec<KinesisClientRecord>,
    batches: Vec<Batch>,
}

impl Collected {
    fn undecodable(&self) -> usize {
        self.batches.iter().map(|b| b.undecodable_aggregates).sum()
    }

    fn shard_end(&self) -> bool {
        self.batches.last().is_some_and(|b| b.shard_end)
    }
}

/// Reads until at least `n` records have arrived or the shard ends.
async fn collect(reader: &mut ShardReader, n: usize) -> Collected {
    let mut got = Collected::default();
    let reading = async {
        while got.records.len() < n && !got.shard_end() {
            let mut batch = reader.next_batch().await.unwrap();
            got.records.append(&mut batch.records);
            got.batches.push(batch);
        }
    };
    tokio::time::timeout(WAIT, reading)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {n} records"));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_horizon_reads_everything_in_order_across_batches() {
    let fx = Fixture::start(strict::options(), "retr-trim", 1).await;
    let shard = fx.first_shard().await;
    let sequence_numbers = fx.put_texts(texts(0..50, "r")).await;

    let config = RetrievalConfig {
        max_records: 7,
        ..RetrievalConfig::default()
    };
    let mut reader = fx.reader_with(&shard, start_at(SequencePosition::TrimHorizon), config);
    let got = collect(&mut reader, 50).await;
    assert_eq!(data_of(&got.records), texts(0..50, "r"));
    let delivered: Vec<_> = got
        .records
        .iter()
        .map(|r| r.sequence_number.clone())
        .collect();
    assert_eq!(delivered, sequence_numbers);
    assert!(
        got.records
            .iter()
            .all(|r| r.sub_sequence_number == 0 && !r.aggregated)
    );
    assert!(got.batches.len() >= 8, "{} batches", got.batches.len());
    assert!(got.batches.iter().all(|b| b.records.len() <= 7));
    assert!(got.batches.iter().all(|b| !b.shard_end));
    let bytes: usize = got.batches.iter().map(|b| b.bytes).sum();
    assert_eq!(
        bytes,
        texts(0..50, "r").iter().map(String::len).sum::<usize>()
    );
    assert_eq!(
        reader.last_delivered(),
        Some(&ExtendedSequenceNumber::at(sequence_numbers[49].clone(), 0))
    );

    // Caught up: nothing more, and the shard is still open.
    let batch = reader.next_batch().await.unwrap();
    assert!(batch.records.is_empty() && !batch.shard_end, "{batch:?}");
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_checkpoint_delivers_only_later_records() {
    let fx = Fixture::start(strict::options(), "retr-resume", 1).await;
    let shard = fx.first_shard().await;
    let sequence_numbers = fx.put_texts(texts(0..20, "r")).await;

    let checkpoint = ExtendedSequenceNumber::at(sequence_numbers[9].clone(), 0);
    let mut reader = fx.reader(&shard, checkpoint.clone());
    let got = collect(&mut reader, 10).await;
    assert_eq!(data_of(&got.records), texts(10..20, "r"));
    assert!(
        got.records
            .iter()
            .all(|r| r.extended_sequence_number().compare(&checkpoint).is_gt())
    );
    let batch = reader.next_batch().await.unwrap();
    assert!(batch.records.is_empty(), "{batch:?}");
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_sees_only_records_put_after_the_first_read() {
    let fx = Fixture::start(strict::options(), "retr-latest", 1).await;
    let shard = fx.first_shard().await;
    fx.put_texts(texts(0..5, "before")).await;

    let mut reader = fx.reader(&shard, start_at(SequencePosition::Latest));
    let first = reader.next_batch().await.unwrap();
    assert!(first.records.is_empty(), "{first:?}");
    fx.put_texts(texts(0..5, "after")).await;
    let got = collect(&mut reader, 5).await;
    assert_eq!(data_of(&got.records), texts(0..5, "after"));
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_timestamp_starts_at_the_first_record_at_or_after_it() {
    let fx = Fixture::start(strict::options(), "retr-ts", 1).await;
    let shard = fx.first_shard().await;
    fx.put_texts(texts(0..5, "before")).await;
    // Arrival timestamps are what is compared: leave a clear gap on either side.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let at = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    fx.put_texts(texts(0..5, "after")).await;

    let config = RetrievalConfig {
        at_timestamp: Some(at),
        ..RetrievalConfig::default()
    };
    let mut reader = fx.reader_with(&shard, start_at(SequencePosition::AtTimestamp), config);
    let got = collect(&mut reader, 5).await;
    assert_eq!(data_of(&got.records), texts(0..5, "after"));
    for record in &got.records {
        assert!(record.approximate_arrival_timestamp.unwrap() >= at);
    }

    // Without a timestamp the position is an error, not a guess.
    let mut reader = fx.reader(&shard, start_at(SequencePosition::AtTimestamp));
    let err = reader.next_batch().await.unwrap_err();
    assert!(
        matches!(err, RetrievalError::MissingTimestamp { .. }),
        "{err}"
    );
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_parent_is_read_to_its_end_after_a_split() {
    let fx = Fixture::start(strict::options(), "retr-split", 1).await;
    let parent = fx.first_shard().await;
    fx.put_texts(texts(0..10, "parent")).await;
    stream::split_shard(&fx.kinesis, &fx.stream, &parent, None, WAIT)
        .await
        .unwrap();
    fx.put_texts(texts(0..5, "child")).await;
    let mut children: Vec<String> = stream::list_shards(&fx.kinesis, &fx.stream)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.shard_id != parent)
        .map(|s| s.shard_id)
        .collect();
    children.sort();
    assert_eq!(children.len(), 2);

    let config = RetrievalConfig {
        max_records: 4,
        ..RetrievalConfig::default()
    };
    let mut reader = fx.reader_with(&parent, start_at(SequencePosition::TrimHorizon), config);
    let got = collect(&mut reader, usize::MAX).await;
    assert!(got.shard_end());
    assert!(reader.is_shard_end());
    assert_eq!(data_of(&got.records), texts(0..10, "parent"));
    let last = got.batches.last().unwrap();
    // ferrokinesis names no children; when the backend does, they are the two.
    if !last.child_shards.is_empty() {
        let mut named = last.child_shards.clone();
        named.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        let expected: Vec<(String, Vec<String>)> = children
            .iter()
            .map(|c| (c.clone(), vec![parent.clone()]))
            .collect();
        let got: Vec<(String, Vec<String>)> = named
            .iter()
            .map(|c: &ChildShardRef| (c.shard_id.clone(), c.parent_shard_ids.clone()))
            .collect();
        assert_eq!(got, expected);
        assert!(named.iter().all(|c| c.hash_key_range.is_some()));
    }
    // Past the end every batch says so again.
    let again = reader.next_batch().await.unwrap();
    assert!(again.shard_end && again.records.is_empty());

    // A reader whose checkpoint is SHARD_END ends at once.
    let mut done = fx.reader(&parent, ExtendedSequenceNumber::shard_end());
    let batch = done.next_batch().await.unwrap();
    assert!(batch.shard_end && batch.records.is_empty());
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_are_split_and_resumed_inside() {
    let fx = Fixture::start(strict::options(), "retr-kpl", 1).await;
    let shard = fx.first_shard().await;
    let mut aggregator = Aggregator::new();
    for i in 0..5 {
        let explicit_hash_key = (i == 1).then_some("12345");
        aggregator.add(&format!("user-{i}"), explicit_hash_key, format!("sub-{i}"));
    }
    let aggregate_seq = fx.put("agg", aggregator.encode()).await;
    let plain_seq = fx.put("plain", "plain-after").await;

    let mut reader = fx.reader(&shard, start_at(SequencePosition::TrimHorizon));
    let got = collect(&mut reader, 6).await;
    assert_eq!(got.undecodable(), 0);
    let positions: Vec<(String, u64, bool)> = got
        .records
        .iter()
        .map(|r| {
            (
                r.sequence_number.clone(),
                r.sub_sequence_number,
                r.aggregated,
            )
        })
        .collect();
    let mut expected: Vec<(String, u64, bool)> =
        (0..5).map(|i| (aggregate_seq.clone(), i, true)).collect();
    expected.push((plain_seq.clone(), 0, false));
    assert_eq!(positions, expected);
    let mut data = texts(0..5, "sub");
    data.push("plain-after".into());
    assert_eq!(data_of(&got.records), data);
    let keys: Vec<_> = got
        .records
        .iter()
        .map(|r| r.partition_key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["user-0", "user-1", "user-2", "user-3", "user-4", "plain"]
    );
    assert_eq!(got.records[1].explicit_hash_key.as_deref(), Some("12345"));
    assert_eq!(got.records[0].explicit_hash_key, None);
    assert_strictly_increasing(&got.records);

    // Resuming from sub-record 2 of the aggregate delivers 3 and 4 first.
    let mut resumed = fx.reader(&shard, ExtendedSequenceNumber::at(aggregate_seq.clone(), 2));
    let got = collect(&mut resumed, 3).await;
    assert_eq!(data_of(&got.records), ["sub-3", "sub-4", "plain-after"]);
    assert_eq!(
        got.records[0].extended_sequence_number(),
        ExtendedSequenceNumber::at(aggregate_seq.clone(), 3)
    );

    // Resuming from its last sub-record delivers only what follows the aggregate.
    let mut resumed = fx.reader(&shard, ExtendedSequenceNumber::at(aggregate_seq, 4));
    let got = collect(&mut resumed, 1).await;
    assert_eq!(data_of(&got.records), ["plain-after"]);
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magic_with_garbage_is_one_plain_record_and_counted() {
    let fx = Fixture::start(strict::options(), "retr-garbage", 1).await;
    let shard = fx.first_shard().await;
    let mut garbage = MAGIC.to_vec();
    garbage.extend_from_slice(b"not a protobuf, and the last 16 bytes are no MD5");
    fx.put("g", garbage.clone()).await;
    fx.put("p", "after").await;

    let mut reader = fx.reader(&shard, start_at(SequencePosition::TrimHorizon));
    let got = collect(&mut reader, 2).await;
    assert_eq!(got.undecodable(), 1);
    assert_eq!(got.records.len(), 2);
    let odd = &got.records[0];
    assert_eq!(odd.data, garbage);
    assert_eq!((odd.aggregated, odd.sub_sequence_number), (false, 0));
    assert_eq!(odd.partition_key, "g");
    assert_eq!(got.records[1].data, b"after");
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetcher_delivers_batches_in_order_and_stops_promptly_on_cancel() {
    let fx = Fixture::start(strict::options(), "retr-prefetch", 1).await;
    let shard = fx.first_shard().await;
    fx.put_texts(texts(0..60, "r")).await;

    let config = RetrievalConfig {
        max_records: 5,
        ..RetrievalConfig::default()
    };
    let reader = fx.reader_with(&shard, start_at(SequencePosition::TrimHorizon), config);
    let cancel = CancellationToken::new();
    let mut prefetcher = spawn_prefetcher(reader, cancel.clone(), 2);
    let mut records = Vec::new();
    let mut batches = 0;
    tokio::time::timeout(WAIT, async {
        while records.len() < 60 {
            let mut batch = prefetcher.recv().await.unwrap().unwrap();
            assert!(batch.records.len() <= 5);
            batches += 1;
            records.append(&mut batch.records);
            // A slow processor: the prefetcher fills its channel meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("60 records through the prefetcher");
    assert_eq!(data_of(&records), texts(0..60, "r"));
    assert_strictly_increasing(&records);
    assert!(batches >= 12, "{batches} batches");

    // Caught up and idle (or blocked on a full channel): cancel stops it at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), prefetcher.join())
        .await
        .expect("the prefetcher stops within 2 s of cancel");
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetcher_retries_an_unreachable_endpoint_until_cancelled() {
    // A port that was just free: nothing listens there, every call fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let clients = kcl::aws::Clients::connect(&kcl::aws::Endpoints::local(&url, &url)).await;
    let reader = ShardReader::new(
        clients.kinesis,
        "nowhere",
        "shardId-000000000000",
        start_at(SequencePosition::TrimHorizon),
        RetrievalConfig::default(),
    );
    let cancel = CancellationToken::new();
    let mut prefetcher = spawn_prefetcher(reader, cancel.clone(), 2);
    // Network failures are retried, not reported.
    let waited = tokio::time::timeout(Duration::from_millis(1_500), prefetcher.recv()).await;
    assert!(waited.is_err(), "{waited:?}");
    assert!(!prefetcher.is_finished());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), prefetcher.join())
        .await
        .expect("the prefetcher stops within 2 s of cancel, even while backing off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_stream_is_a_typed_error_delivered_last() {
    let fx = Fixture::start(strict::options(), "retr-missing", 1).await;
    let shard = fx.first_shard().await;
    let reader = ShardReader::new(
        fx.kinesis.clone(),
        unique("no-such-stream"),
        shard,
        start_at(SequencePosition::TrimHorizon),
        RetrievalConfig::default(),
    );
    let mut prefetcher = spawn_prefetcher(reader, CancellationToken::new(), 2);
    let first = tokio::time::timeout(WAIT, prefetcher.recv())
        .await
        .unwrap()
        .unwrap();
    let err = first.unwrap_err();
    assert!(
        matches!(err, RetrievalError::ResourceNotFound { .. }),
        "{err}"
    );
    assert!(prefetcher.recv().await.is_none());
    prefetcher.join().await;
    fx.aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterator_is_reacquired_after_the_last_delivered_record() {
    if std::env::var(EXTERNAL_KINESIS_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        eprintln!("skipped: the iterator lifetime is only configurable in the embedded Kinesis");
        return;
    }
    let options = LocalAwsOptions {
        iterator_ttl_seconds: 1,
        kinesis: KinesisBackend::Embedded,
        ..strict::options()
    };
    let fx = Fixture::start(options, "retr-expired", 1).await;
    let shard = fx.first_shard().await;
    fx.put_texts(texts(0..10, "r")).await;

    let config = RetrievalConfig {
        max_records: 4,
        ..RetrievalConfig::default()
    };
    let mut reader = fx.reader_with(&shard, start_at(SequencePosition::TrimHorizon), config);
    let first = reader.next_batch().await.unwrap();
    assert_eq!(data_of(&first.records), texts(0..4, "r"));

    // The event under test: the reader holds its iterator past its lifetime.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let got = collect(&mut reader, 6).await;
    assert_eq!(reader.expired_iterators(), 1);
    assert_eq!(data_of(&got.records), texts(4..10, "r"));
    let batch = reader.next_batch().await.unwrap();
    assert!(batch.records.is_empty(), "{batch:?}");
    fx.aws.shutdown().await;
}
