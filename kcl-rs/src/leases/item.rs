//! The DynamoDB item encoding of a lease and of a worker heartbeat.
//!
//! Attribute names and types are those of the Java KCL 2.x lease table, so operators,
//! scripts and dashboards that know that table read ours unchanged. Attributes this
//! module does not know are ignored on read (other tools may add their own).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::checkpoint::{ExtendedSequenceNumber, SequencePosition};

use super::lease::{Lease, ShardLoad};
use super::store::{LeaseError, Membership, WorkerHeartbeat};

/// A DynamoDB item as the SDK represents it.
pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) const LEASE_KEY: &str = "leaseKey";
pub(super) const LEASE_OWNER: &str = "leaseOwner";
pub(super) const LEASE_COUNTER: &str = "leaseCounter";
pub(super) const CHECKPOINT: &str = "checkpoint";
pub(super) const CHECKPOINT_SUB_SEQUENCE_NUMBER: &str = "checkpointSubSequenceNumber";
pub(super) const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
pub(super) const PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER: &str =
    "pendingCheckpointSubSequenceNumber";
pub(super) const OWNER_SWITCHES_SINCE_CHECKPOINT: &str = "ownerSwitchesSinceCheckpoint";
pub(super) const PARENT_SHARD_ID: &str = "parentShardId";
pub(super) const CHILD_SHARD_IDS: &str = "childShardIds";
pub(super) const STARTING_HASH_KEY: &str = "startingHashKey";
pub(super) const ENDING_HASH_KEY: &str = "endingHashKey";
pub(super) const CHECKPOINT_OWNER: &str = "checkpointOwner";
/// Not in the Java KCL's table: the epoch fencing of `ownership_check`.
pub(super) const LEASE_EPOCH: &str = "leaseEpoch";
pub(super) const CHECKPOINT_OWNER_EPOCH: &str = "checkpointOwnerEpoch";
pub(super) const THROUGHPUT_RECORDS_PER_SECOND: &str = "throughputRecordsPerSecond";
pub(super) const THROUGHPUT_BYTES_PER_SECOND: &str = "throughputBytesPerSecond";
pub(super) const MILLIS_BEHIND_LATEST: &str = "millisBehindLatest";

pub(super) const WORKER_ID: &str = "workerId";
/// The `workerId` of the one item of the workers table that holds the group.
pub(super) const GROUP_KEY: &str = "kcl-rs:group";
/// Prefix of the group item's attribute per member: `hb:{worker id}` = heartbeat.
pub(super) const MEMBER_PREFIX: &str = "hb:";
/// Prefix of the group item's attribute per member: `held:{worker id}` = how many
/// leases it held at its last heartbeat.
pub(super) const HELD_PREFIX: &str = "held:";
pub(super) const LEASE_GENERATION: &str = "leaseGeneration";

/// The item for a lease. Empty parent and child lists are left out because DynamoDB
/// rejects empty sets.
pub(super) fn to_item(lease: &Lease) -> Item {
    let mut item = Item::new();
    item.insert(LEASE_KEY.into(), string(&lease.key));
    item.insert(LEASE_COUNTER.into(), number(lease.counter));
    item.insert(CHECKPOINT.into(), position(&lease.checkpoint));
    item.insert(
        CHECKPOINT_SUB_SEQUENCE_NUMBER.into(),
        number(lease.checkpoint.sub_sequence),
    );
    item.insert(
        OWNER_SWITCHES_SINCE_CHECKPOINT.into(),
        number(lease.owner_switches_since_checkpoint),
    );
    if let Some(owner) = &lease.owner {
        item.insert(LEASE_OWNER.into(), string(owner));
    }
    if let Some(pending) = &lease.pending_checkpoint {
        item.insert(PENDING_CHECKPOINT.into(), position(pending));
        item.insert(
            PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER.into(),
            number(pending.sub_sequence),
        );
    }
    if let Some(parents) = string_set(&lease.parent_shard_ids) {
        item.insert(PARENT_SHARD_ID.into(), parents);
    }
    if let Some(children) = string_set(&lease.child_shard_ids) {
        item.insert(CHILD_SHARD_IDS.into(), children);
    }
    if let Some((start, end)) = lease.hash_key_range {
        item.insert(STARTING_HASH_KEY.into(), string(&start.to_string()));
        item.insert(ENDING_HASH_KEY.into(), string(&end.to_string()));
    }
    if let Some(owner) = &lease.checkpoint_owner {
        item.insert(CHECKPOINT_OWNER.into(), string(owner));
    }
    if let Some(epoch) = lease.epoch {
        item.insert(LEASE_EPOCH.into(), number(epoch));
    }
    if let Some(epoch) = lease.checkpoint_owner_epoch {
        item.insert(CHECKPOINT_OWNER_EPOCH.into(), number(epoch));
    }
    if let Some(load) = &lease.load {
        item.extend(load_attributes(load));
    }
    item
}

