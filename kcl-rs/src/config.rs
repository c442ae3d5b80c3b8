//! Worker configuration: one builder with documented defaults.

use crate::leases::Balance;
use std::time::{Duration, SystemTime};

use crate::checkpoint::{ExtendedSequenceNumber, SequencePosition};

/// Where a shard that has no checkpoint yet starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest retained record.
    TrimHorizon,
    /// Only records written after the shard is first read.
    Latest,
    /// The first record at or after this time.
    AtTimestamp(SystemTime),
}

impl InitialPosition {
    /// The lease-table sentinel for new leases.
    pub fn checkpoint(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(match self {
            InitialPosition::TrimHorizon => SequencePosition::TrimHorizon,
            InitialPosition::Latest => SequencePosition::Latest,
            InitialPosition::AtTimestamp(_) => SequencePosition::AtTimestamp,
        })
    }
}

/// How a worker reads its shards.
///
/// ```
/// use kcl::{RetrievalMode, WorkerConfig};
///
/// let config = WorkerConfig::builder("Orders", "OrdersApp")
///     .retrieval_mode(RetrievalMode::fan_out())
///     .build()?;
/// assert_eq!(config.consumer_name(), Some("OrdersApp"));
/// # Ok::<(), kcl::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetrievalMode {
    /// GetRecords polling: up to 5 calls and 2 MB/s per shard, shared by every polling
    /// application of the stream. The default (and the only mode the local emulators
    /// serve at full speed over plain HTTP).
    #[default]
    Polling,
    /// Enhanced fan-out (the Java KCL's default): SubscribeToShard through a registered
    /// stream consumer, 2 MiB/s per shard for this application alone, records pushed
    /// as they arrive. The worker registers the consumer at start, or reuses one of
    /// that name. Costs extra on AWS (per consumer-shard hour and per GB).
    FanOut {
        /// The stream consumer's name. `None`: the application name.
        consumer_name: Option<String>,
    },
}

