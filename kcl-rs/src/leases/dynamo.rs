//! The lease store over DynamoDB: a lease table keyed by `leaseKey` (the item encoding
//! is in `item.rs`) and a worker table `{lease table}-Workers` keyed by `workerId`.
//!
//! Every write is a single conditional request, so DynamoDB itself decides races
//! between workers: of two writers expecting the same counter, exactly one succeeds.
//!
//! Two choices beyond the trait's contract:
//! - an empty [`Change`] is still sent as a conditional UpdateItem without an update
//!   expression: it changes nothing, answers [`LeaseError::ConditionFailed`] when the
//!   lease is missing or not as expected, and otherwise returns the lease;
//! - a change with both `checkpoint` and `owner_switch` leaves
//!   `ownerSwitchesSinceCheckpoint` at 0: the switch happens with the checkpoint, so
//!   no switch has happened *since* it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, ConsumedCapacity, ReturnConsumedCapacity, ReturnValue,
};

use super::item::{self, Item};
use super::lease::Lease;
use super::store::{BoxFuture, Change, Expect, LeaseError, LeaseStore, WorkerHeartbeat};
use super::table::{TableError, ensure_hash_key_table};
use crate::checkpoint::LeaseOwnership;

/// A `ConditionCheck` on the lease of `shard_id` in `lease_table` that holds only while
/// `owner` may checkpoint the shard: this ownership (worker id *and* epoch) holds the
/// lease and is not handing it to another worker, or it is the previous owner
/// finishing a graceful handoff.
///
/// Put it in the same `TransactWriteItems` as a processor's own writes (an output
/// table, a watermark), with the ownership from
/// [`Checkpointer::ownership`](crate::checkpoint::Checkpointer::ownership), and those
/// writes are fenced like the checkpoint itself: after the lease moved to another
/// worker (a pause, a partition, a slow batch) the transaction is cancelled with
/// `ConditionalCheckFailed` on this item instead of racing the new owner. It compares
/// the epoch, so a consumer from before its own worker lost and re-took the lease is
/// refused too; and not the counter, so renewals do not cancel it.
///
/// ```
/// use kcl::checkpoint::LeaseOwnership;
/// use kcl::leases::dynamo::ownership_check;
///
/// let owner = LeaseOwnership { worker_id: "worker-7".into(), epoch: 12 };
/// let check = ownership_check("my-app", "shardId-000000000001", &owner);
/// assert_eq!(check.table_name(), "my-app");
/// let key = check.key().get("leaseKey").unwrap();
/// assert_eq!(key.as_s().unwrap(), "shardId-000000000001");
/// let names = check.expression_attribute_names().unwrap();
/// assert!(names.values().any(|n| n == "leaseOwner"));
/// assert!(names.values().any(|n| n == "leaseEpoch"));
/// assert!(names.values().any(|n| n == "checkpointOwnerEpoch"));
/// ```
pub fn ownership_check(
    lease_table: &str,
    shard_id: &str,
    owner: &LeaseOwnership,
) -> ConditionCheck {
    ConditionCheck::builder()
        .table_name(lease_table)
        .key(item::LEASE_KEY, item::string(shard_id))
        .condition_expression(
            "(#owner = :me AND attribute_not_exists(#cp_owner) AND #epoch = :epoch) \
             OR (#cp_owner = :me AND #cp_epoch = :epoch)",
        )
        .expression_attribute_names("#owner", item::LEASE_OWNER)
        .expression_attribute_names("#cp_owner", item::CHECKPOINT_OWNER)
        .expression_attribute_names("#epoch", item::LEASE_EPOCH)
        .expression_attribute_names("#cp_epoch", item::CHECKPOINT_OWNER_EPOCH)
        .expression_attribute_values(":me", item::string(&owner.worker_id))
        .expression_attribute_values(":epoch", item::number(owner.epoch))
        .build()
        .expect("table name, key and condition are set")
}

/// The failover time [`DynamoLeaseStore::new`] derives its timeouts from.
const DEFAULT_FAILOVER_TIME: Duration = Duration::from_secs(10);

/// `current` with attempt and operation timeouts that fit inside `failover_time`
/// (connect and read timeouts kept).
fn lease_timeouts(current: Option<&TimeoutConfig>, failover_time: Duration) -> TimeoutConfig {
    let attempt = super::retry::attempt_timeout(failover_time);
    let mut builder = current
        .cloned()
        .unwrap_or_else(TimeoutConfig::disabled)
        .to_builder();
    builder
        .set_operation_attempt_timeout(Some(attempt))
        .set_operation_timeout(Some((failover_time / 2).max(attempt)));
    builder.build()
}

