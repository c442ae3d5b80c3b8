//! The daemon's properties (the Java MultiLangDaemon's keys) mapped onto kcl-rs's
//! [`WorkerConfig`] and [`Endpoints`].

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use kcl::aws::Endpoints;
use kcl::config::{InitialPosition, WorkerConfig};

use crate::child::ChildSpec;

/// Everything the daemon runs with.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// How each shard's child is started.
    pub child: ChildSpec,
    /// The worker's settings.
    pub worker: WorkerConfig,
    /// Where Kinesis and DynamoDB are.
    pub endpoints: Endpoints,
    /// Bound on each wait for a child's next line and each write to it
    /// (`timeoutInSeconds`); none by default, as in Java.
    pub timeout: Option<Duration>,
    /// How long a graceful shutdown waits for children (`shutdownGraceMillis`).
    pub shutdown_grace: Duration,
    /// Keys this daemon does not know; logged once at start and ignored.
    pub unknown_keys: Vec<String>,
}

/// Default `shutdownGraceMillis`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A property with a missing or invalid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("property {key}: {problem}")]
pub struct PropertyError {
    /// The property.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

fn error(key: &str, problem: impl Into<String>) -> PropertyError {
    PropertyError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

// Accepted and meaningless here (no CloudWatch, no JVM), or consumed elsewhere.
const IGNORED_KNOWN: &[&str] = &["processinglanguage"];
const CREDENTIAL_KEYS: &[&str] = &[
    "awscredentialsprovider",
    "awscredentialsproviderdynamodb",
    "awscredentialsprovidercloudwatch",
    "kinesiscredentialsprovider",
    "dynamodbcredentialsprovider",
    "cloudwatchcredentialsprovider",
];
// Providers that mean "the SDK's default chain", which is what the Rust SDK uses.
const DEFAULT_CHAIN_PROVIDERS: &[&str] = &[
    "DefaultCredentialsProvider",
    "DefaultAWSCredentialsProviderChain",
    "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider",
    "com.amazonaws.auth.DefaultAWSCredentialsProviderChain",
];

/// Parsed property lookups: keys match case-insensitively (the Java daemon's bean
/// binding does too), the last occurrence wins.
struct Props<'a> {
    pairs: &'a [(String, String)],
}

impl Props<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, PropertyError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| error(key, format!("{v:?} is not a valid number")))
            })
            .transpose()
    }

    fn millis(&self, key: &str) -> Result<Option<Duration>, PropertyError> {
        Ok(self.number::<u64>(key)?.map(Duration::from_millis))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, PropertyError> {
        self.get(key)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(error(key, format!("{v:?} is not true or false"))),
            })
            .transpose()
    }
}

const KNOWN: &[&str] = &[
    "executableName",
    "streamName",
    "streamArn",
    "applicationName",
    "initialPositionInStream",
    "initialPositionInStreamExtended",
    "regionName",
    "kinesisEndpoint",
    "dynamoDBEndpoint",
    "workerId",
    "failoverTimeMillis",
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "shardSyncIntervalMillis",
    "callProcessRecordsEvenForEmptyRecordList",
    "timeoutInSeconds",
    "shutdownGraceMillis",
    "maxActiveThreads",
    "maxLeasesForWorker",
    "parentShardPollIntervalMillis",
];

/// A stream ARN's region and name: `arn:aws:kinesis:<region>:<account>:stream/<name>`.
pub fn parse_stream_arn(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "kinesis", region, account, resource]
            if !partition.is_empty() && !region.is_empty() && !account.is_empty() =>
        {
            let name = resource.strip_prefix("stream/")?;
            (!name.is_empty() && !name.contains('/'))
                .then(|| (region.to_string(), name.to_string()))
        }
        _ => None,
    }
}

