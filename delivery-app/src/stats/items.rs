//! DynamoDB item encoding of the statistics tables, kept apart from the calls:
//! a planned [`Chunk`] as `TransactWriteItems` entries, and the items read back.
//!
//! - Orders table, key `order_id`: `created_at`, `price_cents`, `pickup_x/y`,
//!   `dropoff_x/y`, `created_shard`; `assigned_at`, `driver_id`; `completed_at`; and
//!   `event_digests`, a number set of the [`digest`](super::plan::digest)s of the
//!   events applied (`ADD`ed with each transition), which recognises redeliveries.
//! - Statistics table, key `pk` = `stats#<shard id>`, one item per shard: the
//!   watermark `applied_seq`/`applied_sub` (last record applied), the counters, one
//!   `dl_<reason>` per dead-letter reason, and `regions`: the orders per pickup region
//!   as one string (`x_y:n` separated by spaces, see [`encode_regions`]). At most 2,500
//!   regions, about 25 KB: well under the 400 KB item limit.
//! - Dead-letter table, key `dl_id` = `<digest>-<length>` of the record's bytes (see
//!   [`DeadLetter::id`]), put only if absent: a copy of a rejected record is one dead
//!   letter. `shard_id`, `sequence_number`, `sub_sequence_number` say where it was
//!   read first.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};
use kcl::checkpoint::{ExtendedSequenceNumber, LeaseOwnership, SequencePosition};

use crate::events::{Reason, Region};

use super::plan::{Chunk, DeadLetter, Expect, OrderState, OrderWrite};
use super::summary::Totals;

/// Key attribute of the orders table.
pub const ORDER_KEY: &str = "order_id";
/// Key attribute of the statistics table.
pub const STATS_KEY: &str = "pk";
/// Key attribute of the dead-letter table.
pub const DEAD_LETTER_KEY: &str = "dl_id";
/// Number set attribute of an order: the digests of the events applied to it.
pub const EVENT_DIGESTS: &str = "event_digests";

/// The statistics item key of a shard.
pub fn stats_key(shard_id: &str) -> String {
    format!("stats#{shard_id}")
}

/// The three tables of an application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsTables {
    /// Per-order state.
    pub orders: String,
    /// Per-shard counters and watermarks.
    pub stats: String,
    /// Rejected records.
    pub dead_letters: String,
    /// The kcl-rs lease table, whose items fence the writes.
    pub leases: String,
}

impl StatsTables {
    /// `<app>-Orders`, `<app>-Stats`, `<app>-DeadLetters` (the lease table is `<app>`).
    pub fn for_application(app: &str) -> StatsTables {
        StatsTables {
            orders: format!("{app}-Orders"),
            stats: format!("{app}-Stats"),
            dead_letters: format!("{app}-DeadLetters"),
            leases: app.to_string(),
        }
    }
}

type Item = HashMap<String, AttributeValue>;

