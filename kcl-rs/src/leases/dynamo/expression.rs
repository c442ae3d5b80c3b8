//! The condition and update expressions of lease writes, with their placeholders.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::leases::item;
use crate::leases::store::{Change, Expect};

/// The placeholders of one request's expressions. Every attribute name goes through a
/// `#name` placeholder so that none can collide with a DynamoDB reserved word.
#[derive(Default)]
pub(super) struct Expression {
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
}

impl Expression {
    pub(super) fn name(&mut self, attribute: &str) -> String {
        self.tagged_name(attribute, attribute)
    }

    /// A placeholder `#{tag}` for an attribute whose name is not a valid placeholder
    /// (a member attribute holds a worker id, which may contain any character).
    pub(super) fn tagged_name(&mut self, tag: &str, attribute: &str) -> String {
        let placeholder = format!("#{tag}");
        self.names
            .insert(placeholder.clone(), attribute.to_string());
        placeholder
    }

    pub(super) fn value(&mut self, tag: &str, value: AttributeValue) -> String {
        let placeholder = format!(":{tag}");
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    /// The names map, or `None` when empty: DynamoDB rejects an empty map.
    pub(super) fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    /// The values map, or `None` when empty: DynamoDB rejects an empty map.
    pub(super) fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }

    /// The condition for `expect`. The item must always exist: an update on a missing
    /// key would otherwise create a lease holding only the changed attributes.
    pub(super) fn condition(&mut self, expect: &Expect) -> String {
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

    pub(super) fn equals_or_absent(
        &mut self,
        attribute: &str,
        tag: &str,
        value: &Option<String>,
    ) -> String {
        let name = self.name(attribute);
        match value {
            Some(value) => format!("{name} = {}", self.value(tag, item::string(value))),
            None => format!("attribute_not_exists({name})"),
        }
    }

    /// The update expression for `change`, or `None` when it changes nothing.
    pub(super) fn update(&mut self, change: &Change) -> Option<String> {
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

    pub(super) fn set_or_remove(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ExtendedSequenceNumber;
    use crate::leases::ShardLoad;

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