impl DaemonConfig {
    /// Builds the configuration from the properties of a file in `base_dir`.
    pub fn from_properties(
        pairs: &[(String, String)],
        base_dir: &Path,
    ) -> Result<DaemonConfig, PropertyError> {
        let props = Props { pairs };
        let executable = props
            .get("executableName")
            .ok_or_else(|| error("executableName", "is required"))?;
        let child = ChildSpec::from_executable_name(executable, base_dir)
            .ok_or_else(|| error("executableName", "is empty"))?;

        let region = props.get("regionName").map(str::to_string);
        // The ARN wins over the name, as in the Java daemon.
        let stream_name = match props.get("streamArn") {
            Some(arn) => {
                let (arn_region, name) = parse_stream_arn(arn).ok_or_else(|| {
                    error("streamArn", format!("{arn:?} is not a Kinesis stream ARN"))
                })?;
                if let Some(region) = &region
                    && *region != arn_region
                {
                    return Err(error(
                        "streamArn",
                        format!("is in region {arn_region} but regionName is {region}"),
                    ));
                }
                name
            }
            None => props
                .get("streamName")
                .ok_or_else(|| error("streamName", "streamName or streamArn is required"))?
                .to_string(),
        };
        let application = props
            .get("applicationName")
            .ok_or_else(|| error("applicationName", "is required"))?;

        for key in CREDENTIAL_KEYS {
            if let Some(provider) = props.get(key)
                && !provider
                    .split(',')
                    .all(|p| DEFAULT_CHAIN_PROVIDERS.contains(&p.trim()))
            {
                return Err(error(
                    key,
                    format!(
                        "{provider:?} is not supported: kcl-multilang uses the AWS SDK's default \
                         credential chain (environment, profile, web identity, container, instance \
                         metadata); set {key} = DefaultCredentialsProvider or remove it"
                    ),
                ));
            }
        }

        let mut builder = WorkerConfig::builder(stream_name, application);
        if let Some(worker_id) = props.get("workerId") {
            builder = builder.worker_id(worker_id);
        }
        builder = builder.initial_position(initial_position(&props)?);
        if let Some(v) = props.millis("failoverTimeMillis")? {
            builder = builder.failover_time(v);
        }
        if let Some(v) = props.number::<i32>("maxRecords")? {
            builder = builder.max_records(v);
        }
        if let Some(v) = props.millis("idleTimeBetweenReadsInMillis")? {
            builder = builder.idle_time_between_reads(v);
        }
        if let Some(v) = props.millis("shardSyncIntervalMillis")? {
            builder = builder.shard_sync_interval(v);
        }
        if let Some(v) = props.boolean("callProcessRecordsEvenForEmptyRecordList")? {
            builder = builder.call_process_records_even_for_empty(v);
        }
        if let Some(v) = props.millis("parentShardPollIntervalMillis")? {
            builder = builder.parent_poll_interval(v);
        }
        // Each held shard runs one child; Java sizes its thread pool with
        // maxActiveThreads, here it caps the shards (children) a daemon holds, as
        // maxLeasesForWorker does. Zero or less means no bound.
        let caps = [
            props.number::<i64>("maxActiveThreads")?,
            props.number::<i64>("maxLeasesForWorker")?,
        ];
        if let Some(cap) = caps.into_iter().flatten().filter(|&v| v > 0).min() {
            builder = builder.max_leases_per_worker(Some(cap as usize));
        }
        let worker = builder.build().map_err(|e| error(e.field, e.problem))?;

        let timeout = match props.number::<u64>("timeoutInSeconds")? {
            Some(0) => return Err(error("timeoutInSeconds", "must be positive")),
            other => other.map(Duration::from_secs),
        };
        let shutdown_grace = props
            .millis("shutdownGraceMillis")?
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE);

        let endpoints = Endpoints {
            kinesis: props.get("kinesisEndpoint").map(str::to_string),
            dynamodb: props.get("dynamoDBEndpoint").map(str::to_string),
            region,
        };

        let mut unknown_keys: Vec<String> = Vec::new();
        for (key, _) in pairs {
            let known = KNOWN.iter().any(|k| k.eq_ignore_ascii_case(key))
                || IGNORED_KNOWN.contains(&key.to_ascii_lowercase().as_str())
                || CREDENTIAL_KEYS.contains(&key.to_ascii_lowercase().as_str());
            if !known && !unknown_keys.contains(key) {
                unknown_keys.push(key.clone());
            }
        }
        Ok(DaemonConfig {
            child,
            worker,
            endpoints,
            timeout,
            shutdown_grace,
            unknown_keys,
        })
    }
}