/// Placeholders for attribute names and values of one expression set.
#[derive(Default)]
struct Placeholders {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Placeholders {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#a{}", self.names.len());
        self.names
            .insert(placeholder.clone(), attribute.to_string());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// The counters of a statistics item, by attribute name.
fn counters(t: &Totals) -> [(&'static str, i64); 10] {
    let x = &t.sums;
    [
        ("events", x.events as i64),
        ("orders_created", x.orders_created as i64),
        ("created_price_cents", x.created_price_cents),
        ("orders_assigned", x.orders_assigned as i64),
        ("response_ms_sum", x.response_ms_sum),
        ("orders_completed", x.orders_completed as i64),
        ("completed_price_cents", x.completed_price_cents),
        ("completion_ms_sum", x.completion_ms_sum),
        ("cross_shard_completions", t.cross_shard_completions as i64),
        ("redeliveries_skipped", t.redeliveries_skipped as i64),
    ]
}

fn set_counter(t: &mut Totals, name: &str, v: i64) -> bool {
    let x = &mut t.sums;
    match name {
        "events" => x.events = v as u64,
        "orders_created" => x.orders_created = v as u64,
        "created_price_cents" => x.created_price_cents = v,
        "orders_assigned" => x.orders_assigned = v as u64,
        "response_ms_sum" => x.response_ms_sum = v,
        "orders_completed" => x.orders_completed = v as u64,
        "completed_price_cents" => x.completed_price_cents = v,
        "completion_ms_sum" => x.completion_ms_sum = v,
        "cross_shard_completions" => t.cross_shard_completions = v as u64,
        "redeliveries_skipped" => t.redeliveries_skipped = v as u64,
        _ => return false,
    }
    true
}

/// The orders per region as one attribute value: `x_y:n` pairs in region order,
/// separated by spaces, e.g. `3_18:69 12_40:108`.
///
/// One string instead of one attribute per region: a DynamoDB update rewrites the
/// whole item anyway, and one attribute is far cheaper to read and write than 2,500.
/// It can be `SET` rather than `ADD`ed because only the shard's lease holder writes it,
/// conditioned on the watermark it read it with.
///
/// ```
/// use std::collections::BTreeMap;
/// use delivery_app::events::Region;
/// use delivery_app::stats::items::{decode_regions, encode_regions};
///
/// let counts = BTreeMap::from([(Region { x: 3, y: 18 }, 69), (Region { x: 12, y: 40 }, 108)]);
/// assert_eq!(encode_regions(&counts), "3_18:69 12_40:108");
/// assert_eq!(decode_regions("3_18:69 12_40:108"), Ok(counts));
/// assert!(decode_regions("50_1:3").is_err());
/// ```
pub fn encode_regions(counts: &std::collections::BTreeMap<Region, u64>) -> String {
    let mut out = String::with_capacity(counts.len() * 10);
    for (region, n) in counts.iter().filter(|(_, n)| **n > 0) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{}_{}:{n}", region.x, region.y));
    }
    out
}

/// Parses [`encode_regions`]'s spelling.
pub fn decode_regions(text: &str) -> Result<std::collections::BTreeMap<Region, u64>, String> {
    text.split_whitespace()
        .map(|pair| {
            let (key, n) = pair
                .split_once(':')
                .ok_or_else(|| format!("region count {pair:?} has no ':'"))?;
            let region = Region::from_key(&format!("r{key}"))
                .ok_or_else(|| format!("{key:?} is not a region of the grid"))?;
            let n = n
                .parse::<u64>()
                .map_err(|_| format!("region count {pair:?} is not a number"))?;
            Ok((region, n))
        })
        .collect()
}

/// The transaction for `chunk`: the shard's statistics item first (conditioned on the
/// watermark being `previous`; `regions` is the shard's region counts after the chunk),
/// then one write per order, then the dead letters, and last the check that `writer`
/// still holds the shard's lease (see [`kcl::leases::dynamo::ownership_check`]).
pub fn transact_items(
    tables: &StatsTables,
    shard_id: &str,
    previous: Option<&ExtendedSequenceNumber>,
    regions: &std::collections::BTreeMap<Region, u64>,
    chunk: &Chunk,
    writer: &LeaseOwnership,
    now_ms: i64,
) -> Result<Vec<TransactWriteItem>, BuildError> {
    let mut items = Vec::with_capacity(chunk.items());
    items.push(
        TransactWriteItem::builder()
            .update(stats_update(
                tables, shard_id, previous, regions, chunk, now_ms,
            )?)
            .build(),
    );
    for order in &chunk.orders {
        items.push(order_write(tables, shard_id, order)?);
    }
    for dead in &chunk.dead_letters {
        items.push(
            TransactWriteItem::builder()
                .put(dead_letter_put(tables, shard_id, dead, now_ms)?)
                .build(),
        );
    }
    // Last, so that a cancellation reason at this index means the lease moved.
    items.push(
        TransactWriteItem::builder()
            .condition_check(kcl::leases::dynamo::ownership_check(
                &tables.leases,
                shard_id,
                writer,
            ))
            .build(),
    );
    Ok(items)
}

fn stats_update(
    tables: &StatsTables,
    shard_id: &str,
    previous: Option<&ExtendedSequenceNumber>,
    regions: &std::collections::BTreeMap<Region, u64>,
    chunk: &Chunk,
    now_ms: i64,
) -> Result<Update, BuildError> {
    let mut p = Placeholders::default();
    let (seq, sub) = (p.name("applied_seq"), p.name("applied_sub"));
    let condition = match previous {
        None => format!("attribute_not_exists({seq})"),
        Some(prev) => {
            let (ps, pb) = (
                p.value(s(prev.position.as_str())),
                p.value(n(prev.sub_sequence)),
            );
            format!("{seq} = {ps} AND {sub} = {pb}")
        }
    };
    let mut sets = vec![
        format!(
            "{seq} = {}",
            p.value(s(chunk.last.position.as_str().to_string()))
        ),
        format!("{sub} = {}", p.value(n(chunk.last.sub_sequence))),
        format!("{} = {}", p.name("shard_id"), p.value(s(shard_id))),
        format!("{} = {}", p.name("updated_at"), p.value(n(now_ms))),
    ];
    let mut adds = Vec::new();
    let mut add = |p: &mut Placeholders, name: &str, v: i64| {
        if v != 0 {
            adds.push(format!("{} {}", p.name(name), p.value(n(v))));
        }
    };
    for (name, v) in counters(&chunk.delta) {
        add(&mut p, name, v);
    }
    for (reason, v) in &chunk.delta.dead_letters {
        add(&mut p, &format!("dl_{reason}"), *v as i64);
    }
    if !chunk.delta.regions.is_empty() {
        sets.push(format!(
            "{} = {}",
            p.name("regions"),
            p.value(s(encode_regions(regions)))
        ));
    }
    let mut expression = format!("SET {}", sets.join(", "));
    if !adds.is_empty() {
        expression.push_str(&format!(" ADD {}", adds.join(", ")));
    }
    Update::builder()
        .table_name(&tables.stats)
        .key(STATS_KEY, s(stats_key(shard_id)))
        .update_expression(expression)
        .condition_expression(condition)
        .set_expression_attribute_names(Some(p.names.clone()))
        .set_expression_attribute_values(p.values())
        .build()
}

fn order_condition(p: &mut Placeholders, expect: Expect) -> String {
    match expect {
        Expect::Absent => format!("attribute_not_exists({})", p.name(ORDER_KEY)),
        Expect::Present {
            assigned,
            completed,
        } => {
            let flag = |p: &mut Placeholders, attr: &str, exists: bool| {
                let f = if exists {
                    "attribute_exists"
                } else {
                    "attribute_not_exists"
                };
                format!("{f}({})", p.name(attr))
            };
            format!(
                "attribute_exists({}) AND {} AND {}",
                p.name("created_at"),
                flag(p, "assigned_at", assigned),
                flag(p, "completed_at", completed)
            )
        }
    }
}

fn order_write(
    tables: &StatsTables,
    shard_id: &str,
    order: &OrderWrite,
) -> Result<TransactWriteItem, BuildError> {
    let mut p = Placeholders::default();
    let condition = order_condition(&mut p, order.expect);
    let key = s(order.order_id.clone());
    if order.is_check_only() {
        let check = ConditionCheck::builder()
            .table_name(&tables.orders)
            .key(ORDER_KEY, key)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(p.names.clone()))
            .set_expression_attribute_values(p.values())
            .build()?;
        return Ok(TransactWriteItem::builder().condition_check(check).build());
    }
    let mut attributes: Vec<(&str, AttributeValue)> = Vec::new();
    if let Some(c) = &order.created {
        attributes.extend([
            ("created_at", n(c.created_at)),
            ("price_cents", n(c.price_cents)),
            ("pickup_x", n(c.pickup.x)),
            ("pickup_y", n(c.pickup.y)),
            ("dropoff_x", n(c.dropoff.x)),
            ("dropoff_y", n(c.dropoff.y)),
            ("created_shard", s(shard_id)),
        ]);
    }
    if let Some(a) = &order.assigned {
        attributes.push(("assigned_at", n(a.assigned_at)));
        attributes.push(("driver_id", s(a.driver_id.clone())));
    }
    if let Some(completed_at) = order.completed_at {
        attributes.push(("completed_at", n(completed_at)));
    }
    // Never empty here (every transition adds its digest), and DynamoDB has no empty
    // sets.
    let digests = (!order.digests.is_empty())
        .then(|| AttributeValue::Ns(order.digests.iter().map(u64::to_string).collect()));
    if order.expect == Expect::Absent {
        // A new order: the whole item, put if absent (cheaper than an update).
        let mut put = Put::builder()
            .table_name(&tables.orders)
            .item(ORDER_KEY, key)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(p.names.clone()))
            .set_expression_attribute_values(p.values());
        for (name, value) in attributes {
            put = put.item(name, value);
        }
        if let Some(digests) = digests {
            put = put.item(EVENT_DIGESTS, digests);
        }
        return Ok(TransactWriteItem::builder().put(put.build()?).build());
    }
    let sets: Vec<String> = attributes
        .into_iter()
        .map(|(name, value)| format!("{} = {}", p.name(name), p.value(value)))
        .collect();
    let mut expression = format!("SET {}", sets.join(", "));
    if let Some(digests) = digests {
        expression.push_str(&format!(
            " ADD {} {}",
            p.name(EVENT_DIGESTS),
            p.value(digests)
        ));
    }
    let update = Update::builder()
        .table_name(&tables.orders)
        .key(ORDER_KEY, key)
        .update_expression(expression)
        .condition_expression(condition)
        .set_expression_attribute_names(Some(p.names.clone()))
        .set_expression_attribute_values(p.values())
        .build()?;
    Ok(TransactWriteItem::builder().update(update).build())
}

