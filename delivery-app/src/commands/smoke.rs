//! `delivery-app smoke`: local AWS in-process, proven with one round trip.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use kcl_local::{LocalAws, LocalAwsOptions};

use super::CommandError;

#[derive(clap::Args, Debug)]
pub struct SmokeArgs {
    /// Records to put and read back.
    #[arg(long, default_value_t = 100)]
    records: usize,
}

pub async fn run(args: SmokeArgs) -> Result<(), CommandError> {
    let aws = LocalAws::start(LocalAwsOptions::default()).await?;
    let clients = aws.clients().await;
    clients.verify().await?;
    let stream = "DeliveryStream";
    kcl::stream::create_stream(&clients.kinesis, stream, 1, Duration::from_secs(10)).await?;
    for i in 0..args.records {
        clients
            .kinesis
            .put_record()
            .stream_name(stream)
            .partition_key(format!("order-{i}"))
            .data(Blob::new(format!("{{\"order\":{i}}}")))
            .send()
            .await?;
    }
    let shard = &kcl::stream::list_shards(&clients.kinesis, stream).await?[0];
    let mut iterator = clients
        .kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(&shard.shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator;
    let mut read = 0;
    while let Some(it) = iterator.take() {
        let page = clients
            .kinesis
            .get_records()
            .shard_iterator(it)
            .send()
            .await?;
        read += page.records().len();
        if read < args.records && !page.records().is_empty() {
            iterator = page.next_shard_iterator().map(str::to_string);
        }
    }
    if read != args.records {
        return Err(format!("put {} records but read back {read}", args.records).into());
    }

    let table = "SmokeLeases";
    clients
        .dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    let put = || {
        clients
            .dynamodb
            .put_item()
            .table_name(table)
            .item("leaseKey", AttributeValue::S(shard.shard_id.clone()))
            .condition_expression("attribute_not_exists(leaseKey)")
            .send()
    };
    put().await?;
    let rejected = put()
        .await
        .err()
        .and_then(|e| {
            e.into_service_error()
                .is_conditional_check_failed_exception()
                .then_some(())
        })
        .is_some();
    if !rejected {
        return Err("a conditional DynamoDB write that should fail was accepted".into());
    }
    println!(
        "local AWS works: Kinesis {} round-tripped {read} records; DynamoDB {} rejected a \
         conditional write as it should",
        aws.endpoints().kinesis.unwrap_or_default(),
        aws.endpoints().dynamodb.unwrap_or_default()
    );
    aws.shutdown().await;
    Ok(())
}