/// How long [`LeaseStore::ensure_tables`] waits for a table to become ACTIVE.
const TABLE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest first retry delay the store's SDK client may use (see
/// [`DynamoLeaseStore::new`]); the AWS SDKs for Java use 25 ms for DynamoDB.
pub const SDK_INITIAL_BACKOFF: Duration = Duration::from_millis(50);

/// A [`LeaseStore`] on DynamoDB. Cloning shares the SDK client.
///
/// ```no_run
/// # async fn demo(clients: kcl::aws::Clients) -> Result<(), kcl::leases::LeaseError> {
/// use kcl::leases::LeaseStore;
/// use kcl::leases::dynamo::DynamoLeaseStore;
///
/// let store = DynamoLeaseStore::new(clients.dynamodb.clone(), "my-app");
/// store.ensure_tables().await?; // creates "my-app" and "my-app-Workers" if absent
/// let leases = store.list_leases().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DynamoLeaseStore {
    client: Client,
    table: String,
    workers_table: String,
    /// Keys of items listed but not valid leases, each logged once.
    malformed: Arc<Mutex<HashSet<String>>>,
    /// Read capacity units DynamoDB reported for this store's reads, in thousandths.
    read_milli_units: Arc<AtomicU64>,
}

impl DynamoLeaseStore {
    /// A store on the lease table `table_name` and the worker table
    /// `{table_name}-Workers`. No request is sent until the first call.
    ///
    /// The client's retries are kept (attempts, mode) but start after at most
    /// [`SDK_INITIAL_BACKOFF`] instead of the SDK's default second: a renewal has only
    /// the rest of the failover time, and the SDK sleeping 1 s then 2 s between its
    /// attempts would spend all of a short one on a single renewal. The coordinator's
    /// own loop paces the retries beyond the SDK's attempts.
    ///
    /// Its timeouts are derived from the default failover time (10 s): see
    /// [`DynamoLeaseStore::with_failover_time`].
    pub fn new(client: Client, table_name: impl Into<String>) -> Self {
        let table = table_name.into();
        let mut config = client.config().to_builder();
        if let Some(retry) = client.config().retry_config()
            && retry.initial_backoff() > SDK_INITIAL_BACKOFF
        {
            config = config.retry_config(retry.clone().with_initial_backoff(SDK_INITIAL_BACKOFF));
        }
        let client = Client::from_conf(
            config
                .timeout_config(lease_timeouts(
                    client.config().timeout_config(),
                    DEFAULT_FAILOVER_TIME,
                ))
                .build(),
        );
        DynamoLeaseStore {
            client,
            workers_table: format!("{table}-Workers"),
            table,
            malformed: Arc::default(),
            read_milli_units: Arc::default(),
        }
    }

    /// Fits the client's timeouts inside `failover_time` (the coordinator's
    /// [`failover_time`](super::coordinator::LeaseConfig::failover_time)): each attempt
    /// a fifth of it, the whole call with its SDK retries half of it. A renewal has
    /// only the rest of the failover time; one hung connection held for the SDK's usual
    /// 20 s would cost the lease.
    pub fn with_failover_time(mut self, failover_time: Duration) -> Self {
        let config = self.client.config();
        self.client = Client::from_conf(
            config
                .to_builder()
                .timeout_config(lease_timeouts(config.timeout_config(), failover_time))
                .build(),
        );
        self
    }

    /// Read capacity units consumed by this store's reads (Scan, GetItem) so far, as
    /// DynamoDB reported them (`ReturnConsumedCapacity=TOTAL`); shared by clones.
    pub fn consumed_read_capacity(&self) -> f64 {
        self.read_milli_units.load(Ordering::Relaxed) as f64 / 1000.0
    }

    fn count_read(&self, capacity: Option<&ConsumedCapacity>) {
        if let Some(units) = capacity.and_then(|c| c.capacity_units()) {
            self.read_milli_units
                .fetch_add((units * 1000.0).round() as u64, Ordering::Relaxed);
        }
    }

    /// The lease table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The worker heartbeat table's name.
    pub fn workers_table_name(&self) -> &str {
        &self.workers_table
    }