/// The lease in an item. `leaseKey`, `leaseCounter` and `checkpoint` are required; any
/// known attribute that is present must have its documented type and a valid value.
pub(super) fn to_lease(item: &Item) -> Result<Lease, LeaseError> {
    let key = match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => key.clone(),
        Some(_) => return Err(malformed("?", format!("{LEASE_KEY} is not a string"))),
        None => return Err(malformed("?", format!("{LEASE_KEY} is missing"))),
    };
    let attrs = Attributes { item, key: &key };
    let counter = attrs
        .u64(LEASE_COUNTER)?
        .ok_or_else(|| malformed(&key, format!("{LEASE_COUNTER} is missing")))?;
    let checkpoint = attrs
        .position(CHECKPOINT, CHECKPOINT_SUB_SEQUENCE_NUMBER)?
        .ok_or_else(|| malformed(&key, format!("{CHECKPOINT} is missing")))?;
    let pending_checkpoint =
        attrs.position(PENDING_CHECKPOINT, PENDING_CHECKPOINT_SUB_SEQUENCE_NUMBER)?;
    let hash_key_range = match (attrs.u128(STARTING_HASH_KEY)?, attrs.u128(ENDING_HASH_KEY)?) {
        (Some(start), Some(end)) => Some((start, end)),
        (None, None) => None,
        _ => {
            return Err(malformed(
                &key,
                format!("only one of {STARTING_HASH_KEY} and {ENDING_HASH_KEY} is present"),
            ));
        }
    };
    let records = attrs.f64(THROUGHPUT_RECORDS_PER_SECOND)?;
    let bytes = attrs.f64(THROUGHPUT_BYTES_PER_SECOND)?;
    let behind = attrs.i64(MILLIS_BEHIND_LATEST)?;
    let load = (records.is_some() || bytes.is_some() || behind.is_some()).then(|| ShardLoad {
        records_per_sec: records.unwrap_or(0.0),
        bytes_per_sec: bytes.unwrap_or(0.0),
        millis_behind_latest: behind.unwrap_or(0),
    });
    Ok(Lease {
        owner: attrs.string(LEASE_OWNER)?,
        counter,
        checkpoint,
        pending_checkpoint,
        owner_switches_since_checkpoint: attrs.u64(OWNER_SWITCHES_SINCE_CHECKPOINT)?.unwrap_or(0),
        parent_shard_ids: attrs.string_set(PARENT_SHARD_ID)?,
        child_shard_ids: attrs.string_set(CHILD_SHARD_IDS)?,
        hash_key_range,
        checkpoint_owner: attrs.string(CHECKPOINT_OWNER)?,
        epoch: attrs.u64(LEASE_EPOCH)?,
        checkpoint_owner_epoch: attrs.u64(CHECKPOINT_OWNER_EPOCH)?,
        load,
        key,
    })
}

/// The lease exactly as [`to_lease`] would read it back after [`to_item`]: sets
/// sorted without duplicates, load figures as [`load_attributes`] stores them. The
/// memory store keeps this form so that it answers like DynamoDB does.
pub(super) fn canonical(mut lease: Lease) -> Lease {
    lease.parent_shard_ids = canonical_set(&lease.parent_shard_ids);
    lease.child_shard_ids = canonical_set(&lease.child_shard_ids);
    lease.load = lease.load.map(|load| ShardLoad {
        records_per_sec: storable_f64(load.records_per_sec),
        bytes_per_sec: storable_f64(load.bytes_per_sec),
        millis_behind_latest: load.millis_behind_latest,
    });
    lease
}

