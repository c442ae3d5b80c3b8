//! The lease store over DynamoDB: a lease table keyed by `leaseKey` (the item encoding
//! is in `item.rs`) and a worker table `{lease table}-Workers` keyed by `workerId`,
//! whose one item `kcl-rs:group` holds the group: a heartbeat attribute `hb:{worker id}`
//! per member and the lease generation.
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
use aws_sdk_dynamodb::types::{
    ConditionCheck, ConsumedCapacity, ReturnConsumedCapacity, ReturnValue,
};

mod errors;
mod expression;

pub use errors::TRANSIENT_CODES;
use errors::classify;
use expression::Expression;

use super::item::{self, Item};
use super::lease::Lease;
use super::store::{BoxFuture, Change, Expect, LeaseError, LeaseStore, Membership};
use super::table::ensure_hash_key_table;
use crate::checkpoint::LeaseOwnership;

/// A `ConditionCheck` on the lease `lease_key` in `lease_table` (the shard id, or in
/// multi-stream mode the full key: [`Checkpointer::lease_key`](crate::checkpoint::Checkpointer::lease_key)) that holds only while
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
    lease_key: &str,
    owner: &LeaseOwnership,
) -> ConditionCheck {
    ConditionCheck::builder()
        .table_name(lease_table)
        .key(item::LEASE_KEY, item::string(lease_key))
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

    /// Fits the client's timeouts inside `failover_time` (the worker's
    /// [`failover_time`](crate::WorkerConfig::failover_time)): each attempt a fifth of
    /// it, the whole call with its SDK retries half of it. A renewal has only the rest
    /// of the failover time; one hung connection held for the SDK's usual 20 s would
    /// cost the lease.
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

    fn join<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        Box::pin(self.beat(worker_id, false, 0))
    }

    fn heartbeat<'a>(
        &'a self,
        worker_id: &'a str,
        leases: u64,
    ) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        Box::pin(self.beat(worker_id, true, leases))
    }

    fn evict_worker<'a>(
        &'a self,
        worker_id: &'a str,
        heartbeat: u64,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.remove_member(worker_id, Some(heartbeat)))
    }

    fn remove_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.remove_member(worker_id, None))
    }

    fn membership(&self) -> BoxFuture<'_, Result<Membership, LeaseError>> {
        Box::pin(async move {
            // Eventually consistent: a stale heartbeat only delays judging a worker dead.
            let out = self
                .client
                .get_item()
                .table_name(&self.workers_table)
                .set_key(Some(Self::worker_key(item::GROUP_KEY)))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| {
                    classify(
                        e,
                        &format!("GetItem {}", self.workers_table),
                        item::GROUP_KEY,
                    )
                })?;
            self.count_read(out.consumed_capacity());
            Ok(item::to_membership(out.item.as_ref()))
        })
    }

    fn note_leases_changed(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        Box::pin(async move {
            let mut expression = Expression::default();
            let generation = expression.name(item::LEASE_GENERATION);
            let one = expression.value("one", item::number(1));
            self.update_group(
                expression,
                format!("ADD {generation} {one}"),
                None,
                item::GROUP_KEY,
            )
            .await
            .map(|_| ())
        })
    }
}

impl DynamoLeaseStore {
    /// A heartbeat of `worker_id` in the group item; `member` requires it to be a member
    /// already (a heartbeat), otherwise it joins.
    async fn beat(
        &self,
        worker_id: &str,
        member: bool,
        leases: u64,
    ) -> Result<Membership, LeaseError> {
        let mut expression = Expression::default();
        let attribute = expression.tagged_name("member", &item::member_attribute(worker_id));
        let held = expression.tagged_name("held", &item::held_attribute(worker_id));
        let zero = expression.value("zero", item::number(0));
        let one = expression.value("one", item::number(1));
        let count = expression.value("leases", item::number(leases));
        let update = format!(
            "SET {attribute} = if_not_exists({attribute}, {zero}) + {one}, {held} = {count}"
        );
        let condition = member.then(|| format!("attribute_exists({attribute})"));
        let item = self
            .update_group(expression, update, condition, worker_id)
            .await?;
        Ok(item::to_membership(item.as_ref()))
    }

    /// Removes `worker_id`'s heartbeat and lease count from the group item; with
    /// `heartbeat`, only if its heartbeat is still that one (an eviction).
    async fn remove_member(
        &self,
        worker_id: &str,
        heartbeat: Option<u64>,
    ) -> Result<(), LeaseError> {
        let mut expression = Expression::default();
        // Not the `#member` placeholder of a heartbeat: faults aimed at one worker's
        // heartbeats (in the tests) must not hit its eviction.
        let member = expression.tagged_name("gone", &item::member_attribute(worker_id));
        let held = expression.tagged_name("held", &item::held_attribute(worker_id));
        let condition = heartbeat.map(|beat| {
            let seen = expression.value("seen", item::number(beat));
            format!("{member} = {seen}")
        });
        self.update_group(
            expression,
            format!("REMOVE {member}, {held}"),
            condition,
            worker_id,
        )
        .await
        .map(|_| ())
    }

    /// One conditional UpdateItem of the group item, returning the item after it (no
    /// read units: a write's return values are part of the write).
    async fn update_group(
        &self,
        expression: Expression,
        update: String,
        condition: Option<String>,
        worker_id: &str,
    ) -> Result<Option<Item>, LeaseError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.workers_table)
            .set_key(Some(Self::worker_key(item::GROUP_KEY)))
            .update_expression(update)
            .set_condition_expression(condition)
            .set_expression_attribute_names(expression.names())
            .set_expression_attribute_values(expression.values())
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify(e, &format!("UpdateItem {}", self.workers_table), worker_id))?;
        Ok(out.attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
