//! Producer configuration: one builder with the KPL's defaults, checked by `build`.

use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::ConfigError;

/// Largest Kinesis record: data plus partition key (UTF-8), in bytes.
pub const MAX_RECORD_SIZE: usize = 1024 * 1024;
/// Most entries in one PutRecords call.
pub const MAX_RECORDS_PER_REQUEST: usize = 500;
/// Largest PutRecords call: data plus partition keys of all its entries, in bytes.
pub const MAX_REQUEST_SIZE: usize = 5 * 1024 * 1024;
/// Longest partition key, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// A shard's write limit in bytes per second (data plus partition keys).
pub const SHARD_BYTES_PER_SECOND: u64 = 1024 * 1024;
/// A shard's write limit in Kinesis records per second.
pub const SHARD_RECORDS_PER_SECOND: u64 = 1000;

/// Settings of a [`Producer`](crate::Producer). Build with [`ProducerConfig::builder`].
///
/// Names and defaults follow the Kinesis Producer Library's where it has the setting.
///
/// ```
/// use std::time::Duration;
/// use producer::ProducerConfig;
///
/// let config = ProducerConfig::builder("orders")
///     .record_max_buffered_time(Duration::from_millis(50))
///     .rate_limit(100)
///     .build()?;
/// assert_eq!(config.aggregation_max_size, 51_200);
/// assert_eq!(config.record_ttl, Duration::from_secs(30));
///
/// let err = ProducerConfig::builder("orders").collection_max_count(501).build();
/// assert_eq!(err.unwrap_err().field, "collection_max_count");
/// # Ok::<(), producer::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerConfig {
    /// The stream to write to.
    pub stream_name: String,
    /// Pack user records into KPL aggregated records, one per predicted shard. Default
    /// true. Off, every user record is its own Kinesis record.
    pub aggregation_enabled: bool,
    /// Most user records in one aggregated record. Default 4,294,967,295 (no limit but
    /// the size), as the KPL.
    pub aggregation_max_count: usize,
    /// Largest aggregated record, encoded (magic, protobuf, digest), in bytes: 64 to
    /// 1 MiB. Default 51,200, as the KPL. A user record too large to share an
    /// aggregate is sent alone, as a plain record.
    pub aggregation_max_size: usize,
    /// Most Kinesis records in one PutRecords call: 1 to 500. Default 500.
    pub collection_max_count: usize,
    /// Largest PutRecords call (data plus partition keys), in bytes: 1 to 5 MiB.
    /// Default 5 MiB. A single record larger than this still goes, alone.
    pub collection_max_size: usize,
    /// Longest a user record waits in the buffers for others to share its aggregate or
    /// request. Default 100 ms, as the KPL. Flush and shutdown skip the wait.
    pub record_max_buffered_time: Duration,
    /// How long the producer keeps trying a user record before failing its future with
    /// [`PutError::Expired`](crate::PutError::Expired). Default 30 s, as the KPL.
    pub record_ttl: Duration,
    /// Per-shard rate limit as a percentage of the shard's write limits (1 MiB/s and
    /// 1,000 records/s). Default 150, as the KPL: above 100 so that a mispredicted
    /// shard map never holds the producer below what Kinesis would take; Kinesis
    /// throttles the excess and the producer retries it.
    pub rate_limit: u32,
    /// Most PutRecords calls in flight. Default 24, as the KPL's `MaxConnections`.
    /// Whatever this is, a shard is in at most one call at a time.
    pub max_connections: usize,
    /// Most user records accepted and not yet resolved; `put` waits beyond it.
    /// Default 100,000: room for AWS round trips across many shards. It only needs to
    /// cover records/s × (buffered time + a call's round trip); an application that
    /// puts faster than the producer sends keeps the buffer full, and a deeper buffer
    /// then costs CPU (each record's state leaves the CPU's caches while it waits) and
    /// latency, not throughput.
    pub max_outstanding_records: usize,
    /// Most bytes (data plus partition keys) of user records accepted and not yet
    /// resolved; `put` waits beyond it. At least 1 MiB, so any valid record fits.
    /// Default 64 MiB.
    pub max_outstanding_bytes: usize,
    /// First retry delay cap: a failed record waits a random time in
    /// `0..=min(retry_max_delay, retry_base_delay × 2^(failures − 1))` ("full jitter").
    /// Default 100 ms.
    pub retry_base_delay: Duration,
    /// Longest retry delay. Default 5 s.
    pub retry_max_delay: Duration,
}

impl ProducerConfig {
    /// A builder for the given stream with every other setting at its default.
    pub fn builder(stream_name: impl Into<String>) -> ProducerConfigBuilder {
        ProducerConfigBuilder {
            config: ProducerConfig {
                stream_name: stream_name.into(),
                aggregation_enabled: true,
                aggregation_max_count: u32::MAX as usize,
                aggregation_max_size: 51_200,
                collection_max_count: MAX_RECORDS_PER_REQUEST,
                collection_max_size: MAX_REQUEST_SIZE,
                record_max_buffered_time: Duration::from_millis(100),
                record_ttl: Duration::from_secs(30),
                rate_limit: 150,
                max_connections: 24,
                max_outstanding_records: 100_000,
                max_outstanding_bytes: 64 * 1024 * 1024,
                retry_base_delay: Duration::from_millis(100),
                retry_max_delay: Duration::from_secs(5),
            },
        }
    }
}

/// Builds a [`ProducerConfig`]; each setter's default is documented on the field.
#[derive(Clone, Debug)]
pub struct ProducerConfigBuilder {
    config: ProducerConfig,
}

