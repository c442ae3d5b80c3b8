//! Strict mode, DynamoDB half and IAM: transaction conflicts occur as on real DynamoDB,
//! and every call is authorised against the policies documented in docs/iam-policy.md.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    ScalarAttributeType, TransactWriteItem, Update,
};
use kcl::aws::Clients;
use kcl::checkpoint::Checkpointer;
use kcl::processor::{ProcessRecordsInput, RecordProcessor};
use kcl::worker::{Worker, WorkerError};
use kcl_local::strict::iam::{Placeholders, Policy, Principals};
use kcl_local::strict::{DEFAULT_ACCOUNT_ID, RefusalKind, StrictOptions};
use kcl_local::testing::{unique, wait_for};
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio_util::sync::CancellationToken;

const IAM_POLICY_DOC: &str = include_str!("../../docs/iam-policy.md");
const WORKER_KEY: &str = "AKIDKCLWORKER";

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

/// A table keyed by the string `id`, created through the strict proxy by the
/// unrestricted administrator.
async fn create_table(clients: &Clients, table: &str) {
    clients
        .dynamodb
        .create_table()
        .table_name(table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

fn update(table: &str, id: &str) -> TransactWriteItem {
    TransactWriteItem::builder()
        .update(
            Update::builder()
                .table_name(table)
                .key("id", s(id))
                .update_expression("SET n = :n")
                .expression_attribute_values(":n", AttributeValue::N("1".into()))
                .build()
                .unwrap(),
        )
        .build()
}

/// Strict mode with transactions held `hold`: long enough for a test to send what
/// should conflict while one is in flight.
async fn strict_aws(hold: Duration) -> LocalAws {
    let mut options = StrictOptions::default();
    options.dynamodb.transaction_hold = hold;
    LocalAws::start(LocalAwsOptions::from_env().with_strict(options))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writes_of_an_item_in_a_transaction_in_flight_conflict() {
    let aws = strict_aws(Duration::from_secs(5)).await;
    let strict = aws.strict().unwrap();
    let clients = aws.clients().await;
    let table = unique("orders");
    create_table(&clients, &table).await;

    let transaction = {
        let dynamodb = clients.dynamodb.clone();
        let items = vec![update(&table, "a"), update(&table, "b")];
        tokio::spawn(async move {
            dynamodb
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
        })
    };
    wait_for(
        "the transaction in flight",
        Duration::from_secs(10),
        || async { (strict.dynamodb().items_in_flight() == 2).then_some(()) },
    )
    .await;

    let updated = clients
        .dynamodb
        .update_item()
        .table_name(&table)
        .key("id", s("b"))
        .update_expression("SET n = :n")
        .expression_attribute_values(":n", AttributeValue::N("2".into()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(updated.code(), Some("TransactionConflictException"));
    assert_eq!(
        updated.message(),
        Some("Transaction is ongoing for the item")
    );
    // A Put names its item by attributes: the layer learns the key schema to see it.
    let put = clients
        .dynamodb
        .put_item()
        .table_name(&table)
        .item("id", s("a"))
        .item("other", s("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(put.code(), Some("TransactionConflictException"));
    // Another item is not in the transaction.
    clients
        .dynamodb
        .put_item()
        .table_name(&table)
        .item("id", s("c"))
        .send()
        .await
        .unwrap();

    transaction.await.unwrap().unwrap();
    assert_eq!(strict.dynamodb().items_in_flight(), 0);
    // Once the transaction is done the item is writable again.
    clients
        .dynamodb
        .delete_item()
        .table_name(&table)
        .key("id", s("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        strict.refusals_of("UpdateItem", RefusalKind::TransactionConflict),
        1
    );
    assert_eq!(
        strict.refusals_of("PutItem", RefusalKind::TransactionConflict),
        1
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_transactions_cancel_the_later_one_with_reason_transaction_conflict() {
    let aws = strict_aws(Duration::from_secs(5)).await;
    let strict = aws.strict().unwrap();
    let clients = aws.clients().await;
    let table = unique("orders");
    create_table(&clients, &table).await;

    let first = {
        let dynamodb = clients.dynamodb.clone();
        let items = vec![update(&table, "a")];
        tokio::spawn(async move {
            dynamodb
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
        })
    };
    wait_for(
        "the first transaction in flight",
        Duration::from_secs(10),
        || async { (strict.dynamodb().items_in_flight() == 1).then_some(()) },
    )
    .await;

    let check = TransactWriteItem::builder()
        .condition_check(
            ConditionCheck::builder()
                .table_name(&table)
                .key("id", s("a"))
                .condition_expression("attribute_exists(id)")
                .build()
                .unwrap(),
        )
        .build();
    let second = clients
        .dynamodb
        .transact_write_items()
        .transact_items(update(&table, "z"))
        .transact_items(check)
        .send()
        .await
        .unwrap_err();
    let TransactWriteItemsError::TransactionCanceledException(cancelled) =
        second.into_service_error()
    else {
        panic!("the overlapping transaction was not cancelled");
    };
    let reasons: Vec<(Option<&str>, Option<&str>)> = cancelled
        .cancellation_reasons()
        .iter()
        .map(|r| (r.code(), r.message()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (Some("None"), None),
            (
                Some("TransactionConflict"),
                Some("Transaction is ongoing for the item")
            ),
        ]
    );
    assert_eq!(
        cancelled.message(),
        Some(
            "Transaction cancelled, please refer cancellation reasons for specific reasons \
             [None, TransactionConflict]"
        )
    );

    first.await.unwrap().unwrap();
    // The cancelled transaction wrote nothing.
    let z = clients
        .dynamodb
        .get_item()
        .table_name(&table)
        .key("id", s("z"))
        .send()
        .await
        .unwrap();
    assert!(z.item().is_none());
    assert_eq!(
        strict.refusals_of("TransactWriteItems", RefusalKind::TransactionConflict),
        1
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_hold_writes_racing_transactions_conflict() {
    let aws = LocalAws::start(LocalAwsOptions::strict()).await.unwrap();
    let strict = aws.strict().unwrap();
    let clients = aws.clients().await;
    let table = unique("orders");
    create_table(&clients, &table).await;

    let done = CancellationToken::new();
    let transactions = {
        let dynamodb = clients.dynamodb.clone();
        let item = update(&table, "hot");
        let done = done.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                dynamodb
                    .transact_write_items()
                    .transact_items(item.clone())
                    .send()
                    .await
                    .unwrap();
            }
            done.cancel();
        })
    };
    let mut conflicts = 0;
    let mut written = 0;
    while !done.is_cancelled() {
        let result = clients
            .dynamodb
            .update_item()
            .table_name(&table)
            .key("id", s("hot"))
            .update_expression("SET m = :m")
            .expression_attribute_values(":m", AttributeValue::N("1".into()))
            .send()
            .await;
        match result {
            Ok(_) => written += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("TransactionConflictException"));
                conflicts += 1;
            }
        }
    }
    transactions.await.unwrap();
    assert!(
        conflicts > 0,
        "no conflict in 20 transactions ({written} writes)"
    );
    assert_eq!(
        strict.refusals_of("UpdateItem", RefusalKind::TransactionConflict),
        conflicts
    );
    assert_eq!(
        strict.dynamodb().limits(),
        kcl_local::strict::DynamoDbLimits::default()
    );
    aws.shutdown().await;
}

fn placeholders(stream: &str, app: &str) -> Placeholders {
    Placeholders {
        region: kcl::aws::LOCAL_REGION.into(),
        account: DEFAULT_ACCOUNT_ID.into(),
        stream: stream.into(),
        app: app.into(),
        key_id: "unused".into(),
    }
}

fn worker_policy(stream: &str, app: &str) -> Policy {
    Policy::from_markdown(IAM_POLICY_DOC, "kcl-rs worker", &placeholders(stream, app)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_documented_policy_does_not_allow_are_denied_as_aws_denies_them() {
    let aws = LocalAws::start(LocalAwsOptions::strict()).await.unwrap();
    let strict = aws.strict().unwrap();
    let admin = aws.clients().await;
    let stream = unique("strict-iam");
    let app = unique("strict-iam-app");
    kcl::stream::create_stream(&admin.kinesis, &stream, 1, Duration::from_secs(10))
        .await
        .unwrap();
    create_table(&admin, &app).await;
    strict.iam().set_principals(Principals::new().with(
        WORKER_KEY,
        "kcl-worker",
        worker_policy(&stream, &app),
    ));
    let worker = aws.clients_as(WORKER_KEY).await;

    // Allowed by the documented policy.
    worker
        .kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    worker
        .dynamodb
        .describe_table()
        .table_name(&app)
        .send()
        .await
        .unwrap();

    // Not allowed: a worker needs no DescribeStreamSummary.
    let summary = worker
        .kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .unwrap_err();
    assert_eq!(summary.code(), Some("AccessDeniedException"));
    assert_eq!(
        summary.message(),
        Some(
            format!(
                "User: arn:aws:iam::{DEFAULT_ACCOUNT_ID}:user/kcl-worker is not authorized to \
                 perform: kinesis:DescribeStreamSummary on resource: \
                 arn:aws:kinesis:us-east-1:{DEFAULT_ACCOUNT_ID}:stream/{stream} because no \
                 identity-based policy allows the kinesis:DescribeStreamSummary action"
            )
            .as_str()
        )
    );
    // A transaction is authorised per item: the lease table allows UpdateItem, not
    // ConditionCheckItem.
    let check = TransactWriteItem::builder()
        .condition_check(
            ConditionCheck::builder()
                .table_name(&app)
                .key("id", s("a"))
                .condition_expression("attribute_not_exists(id)")
                .build()
                .unwrap(),
        )
        .build();
    let transaction = worker
        .dynamodb
        .transact_write_items()
        .transact_items(update(&app, "b"))
        .transact_items(check)
        .send()
        .await
        .unwrap_err();
    assert_eq!(transaction.code(), Some("AccessDeniedException"));
    let message = transaction.message().unwrap();
    assert!(
        message.contains("not authorized to perform: dynamodb:ConditionCheckItem on resource: ")
            && message.ends_with(&format!("table/{app} because no identity-based policy allows the dynamodb:ConditionCheckItem action")),
        "{message}"
    );
    // Another table.
    let other = worker
        .dynamodb
        .scan()
        .table_name(format!("{app}-Other"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(other.code(), Some("AccessDeniedException"));

    // A GetRecords names only its iterator: it is checked on the iterator's stream.
    strict.iam().set_principals(Principals::new().with(
        WORKER_KEY,
        "kcl-worker",
        worker_policy(&stream, &app).without_action("kinesis:GetRecords"),
    ));
    let iterator = worker
        .kinesis
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id("shardId-000000000000")
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let read = worker
        .kinesis
        .get_records()
        .shard_iterator(iterator.shard_iterator().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_kinesis::error::ProvideErrorMetadata::code(&read),
        Some("AccessDeniedException")
    );
    let message = aws_sdk_kinesis::error::ProvideErrorMetadata::message(&read).unwrap();
    assert!(
        message.contains(&format!(
            "not authorized to perform: kinesis:GetRecords on resource: \
             arn:aws:kinesis:us-east-1:{DEFAULT_ACCOUNT_ID}:stream/{stream} "
        )),
        "{message}"
    );

    // The administrator is not restricted.
    admin
        .kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(
        strict.refusals_of("DescribeStreamSummary", RefusalKind::AccessDenied),
        1
    );
    assert_eq!(
        strict.refusals_of("TransactWriteItems", RefusalKind::AccessDenied),
        1
    );
    assert_eq!(strict.refusals_of("Scan", RefusalKind::AccessDenied), 1);
    assert_eq!(
        strict.refusals_of("GetRecords", RefusalKind::AccessDenied),
        1
    );
    aws.shutdown().await;
}

/// Counts the records it is given and checkpoints after each batch.
struct Counter {
    records: Arc<Mutex<Vec<String>>>,
}

impl RecordProcessor for Counter {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput,
        checkpointer: &mut Checkpointer,
    ) {
        self.records.lock().unwrap().extend(
            input
                .records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.data).into_owned()),
        );
        let _ = checkpointer.checkpoint().await;
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        let _ = checkpointer.checkpoint().await;
    }
}

fn start_worker(
    clients: &Clients,
    stream: &str,
    app: &str,
    records: &Arc<Mutex<Vec<String>>>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), WorkerError>>,
) {
    let records = Arc::clone(records);
    let worker = Worker::new(
        common::consumers::config(stream, app, "w1"),
        clients,
        move |_shard: &str| Counter {
            records: Arc::clone(&records),
        },
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    (cancel, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_signed_as_the_documented_worker_policy_is_never_denied() {
    let aws = LocalAws::start(LocalAwsOptions::strict()).await.unwrap();
    let strict = aws.strict().unwrap();
    let admin = aws.clients().await;
    let stream = unique("strict-worker");
    let app = unique("strict-worker-app");
    kcl::stream::create_stream(&admin.kinesis, &stream, 2, Duration::from_secs(10))
        .await
        .unwrap();
    common::consumers::produce(&admin, &stream, 4, 0..5).await;
    strict.iam().set_principals(Principals::new().with(
        WORKER_KEY,
        "kcl-worker",
        worker_policy(&stream, &app),
    ));

    let records = Arc::new(Mutex::new(Vec::new()));
    let (cancel, run) = start_worker(&aws.clients_as(WORKER_KEY).await, &stream, &app, &records);
    wait_for(
        "all 20 records delivered",
        Duration::from_secs(60),
        || async { (records.lock().unwrap().len() >= 20).then_some(()) },
    )
    .await;
    // A reshard makes the worker end a shard and read its children: lease creation,
    // parent checks and SHARD_END checkpoints under the same policy.
    kcl::stream::split_shard(
        &admin.kinesis,
        &stream,
        "shardId-000000000000",
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    common::consumers::produce(&admin, &stream, 4, 5..10).await;
    wait_for(
        "the records put after the split delivered",
        Duration::from_secs(60),
        || async {
            let records = records.lock().unwrap();
            (0..4)
                .all(|k| records.contains(&format!("k{k}:9")))
                .then_some(())
        },
    )
    .await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    // Every kind of call the worker makes was checked against the policy; GetRecords
    // by the stream of its iterator.
    for operation in [
        "ListShards",
        "GetShardIterator",
        "GetRecords",
        "DescribeTable",
        "Scan",
        "PutItem",
        "UpdateItem",
        "GetItem",
    ] {
        assert!(
            strict.iam().checked(operation) > 0,
            "{operation} never checked"
        );
    }
    assert_eq!(
        strict.refusal_counts().kind(RefusalKind::AccessDenied),
        0,
        "{:?}",
        strict.refusal_counts().snapshot()
    );
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_missing_one_documented_action_fails_naming_it() {
    let aws = LocalAws::start(LocalAwsOptions::strict()).await.unwrap();
    let strict = aws.strict().unwrap();
    let admin = aws.clients().await;
    let stream = unique("strict-worker");
    let app = unique("strict-worker-app");
    kcl::stream::create_stream(&admin.kinesis, &stream, 1, Duration::from_secs(10))
        .await
        .unwrap();
    for action in ["dynamodb:DescribeTable", "dynamodb:Scan"] {
        strict.iam().set_principals(Principals::new().with(
            WORKER_KEY,
            "kcl-worker",
            worker_policy(&stream, &app).without_action(action),
        ));
        let records = Arc::new(Mutex::new(Vec::new()));
        let (cancel, run) =
            start_worker(&aws.clients_as(WORKER_KEY).await, &stream, &app, &records);
        let ended = tokio::time::timeout(Duration::from_secs(60), run).await;
        cancel.cancel();
        let error = ended
            .unwrap_or_else(|_| panic!("the worker without {action} kept running"))
            .unwrap()
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!("not authorized to perform: {action}")),
            "{action}: {message}"
        );
        assert!(
            strict.refusals_of(
                action.trim_start_matches("dynamodb:"),
                RefusalKind::AccessDenied
            ) >= 1
        );
    }
    aws.shutdown().await;
}