/// The heartbeat attribute of `worker_id` in the group item.
pub(super) fn member_attribute(worker_id: &str) -> String {
    format!("{MEMBER_PREFIX}{worker_id}")
}

/// The lease-count attribute of `worker_id` in the group item.
pub(super) fn held_attribute(worker_id: &str) -> String {
    format!("{HELD_PREFIX}{worker_id}")
}

/// The group in the group item of the workers table (an absent item is an empty group).
/// The item is written only by workers; an attribute that is not what they write (by
/// hand, or by another tool) is left out with a warning rather than failing every
/// heartbeat: a member whose heartbeat is unreadable is not a member, an unreadable
/// lease count is unknown, an unreadable lease generation is 0.
pub(super) fn to_membership(item: Option<&Item>) -> Membership {
    let Some(item) = item else {
        return Membership::default();
    };
    let attributes = Attributes {
        item,
        key: GROUP_KEY,
    };
    let readable = |name: &str| {
        attributes.u64(name).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring an attribute of the group item");
            None
        })
    };
    let mut workers = Vec::new();
    for name in item.keys() {
        if let Some(worker_id) = name.strip_prefix(MEMBER_PREFIX)
            && let Some(heartbeat) = readable(name)
        {
            workers.push(WorkerHeartbeat {
                worker_id: worker_id.to_string(),
                heartbeat,
                leases: readable(&held_attribute(worker_id)),
            });
        }
    }
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    Membership {
        workers,
        lease_generation: readable(LEASE_GENERATION).unwrap_or(0),
    }
}

/// The three load attributes.
pub(super) fn load_attributes(load: &ShardLoad) -> [(String, AttributeValue); 3] {
    [
        (
            THROUGHPUT_RECORDS_PER_SECOND.into(),
            AttributeValue::N(storable_f64(load.records_per_sec).to_string()),
        ),
        (
            THROUGHPUT_BYTES_PER_SECOND.into(),
            AttributeValue::N(storable_f64(load.bytes_per_sec).to_string()),
        ),
        (
            MILLIS_BEHIND_LATEST.into(),
            AttributeValue::N(load.millis_behind_latest.to_string()),
        ),
    ]
}

/// An `S` value.
pub(super) fn string(s: &str) -> AttributeValue {
    AttributeValue::S(s.to_string())
}

/// An `N` value.
pub(super) fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// The `checkpoint` (or `pendingCheckpoint`) value: a sequence number or sentinel.
pub(super) fn position(checkpoint: &ExtendedSequenceNumber) -> AttributeValue {
    string(checkpoint.position.as_str())
}

/// An `SS` value, or `None` for an empty list (DynamoDB has no empty sets).
pub(super) fn string_set(values: &[String]) -> Option<AttributeValue> {
    (!values.is_empty()).then(|| AttributeValue::Ss(canonical_set(values)))
}

fn canonical_set(values: &[String]) -> Vec<String> {
    let mut values = values.to_vec();
    values.sort();
    values.dedup();
    values
}

/// A load figure DynamoDB accepts as a number and gives back unchanged. NaN and
/// infinities have no DynamoDB spelling, and the plain decimal form of very small or
/// very large doubles exceeds its 38 digits; a decaying rate must never make the
/// renewal that carries it fail, so those become 0 or are capped.
fn storable_f64(x: f64) -> f64 {
    const CAP: f64 = 1e18;
    if !x.is_finite() || x.abs() < 1e-9 {
        0.0
    } else {
        x.clamp(-CAP, CAP)
    }
}

fn malformed(key: &str, what: impl Into<String>) -> LeaseError {
    LeaseError::Malformed {
        key: key.to_string(),
        what: what.into(),
    }
}

/// Typed access to the optional attributes of one item, naming the item in errors.
struct Attributes<'a> {
    item: &'a Item,
    key: &'a str,
}