fn initial_position(props: &Props<'_>) -> Result<InitialPosition, PropertyError> {
    let key = "initialPositionInStream";
    let ext = "initialPositionInStreamExtended";
    // Java binds both keys to one setting in file order: `initialPositionInStreamExtended`
    // (epoch seconds) means AT_TIMESTAMP, and whichever key comes last wins.
    let last = |k: &str| {
        props
            .pairs
            .iter()
            .rposition(|(key, _)| key.eq_ignore_ascii_case(k))
    };
    let extended_wins = match (last(key), last(ext)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(plain), Some(extended)) => extended > plain,
    };
    let position = if extended_wins {
        "AT_TIMESTAMP".to_string()
    } else {
        props.get(key).unwrap_or("LATEST").to_ascii_uppercase()
    };
    match position.as_str() {
        "LATEST" => Ok(InitialPosition::Latest),
        "TRIM_HORIZON" => Ok(InitialPosition::TrimHorizon),
        "AT_TIMESTAMP" => {
            let value = props
                .get(ext)
                .ok_or_else(|| error(ext, "is required with AT_TIMESTAMP (epoch seconds)"))?;
            let seconds: u64 = value
                .parse()
                .map_err(|_| error(ext, format!("{value:?} is not a time in epoch seconds")))?;
            Ok(InitialPosition::AtTimestamp(
                UNIX_EPOCH + Duration::from_secs(seconds),
            ))
        }
        other => Err(error(
            key,
            format!("{other:?} is not TRIM_HORIZON, LATEST or AT_TIMESTAMP"),
        )),
    }
}