    /// Every item of `table`, following `LastEvaluatedKey` across pages (DynamoDB
    /// returns at most 1 MB per page).
    async fn scan_all(&self, table: &str, consistent: bool) -> Result<Vec<Item>, LeaseError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(table)
                .consistent_read(consistent)
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| classify(e, &format!("Scan {table}"), ""))?;
            self.count_read(page.consumed_capacity());
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// Every well-formed lease; malformed items are logged once and counted.
    async fn leases(&self, consistent: bool) -> Result<Vec<Lease>, LeaseError> {
        let mut leases = Vec::new();
        for item in self.scan_all(&self.table, consistent).await? {
            match item::to_lease(&item) {
                Ok(lease) => leases.push(lease),
                Err(LeaseError::Malformed { key, what }) => {
                    if self.malformed.lock().unwrap().insert(key.clone()) {
                        tracing::error!(
                            table = %self.table, lease = %key, problem = %what,
                            "lease table item is not a valid lease; skipping it"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(leases)
    }

    fn lease_key(key: &str) -> Item {
        HashMap::from([(item::LEASE_KEY.to_string(), item::string(key))])
    }

    fn worker_key(worker_id: &str) -> Item {
        HashMap::from([(item::WORKER_ID.to_string(), item::string(worker_id))])
    }
}

impl LeaseStore for DynamoLeaseStore {
    fn ensure_tables(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        Box::pin(async move {
            for (table, key) in [
                (&self.table, item::LEASE_KEY),
                (&self.workers_table, item::WORKER_ID),
            ] {
                ensure_hash_key_table(&self.client, table, key, TABLE_READY_TIMEOUT).await?;
            }
            Ok(())
        })
    }

    fn list_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>> {
        Box::pin(self.leases(true))
    }

    fn scan_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>> {
        Box::pin(self.leases(false))
    }

    fn malformed_items(&self) -> u64 {
        self.malformed.lock().unwrap().len() as u64
    }

    fn get_lease<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(Self::lease_key(key)))
                .consistent_read(true)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| classify(e, &format!("GetItem {}", self.table), key))?;
            self.count_read(out.consumed_capacity());
            out.item.as_ref().map(item::to_lease).transpose()
        })
    }

    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut expression = Expression::default();
            let condition = format!("attribute_not_exists({})", expression.name(item::LEASE_KEY));
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item::to_item(lease)))
                .condition_expression(condition)
                .set_expression_attribute_names(Some(expression.names))
                .send()
                .await
                .map_err(|e| classify(e, &format!("PutItem {}", self.table), &lease.key))?;
            Ok(())
        })
    }

    fn update_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        change: Change,
    ) -> BoxFuture<'a, Result<Lease, LeaseError>> {
        Box::pin(async move {
            let mut expression = Expression::default();
            let update = expression.update(&change);
            let condition = expression.condition(&expect);
            let out = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::lease_key(key)))
                .set_update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(expression.names())
                .set_expression_attribute_values(expression.values())
                .return_values(ReturnValue::AllNew)
                .send()
                .await
                .map_err(|e| classify(e, &format!("UpdateItem {}", self.table), key))?;
            match &out.attributes {
                Some(attributes) => item::to_lease(attributes),
                None => Err(LeaseError::Fatal {
                    message: format!(
                        "UpdateItem {} on lease {key} returned no attributes despite ALL_NEW",
                        self.table
                    ),
                }),
            }
        })
    }

    fn delete_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut expression = Expression::default();
            let condition = expression.condition(&expect);
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(Self::lease_key(key)))
                .condition_expression(condition)
                .set_expression_attribute_names(expression.names())
                .set_expression_attribute_values(expression.values())
                .send()
                .await
                .map_err(|e| classify(e, &format!("DeleteItem {}", self.table), key))?;
            Ok(())
        })
    }

    fn heartbeat<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut expression = Expression::default();
            let heartbeat = expression.name(item::HEARTBEAT);
            let zero = expression.value("zero", item::number(0));
            let one = expression.value("one", item::number(1));
            self.client
                .update_item()
                .table_name(&self.workers_table)
                .set_key(Some(Self::worker_key(worker_id)))
                .update_expression(format!(
                    "SET {heartbeat} = if_not_exists({heartbeat}, {zero}) + {one}"
                ))
                .set_expression_attribute_names(expression.names())
                .set_expression_attribute_values(expression.values())
                .send()
                .await
                .map_err(|e| {
                    classify(e, &format!("UpdateItem {}", self.workers_table), worker_id)
                })?;
            Ok(())
        })
    }

    fn remove_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            self.client
                .delete_item()
                .table_name(&self.workers_table)
                .set_key(Some(Self::worker_key(worker_id)))
                .send()
                .await
                .map_err(|e| {
                    classify(e, &format!("DeleteItem {}", self.workers_table), worker_id)
                })?;
            Ok(())
        })
    }

    fn list_workers(&self) -> BoxFuture<'_, Result<Vec<WorkerHeartbeat>, LeaseError>> {
        Box::pin(async move {
            // Eventually consistent: a stale heartbeat only delays judging a worker dead.
            self.scan_all(&self.workers_table, false)
                .await?
                .iter()
                .map(item::to_worker)
                .collect()
        })
    }
}

