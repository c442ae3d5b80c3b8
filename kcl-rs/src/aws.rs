//! Building the AWS SDK clients kcl-rs talks through, for real AWS or a local endpoint.
//!
//! With no endpoint URL the normal AWS chain is used (environment, profile, IMDS, ...).
//! With an endpoint URL (a local emulator) the clients use static dummy credentials and a
//! region, and short connect timeouts so that an unreachable endpoint fails fast with
//! an error that names it.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_kinesis::error::DisplayErrorContext;

/// Region used for local endpoints when none is given.
pub const LOCAL_REGION: &str = "us-east-1";

/// Where the Kinesis and DynamoDB clients connect.
///
/// `None` for an endpoint means "real AWS, resolved by the SDK".
///
/// ```
/// let local = kcl::aws::Endpoints::local("http://127.0.0.1:4567", "http://127.0.0.1:8000");
/// assert_eq!(local.kinesis.as_deref(), Some("http://127.0.0.1:4567"));
/// assert!(kcl::aws::Endpoints::default().kinesis.is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Kinesis endpoint URL, e.g. `http://127.0.0.1:4567`.
    pub kinesis: Option<String>,
    /// DynamoDB endpoint URL, e.g. `http://127.0.0.1:8000`.
    pub dynamodb: Option<String>,
    /// Region override; defaults to the SDK chain, or `us-east-1` for local endpoints.
    pub region: Option<String>,
}

impl Endpoints {
    /// Both services on local endpoints.
    pub fn local(kinesis: impl Into<String>, dynamodb: impl Into<String>) -> Self {
        Endpoints {
            kinesis: Some(kinesis.into()),
            dynamodb: Some(dynamodb.into()),
            region: None,
        }
    }

    fn any_local(&self) -> bool {
        self.kinesis.is_some() || self.dynamodb.is_some()
    }
}

/// Ready-to-use SDK clients for Kinesis and DynamoDB.
#[derive(Clone, Debug)]
pub struct Clients {
    /// The Kinesis client.
    pub kinesis: aws_sdk_kinesis::Client,
    /// The DynamoDB client.
    pub dynamodb: aws_sdk_dynamodb::Client,
    endpoints: Endpoints,
}

/// A service could not be reached or refused the request.
#[derive(Debug, thiserror::Error)]
#[error("{service} endpoint {endpoint} did not answer: {message}")]
pub struct UnreachableError {
    /// `"Kinesis"` or `"DynamoDB"`.
    pub service: &'static str,
    /// The endpoint URL, or `"AWS default"`.
    pub endpoint: String,
    /// What the SDK reported.
    pub message: String,
}

impl Clients {
    /// Builds clients for the given endpoints. No request is sent; see [`Clients::verify`].
    pub async fn connect(endpoints: &Endpoints) -> Clients {
        Clients::with_endpoints(&sdk_config(endpoints).await, endpoints)
    }

    /// Like [`Clients::connect`], signed with the static key `access_key_id`: for local
    /// endpoints whose strict mode binds an IAM principal to that key (see
    /// `kcl_local::LocalAws::clients_as`, crate `kcl-local`).
    pub async fn connect_as(endpoints: &Endpoints, access_key_id: &str) -> Clients {
        let credentials = Credentials::new(
            access_key_id,
            "local-secret",
            None,
            None,
            "kcl-local-principal",
        );
        let config = sdk_config(endpoints)
            .await
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .build();
        Clients::with_endpoints(&config, endpoints)
    }

    /// Both clients from `config`, each pointed at its local endpoint when one is given.
    fn with_endpoints(config: &SdkConfig, endpoints: &Endpoints) -> Clients {
        let mut kinesis = aws_sdk_kinesis::config::Builder::from(config);
        if let Some(url) = &endpoints.kinesis {
            kinesis = kinesis.endpoint_url(url);
        }
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(config);
        if let Some(url) = &endpoints.dynamodb {
            dynamodb = dynamodb.endpoint_url(url);
        }
        Clients {
            kinesis: aws_sdk_kinesis::Client::from_conf(kinesis.build()),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
            endpoints: endpoints.clone(),
        }
    }