impl RetrievalMode {
    /// Enhanced fan-out through a consumer named after the application.
    pub fn fan_out() -> RetrievalMode {
        RetrievalMode::FanOut {
            consumer_name: None,
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field} {problem}")]
pub struct ConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Settings of a [`Worker`](crate::worker::Worker). Build with [`WorkerConfig::builder`].
///
/// ```
/// use std::time::Duration;
/// use kcl::config::{InitialPosition, WorkerConfig};
///
/// let config = WorkerConfig::builder("DeliveryStream", "DeliveryStats")
///     .worker_id("worker-1")
///     .initial_position(InitialPosition::TrimHorizon)
///     .failover_time(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(config.max_records(), 10_000);
/// assert!(WorkerConfig::builder("", "app").build().is_err());
/// # Ok::<(), kcl::config::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The Kinesis stream to read.
    pub(crate) stream_name: String,
    /// The application name: also the DynamoDB lease table's name (workers of one
    /// application share it; different applications read independently).
    pub(crate) application_name: String,
    /// This worker's id. Default: `worker-<pid>-<random>`; must be unique per process.
    pub(crate) worker_id: String,
    /// Where shards without a checkpoint start. Default `Latest`, as the Java KCL.
    pub(crate) initial_position: InitialPosition,
    /// Lease expiry: a worker that stops renewing loses its leases after this. Default
    /// 10 s. Renewal runs every third of it.
    pub(crate) failover_time: Duration,
    /// How often a taking cycle runs: the two watcher workers read the worker group
    /// then (so a departure is noticed within one), and every worker lists the lease
    /// table when something changed. Default 750 ms.
    pub(crate) taking_interval: Duration,
    /// How long a graceful handoff may take before the lease is taken by force.
    /// Default: the failover time.
    pub(crate) handoff_timeout: Duration,
    /// Upper bound on leases held by this worker. Default: none.
    pub(crate) max_leases_per_worker: Option<usize>,
    /// How workers share leases: by count (default) or by load. See [`Balance`].
    pub(crate) balance: Balance,
    /// Records per GetRecords call (1..=10,000). Default 10,000.
    pub(crate) max_records: i32,
    /// Pause between GetRecords calls when a shard is caught up. Default 200 ms.
    pub(crate) idle_time_between_reads: Duration,
    /// Least time between the starts of two GetRecords calls on one shard, unless the
    /// first returned a full batch (a reader that is behind reads on at once). Default
    /// 200 ms: the service's 5 calls per second per shard.
    pub(crate) min_time_between_get_records: Duration,
    /// How long a cancelled [`Worker`](crate::worker::Worker) may spend shutting down
    /// (processors checkpointing, leases released) before it stops waiting and
    /// returns. Default 20 s.
    pub(crate) shutdown_grace: Duration,
    /// Batches fetched ahead of the processor per shard. Default 2.
    pub(crate) prefetch_depth: usize,
    /// How often ListShards runs to discover new shards (it also runs at start and
    /// whenever a shard ends). Default 60 s.
    pub(crate) shard_sync_interval: Duration,
    /// How often a child shard waiting for its parents checks them. Default 200 ms.
    pub(crate) parent_poll_interval: Duration,
    /// Call `process_records` with empty batches too. Default false.
    pub(crate) call_process_records_even_for_empty: bool,
    /// Polling or enhanced fan-out. Default polling.
    pub(crate) retrieval_mode: RetrievalMode,
    /// Fan-out's watchdog: a subscription that delivers no event for this long (real
    /// Kinesis sends one at least every 5 s, records or not) is closed and a new one
    /// starts where the last ended. Default 30 s.
    pub(crate) subscription_timeout: Duration,
    /// Fan-out: how long a shard may deliver no record before one polling read checks
    /// whether it is closed and read to its end, for services that do not name the
    /// children at the end of a subscription (real Kinesis does). Default 30 s.
    pub(crate) shard_end_check_after: Duration,
    /// Multi-stream mode (built by [`WorkerConfig::multi_stream_builder`]): the stream
    /// name is unused; the worker's streams come from its provider.
    pub(crate) multi_stream: bool,
    /// Multi-stream mode: how often the stream provider is asked for the streams.
    /// Default 60 s.
    pub(crate) stream_poll_interval: Duration,
    /// Multi-stream mode: how long a stream must have been gone (removed from the
    /// provider's list, or deleted) before its leases are deleted. Default 5 min.
    pub(crate) former_stream_grace: Duration,
}

/// Every setting, read-only: set them through [`WorkerConfig::builder`], whose
/// `build` checks them. A built configuration cannot be changed around that check:
///
/// ```compile_fail
/// # use std::time::Duration;
/// let mut config = kcl::WorkerConfig::builder("stream", "app").build().unwrap();
/// config.failover_time = Duration::ZERO; // private: does not compile
/// ```
impl WorkerConfig {
    /// The Kinesis stream to read.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The application name: also the DynamoDB lease table's name (workers of one
    /// application share it; different applications read independently).
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// This worker's id. Default: `worker-<pid>-<random>`; must be unique per process.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Where shards without a checkpoint start. Default `Latest`, as the Java KCL.
    pub fn initial_position(&self) -> InitialPosition {
        self.initial_position
    }

    /// Lease expiry: a worker that stops renewing loses its leases after this. Default
    /// 10 s. Renewal runs every third of it.
    pub fn failover_time(&self) -> Duration {
        self.failover_time
    }

    /// How often a taking cycle runs: the two watcher workers read the worker group
    /// then (so a departure is noticed within one), and every worker lists the lease
    /// table when something changed. Default 750 ms.
    pub fn taking_interval(&self) -> Duration {
        self.taking_interval
    }

    /// How long a graceful handoff may take before the lease is taken by force.
    /// Default: the failover time.
    pub fn handoff_timeout(&self) -> Duration {
        self.handoff_timeout
    }

    /// Upper bound on leases held by this worker. Default: none.
    pub fn max_leases_per_worker(&self) -> Option<usize> {
        self.max_leases_per_worker
    }

