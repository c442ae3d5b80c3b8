//! Shard sync decisions (being written).