fn dead_letter_put(
    tables: &StatsTables,
    shard_id: &str,
    dead: &DeadLetter,
    now_ms: i64,
) -> Result<Put, BuildError> {
    let mut put = Put::builder()
        .table_name(&tables.dead_letters)
        .item(DEAD_LETTER_KEY, s(dead.id.clone()))
        .item("shard_id", s(shard_id))
        .item("sequence_number", s(dead.position.position.as_str()))
        .item("sub_sequence_number", n(dead.position.sub_sequence))
        .item("partition_key", s(dead.partition_key.clone()))
        .item("reason", s(dead.reason.as_str()))
        .item("detail", s(dead.detail.clone()))
        .item("raw_len", n(dead.raw_len))
        .item(
            "truncated",
            AttributeValue::Bool(dead.raw.len() < dead.raw_len),
        )
        .item("recorded_at", n(now_ms))
        .condition_expression("attribute_not_exists(#k)")
        .expression_attribute_names("#k", DEAD_LETTER_KEY);
    if !dead.raw.is_empty() {
        put = put.item("raw", AttributeValue::B(Blob::new(dead.raw.clone())));
    }
    if let Some(order_id) = &dead.order_id {
        put = put.item("order_id", s(order_id.clone()));
    }
    put.build()
}

fn number(item: &Item, name: &str) -> Result<Option<i64>, String> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} = {v:?} is not an integer")),
        Some(other) => Err(format!("{name} is not a number: {other:?}")),
    }
}

