//! The statistics store over DynamoDB: the application's three tables, the reads the
//! processor needs (watermarks, order states) and the one write (a transaction per
//! [`Chunk`]), and the scans `stats` reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use kcl::checkpoint::{ExtendedSequenceNumber, LeaseOwnership};
use kcl::leases::table::{TableError, ensure_hash_key_table};

use super::items::{
    self, DEAD_LETTER_KEY, ORDER_KEY, STATS_KEY, ShardStats, StatsTables, decode_order,
    decode_stats, stats_key,
};
use super::plan::{Chunk, OrderState};
use super::summary::Totals;
use crate::clock::now_ms;
use crate::events::{Reason, Region};

mod error;

pub use error::{Cancellation, StoreError, TRANSIENT_CODES, cancellation, classify, denied_action};

/// Calls of one BatchGetItem batch while DynamoDB leaves keys unprocessed (it does
/// when a partition is throttled), pausing 20 ms, 40 ms, … up to 1 s between them:
/// about 4 s in all.
const UNPROCESSED_ROUNDS: u32 = 8;

/// How long [`StatsStore::ensure_tables`] waits for a table to become ACTIVE.
const TABLE_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed table set-up in the store's terms, the SDK errors classified like every
/// other call of the store.
fn table_error(err: TableError) -> StoreError {
    match err {
        TableError::Describe { table, source } => classify(*source, "DescribeTable", &table),
        TableError::Create { table, source } => classify(*source, "CreateTable", &table),
        TableError::KeySchema { .. } => StoreError::Fatal(err.to_string()),
        TableError::NotActive { .. } => StoreError::Transient(err.to_string()),
        // A set-up failure this version does not know: not worth retrying blindly.
        _ => StoreError::Fatal(err.to_string()),
    }
}

/// Everything the statistics table holds.
#[derive(Clone, Debug, Default)]
pub struct StoredStats {
    /// One entry per shard that has had records applied, by shard id.
    pub shards: Vec<ShardStats>,
    /// The sum over all shards.
    pub totals: Totals,
}

/// A dead letter as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredDeadLetter {
    /// The record's identity (see [`DeadLetter::id`](super::plan::DeadLetter::id)).
    pub id: String,
    /// The shard it was read from (first, if copies of it came again).
    pub shard_id: String,
    /// Where in that shard: sequence number and sub-sequence number.
    #[serde(serialize_with = "as_display")]
    pub position: ExtendedSequenceNumber,
    /// Why.
    pub reason: String,
    /// What exactly.
    pub detail: String,
    /// The record's bytes (possibly truncated), as lossy UTF-8.
    pub raw: String,
    /// The record's full length.
    pub raw_len: u64,
}

/// `seq.sub`, as [`ExtendedSequenceNumber`] displays it.
fn as_display<S: serde::Serializer>(
    position: &ExtendedSequenceNumber,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(position)
}

/// The application's statistics tables.
#[derive(Clone, Debug)]
pub struct StatsStore {
    client: Client,
    tables: StatsTables,
}

impl StatsStore {
    /// The store of application `app` (tables `<app>-Orders`, `<app>-Stats`,
    /// `<app>-DeadLetters`).
    pub fn new(client: Client, app: &str) -> StatsStore {
        StatsStore {
            client,
            tables: StatsTables::for_application(app),
        }
    }

    /// The table names.
    pub fn tables(&self) -> &StatsTables {
        &self.tables
    }

    /// Creates the three tables unless they exist and waits until they are ACTIVE
    /// (refusing a table of that name with another key schema).
    pub async fn ensure_tables(&self) -> Result<(), StoreError> {
        for (table, key) in [
            (&self.tables.orders, ORDER_KEY),
            (&self.tables.stats, STATS_KEY),
            (&self.tables.dead_letters, DEAD_LETTER_KEY),
        ] {
            ensure_hash_key_table(&self.client, table, key, TABLE_READY_TIMEOUT)
                .await
                .map_err(table_error)?;
        }
        Ok(())
    }

    /// The last record applied for `shard_id`, read consistently.
    pub async fn watermark(
        &self,
        shard_id: &str,
    ) -> Result<Option<ExtendedSequenceNumber>, StoreError> {
        Ok(self
            .shard_stats(shard_id)
            .await?
            .and_then(|stats| stats.watermark))
    }