/// Reads and parses a properties file; its folder is the children's working directory.
pub fn load(path: &Path) -> Result<DaemonConfig, Box<dyn std::error::Error + Send + Sync>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pairs = crate::properties::parse(&text)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(DaemonConfig::from_properties(&pairs, &dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<DaemonConfig, PropertyError> {
        let pairs = crate::properties::parse(text).unwrap();
        DaemonConfig::from_properties(&pairs, Path::new("/nonexistent"))
    }

    const BASE: &str =
        "executableName = python3 app.py\nstreamName = orders\napplicationName = OrdersApp\n";

    #[test]
    fn defaults_and_every_key() {
        let c = config(BASE).unwrap();
        assert_eq!(c.worker.stream_name(), "orders");
        assert_eq!(c.worker.application_name(), "OrdersApp");
        assert_eq!(c.worker.initial_position(), InitialPosition::Latest);
        assert_eq!(c.child.command, vec!["python3", "app.py"]);
        assert_eq!(c.timeout, None);
        assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert_eq!(c.endpoints, Endpoints::default());
        assert!(c.unknown_keys.is_empty());

        let c = config(&format!(
            "{BASE}initialPositionInStream = TRIM_HORIZON\nregionName = eu-west-1\n\
             kinesisEndpoint = http://127.0.0.1:4567\ndynamoDBEndpoint = http://127.0.0.1:8000\n\
             workerId = w1\nfailoverTimeMillis = 20000\nmaxRecords = 100\n\
             idleTimeBetweenReadsInMillis = 50\nshardSyncIntervalMillis = 1000\n\
             callProcessRecordsEvenForEmptyRecordList = true\ntimeoutInSeconds = 30\n\
             shutdownGraceMillis = 2500\nmaxActiveThreads = 4\n\
             AwsCredentialsProvider = DefaultCredentialsProvider\nprocessingLanguage = python/3.8\n\
             metricsLevel = NONE\nmetricsLevel = SUMMARY\nvalidateSequenceNumberBeforeCheckpointing = true\n"
        ))
        .unwrap();
        assert_eq!(c.worker.initial_position(), InitialPosition::TrimHorizon);
        assert_eq!(c.endpoints.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            c.endpoints.kinesis.as_deref(),
            Some("http://127.0.0.1:4567")
        );
        assert_eq!(
            c.endpoints.dynamodb.as_deref(),
            Some("http://127.0.0.1:8000")
        );
        assert_eq!(c.worker.worker_id(), "w1");
        assert_eq!(c.worker.failover_time(), Duration::from_secs(20));
        assert_eq!(c.worker.max_records(), 100);
        assert_eq!(
            c.worker.idle_time_between_reads(),
            Duration::from_millis(50)
        );
        assert_eq!(c.worker.shard_sync_interval(), Duration::from_secs(1));
        assert!(c.worker.call_process_records_even_for_empty());
        assert_eq!(c.timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.shutdown_grace, Duration::from_millis(2500));
        assert_eq!(c.worker.max_leases_per_worker(), Some(4));
        // Unknown keys once each, in file order.
        assert_eq!(
            c.unknown_keys,
            vec!["metricsLevel", "validateSequenceNumberBeforeCheckpointing"]
        );
    }

    #[test]
    fn stream_arn_wins_over_the_name() {
        let c = config(&format!(
            "{BASE}streamArn = arn:aws:kinesis:us-east-1:123456789012:stream/fromArn\nregionName = us-east-1\n"
        ))
        .unwrap();
        assert_eq!(c.worker.stream_name(), "fromArn");
        let table: &[(&str, Option<(&str, &str)>)] = &[
            (
                "arn:aws:kinesis:us-east-1:123456789012:stream/s",
                Some(("us-east-1", "s")),
            ),
            (
                "arn:aws-cn:kinesis:cn-north-1:1:stream/s.x-y",
                Some(("cn-north-1", "s.x-y")),
            ),
            ("arn:aws:kinesis:us-east-1:1:table/s", None),
            ("arn:aws:dynamodb:us-east-1:1:stream/s", None),
            ("arn:aws:kinesis:us-east-1:1:stream/", None),
            ("s", None),
        ];
        for (arn, expected) in table {
            assert_eq!(
                parse_stream_arn(arn),
                expected.map(|(r, n)| (r.to_string(), n.to_string())),
                "{arn}"
            );
        }
    }

    #[test]
    fn initial_positions_as_java_binds_them() {
        let at = InitialPosition::AtTimestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let table: &[(&str, InitialPosition)] = &[
            ("", InitialPosition::Latest),
            (
                "initialPositionInStream = trim_horizon\n",
                InitialPosition::TrimHorizon,
            ),
            (
                "initialPositionInStream = LATEST\n",
                InitialPosition::Latest,
            ),
            (
                "initialPositionInStream = AT_TIMESTAMP\ninitialPositionInStreamExtended = 1700000000\n",
                at,
            ),
            // The extended key alone means AT_TIMESTAMP; the last of the two keys wins.
            ("initialPositionInStreamExtended = 1700000000\n", at),
            (
                "initialPositionInStream = TRIM_HORIZON\ninitialPositionInStreamExtended = 1700000000\n",
                at,
            ),
            (
                "initialPositionInStreamExtended = 1700000000\ninitialPositionInStream = TRIM_HORIZON\n",
                InitialPosition::TrimHorizon,
            ),
        ];
        for (extra, expected) in table {
            let c = config(&format!("{BASE}{extra}")).unwrap();
            assert_eq!(c.worker.initial_position(), *expected, "{extra:?}");
        }
    }

    #[test]
    fn the_lease_cap_is_the_smaller_of_max_active_threads_and_max_leases_for_worker() {
        let table: &[(&str, Option<usize>)] = &[
            ("", None),
            ("maxActiveThreads = 0\n", None),
            ("maxActiveThreads = -1\n", None),
            ("maxLeasesForWorker = 3\n", Some(3)),
            ("maxActiveThreads = 8\nmaxLeasesForWorker = 3\n", Some(3)),
            ("maxActiveThreads = 2\nmaxLeasesForWorker = 3\n", Some(2)),
        ];
        for (extra, expected) in table {
            let c = config(&format!("{BASE}{extra}")).unwrap();
            assert_eq!(c.worker.max_leases_per_worker(), *expected, "{extra:?}");
        }
        let c = config(&format!("{BASE}parentShardPollIntervalMillis = 50\n")).unwrap();
        assert_eq!(c.worker.parent_poll_interval(), Duration::from_millis(50));
    }

    #[test]
    fn invalid_values_name_their_key() {
        let table: &[(&str, &str)] = &[
            (
                "streamName = orders\napplicationName = App\n",
                "executableName",
            ),
            ("executableName = x\napplicationName = App\n", "streamName"),
            ("executableName = x\nstreamName = s\n", "applicationName"),
            ("maxRecords = lots\n", "maxRecords"),
            ("maxRecords = 20000\n", "max_records"),
            ("failoverTimeMillis = 10\n", "failover_time"),
            (
                "callProcessRecordsEvenForEmptyRecordList = yes\n",
                "callProcessRecordsEvenForEmptyRecordList",
            ),
            ("timeoutInSeconds = 0\n", "timeoutInSeconds"),
            (
                "initialPositionInStream = OLDEST\n",
                "initialPositionInStream",
            ),
            (
                "initialPositionInStream = AT_TIMESTAMP\n",
                "initialPositionInStreamExtended",
            ),
            (
                "initialPositionInStreamExtended = yesterday\n",
                "initialPositionInStreamExtended",
            ),
            ("streamArn = orders\n", "streamArn"),
            (
                "streamArn = arn:aws:kinesis:us-east-5:1:stream/s\nregionName = us-east-1\n",
                "streamArn",
            ),
            (
                "AwsCredentialsProvider = ProfileCredentialsProvider|dev\n",
                "awscredentialsprovider",
            ),
        ];
        for (extra, key) in table {
            let text = if extra.starts_with("streamName") || extra.starts_with("executableName") {
                extra.to_string()
            } else {
                format!("{BASE}{extra}")
            };
            let err = config(&text).unwrap_err();
            assert_eq!(err.key, *key, "{extra:?}: {err}");
        }
    }
}
