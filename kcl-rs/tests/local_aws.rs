//! The foundation: the embedded local AWS (or an external Kinesis named by
//! `KCL_TEST_KINESIS_ENDPOINT`) speaks the real protocols the SDK clients use.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use kcl::aws::{Clients, Endpoints};
use kcl::stream;
use kcl_local::{KinesisBackend, LocalAws, LocalAwsOptions};

mod common;
use kcl_local::testing::unique;

const WAIT: Duration = Duration::from_secs(30);

async fn read_all(clients: &Clients, stream_name: &str, shard_id: &str) -> Vec<Vec<u8>> {
    let mut iterator = clients
        .kinesis
        .get_shard_iterator()
        .stream_name(stream_name)
        .shard_id(shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap();
    let mut data = Vec::new();
    loop {
        let page = clients
            .kinesis
            .get_records()
            .shard_iterator(&iterator)
            .send()
            .await
            .unwrap();
        let empty = page.records().is_empty();
        data.extend(page.records().iter().map(|r| r.data().as_ref().to_vec()));
        match page.next_shard_iterator() {
            Some(next) if !(empty && page.millis_behind_latest() == Some(0)) => {
                iterator = next.to_string()
            }
            _ => return data,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_records_round_trip() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    clients.verify().await.unwrap();
    let name = unique("roundtrip");
    stream::create_stream(&clients.kinesis, &name, 1, WAIT)
        .await
        .unwrap();

    let mut shard_of_put = None;
    for i in 0..20 {
        let put = clients
            .kinesis
            .put_record()
            .stream_name(&name)
            .partition_key(format!("key-{i}"))
            .data(Blob::new(format!("record-{i}")))
            .send()
            .await
            .unwrap();
        shard_of_put = Some(put.shard_id().to_string());
    }
    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    assert_eq!(shards.len(), 1);
    assert_eq!(Some(shards[0].shard_id.clone()), shard_of_put);
    assert_eq!(
        (shards[0].starting_hash_key, shards[0].ending_hash_key),
        (0, u128::MAX)
    );

    let got = read_all(&clients, &name, &shards[0].shard_id).await;
    let expected: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("record-{i}").into_bytes())
        .collect();
    assert_eq!(got, expected);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_shows_both_children_with_their_parent() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let name = unique("split");
    stream::create_stream(&clients.kinesis, &name, 1, WAIT)
        .await
        .unwrap();
    let parent = stream::list_shards(&clients.kinesis, &name).await.unwrap()[0].clone();

    stream::split_shard(&clients.kinesis, &name, &parent.shard_id, None, WAIT)
        .await
        .unwrap();

    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    assert_eq!(shards.len(), 3, "{shards:#?}");
    let closed = shards
        .iter()
        .find(|s| s.shard_id == parent.shard_id)
        .unwrap();
    assert!(!closed.is_open(), "the parent is closed after a split");
    let children: Vec<_> = shards
        .iter()
        .filter(|s| s.shard_id != parent.shard_id)
        .collect();
    assert_eq!(children.len(), 2);
    for child in &children {
        assert_eq!(child.parents(), vec![parent.shard_id.clone()]);
        assert!(child.is_open());
    }
    let mid = u128::MAX / 2 + 1;
    let mut ranges: Vec<_> = children
        .iter()
        .map(|c| (c.starting_hash_key, c.ending_hash_key))
        .collect();
    ranges.sort();
    assert_eq!(ranges, vec![(0, mid - 1), (mid, u128::MAX)]);

    // Merging the two children gives one shard with both as parents.
    stream::merge_shards(
        &clients.kinesis,
        &name,
        &children[1].shard_id,
        &children[0].shard_id,
        WAIT,
    )
    .await
    .unwrap();
    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    let merged = shards.iter().find(|s| s.is_open()).unwrap();
    let mut parents = merged.parents();
    parents.sort();
    let mut expected: Vec<_> = children.iter().map(|c| c.shard_id.clone()).collect();
    expected.sort();
    assert_eq!(parents, expected);
    assert_eq!(
        (merged.starting_hash_key, merged.ending_hash_key),
        (0, u128::MAX)
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_bad_requests_are_clear_errors() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let name = unique("badreshard");
    stream::create_stream(&clients.kinesis, &name, 3, WAIT)
        .await
        .unwrap();
    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    let mut by_range = shards.clone();
    by_range.sort_by_key(|s| s.starting_hash_key);
    let err = stream::merge_shards(
        &clients.kinesis,
        &name,
        &by_range[0].shard_id,
        &by_range[2].shard_id,
        WAIT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, stream::StreamError::NotAdjacent { .. }),
        "{err}"
    );
    let err = stream::split_shard(&clients.kinesis, &name, "shardId-999999999999", None, WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, stream::StreamError::NoSuchOpenShard { .. }),
        "{err}"
    );
    let first = &by_range[0];
    let err = stream::split_shard(
        &clients.kinesis,
        &name,
        &first.shard_id,
        Some(first.starting_hash_key),
        WAIT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, stream::StreamError::BadSplitPoint { .. }),
        "{err}"
    );
    // Nothing was changed by the rejected requests.
    assert_eq!(
        stream::list_shards(&clients.kinesis, &name).await.unwrap(),
        shards
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_write_is_rejected_when_its_condition_fails() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let db = aws.clients().await.dynamodb;
    let table = unique("leases");
    db.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let put = |counter: i64, expected: Option<i64>| {
        let mut req = db
            .put_item()
            .table_name(&table)
            .item("leaseKey", AttributeValue::S("shardId-0".into()))
            .item("leaseCounter", AttributeValue::N(counter.to_string()));
        req = match expected {
            None => req.condition_expression("attribute_not_exists(leaseKey)"),
            Some(c) => req
                .condition_expression("leaseCounter = :c")
                .expression_attribute_values(":c", AttributeValue::N(c.to_string())),
        };
        req.send()
    };
    put(1, None).await.unwrap();
    let err = put(1, None).await.unwrap_err();
    assert!(
        err.into_service_error()
            .is_conditional_check_failed_exception()
    );
    put(2, Some(1)).await.unwrap();
    let err = put(3, Some(1)).await.unwrap_err();
    assert!(
        err.into_service_error()
            .is_conditional_check_failed_exception()
    );
    let item = db
        .get_item()
        .table_name(&table)
        .key("leaseKey", AttributeValue::S("shardId-0".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        item.item().unwrap().get("leaseCounter"),
        Some(&AttributeValue::N("2".into()))
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_a_clear_error_not_a_hang() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let clients = Clients::connect(&Endpoints::local(url.clone(), url.clone())).await;
    let started = Instant::now();
    let err = clients.verify().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.service, "Kinesis");
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_survives_a_restart() {
    let dir = std::env::temp_dir().join(unique("kcl-local-state"));
    let options = LocalAwsOptions {
        data_dir: Some(dir.clone()),
        kinesis: KinesisBackend::Embedded,
        ..LocalAwsOptions::default()
    };
    let name = unique("durable");
    let table = unique("durable-table");
    {
        let aws = LocalAws::start(options.clone()).await.unwrap();
        let clients = aws.clients().await;
        stream::create_stream(&clients.kinesis, &name, 2, WAIT)
            .await
            .unwrap();
        clients
            .kinesis
            .put_record()
            .stream_name(&name)
            .partition_key("k")
            .data(Blob::new("kept"))
            .send()
            .await
            .unwrap();
        clients
            .dynamodb
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("k")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("k")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        aws.shutdown().await;
    }
    let aws = LocalAws::start(options).await.unwrap();
    let clients = aws.clients().await;
    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    assert_eq!(shards.len(), 2);
    let mut records = Vec::new();
    for shard in &shards {
        records.extend(read_all(&clients, &name, &shard.shard_id).await);
    }
    assert_eq!(records, vec![b"kept".to_vec()]);
    let tables = clients.dynamodb.list_tables().send().await.unwrap();
    assert!(tables.table_names().contains(&table));
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_five_mib_put_records_is_accepted() {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let clients = aws.clients().await;
    let name = unique("bigput");
    stream::create_stream(&clients.kinesis, &name, 2, WAIT)
        .await
        .unwrap();
    // 500 entries of 10,000 bytes + key: just under the 5 MiB request limit.
    let entries: Vec<_> = (0..500)
        .map(|i| {
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(format!("k{i}"))
                .data(Blob::new(vec![b'x'; 10_000]))
                .build()
                .unwrap()
        })
        .collect();
    let out = clients
        .kinesis
        .put_records()
        .stream_name(&name)
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_record_count(), Some(0));
    assert_eq!(out.records().len(), 500);
    aws.shutdown().await;
}