    /// How workers share leases. Default [`Balance::Count`]: equal lease counts.
    /// [`Balance::load`] weighs leases by the throughput their owners write on them
    /// (records/s and bytes/s, smoothed) and hands leases over only when that evens
    /// the load by more than the threshold (10%); every worker of an application
    /// should use the same setting.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Records per GetRecords call (1..=10,000). Default 10,000.
    pub fn max_records(&self) -> i32 {
        self.max_records
    }

    /// Pause between GetRecords calls when a shard is caught up. Default 200 ms.
    pub fn idle_time_between_reads(&self) -> Duration {
        self.idle_time_between_reads
    }

    /// Least time between the starts of two GetRecords calls on one shard, unless the
    /// first returned a full batch (a reader that is behind reads on at once). Default
    /// 200 ms: the service's 5 calls per second per shard.
    pub fn min_time_between_get_records(&self) -> Duration {
        self.min_time_between_get_records
    }

    /// How long a cancelled [`Worker`](crate::worker::Worker) may spend shutting down
    /// (processors checkpointing, leases released) before it stops waiting and
    /// returns. Default 20 s.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// Whether this is a multi-stream configuration (see
    /// [`WorkerConfig::multi_stream_builder`]).
    pub fn is_multi_stream(&self) -> bool {
        self.multi_stream
    }

    /// Multi-stream mode: how often the stream provider is asked for the streams (new
    /// streams start within this). Default 60 s.
    pub fn stream_poll_interval(&self) -> Duration {
        self.stream_poll_interval
    }

    /// Multi-stream mode: how long a stream must have been gone (no longer listed by
    /// the provider, or deleted) before its leases are deleted; until then they are
    /// processed as usual, and a stream listed again in time keeps its checkpoints.
    /// Default 5 min.
    pub fn former_stream_grace(&self) -> Duration {
        self.former_stream_grace
    }

    /// Batches fetched ahead of the processor per shard. Default 2.
    pub fn prefetch_depth(&self) -> usize {
        self.prefetch_depth
    }

    /// How often ListShards runs to discover new shards (it also runs at start and
    /// whenever a shard ends). Default 60 s.
    pub fn shard_sync_interval(&self) -> Duration {
        self.shard_sync_interval
    }

    /// How often a child shard waiting for its parents checks them. Default 200 ms.
    pub fn parent_poll_interval(&self) -> Duration {
        self.parent_poll_interval
    }

    /// Call `process_records` with empty batches too. Default false.
    pub fn call_process_records_even_for_empty(&self) -> bool {
        self.call_process_records_even_for_empty
    }

    /// Polling or enhanced fan-out. Default polling.
    pub fn retrieval_mode(&self) -> &RetrievalMode {
        &self.retrieval_mode
    }

    /// The stream consumer's name in fan-out mode (the application name unless set);
    /// `None` when polling.
    pub fn consumer_name(&self) -> Option<&str> {
        match &self.retrieval_mode {
            RetrievalMode::Polling => None,
            RetrievalMode::FanOut { consumer_name } => {
                Some(consumer_name.as_deref().unwrap_or(&self.application_name))
            }
        }
    }

    /// Fan-out's watchdog: a subscription that delivers no event for this long (real
    /// Kinesis sends one at least every 5 s, records or not) is closed and a new one
    /// starts where the last ended. Default 30 s.
    pub fn subscription_timeout(&self) -> Duration {
        self.subscription_timeout
    }

