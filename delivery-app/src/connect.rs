//! Where the AWS services are: the local endpoints of `delivery-app local` by default,
//! or real AWS with `--real-aws`; and the stream and application names. Shared by the
//! subcommands as flattened clap arguments.

use aws_sdk_dynamodb::error::SdkError;
use kcl::aws::{Clients, Endpoints, UnreachableError};

/// The innermost cause of an error, in words (for a connection failure, what the OS
/// said; for a timeout, that it timed out); the error's own text if that is empty.
pub fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = err;
    while let Some(next) = inner.source() {
        inner = next;
    }
    match inner.to_string() {
        text if text.is_empty() => err.to_string(),
        text => text,
    }
}

/// Ok if `probe` got an answer from `service`, even an error of the service ("not
/// found", "access denied" prove it reachable); otherwise what kept it from answering.
fn answered<T, E, R>(
    probe: Result<T, SdkError<E, R>>,
    service: &'static str,
    endpoint: &Option<String>,
) -> Result<(), UnreachableError>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match probe {
        Err(e) if !matches!(e, SdkError::ServiceError(_)) => Err(UnreachableError {
            service,
            endpoint: endpoint
                .clone()
                .unwrap_or_else(|| "AWS default".to_string()),
            message: innermost(&e),
        }),
        _ => Ok(()),
    }
}

/// Endpoint options of every subcommand that talks to AWS.
#[derive(clap::Args, Clone, Debug)]
pub struct AwsArgs {
    /// Kinesis endpoint URL (ignored with --real-aws). The default is where
    /// `delivery-app local` serves.
    #[arg(
        long,
        global = true,
        env = "DELIVERY_KINESIS_ENDPOINT",
        default_value = "http://127.0.0.1:4567"
    )]
    pub kinesis_endpoint: String,
    /// DynamoDB endpoint URL (ignored with --real-aws).
    #[arg(
        long,
        global = true,
        env = "DELIVERY_DYNAMODB_ENDPOINT",
        default_value = "http://127.0.0.1:8000"
    )]
    pub dynamodb_endpoint: String,
    /// Use real AWS: credentials and region come from the usual AWS chain (environment,
    /// profile, instance role). Costs money: streams are billed per shard-hour.
    #[arg(long, global = true)]
    pub real_aws: bool,
    /// AWS region (default: us-east-1 locally, the AWS chain's otherwise).
    #[arg(long, global = true, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Local endpoints: sign as this access key id. On `local --strict` the keys
    /// `delivery-worker`, `delivery-produce`, `delivery-stats`, `delivery-reshard` and
    /// `delivery-create-stream` are restricted to their command's policy in
    /// docs/iam-policy.md; any other key is unrestricted. With --real-aws the AWS chain
    /// reads the same variable.
    #[arg(long, global = true, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key_id: Option<String>,
}

impl AwsArgs {
    /// The endpoints these options name.
    pub fn endpoints(&self) -> Endpoints {
        let mut endpoints = if self.real_aws {
            Endpoints::default()
        } else {
            Endpoints::local(
                self.kinesis_endpoint.clone(),
                self.dynamodb_endpoint.clone(),
            )
        };
        endpoints.region = self.region.clone();
        endpoints
    }

    /// Clients for these endpoints, checked with one cheap call to each service the
    /// command uses, so that a wrong URL or a stopped `local` is one clear error:
    /// `ListShards` on `stream` for Kinesis, `DescribeTable` on `table` for DynamoDB.
    /// Both are calls on the command's own resources (not the account-wide
    /// `ListStreams`/`ListTables`), and any answer of the service, even "not found" or
    /// "access denied", proves it reachable: the command's own calls then say what is
    /// wrong with the resource.
    pub async fn clients(
        &self,
        stream: Option<&str>,
        table: Option<&str>,
    ) -> Result<Clients, UnreachableError> {
        let endpoints = self.endpoints();
        let clients = match (&self.access_key_id, self.real_aws) {
            (Some(key), false) => Clients::connect_as(&endpoints, key).await,
            _ => Clients::connect(&endpoints).await,
        };
        if let Some(stream) = stream {
            let probe = clients
                .kinesis
                .list_shards()
                .stream_name(stream)
                .max_results(1)
                .send()
                .await;
            answered(probe, "Kinesis", &endpoints.kinesis)?;
        }
        if let Some(table) = table {
            let probe = clients
                .dynamodb
                .describe_table()
                .table_name(table)
                .send()
                .await;
            answered(probe, "DynamoDB", &endpoints.dynamodb)?;
        }
        Ok(clients)
    }

    /// Command-line arguments that name the same endpoints (for child processes).
    pub fn to_args(endpoints: &Endpoints) -> Vec<String> {
        let mut args = Vec::new();
        match (&endpoints.kinesis, &endpoints.dynamodb) {
            (Some(k), Some(d)) => {
                args.extend(["--kinesis-endpoint".into(), k.clone()]);
                args.extend(["--dynamodb-endpoint".into(), d.clone()]);
            }
            _ => args.push("--real-aws".into()),
        }
        if let Some(region) = &endpoints.region {
            args.extend(["--region".into(), region.clone()]);
        }
        args
    }
}

/// The stream and the application (consumer group) names.
#[derive(clap::Args, Clone, Debug)]
pub struct NameArgs {
    /// The Kinesis stream.
    #[arg(
        long,
        global = true,
        env = "DELIVERY_STREAM",
        default_value = "DeliveryStream"
    )]
    pub stream: String,
    /// The consumer application: names the lease table (`<app>`) and the statistics
    /// tables (`<app>-Orders`, `<app>-Stats`, `<app>-DeadLetters`).
    #[arg(
        long,
        global = true,
        env = "DELIVERY_APP",
        default_value = "DeliveryStats"
    )]
    pub app: String,
}

impl NameArgs {
    /// The names as command-line arguments.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--stream".into(),
            self.stream.clone().into(),
            "--app".into(),
            self.app.clone().into(),
        ]
    }
}
