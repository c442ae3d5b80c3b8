//! Stream consumers: the named registrations enhanced fan-out reads through.
//!
//! A consumer is registered once per application and stream (RegisterStreamConsumer;
//! real Kinesis allows 20 per stream) and shared by every worker of the application:
//! each worker subscribes to the shards it holds leases on through it. Registration
//! is asynchronous (CREATING, then ACTIVE after some seconds on real AWS), so
//! [`register_consumer`] waits for ACTIVE; it reuses a consumer of that name if one
//! exists, and a registration racing with another worker's ends with the same consumer.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{Consumer, ConsumerDescription, ConsumerStatus};
use tokio::time::Instant;

/// A registered stream consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConsumer {
    /// Its name (unique per stream).
    pub name: String,
    /// Its ARN, which SubscribeToShard takes.
    pub arn: String,
    /// `CREATING`, `ACTIVE` or `DELETING`.
    pub status: String,
    /// When it was registered, if the service said.
    pub created: Option<SystemTime>,
}

impl StreamConsumer {
    fn from_description(d: ConsumerDescription) -> StreamConsumer {
        StreamConsumer {
            name: d.consumer_name,
            arn: d.consumer_arn,
            status: d.consumer_status.as_str().to_string(),
            created: SystemTime::try_from(d.consumer_creation_timestamp).ok(),
        }
    }

    fn from_listing(c: Consumer) -> StreamConsumer {
        StreamConsumer {
            name: c.consumer_name,
            arn: c.consumer_arn,
            status: c.consumer_status.as_str().to_string(),
            created: SystemTime::try_from(c.consumer_creation_timestamp).ok(),
        }
    }

    /// Whether SubscribeToShard can use it.
    pub fn is_active(&self) -> bool {
        self.status == ConsumerStatus::Active.as_str()
    }
}

/// Why a stream consumer could not be registered, listed or deregistered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The stream does not exist.
    #[error("stream {stream} not found: {message}")]
    StreamNotFound {
        /// The stream.
        stream: String,
        /// The service's message.
        message: String,
    },
    /// The caller may not do this (IAM).
    #[error("{operation} on stream {stream}: access denied: {message}")]
    AccessDenied {
        /// The call refused.
        operation: &'static str,
        /// The stream.
        stream: String,
        /// The service's message.
        message: String,
    },
    /// The consumer did not become ACTIVE (or go away) in time.
    #[error("consumer {name} of stream {stream} still {status} after {waited:?}")]
    Timeout {
        /// The consumer.
        name: String,
        /// The stream.
        stream: String,
        /// Its last status.
        status: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// Any other failure (including throttling that outlasted the SDK's retries).
    #[error("{operation} on stream {stream} failed: {message}")]
    Other {
        /// The call that failed.
        operation: &'static str,
        /// The stream.
        stream: String,
        /// The SDK's error with its context.
        message: String,
    },
}

/// How often a consumer's status is looked at while waiting for it.
const STATUS_POLL: Duration = Duration::from_millis(250);

fn error<E>(err: &SdkError<E>, operation: &'static str, stream: &str) -> ConsumerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = DisplayErrorContext(err).to_string();
    let stream = stream.to_string();
    match err.code() {
        Some("ResourceNotFoundException") => ConsumerError::StreamNotFound { stream, message },
        Some("AccessDeniedException") => ConsumerError::AccessDenied {
            operation,
            stream,
            message,
        },
        _ => ConsumerError::Other {
            operation,
            stream,
            message,
        },
    }
}

/// The stream's ARN (DescribeStreamSummary), which the consumer calls take.
pub async fn stream_arn(client: &Client, stream: &str) -> Result<String, ConsumerError> {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| error(&e, "DescribeStreamSummary", stream))?;
    Ok(summary
        .stream_description_summary
        .map(|s| s.stream_arn)
        .unwrap_or_default())
}

/// The consumer `name` of `stream`, or `None` if there is none.
pub async fn describe_consumer(
    client: &Client,
    stream: &str,
    name: &str,
) -> Result<Option<StreamConsumer>, ConsumerError> {
    let arn = stream_arn(client, stream).await?;
    describe(client, &arn, stream, name).await
}

async fn describe(
    client: &Client,
    stream_arn: &str,
    stream: &str,
    name: &str,
) -> Result<Option<StreamConsumer>, ConsumerError> {
    match client
        .describe_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .consumer_description
            .map(StreamConsumer::from_description)),
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(error(&e, "DescribeStreamConsumer", stream)),
    }
}