/// The placeholders of one request's expressions. Every attribute name goes through a
/// `#name` placeholder so that none can collide with a DynamoDB reserved word.
#[derive(Default)]
struct Expression {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names
            .insert(placeholder.clone(), attribute.to_string());
        placeholder
    }

    fn value(&mut self, tag: &str, value: AttributeValue) -> String {
        let placeholder = format!(":{tag}");
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    /// The names map, or `None` when empty: DynamoDB rejects an empty map.
    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    /// The values map, or `None` when empty: DynamoDB rejects an empty map.
    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }

    /// The condition for `expect`. The item must always exist: an update on a missing
    /// key would otherwise create a lease holding only the changed attributes.
    fn condition(&mut self, expect: &Expect) -> String {
        let mut parts = vec![format!("attribute_exists({})", self.name(item::LEASE_KEY))];
        if let Some(counter) = expect.counter {
            let name = self.name(item::LEASE_COUNTER);
            let value = self.value("expectedCounter", item::number(counter));
            parts.push(format!("{name} = {value}"));
        }
        if let Some(owner) = &expect.owner {
            parts.push(self.equals_or_absent(item::LEASE_OWNER, "expectedOwner", owner));
        }
        if let Some(owner) = &expect.checkpoint_owner {
            parts.push(self.equals_or_absent(
                item::CHECKPOINT_OWNER,
                "expectedCheckpointOwner",
                owner,
            ));
        }
        if let Some(epoch) = expect.epoch {
            let name = self.name(item::LEASE_EPOCH);
            let value = self.value("expectedEpoch", item::number(epoch));
            parts.push(format!("{name} = {value}"));
        }
        if let Some(epoch) = expect.checkpoint_owner_epoch {
            let name = self.name(item::CHECKPOINT_OWNER_EPOCH);
            let value = self.value("expectedCheckpointOwnerEpoch", item::number(epoch));
            parts.push(format!("{name} = {value}"));
        }
        parts.join(" AND ")
    }

    fn equals_or_absent(&mut self, attribute: &str, tag: &str, value: &Option<String>) -> String {
        let name = self.name(attribute);
        match value {
            Some(value) => format!("{name} = {}", self.value(tag, item::string(value))),
            None => format!("attribute_not_exists({name})"),
        }
    }

    /// The update expression for `change`, or `None` when it changes nothing.
    fn update(&mut self, change: &Change) -> Option<String> {
        let mut set = Vec::new();
        let mut remove = Vec::new();
        if change.bump_counter {
            let counter = self.name(item::LEASE_COUNTER);
            let one = self.value("one", item::number(1));
            set.push(format!("{counter} = {counter} + {one}"));
        }
        if let Some(owner) = &change.owner {
            self.set_or_remove(&mut set, &mut remove, item::LEASE_OWNER, "owner", owner);
        }
        if change.keep_epoch_for_checkpoint_owner {
            // Operands are read before the update, so this is the previous owner's
            // epoch even when `epoch` below replaces it in the same write.
            let kept = self.name(item::CHECKPOINT_OWNER_EPOCH);
            let epoch = self.name(item::LEASE_EPOCH);
            let zero = self.value("zero", item::number(0));
            set.push(format!("{kept} = if_not_exists({epoch}, {zero})"));
        }
        if let Some(epoch) = change.epoch {
            let name = self.name(item::LEASE_EPOCH);
            let value = self.value("epoch", item::number(epoch));
            set.push(format!("{name} = {value}"));
        }
        if let Some(owner) = &change.checkpoint_owner {
            self.set_or_remove(
                &mut set,
                &mut remove,
                item::CHECKPOINT_OWNER,
                "checkpointOwner",
                owner,
            );
            if owner.is_none() {
                remove.push(self.name(item::CHECKPOINT_OWNER_EPOCH));
            }
        }
        if let Some(checkpoint) = &change.checkpoint {
            let name = self.name(item::CHECKPOINT);
            let value = self.value("checkpoint", item::position(checkpoint));
            set.push(format!("{name} = {value}"));
            let name = self.name(item::CHECKPOINT_SUB_SEQUENCE_NUMBER);
            let value = self.value("checkpointSub", item::number(checkpoint.sub_sequence));
            set.push(format!("{name} = {value}"));
            let switches = self.name(item::OWNER_SWITCHES_SINCE_CHECKPOINT);
            let zero = self.value("zero", item::number(0));
            set.push(format!("{switches} = {zero}"));
        } else if change.owner_switch {
            let switches = self.name(item::OWNER_SWITCHES_SINCE_CHECKPOINT);
            let zero = self.value("zero", item::number(0));
            let one = self.value("one", item::number(1));
            set.push(format!(
                "{switches} = if_not_exists({switches}, {zero}) + {one}"
            ));
        }
        match &change.pending_checkpoint {
            None => {}
            Some(Some(pending)) => {
                let name = self.name(item::PENDING_CHECKPOINT);
                let value = self.value("pending", item::position(pending));
                set.push(format!("{name} = {value}"));
                let name = self.name(item::PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER);
                let value = self.value("pendingSub", item::number(pending.sub_sequence));
                set.push(format!("{name} = {value}"));
            }
            Some(None) => {
                remove.push(self.name(item::PENDING_CHECKPOINT));
                remove.push(self.name(item::PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER));
            }
        }
        if let Some(load) = &change.load {
            for (attribute, value) in item::load_attributes(load) {
                let name = self.name(&attribute);
                let value = self.value(&attribute, value);
                set.push(format!("{name} = {value}"));
            }
        }
        if let Some(children) = &change.child_shard_ids {
            let name = self.name(item::CHILD_SHARD_IDS);
            match item::string_set(children) {
                Some(set_value) => {
                    let value = self.value("children", set_value);
                    set.push(format!("{name} = {value}"));
                }
                None => remove.push(name),
            }
        }
        let mut clauses = Vec::new();
        if !set.is_empty() {
            clauses.push(format!("SET {}", set.join(", ")));
        }
        if !remove.is_empty() {
            clauses.push(format!("REMOVE {}", remove.join(", ")));
        }
        (!clauses.is_empty()).then(|| clauses.join(" "))
    }

    fn set_or_remove(
        &mut self,
        set: &mut Vec<String>,
        remove: &mut Vec<String>,
        attribute: &str,
        tag: &str,
        value: &Option<String>,
    ) {
        let name = self.name(attribute);
        match value {
            Some(value) => set.push(format!("{name} = {}", self.value(tag, item::string(value)))),
            None => remove.push(name),
        }
    }
}