    /// Fan-out: how long a shard may deliver no record before one polling read checks
    /// whether it is closed and read to its end, for services that do not name the
    /// children at the end of a subscription (real Kinesis does). Default 30 s.
    pub fn shard_end_check_after(&self) -> Duration {
        self.shard_end_check_after
    }
}

impl WorkerConfig {
    /// A builder for the given stream and application (lease table) names.
    pub fn builder(
        stream_name: impl Into<String>,
        application_name: impl Into<String>,
    ) -> WorkerConfigBuilder {
        let failover_time = Duration::from_secs(10);
        WorkerConfigBuilder {
            config: WorkerConfig {
                stream_name: stream_name.into(),
                application_name: application_name.into(),
                worker_id: default_worker_id(),
                initial_position: InitialPosition::Latest,
                failover_time,
                taking_interval: Duration::from_millis(750),
                handoff_timeout: failover_time,
                max_leases_per_worker: None,
                balance: Balance::Count,
                max_records: 10_000,
                idle_time_between_reads: Duration::from_millis(200),
                min_time_between_get_records: Duration::from_millis(200),
                shutdown_grace: Duration::from_secs(20),
                prefetch_depth: 2,
                shard_sync_interval: Duration::from_secs(60),
                parent_poll_interval: Duration::from_millis(200),
                call_process_records_even_for_empty: false,
                retrieval_mode: RetrievalMode::Polling,
                subscription_timeout: Duration::from_secs(30),
                shard_end_check_after: Duration::from_secs(30),
                multi_stream: false,
                stream_poll_interval: Duration::from_secs(60),
                former_stream_grace: Duration::from_secs(300),
            },
            handoff_timeout_set: false,
        }
    }