/// Every consumer registered on `stream` (ListStreamConsumers, all pages).
pub async fn list_consumers(
    client: &Client,
    stream: &str,
) -> Result<Vec<StreamConsumer>, ConsumerError> {
    let arn = stream_arn(client, stream).await?;
    let mut consumers = Vec::new();
    let mut next_token = None;
    loop {
        // The SDK wants the stream's ARN with the token too.
        let request = client
            .list_stream_consumers()
            .stream_arn(&arn)
            .set_next_token(next_token.take());
        let page = request
            .send()
            .await
            .map_err(|e| error(&e, "ListStreamConsumers", stream))?;
        consumers.extend(
            page.consumers
                .unwrap_or_default()
                .into_iter()
                .map(StreamConsumer::from_listing),
        );
        match page.next_token {
            Some(token) if !token.is_empty() => next_token = Some(token),
            _ => return Ok(consumers),
        }
    }
}

/// The ACTIVE consumer `name` of `stream`: an existing one is reused, a missing one is
/// registered (a registration racing with another worker's ends with the one
/// consumer), and one being deleted is waited out and registered again. Waits up to
/// `timeout` for ACTIVE.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use kcl::retrieval::fanout::{deregister_consumer, list_consumers, register_consumer};
/// use kcl_local::{LocalAws, LocalAwsOptions};
///
/// let aws = LocalAws::start(LocalAwsOptions::default()).await?;
/// let kinesis = aws.clients().await.kinesis;
/// kcl::stream::create_stream(&kinesis, "orders", 1, Duration::from_secs(10)).await?;
///
/// let consumer = register_consumer(&kinesis, "orders", "billing", Duration::from_secs(30)).await?;
/// assert!(consumer.is_active());
/// // Registering again reuses it.
/// let again = register_consumer(&kinesis, "orders", "billing", Duration::from_secs(30)).await?;
/// assert_eq!(again.arn, consumer.arn);
/// assert_eq!(list_consumers(&kinesis, "orders").await?.len(), 1);
///
/// assert!(deregister_consumer(&kinesis, "orders", "billing", Duration::from_secs(30)).await?);
/// assert!(list_consumers(&kinesis, "orders").await?.is_empty());
/// # aws.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub async fn register_consumer(
    client: &Client,
    stream: &str,
    name: &str,
    timeout: Duration,
) -> Result<StreamConsumer, ConsumerError> {
    let started = Instant::now();
    let arn = stream_arn(client, stream).await?;
    let mut last_status = "absent".to_string();
    loop {
        match describe(client, &arn, stream, name).await? {
            Some(consumer) if consumer.is_active() => {
                tracing::info!(consumer = %consumer.name, arn = %consumer.arn, "stream consumer active");
                return Ok(consumer);
            }
            Some(consumer) => last_status = consumer.status,
            None => {
                tracing::info!(%stream, consumer = %name, "registering stream consumer");
                match client
                    .register_stream_consumer()
                    .stream_arn(&arn)
                    .consumer_name(name)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    // Another worker registered it first (or the name is being freed).
                    Err(e) if e.code() == Some("ResourceInUseException") => {}
                    Err(e) if e.code() == Some("LimitExceededException") => {
                        tracing::debug!(error = %DisplayErrorContext(&e), "RegisterStreamConsumer limited; waiting");
                    }
                    Err(e) => return Err(error(&e, "RegisterStreamConsumer", stream)),
                }
            }
        }
        if started.elapsed() >= timeout {
            return Err(ConsumerError::Timeout {
                name: name.to_string(),
                stream: stream.to_string(),
                status: last_status,
                waited: timeout,
            });
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// Deregisters the consumer `name` of `stream` and waits up to `timeout` until it is
/// gone. `false` if there was none. Every subscription through it ends.
pub async fn deregister_consumer(
    client: &Client,
    stream: &str,
    name: &str,
    timeout: Duration,
) -> Result<bool, ConsumerError> {
    let started = Instant::now();
    let arn = stream_arn(client, stream).await?;
    let Some(consumer) = describe(client, &arn, stream, name).await? else {
        return Ok(false);
    };
    match client
        .deregister_stream_consumer()
        .consumer_arn(&consumer.arn)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(false),
        // Already being deleted.
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => return Err(error(&e, "DeregisterStreamConsumer", stream)),
    }
    loop {
        let status = match describe(client, &arn, stream, name).await? {
            None => return Ok(true),
            Some(consumer) => consumer.status,
        };
        if started.elapsed() >= timeout {
            return Err(ConsumerError::Timeout {
                name: name.to_string(),
                stream: stream.to_string(),
                status,
                waited: timeout,
            });
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}