macro_rules! setters {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("Sets [`ProducerConfig::", stringify!($name), "`].")]
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl ProducerConfigBuilder {
    setters! {
        aggregation_max_count: usize,
        aggregation_max_size: usize,
        collection_max_count: usize,
        collection_max_size: usize,
        record_max_buffered_time: Duration,
        record_ttl: Duration,
        rate_limit: u32,
        max_connections: usize,
        max_outstanding_records: usize,
        max_outstanding_bytes: usize,
        retry_base_delay: Duration,
        retry_max_delay: Duration,
    }

    /// Sets [`ProducerConfig::aggregation_enabled`].
    pub fn aggregation(mut self, enabled: bool) -> Self {
        self.config.aggregation_enabled = enabled;
        self
    }

    /// Checks every setting and returns the configuration.
    pub fn build(self) -> Result<ProducerConfig, ConfigError> {
        let c = &self.config;
        let problem = |field: &'static str, problem: String| Err(ConfigError { field, problem });
        let in_range = |field, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError {
                    field,
                    problem: format!("is {value}, must be {min}..={max}"),
                })
            }
        };
        let len = c.stream_name.chars().count();
        if !(1..=128).contains(&len) {
            return problem(
                "stream_name",
                format!("has {len} characters, must be 1..=128"),
            );
        }
        in_range(
            "aggregation_max_count",
            c.aggregation_max_count,
            1,
            usize::MAX,
        )?;
        in_range(
            "aggregation_max_size",
            c.aggregation_max_size,
            64,
            MAX_RECORD_SIZE,
        )?;
        in_range(
            "collection_max_count",
            c.collection_max_count,
            1,
            MAX_RECORDS_PER_REQUEST,
        )?;
        in_range(
            "collection_max_size",
            c.collection_max_size,
            1,
            MAX_REQUEST_SIZE,
        )?;
        in_range("max_connections", c.max_connections, 1, 1024)?;
        let max_permits = Semaphore::MAX_PERMITS;
        in_range(
            "max_outstanding_records",
            c.max_outstanding_records,
            1,
            max_permits,
        )?;
        in_range(
            "max_outstanding_bytes",
            c.max_outstanding_bytes,
            MAX_RECORD_SIZE,
            max_permits,
        )?;
        if c.rate_limit == 0 {
            return problem("rate_limit", "is 0, must be at least 1 (percent)".into());
        }
        if c.record_ttl.is_zero() {
            return problem("record_ttl", "is zero".into());
        }
        if c.retry_base_delay.is_zero() {
            return problem("retry_base_delay", "is zero".into());
        }
        if c.retry_max_delay < c.retry_base_delay {
            return problem(
                "retry_max_delay",
                format!(
                    "{:?} is below retry_base_delay {:?}",
                    c.retry_max_delay, c.retry_base_delay
                ),
            );
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(builder: ProducerConfigBuilder) -> &'static str {
        builder.build().unwrap_err().field
    }

    #[test]
    fn defaults_are_the_kpl_defaults_and_valid() {
        let c = ProducerConfig::builder("s").build().unwrap();
        assert!(c.aggregation_enabled);
        assert_eq!(c.aggregation_max_size, 51_200);
        assert_eq!(c.aggregation_max_count, 4_294_967_295);
        assert_eq!(c.collection_max_count, 500);
        assert_eq!(c.collection_max_size, 5_242_880);
        assert_eq!(c.record_max_buffered_time, Duration::from_millis(100));
        assert_eq!(c.record_ttl, Duration::from_secs(30));
        assert_eq!(c.rate_limit, 150);
        assert_eq!(c.max_connections, 24);
    }

    #[test]
    fn out_of_range_settings_name_their_field() {
        let b = || ProducerConfig::builder("s");
        let cases = [
            (ProducerConfig::builder(""), "stream_name"),
            (ProducerConfig::builder("x".repeat(129)), "stream_name"),
            (b().aggregation_max_count(0), "aggregation_max_count"),
            (b().aggregation_max_size(63), "aggregation_max_size"),
            (
                b().aggregation_max_size(MAX_RECORD_SIZE + 1),
                "aggregation_max_size",
            ),
            (b().collection_max_count(0), "collection_max_count"),
            (b().collection_max_count(501), "collection_max_count"),
            (b().collection_max_size(0), "collection_max_size"),
            (
                b().collection_max_size(MAX_REQUEST_SIZE + 1),
                "collection_max_size",
            ),
            (b().max_connections(0), "max_connections"),
            (b().max_outstanding_records(0), "max_outstanding_records"),
            (
                b().max_outstanding_bytes(MAX_RECORD_SIZE - 1),
                "max_outstanding_bytes",
            ),
            (b().rate_limit(0), "rate_limit"),
            (b().record_ttl(Duration::ZERO), "record_ttl"),
            (b().retry_base_delay(Duration::ZERO), "retry_base_delay"),
            (
                b().retry_max_delay(Duration::from_millis(10)),
                "retry_max_delay",
            ),
        ];
        for (builder, field) in cases {
            assert_eq!(field_of(builder), field);
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        ProducerConfig::builder("s")
            .aggregation(false)
            .aggregation_max_size(MAX_RECORD_SIZE)
            .collection_max_count(1)
            .collection_max_size(1)
            .record_max_buffered_time(Duration::ZERO)
            .rate_limit(1)
            .max_outstanding_records(1)
            .max_outstanding_bytes(MAX_RECORD_SIZE)
            .retry_max_delay(Duration::from_millis(100))
            .build()
            .unwrap();
    }
}