fn string<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// One shard's statistics item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard.
    pub shard_id: String,
    /// The last record applied.
    pub watermark: Option<ExtendedSequenceNumber>,
    /// When it was last written, ms since the Unix epoch.
    pub updated_at: i64,
    /// Its counters.
    pub totals: Totals,
}

/// The watermark of a statistics item.
pub fn decode_watermark(item: &Item) -> Result<Option<ExtendedSequenceNumber>, String> {
    let Some(seq) = string(item, "applied_seq") else {
        return Ok(None);
    };
    let sub = number(item, "applied_sub")?.unwrap_or(0);
    match SequencePosition::parse(seq) {
        Some(SequencePosition::Sequence(seq)) => {
            Ok(Some(ExtendedSequenceNumber::at(seq, sub as u64)))
        }
        _ => Err(format!("applied_seq {seq:?} is not a sequence number")),
    }
}

/// Decodes a statistics item.
pub fn decode_stats(item: &Item) -> Result<ShardStats, String> {
    let mut stats = ShardStats {
        shard_id: string(item, "shard_id").unwrap_or_default().to_string(),
        watermark: decode_watermark(item)?,
        updated_at: number(item, "updated_at")?.unwrap_or(0),
        totals: Totals::default(),
    };
    if let Some(regions) = string(item, "regions") {
        stats.totals.regions = decode_regions(regions)?;
    }
    for (name, value) in item {
        let AttributeValue::N(text) = value else {
            continue;
        };
        let Ok(v) = text.parse::<i64>() else {
            return Err(format!("{name} = {text:?} is not an integer"));
        };
        if set_counter(&mut stats.totals, name, v) {
            continue;
        }
        if let Some(reason) = name.strip_prefix("dl_").and_then(Reason::parse) {
            stats.totals.dead_letters.insert(reason, v as u64);
        }
    }
    Ok(stats)
}

/// Decodes an order item (only created orders have one).
pub fn decode_order(item: &Item) -> Result<(String, OrderState), String> {
    let id = string(item, ORDER_KEY).ok_or("order without order_id")?;
    let need = |name| number(item, name)?.ok_or_else(|| format!("order {id} has no {name}"));
    Ok((
        id.to_string(),
        OrderState {
            created_at: need("created_at")?,
            price_cents: need("price_cents")?,
            created_shard: string(item, "created_shard")
                .unwrap_or_default()
                .to_string(),
            assigned: item.contains_key("assigned_at"),
            completed: item.contains_key("completed_at"),
            applied: digests(item, id)?,
        },
    ))
}

/// The digests of an order item's `event_digests` (none when absent: an order stored
/// before digests were kept).
fn digests(item: &Item, id: &str) -> Result<Vec<u64>, String> {
    match item.get(EVENT_DIGESTS) {
        None => Ok(Vec::new()),
        Some(AttributeValue::Ns(values)) => values
            .iter()
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("order {id}: digest {v:?} is not a 64-bit number"))
            })
            .collect(),
        Some(other) => Err(format!(
            "order {id}: {EVENT_DIGESTS} is not a number set: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests;
