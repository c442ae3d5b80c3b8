//! The shard auto-scaler: splits a shard whose incoming rate stays above a share of
//! the per-shard write limit, merges adjacent shards that stay cold, with a cooldown
//! and bounds on the shard count. It uses SplitShard and MergeShards (one shard or
//! pair at a time, so the hot spot is what changes), never UpdateShardCount.
//!
//! Rates come from what the workers observe: each lease carries the records/s and
//! bytes/s its holder read from the shard (`kcl::leases::ShardLoad`), written at lease
//! renewal. There is no CloudWatch locally, and a consumer that keeps up reads what
//! was written. The decision is a pure function of those observations and time
//! ([`Scaler::observe`]); [`run`] is the loop around it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kcl::leases::{LeaseStore, ShardLoad};
use kcl::stream::{self, ShardInfo, StreamError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A shard's write limit, bytes per second.
pub const SHARD_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;
/// A shard's write limit, records per second.
pub const SHARD_RECORDS_PER_SEC: f64 = 1000.0;

/// Auto-scaler settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerConfig {
    /// Split a shard whose rate stays above this share of the write limit (either
    /// limit), 0 to 1.
    pub split_share: f64,
    /// Merge two adjacent shards that both stay below this share, if together they
    /// stay below half of `split_share` (so the merged shard does not split again).
    pub merge_share: f64,
    /// How long a shard must stay hot or cold before acting.
    pub sustain: Duration,
    /// No action for this long after the last one.
    pub cooldown: Duration,
    /// Never merge below this many open shards.
    pub min_shards: usize,
    /// Never split above this many open shards.
    pub max_shards: usize,
    /// How often to look.
    pub interval: Duration,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            split_share: 0.8,
            merge_share: 0.1,
            sustain: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
            min_shards: 1,
            max_shards: 16,
            interval: Duration::from_secs(5),
        }
    }
}

/// An open shard and its observed load (`None`: nobody reports it yet).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardView {
    /// The shard.
    pub shard_id: String,
    /// Its hash key range.
    pub range: (u128, u128),
    /// Its load as the worker reading it reported.
    pub load: Option<ShardLoad>,
}

/// A share of a shard's write limit: the larger of records and bytes.
pub fn utilisation(load: &ShardLoad) -> f64 {
    (load.records_per_sec / SHARD_RECORDS_PER_SEC).max(load.bytes_per_sec / SHARD_BYTES_PER_SEC)
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Split this shard in the middle of its range.
    Split {
        /// The shard.
        shard_id: String,
    },
    /// Merge these adjacent shards (`low` has the lower hash keys).
    Merge {
        /// Lower shard.
        low: String,
        /// Upper shard.
        high: String,
    },
}

/// The decision state: since when each shard has been hot or cold, and the last action.
#[derive(Debug)]
pub struct Scaler {
    config: ScalerConfig,
    hot_since: HashMap<String, Instant>,
    cold_since: HashMap<String, Instant>,
    last_action: Option<Instant>,
}

impl Scaler {
    /// A scaler that has seen nothing.
    pub fn new(config: ScalerConfig) -> Scaler {
        Scaler {
            config,
            hot_since: HashMap::new(),
            cold_since: HashMap::new(),
            last_action: None,
        }
    }

    /// Records what is seen at `now` (the open shards) and returns the action to take,
    /// if any. After an action, nothing more until the cooldown has passed.
    pub fn observe(&mut self, open: &[ShardView], now: Instant) -> Option<Action> {
        let c = &self.config;
        self.hot_since
            .retain(|id, _| open.iter().any(|s| &s.shard_id == id));
        self.cold_since
            .retain(|id, _| open.iter().any(|s| &s.shard_id == id));
        for shard in open {
            let u = shard.load.as_ref().map(utilisation);
            let id = &shard.shard_id;
            match u {
                Some(u) if u > c.split_share => {
                    self.hot_since.entry(id.clone()).or_insert(now);
                }
                _ => {
                    self.hot_since.remove(id);
                }
            }
            match u {
                Some(u) if u < c.merge_share => {
                    self.cold_since.entry(id.clone()).or_insert(now);
                }
                _ => {
                    self.cold_since.remove(id);
                }
            }
        }
        if self
            .last_action
            .is_some_and(|last| now.duration_since(last) < c.cooldown)
        {
            return None;
        }
        let sustained = |since: Option<&Instant>| {
            since.is_some_and(|since| now.duration_since(*since) >= c.sustain)
        };
        let load = |s: &ShardView| s.load.as_ref().map_or(0.0, utilisation);
        let action = if open.len() < c.max_shards {
            open.iter()
                .filter(|s| sustained(self.hot_since.get(&s.shard_id)))
                .max_by(|a, b| {
                    load(a)
                        .total_cmp(&load(b))
                        .then(b.shard_id.cmp(&a.shard_id))
                })
                .map(|s| Action::Split {
                    shard_id: s.shard_id.clone(),
                })
        } else {
            None
        };
        let action = action.or_else(|| {
            if open.len() <= c.min_shards {
                return None;
            }
            adjacent_pairs(open)
                .filter(|(a, b)| {
                    sustained(self.cold_since.get(&a.shard_id))
                        && sustained(self.cold_since.get(&b.shard_id))
                        && load(a) + load(b) < c.split_share / 2.0
                })
                .min_by(|x, y| (load(x.0) + load(x.1)).total_cmp(&(load(y.0) + load(y.1))))
                .map(|(a, b)| Action::Merge {
                    low: a.shard_id.clone(),
                    high: b.shard_id.clone(),
                })
        });
        if action.is_some() {
            self.last_action = Some(now);
            self.hot_since.clear();
            self.cold_since.clear();
        }
        action
    }
}