    /// A builder for a multi-stream worker of the application (lease table)
    /// `application_name`: its streams come from a
    /// [`StreamProvider`](crate::StreamProvider) given to
    /// [`Worker::multi_stream`](crate::Worker::multi_stream).
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = kcl::WorkerConfig::multi_stream_builder("OrdersAndPayments")
    ///     .stream_poll_interval(Duration::from_secs(30))
    ///     .former_stream_grace(Duration::from_secs(600))
    ///     .build()?;
    /// assert!(config.is_multi_stream());
    /// # Ok::<(), kcl::ConfigError>(())
    /// ```
    pub fn multi_stream_builder(application_name: impl Into<String>) -> WorkerConfigBuilder {
        let mut builder = WorkerConfig::builder("", application_name);
        builder.config.multi_stream = true;
        builder
    }
}

fn default_worker_id() -> String {
    format!(
        "worker-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Builds a [`WorkerConfig`]; every setter documents its default on the field.
#[derive(Clone, Debug)]
pub struct WorkerConfigBuilder {
    config: WorkerConfig,
    handoff_timeout_set: bool,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl WorkerConfigBuilder {
    setters! {
        /// See [`WorkerConfig::initial_position`].
        initial_position: InitialPosition,
        /// See [`WorkerConfig::failover_time`].
        failover_time: Duration,
        /// See [`WorkerConfig::taking_interval`].
        taking_interval: Duration,
        /// See [`WorkerConfig::max_leases_per_worker`].
        max_leases_per_worker: Option<usize>,
        /// See [`WorkerConfig::balance`].
        balance: Balance,
        /// See [`WorkerConfig::max_records`].
        max_records: i32,
        /// See [`WorkerConfig::idle_time_between_reads`].
        idle_time_between_reads: Duration,
        /// See [`WorkerConfig::min_time_between_get_records`].
        min_time_between_get_records: Duration,
        /// See [`WorkerConfig::shutdown_grace`].
        shutdown_grace: Duration,
        /// See [`WorkerConfig::prefetch_depth`].
        prefetch_depth: usize,
        /// See [`WorkerConfig::shard_sync_interval`].
        shard_sync_interval: Duration,
        /// See [`WorkerConfig::parent_poll_interval`].
        parent_poll_interval: Duration,
        /// See [`WorkerConfig::call_process_records_even_for_empty`].
        call_process_records_even_for_empty: bool,
        /// See [`WorkerConfig::retrieval_mode`].
        retrieval_mode: RetrievalMode,
        /// See [`WorkerConfig::subscription_timeout`].
        subscription_timeout: Duration,
        /// See [`WorkerConfig::shard_end_check_after`].
        shard_end_check_after: Duration,
        /// See [`WorkerConfig::stream_poll_interval`].
        stream_poll_interval: Duration,
        /// See [`WorkerConfig::former_stream_grace`].
        former_stream_grace: Duration,
    }

    /// See [`WorkerConfig::worker_id`].
    pub fn worker_id(mut self, value: impl Into<String>) -> Self {
        self.config.worker_id = value.into();
        self
    }

    /// See [`WorkerConfig::handoff_timeout`].
    pub fn handoff_timeout(mut self, value: Duration) -> Self {
        self.config.handoff_timeout = value;
        self.handoff_timeout_set = true;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(mut self) -> Result<WorkerConfig, ConfigError> {
        let c = &mut self.config;
        if !self.handoff_timeout_set {
            c.handoff_timeout = c.failover_time;
        }
        let fail = |field, problem: &str| {
            Err(ConfigError {
                field,
                problem: problem.to_string(),
            })
        };
        if !c.multi_stream && (c.stream_name.is_empty() || c.stream_name.len() > 128) {
            return fail("stream_name", "must be 1 to 128 characters");
        }
        if c.application_name.len() < 3 || c.application_name.len() > 255 {
            return fail(
                "application_name",
                "must be 3 to 255 characters (it names the DynamoDB lease table)",
            );
        }
        if !c
            .application_name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch))
        {
            return fail(
                "application_name",
                "may only contain letters, digits, '_', '-' and '.' (DynamoDB table name rules)",
            );
        }
        if c.worker_id.is_empty() {
            return fail("worker_id", "must not be empty");
        }
        if c.failover_time < Duration::from_millis(300) {
            return fail("failover_time", "must be at least 300 ms");
        }
        if !(1..=10_000).contains(&c.max_records) {
            return fail("max_records", "must be 1 to 10,000 (the GetRecords limit)");
        }
        if c.prefetch_depth == 0 {
            return fail("prefetch_depth", "must be at least 1");
        }
        if c.taking_interval.is_zero() || c.parent_poll_interval.is_zero() {
            return fail("taking_interval/parent_poll_interval", "must be positive");
        }
        if let RetrievalMode::FanOut {
            consumer_name: Some(name),
        } = &c.retrieval_mode
            && (name.is_empty()
                || name.len() > 128
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch)))
        {
            return fail(
                "consumer_name",
                "must be 1 to 128 letters, digits, '_', '-' or '.' (RegisterStreamConsumer rules)",
            );
        }
        if c.retrieval_mode != RetrievalMode::Polling && c.application_name.len() > 128 {
            return fail(
                "application_name",
                "names the stream consumer in fan-out mode: at most 128 characters, or set consumer_name",
            );
        }
        if c.subscription_timeout < Duration::from_secs(1) || c.shard_end_check_after.is_zero() {
            return fail(
                "subscription_timeout/shard_end_check_after",
                "must be at least 1 s / positive",
            );
        }
        if c.stream_poll_interval.is_zero() || c.former_stream_grace.is_zero() {
            return fail(
                "stream_poll_interval/former_stream_grace",
                "must be positive",
            );
        }
        if c.max_leases_per_worker == Some(0) {
            return fail("max_leases_per_worker", "must be at least 1 when set");
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_settings_are_checked() {
        let build = |mode: RetrievalMode, timeout: Duration| {
            WorkerConfig::builder("s", "app")
                .retrieval_mode(mode)
                .subscription_timeout(timeout)
                .build()
        };
        let named = |name: &str| RetrievalMode::FanOut {
            consumer_name: Some(name.to_string()),
        };
        let second = Duration::from_secs(1);
        // (mode, watchdog) → the consumer name, or the field refused
        type Expected = Result<Option<&'static str>, &'static str>;
        let cases: [(RetrievalMode, Duration, Expected); 6] = [
            (RetrievalMode::Polling, second, Ok(None)),
            (RetrievalMode::fan_out(), second, Ok(Some("app"))),
            (named("billing.v2"), second, Ok(Some("billing.v2"))),
            (named(""), second, Err("consumer_name")),
            (named("no spaces"), second, Err("consumer_name")),
            (
                RetrievalMode::fan_out(),
                Duration::from_millis(999),
                Err("subscription_timeout/shard_end_check_after"),
            ),
        ];
        for (mode, timeout, expected) in cases {
            let got = build(mode.clone(), timeout);
            match (got, expected) {
                (Ok(config), Ok(name)) => assert_eq!(config.consumer_name(), name, "{mode:?}"),
                (Err(e), Err(field)) => assert_eq!(e.field, field, "{mode:?}"),
                (got, expected) => panic!("{mode:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