impl Attributes<'_> {
    fn string(&self, name: &str) -> Result<Option<String>, LeaseError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(self.key, format!("{name} is not a string"))),
        }
    }

    fn number(&self, name: &str) -> Result<Option<&str>, LeaseError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::N(n)) => Ok(Some(n)),
            Some(_) => Err(malformed(self.key, format!("{name} is not a number"))),
        }
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        name: &str,
        raw: Option<&str>,
        expected: &str,
    ) -> Result<Option<T>, LeaseError> {
        raw.map(|s| {
            s.parse()
                .map_err(|_| malformed(self.key, format!("{name} = {s:?} is not {expected}")))
        })
        .transpose()
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, LeaseError> {
        self.parsed(name, self.number(name)?, "a non-negative integer")
    }

    fn i64(&self, name: &str) -> Result<Option<i64>, LeaseError> {
        self.parsed(name, self.number(name)?, "an integer")
    }

    fn f64(&self, name: &str) -> Result<Option<f64>, LeaseError> {
        self.parsed(name, self.number(name)?, "a number")
    }

    fn u128(&self, name: &str) -> Result<Option<u128>, LeaseError> {
        let raw = self.string(name)?;
        self.parsed(name, raw.as_deref(), "a 128-bit hash key")
    }

    fn string_set(&self, name: &str) -> Result<Vec<String>, LeaseError> {
        match self.item.get(name) {
            None => Ok(Vec::new()),
            // DynamoDB gives sets back in no particular order.
            Some(AttributeValue::Ss(values)) => Ok(canonical_set(values)),
            Some(_) => Err(malformed(self.key, format!("{name} is not a string set"))),
        }
    }

    /// A sequence number or sentinel with its sub-sequence number (0 when absent, as
    /// in items written before sub-sequences existed).
    fn position(
        &self,
        name: &str,
        sub_sequence_name: &str,
    ) -> Result<Option<ExtendedSequenceNumber>, LeaseError> {
        let Some(raw) = self.string(name)? else {
            return Ok(None);
        };
        let position = SequencePosition::parse(&raw).ok_or_else(|| {
            malformed(
                self.key,
                format!("{name} = {raw:?} is neither a sequence number nor a sentinel"),
            )
        })?;
        Ok(Some(ExtendedSequenceNumber {
            position,
            sub_sequence: self.u64(sub_sequence_name)?.unwrap_or(0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_attribute_of_the_group_item_is_left_out_not_fatal() {
        let n = |v: &str| AttributeValue::N(v.into());
        let s = |v: &str| AttributeValue::S(v.into());
        let item: Item = [
            (WORKER_ID.to_string(), s(GROUP_KEY)),
            ("hb:a".into(), n("7")),
            ("held:a".into(), n("3")),
            ("hb:b".into(), n("2")),
            ("held:b".into(), s("many")),
            ("hb:c".into(), s("bad")),
            ("held:c".into(), n("1")),
            ("hb:d".into(), n("-1")),
            (LEASE_GENERATION.into(), s("x")),
        ]
        .into_iter()
        .collect();
        let group = to_membership(Some(&item));
        let workers: Vec<_> = group
            .workers
            .iter()
            .map(|w| (w.worker_id.as_str(), w.heartbeat, w.leases))
            .collect();
        assert_eq!(workers, [("a", 7, Some(3)), ("b", 2, None)]);
        assert_eq!(group.lease_generation, 0);
        assert_eq!(to_membership(None), Membership::default());
    }

    fn full_lease() -> Lease {
        Lease {
            key: "shardId-000000000007".into(),
            owner: Some("worker-b".into()),
            counter: 42,
            checkpoint: ExtendedSequenceNumber::at(
                "49590338271490256608559692538361571095921575989136588898",
                3,
            ),
            pending_checkpoint: Some(ExtendedSequenceNumber::at(
                "49590338271490256608559692540925702759324208523137515618",
                0,
            )),
            owner_switches_since_checkpoint: 2,
            parent_shard_ids: vec!["shardId-000000000001".into(), "shardId-000000000000".into()],
            child_shard_ids: vec!["shardId-000000000009".into()],
            hash_key_range: Some((0, u128::MAX)),
            checkpoint_owner: Some("worker-a".into()),
            epoch: Some(40),
            checkpoint_owner_epoch: Some(37),
            load: Some(ShardLoad {
                records_per_sec: 812.25,
                bytes_per_sec: 1.5e6,
                millis_behind_latest: 1200,
            }),
        }
    }

    #[test]
    fn every_attribute_round_trips() {
        let lease = full_lease();
        assert_eq!(to_lease(&to_item(&lease)).unwrap(), canonical(lease));
        let free = Lease::new(
            "shardId-0",
            ExtendedSequenceNumber::new(SequencePosition::Latest),
        );
        assert_eq!(to_lease(&to_item(&free)).unwrap(), free);
    }

    #[test]
    fn item_uses_the_java_kcl_names_and_types() {
        let item = to_item(&full_lease());
        let s = |v: &str| AttributeValue::S(v.into());
        let n = |v: &str| AttributeValue::N(v.into());
        assert_eq!(item["leaseKey"], s("shardId-000000000007"));
        assert_eq!(item["leaseOwner"], s("worker-b"));
        assert_eq!(item["leaseCounter"], n("42"));
        assert_eq!(item["checkpointSubSequenceNumber"], n("3"));
        assert_eq!(item["pendingCheckpointSubSequenceNumber"], n("0"));
        assert_eq!(item["ownerSwitchesSinceCheckpoint"], n("2"));
        assert_eq!(
            item["parentShardId"],
            AttributeValue::Ss(vec![
                "shardId-000000000000".into(),
                "shardId-000000000001".into()
            ])
        );
        assert_eq!(item["startingHashKey"], s("0"));
        assert_eq!(item["endingHashKey"], s(&u128::MAX.to_string()));
        assert_eq!(item["checkpointOwner"], s("worker-a"));
        assert_eq!(item["throughputRecordsPerSecond"], n("812.25"));
        assert_eq!(item["throughputBytesPerSecond"], n("1500000"));
        assert_eq!(item["millisBehindLatest"], n("1200"));
    }

    #[test]
    fn empty_sets_and_absent_options_are_left_out() {
        let item = to_item(&Lease::new(
            "k",
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        ));
        let mut names: Vec<_> = item.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "checkpoint",
                "checkpointSubSequenceNumber",
                "leaseCounter",
                "leaseKey",
                "ownerSwitchesSinceCheckpoint"
            ]
        );
        assert_eq!(item["checkpoint"], AttributeValue::S("TRIM_HORIZON".into()));
    }

    #[test]
    fn required_attributes_missing_or_invalid_are_malformed() {
        let good = to_item(&full_lease());
        for (name, bad) in [
            ("leaseKey", None),
            ("leaseKey", Some(AttributeValue::N("1".into()))),
            ("leaseCounter", None),
            ("leaseCounter", Some(AttributeValue::N("-1".into()))),
            ("leaseCounter", Some(AttributeValue::S("1".into()))),
            ("checkpoint", None),
            ("checkpoint", Some(AttributeValue::S("12ab".into()))),
            ("startingHashKey", None),
            ("endingHashKey", Some(AttributeValue::S("1e5".into()))),
            ("parentShardId", Some(AttributeValue::S("shardId-0".into()))),
        ] {
            let mut item = good.clone();
            match bad {
                None => item.remove(name),
                Some(value) => item.insert(name.into(), value),
            };
            let err = to_lease(&item).unwrap_err();
            assert!(matches!(err, LeaseError::Malformed { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn unknown_attributes_and_missing_optional_numbers_are_tolerated() {
        let mut item = Item::new();
        item.insert("leaseKey".into(), string("shardId-1"));
        item.insert("leaseCounter".into(), number(9));
        item.insert("checkpoint".into(), string("SHARD_END"));
        item.insert(
            "pendingCheckpointState".into(),
            AttributeValue::B(vec![1].into()),
        );
        item.insert("leaseTimeout".into(), number(5));
        let lease = to_lease(&item).unwrap();
        assert_eq!(lease.counter, 9);
        assert_eq!(lease.checkpoint, ExtendedSequenceNumber::shard_end());
        assert_eq!(lease.owner_switches_since_checkpoint, 0);
    }

    #[test]
    fn unstorable_load_figures_are_made_storable() {
        let load = ShardLoad {
            records_per_sec: f64::NAN,
            bytes_per_sec: f64::INFINITY,
            millis_behind_latest: 0,
        };
        let [(_, records), (_, bytes), _] = load_attributes(&load);
        assert_eq!(records, AttributeValue::N("0".into()));
        assert_eq!(bytes, AttributeValue::N("0".into()));
        let [(_, tiny), _, _] = load_attributes(&ShardLoad {
            records_per_sec: 1e-300,
            ..load
        });
        assert_eq!(tiny, AttributeValue::N("0".into()));
    }
}