/// Pairs of open shards whose ranges touch, lower first.
pub fn adjacent_pairs(open: &[ShardView]) -> impl Iterator<Item = (&ShardView, &ShardView)> {
    let mut sorted: Vec<&ShardView> = open.iter().collect();
    sorted.sort_by_key(|s| s.range.0);
    let pairs: Vec<_> = sorted
        .windows(2)
        .filter(|w| w[0].range.1.checked_add(1) == Some(w[1].range.0))
        .map(|w| (w[0], w[1]))
        .collect();
    pairs.into_iter()
}

/// The shard to split by hand: the most loaded, or the widest when no load is known.
pub fn hottest(open: &[ShardView]) -> Option<&ShardView> {
    open.iter().max_by(|a, b| {
        let la = a.load.as_ref().map_or(-1.0, utilisation);
        let lb = b.load.as_ref().map_or(-1.0, utilisation);
        la.total_cmp(&lb)
            .then((a.range.1 - a.range.0).cmp(&(b.range.1 - b.range.0)))
            .then(b.shard_id.cmp(&a.shard_id))
    })
}

/// The adjacent pair to merge by hand: the least loaded together.
pub fn coldest_pair(open: &[ShardView]) -> Option<(&ShardView, &ShardView)> {
    let load = |s: &ShardView| s.load.as_ref().map_or(0.0, utilisation);
    adjacent_pairs(open).min_by(|x, y| (load(x.0) + load(x.1)).total_cmp(&(load(y.0) + load(y.1))))
}

/// The open shards of `stream` with the loads their leases report.
pub async fn shard_views(
    kinesis: &aws_sdk_kinesis::Client,
    leases: &dyn LeaseStore,
    stream: &str,
) -> Result<Vec<ShardView>, Box<dyn std::error::Error + Send + Sync>> {
    let shards: Vec<ShardInfo> = stream::list_shards(kinesis, stream).await?;
    let loads: HashMap<String, ShardLoad> = match leases.list_leases().await {
        Ok(leases) => leases
            .into_iter()
            .filter(|l| l.owner.is_some())
            .filter_map(|l| l.load.map(|load| (l.key, load)))
            .collect(),
        // No lease table yet: no worker has reported anything.
        Err(_) => HashMap::new(),
    };
    Ok(shards
        .into_iter()
        .filter(ShardInfo::is_open)
        .map(|s| ShardView {
            load: loads.get(&s.shard_id).copied(),
            range: (s.starting_hash_key, s.ending_hash_key),
            shard_id: s.shard_id,
        })
        .collect())
}

/// Carries out an action and waits for the stream to be ACTIVE again.
pub async fn act(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    action: &Action,
) -> Result<(), StreamError> {
    let timeout = Duration::from_secs(120);
    match action {
        Action::Split { shard_id } => {
            stream::split_shard(kinesis, stream, shard_id, None, timeout).await
        }
        Action::Merge { low, high } => {
            stream::merge_shards(kinesis, stream, low, high, timeout).await
        }
    }
}

/// Runs the auto-scaler until `cancel`, calling `on_action` after each action.
pub async fn run(
    kinesis: aws_sdk_kinesis::Client,
    leases: Arc<dyn LeaseStore>,
    stream: String,
    config: ScalerConfig,
    cancel: CancellationToken,
    on_action: impl Fn(&Action, &[ShardView]) + Send,
) {
    let interval = config.interval;
    let mut scaler = Scaler::new(config);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let open = match shard_views(&kinesis, leases.as_ref(), &stream).await {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(error = %e, "auto-scaler cannot read the shards");
                continue;
            }
        };
        if let Some(action) = scaler.observe(&open, Instant::now()) {
            match act(&kinesis, &stream, &action).await {
                Ok(()) => on_action(&action, &open),
                Err(e) => tracing::warn!(error = %e, ?action, "auto-scaler action failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