    /// The statistics item of `shard_id` (watermark, counters, regions), read
    /// consistently; `None` before its first transaction.
    pub async fn shard_stats(&self, shard_id: &str) -> Result<Option<ShardStats>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.stats)
            .key(STATS_KEY, AttributeValue::S(stats_key(shard_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(e, "GetItem", &self.tables.stats))?;
        match out.item() {
            None => Ok(None),
            Some(item) => decode_stats(item)
                .map(Some)
                .map_err(|what| StoreError::Malformed {
                    table: self.tables.stats.clone(),
                    what,
                }),
        }
    }

    /// The states of `order_ids`, read consistently (`None`: no such order), in
    /// BatchGetItem calls of at most 100 keys.
    pub async fn order_states(
        &self,
        order_ids: &[String],
    ) -> Result<HashMap<String, Option<OrderState>>, StoreError> {
        let mut states: HashMap<String, Option<OrderState>> =
            order_ids.iter().map(|id| (id.clone(), None)).collect();
        let items = self
            .batch_get(
                &self.tables.orders,
                ORDER_KEY,
                order_ids,
                "order_id, created_at, price_cents, created_shard, assigned_at, completed_at, event_digests",
            )
            .await?;
        for item in &items {
            let (id, state) = decode_order(item).map_err(|what| StoreError::Malformed {
                table: self.tables.orders.clone(),
                what,
            })?;
            states.insert(id, Some(state));
        }
        Ok(states)
    }

    /// Which of the dead letters `ids` ([`DeadLetter::id`](super::plan::DeadLetter::id))
    /// are stored, read consistently.
    pub async fn stored_dead_letters(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let items = self
            .batch_get(
                &self.tables.dead_letters,
                DEAD_LETTER_KEY,
                ids,
                DEAD_LETTER_KEY,
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| item.get(DEAD_LETTER_KEY)?.as_s().ok().cloned())
            .collect())
    }

    /// The items of `table` whose string key `key` is one of `ids` (the `projection`
    /// of each), read consistently in BatchGetItem calls of at most 100 keys; keys
    /// DynamoDB leaves unprocessed are asked for again after a pause, in at most
    /// [`UNPROCESSED_ROUNDS`] calls per 100 keys, then a transient error (which the
    /// processor logs and retries with its own backoff).
    async fn batch_get(
        &self,
        table: &str,
        key: &str,
        ids: &[String],
        projection: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut found = Vec::new();
        for batch in ids.chunks(100) {
            let keys: Vec<_> = batch
                .iter()
                .map(|id| HashMap::from([(key.to_string(), AttributeValue::S(id.clone()))]))
                .collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .projection_expression(projection)
                    .build()
                    .map_err(|e| StoreError::Fatal(e.to_string()))?,
            );
            let mut pause = Duration::from_millis(20);
            let mut rounds = 0;
            while let Some(keys) = request.take() {
                rounds += 1;
                if rounds > UNPROCESSED_ROUNDS {
                    return Err(StoreError::Transient(format!(
                        "BatchGetItem on {table} still left {} keys unprocessed after \
                         {UNPROCESSED_ROUNDS} calls",
                        keys.keys().len()
                    )));
                }
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(table, keys)
                    .send()
                    .await
                    .map_err(|e| classify(e, "BatchGetItem", table))?;
                found.extend(
                    out.responses()
                        .and_then(|r| r.get(table))
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
                request = out
                    .unprocessed_keys()
                    .and_then(|u| u.get(table))
                    .filter(|k| !k.keys().is_empty())
                    .cloned();
                if request.is_some() {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
        Ok(found)
    }

    /// Applies `chunk` of `shard_id` in one transaction, if `writer` still holds the
    /// shard's lease, the shard's watermark is still `previous` and every order is in
    /// the state the plan assumed. `regions` are the shard's orders per region after
    /// the chunk (its stored counts, which go with `previous`, plus the chunk's).
    pub async fn apply(
        &self,
        shard_id: &str,
        previous: Option<&ExtendedSequenceNumber>,
        regions: &BTreeMap<Region, u64>,
        chunk: &Chunk,
        writer: &LeaseOwnership,
    ) -> Result<(), StoreError> {
        let items = items::transact_items(
            &self.tables,
            shard_id,
            previous,
            regions,
            chunk,
            writer,
            now_ms(),
        )
        .map_err(|e| StoreError::Fatal(e.to_string()))?;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let tables = format!(
                    "{}, {}, {} and {}",
                    self.tables.stats,
                    self.tables.orders,
                    self.tables.dead_letters,
                    self.tables.leases
                );
                if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                    e.as_service_error()
                {
                    let codes: Vec<&str> = cancelled
                        .cancellation_reasons()
                        .iter()
                        .map(|r| r.code().unwrap_or("None"))
                        .collect();
                    let reasons = codes.join(", ");
                    let detail = || {
                        cancelled
                            .cancellation_reasons()
                            .iter()
                            .filter_map(|r| r.message())
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    return Err(match cancellation(&codes) {
                        Cancellation::LeaseLost => StoreError::LeaseLost,
                        Cancellation::Conflict => StoreError::Conflict { reasons },
                        Cancellation::Transient => StoreError::Transient(format!(
                            "TransactWriteItems cancelled: [{reasons}]"
                        )),
                        Cancellation::Refused => StoreError::Refused {
                            operation: format!("TransactWriteItems on {tables}"),
                            message: format!("cancelled: [{reasons}] {}", detail()),
                        },
                        Cancellation::Unknown => StoreError::Fatal(format!(
                            "TransactWriteItems on {tables} cancelled for reasons this \
                             application does not know: [{reasons}] {}",
                            detail()
                        )),
                    });
                }
                Err(classify(e, "TransactWriteItems", &tables))
            }
        }
    }

    /// Every shard's statistics item and their sum, read consistently.
    pub async fn read(&self) -> Result<StoredStats, StoreError> {
        let mut stored = StoredStats::default();
        for item in self.scan_stats(None).await? {
            let is_stats = item
                .get(STATS_KEY)
                .and_then(|k| k.as_s().ok())
                .is_some_and(|k| k.starts_with("stats#"));
            if !is_stats {
                continue;
            }
            let shard = decode_stats(&item).map_err(|what| StoreError::Malformed {
                table: self.tables.stats.clone(),
                what,
            })?;
            stored.totals.add(&shard.totals);
            stored.shards.push(shard);
        }
        stored.shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        Ok(stored)
    }

    /// Every shard's watermark (the last record applied), read consistently and
    /// without the counters: cheap enough to poll.
    pub async fn watermarks(&self) -> Result<HashMap<String, ExtendedSequenceNumber>, StoreError> {
        let mut out = HashMap::new();
        let rows = self
            .scan_stats(Some("shard_id, applied_seq, applied_sub"))
            .await?;
        for item in rows {
            let shard = item.get("shard_id").and_then(|v| v.as_s().ok());
            let watermark =
                items::decode_watermark(&item).map_err(|what| StoreError::Malformed {
                    table: self.tables.stats.clone(),
                    what,
                })?;
            if let (Some(shard), Some(watermark)) = (shard, watermark) {
                out.insert(shard.clone(), watermark);
            }
        }
        Ok(out)
    }

    /// Every item of the statistics table (only the `projection` attributes if given),
    /// read consistently, following `LastEvaluatedKey` across pages.
    async fn scan_stats(
        &self,
        projection: Option<&str>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.tables.stats)
                .consistent_read(true)
                .set_projection_expression(projection.map(str::to_string))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(e, "Scan", &self.tables.stats))?;
            let next = page.last_evaluated_key().filter(|k| !k.is_empty()).cloned();
            items.extend(page.items.unwrap_or_default());
            match next {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }

    /// Up to `limit` dead letters (in no particular order).
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        while out.len() < limit {
            let page = self
                .client
                .scan()
                .table_name(&self.tables.dead_letters)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(e, "Scan", &self.tables.dead_letters))?;
            for item in page.items().iter().take(limit - out.len()) {
                let text = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                let number = |k: &str| -> u64 {
                    item.get(k)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_default()
                };
                out.push(StoredDeadLetter {
                    id: text(DEAD_LETTER_KEY),
                    shard_id: text("shard_id"),
                    position: ExtendedSequenceNumber::at(
                        text("sequence_number"),
                        number("sub_sequence_number"),
                    ),
                    reason: Reason::parse(&text("reason"))
                        .map_or_else(|| text("reason"), |r| r.to_string()),
                    detail: text("detail"),
                    raw: item
                        .get("raw")
                        .and_then(|v| v.as_b().ok())
                        .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
                        .unwrap_or_default(),
                    raw_len: number("raw_len"),
                });
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        Ok(out)
    }
}