/// Error codes the DynamoDB developer guide ("Error handling with DynamoDB") marks
/// "OK to retry", as far as lease-table calls can meet them: throttling, quotas, its
/// own failures, and transaction conflicts. `TransactionConflictException` is what a
/// lease write gets while a processor's `TransactWriteItems` fenced by
/// [`ownership_check`] holds the item: nothing was written, so the same write may be
/// repeated. Left out although documented as retryable:
/// `ItemCollectionSizeLimitExceededException` (a lease table has no local secondary
/// index; retrying cannot shrink a collection) and `UnrecognizedClientException`
/// (bad credentials stay bad within a failover time; better reported at once).
/// `InternalFailure` is the AWS-wide name of a 500 some endpoints answer instead of
/// `InternalServerError`.
///
/// Public so that applications writing their own DynamoDB tables beside the lease table
/// (fenced by [`ownership_check`]) retry exactly what the lease store retries.
pub const TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
];

/// Sorts an SDK failure into the three kinds callers act on: the condition did not
/// hold (`key` is the lease or worker), retry later, or give up. `context` names the
/// operation and table for the message.
fn classify<E>(err: SdkError<E>, context: &str, key: &str) -> LeaseError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = match &err {
        SdkError::ServiceError(service) => {
            if err.code() == Some("ConditionalCheckFailedException") {
                return LeaseError::ConditionFailed {
                    key: key.to_string(),
                };
            }
            let status = service.raw().status().as_u16();
            err.code()
                .is_some_and(|code| TRANSIENT_CODES.contains(&code))
                || status >= 500
                || status == 429
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        // A request the connector refuses to send (a malformed endpoint URL) will be
        // refused again; anything else is the network.
        SdkError::DispatchFailure(failure) => !failure.is_user(),
        _ => false,
    };
    let message = format!("{context}: {}", DisplayErrorContext(&err));
    if transient {
        LeaseError::Transient { message }
    } else {
        LeaseError::Fatal { message }
    }
}

