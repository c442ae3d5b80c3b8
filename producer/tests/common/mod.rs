//! Helpers shared by the producer's integration tests: the local AWS, and reading a
//! whole stream back with raw GetRecords and `kcl::kpl::deaggregate`.
#![allow(dead_code)]

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::ShardIteratorType;
use kcl::stream::{self, ShardInfo};
use kcl_local::testing::unique;
use kcl_local::{LocalAws, LocalAwsOptions};
use producer::{ProducerConfig, ProducerConfigBuilder};

/// Starts the local AWS (embedded, or the external Kinesis from the environment) and
/// creates a stream with `shards` shards.
pub async fn start(
    options: LocalAwsOptions,
    prefix: &str,
    shards: i32,
) -> (LocalAws, Client, String) {
    let aws = LocalAws::start(options).await.unwrap();
    let kinesis = aws.clients().await.kinesis;
    let name = unique(prefix);
    stream::create_stream(&kinesis, &name, shards, Duration::from_secs(60))
        .await
        .unwrap();
    (aws, kinesis, name)
}

/// The producer configuration the tests start from: the defaults, except that calls
/// carry at most 1 MiB of payload. The embedded Kinesis serves ferrokinesis behind
/// axum's default 2 MB request body limit (kcl-rs `local.rs` does not raise it), so a
/// full 5 MiB PutRecords (about 7 MB of JSON) is refused there with a 413.
pub fn config(stream_name: &str) -> ProducerConfigBuilder {
    ProducerConfig::builder(stream_name).collection_max_size(1024 * 1024)
}

/// One user record as read back from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub shard_id: String,
    pub sequence_number: String,
    /// Position in its aggregate; `None` for a plain Kinesis record.
    pub sub_sequence_number: Option<u64>,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

impl ReadRecord {
    /// The hash key Kinesis routes the user record by.
    pub fn hash_key(&self) -> u128 {
        match &self.explicit_hash_key {
            Some(key) => kcl::kpl::parse_explicit_hash_key(key).unwrap(),
            None => kcl::kpl::partition_key_hash(&self.partition_key),
        }
    }
}

/// One Kinesis record as stored, before deaggregation.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Everything in the stream: the shards (open and closed) and every Kinesis record of
/// each, in shard order then sequence order.
pub async fn read_raw(kinesis: &Client, stream_name: &str) -> (Vec<ShardInfo>, Vec<RawRecord>) {
    let shards = stream::list_shards(kinesis, stream_name).await.unwrap();
    let mut out = Vec::new();
    for shard in &shards {
        let mut iterator = kinesis
            .get_shard_iterator()
            .stream_name(stream_name)
            .shard_id(&shard.shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_string);
        let mut empty_reads = 0;
        while let Some(it) = iterator.take() {
            let page = match kinesis
                .get_records()
                .shard_iterator(&it)
                .limit(10_000)
                .send()
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    // Emulators may throttle reads like Kinesis: wait and read again.
                    let text = format!("{:?}", e);
                    assert!(
                        text.contains("ProvisionedThroughputExceeded")
                            || text.contains("LimitExceeded"),
                        "{text}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    iterator = Some(it);
                    continue;
                }
            };
            for record in page.records() {
                out.push(RawRecord {
                    shard_id: shard.shard_id.clone(),
                    sequence_number: record.sequence_number().to_string(),
                    partition_key: record.partition_key().expect("a partition key").to_string(),
                    data: record.data().as_ref().to_vec(),
                });
            }
            let caught_up = page.millis_behind_latest().unwrap_or(0) == 0;
            if page.records().is_empty() && caught_up {
                empty_reads += 1;
            } else {
                empty_reads = 0;
            }
            // A closed shard ends with no next iterator; an open one when caught up.
            if empty_reads < 2 {
                iterator = page.next_shard_iterator().map(str::to_string);
            }
        }
    }
    (shards, out)
}

/// Every user record in the stream, deaggregated with `kcl::kpl`.
pub async fn read_all(kinesis: &Client, stream_name: &str) -> (Vec<ShardInfo>, Vec<ReadRecord>) {
    let (shards, raw) = read_raw(kinesis, stream_name).await;
    (shards, deaggregate_all(raw))
}

/// The user records of Kinesis records, in order.
pub fn deaggregate_all(raw: Vec<RawRecord>) -> Vec<ReadRecord> {
    let mut out = Vec::new();
    for record in raw {
        if kcl::kpl::is_aggregated(&record.data) {
            let users = kcl::kpl::deaggregate(&record.data).expect("our aggregates decode");
            assert!(
                users.len() >= 2,
                "an aggregate of one user record was written"
            );
            for (i, user) in users.into_iter().enumerate() {
                out.push(ReadRecord {
                    shard_id: record.shard_id.clone(),
                    sequence_number: record.sequence_number.clone(),
                    sub_sequence_number: Some(i as u64),
                    partition_key: user.partition_key,
                    explicit_hash_key: user.explicit_hash_key,
                    data: user.data,
                });
            }
        } else {
            out.push(ReadRecord {
                shard_id: record.shard_id,
                sequence_number: record.sequence_number,
                sub_sequence_number: None,
                partition_key: record.partition_key,
                explicit_hash_key: None,
                data: record.data,
            });
        }
    }
    out
}

/// Deterministic xorshift64* for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

/// A payload of `len` bytes that starts with `tag` and a `|`, so a record read back can
/// be identified; the rest is filler.
pub fn payload(tag: &str, len: usize) -> Vec<u8> {
    let mut data = format!("{tag}|").into_bytes();
    let filler = b"abcdefghijklmnopqrstuvwxyz0123456789";
    while data.len() < len {
        data.push(filler[data.len() % filler.len()]);
    }
    data
}

/// The tag [`payload`] put at the start of `data`.
pub fn tag_of(data: &[u8]) -> &str {
    let end = data.iter().position(|&b| b == b'|').unwrap_or(data.len());
    std::str::from_utf8(&data[..end]).unwrap()
}