    /// [`Clients::connect`], or for local endpoints [`Clients::connect_as`] the key
    /// named by the environment variable [`LOCAL_ACCESS_KEY_ENV`] when it is set and not
    /// empty: how the local harness processes (`kcl-record-worker`, `kcl-lease-worker`)
    /// learn the IAM principal a test binds for them. Real AWS keeps its own chain.
    pub async fn connect_from_env(endpoints: &Endpoints) -> Clients {
        match std::env::var(LOCAL_ACCESS_KEY_ENV) {
            Ok(key) if !key.trim().is_empty() && endpoints.any_local() => {
                Clients::connect_as(endpoints, key.trim()).await
            }
            _ => Clients::connect(endpoints).await,
        }
    }

    /// Wraps SDK clients built elsewhere — other timeouts, retry settings or HTTP
    /// client — for [`Worker::new`](crate::worker::Worker::new). `endpoints` only names
    /// the services in [`Clients::verify`]'s errors.
    ///
    /// ```
    /// # async fn example() {
    /// use std::time::Duration;
    /// use aws_config::timeout::TimeoutConfig;
    /// use kcl::aws::{Clients, Endpoints, sdk_config};
    ///
    /// let endpoints = Endpoints::local("http://127.0.0.1:4567", "http://127.0.0.1:8000");
    /// let config = sdk_config(&endpoints).await;
    /// let kinesis = aws_sdk_kinesis::config::Builder::from(&config)
    ///     .endpoint_url("http://127.0.0.1:4567")
    ///     .timeout_config(
    ///         TimeoutConfig::builder()
    ///             .operation_attempt_timeout(Duration::from_secs(2))
    ///             .build(),
    ///     )
    ///     .build();
    /// let dynamodb = aws_sdk_dynamodb::config::Builder::from(&config)
    ///     .endpoint_url("http://127.0.0.1:8000")
    ///     .build();
    /// let clients = Clients::from_sdk(
    ///     aws_sdk_kinesis::Client::from_conf(kinesis),
    ///     aws_sdk_dynamodb::Client::from_conf(dynamodb),
    ///     endpoints,
    /// );
    /// assert_eq!(clients.endpoints().kinesis.as_deref(), Some("http://127.0.0.1:4567"));
    /// # }
    /// ```
    pub fn from_sdk(
        kinesis: aws_sdk_kinesis::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        endpoints: Endpoints,
    ) -> Clients {
        Clients {
            kinesis,
            dynamodb,
            endpoints,
        }
    }

    /// The endpoints these clients were built for.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Sends one cheap request to each service (ListStreams, ListTables) and reports the
    /// first that fails, naming its endpoint. Use it at start-up to turn a wrong URL or a
    /// stopped emulator into one clear error instead of retries deep inside a worker.
    pub async fn verify(&self) -> Result<(), UnreachableError> {
        let name = |e: &Option<String>| e.clone().unwrap_or_else(|| "AWS default".to_string());
        self.kinesis
            .list_streams()
            .limit(1)
            .send()
            .await
            .map_err(|e| UnreachableError {
                service: "Kinesis",
                endpoint: name(&self.endpoints.kinesis),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        self.dynamodb
            .list_tables()
            .limit(1)
            .send()
            .await
            .map_err(|e| UnreachableError {
                service: "DynamoDB",
                endpoint: name(&self.endpoints.dynamodb),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        Ok(())
    }
}

/// The environment variable naming the access key [`Clients::connect_from_env`] signs
/// with.
pub const LOCAL_ACCESS_KEY_ENV: &str = "KCL_LOCAL_ACCESS_KEY_ID";

/// The shared SDK configuration: the AWS chain, or static dummy credentials for a local
/// endpoint. Timeouts are bounded in both cases so a dead endpoint never hangs a caller.
pub async fn sdk_config(endpoints: &Endpoints) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(3));
    if endpoints.any_local() {
        loader = loader
            .credentials_provider(Credentials::new("local", "local", None, None, "kcl-local"))
            .region(Region::new(
                endpoints
                    .region
                    .clone()
                    .unwrap_or_else(|| LOCAL_REGION.to_string()),
            ));
    } else if let Some(region) = &endpoints.region {
        loader = loader.region(Region::new(region.clone()));
    }
    loader.load().await
}