impl From<TableError> for LeaseError {
    fn from(err: TableError) -> LeaseError {
        match err {
            TableError::Describe { table, source } => {
                classify(*source, &format!("DescribeTable {table}"), "")
            }
            TableError::Create { table, source } => {
                classify(*source, &format!("CreateTable {table}"), "")
            }
            TableError::KeySchema { .. } => LeaseError::Fatal {
                message: err.to_string(),
            },
            TableError::NotActive { .. } => LeaseError::Transient {
                message: err.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;

    use super::*;
    use crate::checkpoint::ExtendedSequenceNumber;
    use crate::leases::ShardLoad;

    fn service_error(code: &str, status: u16) -> SdkError<UpdateItemError> {
        let err =
            UpdateItemError::generic(ErrorMetadata::builder().code(code).message("m").build());
        SdkError::service_error(
            err,
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    fn kind(err: LeaseError) -> &'static str {
        match err {
            LeaseError::ConditionFailed { .. } => "condition",
            LeaseError::Transient { .. } => "transient",
            LeaseError::Fatal { .. } => "fatal",
            LeaseError::Malformed { .. } => "malformed",
        }
    }

    #[test]
    fn errors_are_classified_by_code_status_and_kind() {
        let cases = [
            (
                service_error("ConditionalCheckFailedException", 400),
                "condition",
            ),
            (
                service_error("ProvisionedThroughputExceededException", 400),
                "transient",
            ),
            (service_error("ThrottlingException", 400), "transient"),
            (service_error("RequestLimitExceeded", 400), "transient"),
            (service_error("InternalServerError", 500), "transient"),
            (service_error("InternalFailure", 500), "transient"),
            (service_error("ServiceUnavailable", 503), "transient"),
            (
                service_error("TransactionConflictException", 400),
                "transient",
            ),
            (
                service_error("TransactionInProgressException", 400),
                "transient",
            ),
            (service_error("LimitExceededException", 400), "transient"),
            (
                service_error("ItemCollectionSizeLimitExceededException", 400),
                "fatal",
            ),
            (service_error("UnrecognizedClientException", 400), "fatal"),
            (service_error("SomethingNew", 502), "transient"),
            (service_error("SomethingNew", 429), "transient"),
            (service_error("ResourceNotFoundException", 400), "fatal"),
            (service_error("AccessDeniedException", 400), "fatal"),
            (service_error("ValidationException", 400), "fatal"),
            (SdkError::timeout_error("slow"), "transient"),
            (
                SdkError::dispatch_failure(ConnectorError::io("reset".into())),
                "transient",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::timeout("connect".into())),
                "transient",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::user("bad uri".into())),
                "fatal",
            ),
            (
                SdkError::response_error(
                    "truncated",
                    HttpResponse::new(200.try_into().unwrap(), "".into()),
                ),
                "transient",
            ),
            (SdkError::construction_failure("missing key"), "fatal"),
        ];
        for (err, expected) in cases {
            let shown = format!("{err:?}");
            assert_eq!(
                kind(classify(err, "UpdateItem t", "shardId-1")),
                expected,
                "{shown}"
            );
        }
        match classify(
            service_error("ConditionalCheckFailedException", 400),
            "x",
            "shardId-1",
        ) {
            LeaseError::ConditionFailed { key } => assert_eq!(key, "shardId-1"),
            other => panic!("{other:?}"),
        }
        let message = classify(
            service_error("ThrottlingException", 400),
            "UpdateItem leases",
            "k",
        )
        .to_string();
        assert!(
            message.contains("UpdateItem leases") && message.contains("ThrottlingException"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn lease_table_timeouts_fit_inside_the_failover_time() {
        let endpoints = crate::aws::Endpoints::local("http://127.0.0.1:1", "http://127.0.0.1:1");
        let clients = crate::aws::Clients::connect(&endpoints).await;
        let timeouts = |store: &DynamoLeaseStore| {
            let config = store.client.config().timeout_config().cloned().unwrap();
            (
                config.operation_attempt_timeout().unwrap(),
                config.operation_timeout().unwrap(),
            )
        };
        let store = DynamoLeaseStore::new(clients.dynamodb.clone(), "t");
        assert_eq!(
            timeouts(&store),
            (Duration::from_secs(2), Duration::from_secs(5))
        );
        let store = store.with_failover_time(Duration::from_secs(3));
        assert_eq!(
            timeouts(&store),
            (Duration::from_millis(600), Duration::from_millis(1500))
        );
    }

    #[test]
    fn condition_always_requires_the_item() {
        let mut e = Expression::default();
        assert_eq!(
            e.condition(&Expect::default()),
            "attribute_exists(#leaseKey)"
        );
        let mut e = Expression::default();
        let condition = e.condition(&Expect {
            counter: Some(4),
            owner: Some(None),
            checkpoint_owner: Some(Some("a".into())),
            ..Expect::default()
        });
        assert_eq!(
            condition,
            "attribute_exists(#leaseKey) AND #leaseCounter = :expectedCounter AND \
             attribute_not_exists(#leaseOwner) AND #checkpointOwner = :expectedCheckpointOwner"
        );
        assert_eq!(e.values[":expectedCounter"], AttributeValue::N("4".into()));
    }

    #[test]
    fn update_expression_covers_every_change() {
        let mut e = Expression::default();
        assert_eq!(e.update(&Change::default()), None);
        assert!(e.names.is_empty() && e.values.is_empty());

        let mut e = Expression::default();
        let update = e
            .update(&Change {
                bump_counter: true,
                owner: Some(Some("w".into())),
                checkpoint_owner: Some(None),
                checkpoint: None,
                pending_checkpoint: Some(None),
                owner_switch: true,
                load: Some(ShardLoad::default()),
                child_shard_ids: Some(vec![]),
                epoch: None,
                keep_epoch_for_checkpoint_owner: false,
            })
            .unwrap();
        assert_eq!(
            update,
            "SET #leaseCounter = #leaseCounter + :one, #leaseOwner = :owner, \
             #ownerSwitchesSinceCheckpoint = if_not_exists(#ownerSwitchesSinceCheckpoint, :zero) + :one, \
             #throughputRecordsPerSecond = :throughputRecordsPerSecond, \
             #throughputBytesPerSecond = :throughputBytesPerSecond, \
             #millisBehindLatest = :millisBehindLatest \
             REMOVE #checkpointOwner, #checkpointOwnerEpoch, #pendingCheckpoint, #pendingCheckpointSubSequenceNumber, #childShardIds"
        );

        let mut e = Expression::default();
        let update = e
            .update(&Change {
                checkpoint: Some(ExtendedSequenceNumber::at("12", 3)),
                owner_switch: true,
                ..Change::default()
            })
            .unwrap();
        assert_eq!(
            update,
            "SET #checkpoint = :checkpoint, #checkpointSubSequenceNumber = :checkpointSub, \
             #ownerSwitchesSinceCheckpoint = :zero"
        );

        let mut e = Expression::default();
        e.update(&Change {
            bump_counter: true,
            ..Change::default()
        });
        assert!(!e.names.contains_key("#ownerSwitchesSinceCheckpoint"));

        // A handoff request: the new owner's epoch, the previous owner's kept.
        let mut e = Expression::default();
        let update = e
            .update(&Change {
                epoch: Some(8),
                keep_epoch_for_checkpoint_owner: true,
                checkpoint_owner: Some(Some("a".into())),
                ..Change::default()
            })
            .unwrap();
        assert_eq!(
            update,
            "SET #checkpointOwnerEpoch = if_not_exists(#leaseEpoch, :zero), \
             #leaseEpoch = :epoch, #checkpointOwner = :checkpointOwner"
        );
        let mut e = Expression::default();
        let condition = e.condition(&Expect {
            epoch: Some(8),
            checkpoint_owner_epoch: Some(5),
            ..Expect::default()
        });
        assert_eq!(
            condition,
            "attribute_exists(#leaseKey) AND #leaseEpoch = :expectedEpoch AND \
             #checkpointOwnerEpoch = :expectedCheckpointOwnerEpoch"
        );
    }
}
