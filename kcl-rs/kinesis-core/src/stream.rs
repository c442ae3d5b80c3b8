//! Stream administration and shard listing: create a stream and wait for it, list every
//! shard (paginated), split and merge. Used by kcl-rs's shard sync, the producer's shard
//! map, the tools and the tests.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::types::{Shard, StreamStatus};

/// One shard of a stream with its lineage and hash key range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard id, e.g. `shardId-000000000003`.
    pub shard_id: String,
    /// The parent shard (split or merge).
    pub parent_shard_id: Option<String>,
    /// The second parent of a merge.
    pub adjacent_parent_shard_id: Option<String>,
    /// Lowest hash key the shard takes (inclusive).
    pub starting_hash_key: u128,
    /// Highest hash key the shard takes (inclusive).
    pub ending_hash_key: u128,
    /// Sequence number the shard starts at.
    pub starting_sequence_number: String,
    /// Set when the shard is closed (split, merged or scaled away).
    pub ending_sequence_number: Option<String>,
}

impl ShardInfo {
    /// The shard's parents (none, one for a split, two for a merge).
    pub fn parents(&self) -> Vec<String> {
        self.parent_shard_id
            .iter()
            .chain(self.adjacent_parent_shard_id.iter())
            .cloned()
            .collect()
    }

    /// Whether the shard is still open for writes.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }

    /// Whether `hash_key` falls in this shard's range.
    pub fn contains(&self, hash_key: u128) -> bool {
        (self.starting_hash_key..=self.ending_hash_key).contains(&hash_key)
    }

    /// Reads a shard as ListShards (or DescribeStream) describes it; a hash key that is
    /// not a 128-bit decimal is [`StreamError::Malformed`].
    pub fn from_sdk(shard: &Shard) -> Result<ShardInfo, StreamError> {
        let parse = |s: &str| {
            s.parse::<u128>().map_err(|_| StreamError::Malformed {
                what: format!("hash key {s:?} of shard {}", shard.shard_id()),
            })
        };
        let range = shard
            .hash_key_range()
            .ok_or_else(|| StreamError::Malformed {
                what: format!("shard {} has no hash key range", shard.shard_id()),
            })?;
        let seq = shard.sequence_number_range();
        Ok(ShardInfo {
            shard_id: shard.shard_id().to_string(),
            parent_shard_id: shard.parent_shard_id().map(str::to_string),
            adjacent_parent_shard_id: shard.adjacent_parent_shard_id().map(str::to_string),
            starting_hash_key: parse(range.starting_hash_key())?,
            ending_hash_key: parse(range.ending_hash_key())?,
            starting_sequence_number: seq
                .map(|s| s.starting_sequence_number().to_string())
                .unwrap_or_default(),
            ending_sequence_number: seq
                .and_then(|s| s.ending_sequence_number().map(str::to_string)),
        })
    }
}

/// Errors of stream administration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The stream does not exist (ListShards answered `ResourceNotFoundException`).
    #[error("stream {stream} does not exist (ResourceNotFoundException)")]
    StreamNotFound {
        /// The stream.
        stream: String,
    },
    /// A Kinesis call failed.
    #[error("Kinesis {operation} on stream {stream} failed: {message}")]
    Kinesis {
        /// The API operation.
        operation: &'static str,
        /// The stream.
        stream: String,
        /// The SDK's error with its context.
        message: String,
    },
    /// The stream did not become ACTIVE in time.
    #[error("stream {stream} not ACTIVE after {waited:?} (last status {status})")]
    NotActive {
        /// The stream.
        stream: String,
        /// How long we waited.
        waited: Duration,
        /// The last status seen.
        status: String,
    },
    /// A shard id that the stream does not have, or that is closed.
    #[error("stream {stream} has no open shard {shard_id}")]
    NoSuchOpenShard {
        /// The stream.
        stream: String,
        /// The shard asked for.
        shard_id: String,
    },
    /// MergeShards on shards whose hash key ranges do not touch.
    #[error("shards {left} and {right} are not adjacent; only adjacent open shards can be merged")]
    NotAdjacent {
        /// One shard.
        left: String,
        /// The other.
        right: String,
    },
    /// A split point outside the shard's range.
    #[error(
        "split point {hash_key} is not inside shard {shard_id} ({start}..={end}) excluding its start"
    )]
    BadSplitPoint {
        /// The shard.
        shard_id: String,
        /// Requested new starting hash key.
        hash_key: u128,
        /// Range start.
        start: u128,
        /// Range end.
        end: u128,
    },
    /// The service answered with something we cannot interpret.
    #[error("malformed Kinesis response: {what}")]
    Malformed {
        /// What was wrong.
        what: String,
    },
}

fn sdk_error<'a, E: std::error::Error + 'static>(
    operation: &'static str,
    stream: &'a str,
) -> impl FnOnce(E) -> StreamError + 'a {
    move |e| StreamError::Kinesis {
        operation,
        stream: stream.to_string(),
        message: DisplayErrorContext(&e).to_string(),
    }
}

/// Lists every shard of the stream, open and closed, following `NextToken`; a stream
/// that does not exist is [`StreamError::StreamNotFound`].
pub async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, StreamError> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = match &next_token {
            // With a NextToken the stream name must not be sent again.
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let page = match request.send().await {
            Ok(page) => page,
            // Only the first page names the stream; a later one's ResourceNotFound
            // would be about the token.
            Err(e)
                if next_token.is_none()
                    && e.as_service_error()
                        .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                return Err(StreamError::StreamNotFound {
                    stream: stream.to_string(),
                });
            }
            Err(e) => return Err(sdk_error("ListShards", stream)(e)),
        };
        for shard in page.shards() {
            shards.push(ShardInfo::from_sdk(shard)?);
        }
        match page.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
            _ => return Ok(shards),
        }
    }
}

/// Creates a stream with `shards` shards unless it exists, then waits until it is ACTIVE.
pub async fn create_stream(
    client: &Client,
    stream: &str,
    shards: i32,
    timeout: Duration,
) -> Result<(), StreamError> {
    match client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => return Err(sdk_error("CreateStream", stream)(e)),
    }
    wait_for_active(client, stream, timeout).await
}

/// Polls DescribeStreamSummary until the stream is ACTIVE or `timeout` passes. A poll
/// the service refuses for its rate limit (`LimitExceededException`, 20 calls per
/// second per account, shared with every other caller) is polled again later, within
/// the same timeout.
pub async fn wait_for_active(
    client: &Client,
    stream: &str,
    timeout: Duration,
) -> Result<(), StreamError> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        let status = match client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
        {
            Ok(summary) => summary
                .stream_description_summary()
                .map(|d| d.stream_status().clone()),
            Err(e)
                if started.elapsed() < timeout
                    && e.as_service_error()
                        .is_some_and(|e| e.is_limit_exceeded_exception()) =>
            {
                None
            }
            Err(e) => return Err(sdk_error("DescribeStreamSummary", stream)(e)),
        };
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(StreamError::NotActive {
                stream: stream.to_string(),
                waited: started.elapsed(),
                status: status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

fn find_open<'a>(
    shards: &'a [ShardInfo],
    stream: &str,
    shard_id: &str,
) -> Result<&'a ShardInfo, StreamError> {
    shards
        .iter()
        .find(|s| s.shard_id == shard_id && s.is_open())
        .ok_or_else(|| StreamError::NoSuchOpenShard {
            stream: stream.to_string(),
            shard_id: shard_id.to_string(),
        })
}

/// Splits an open shard at `new_starting_hash_key` (the middle of its range when `None`),
/// then waits for the stream to be ACTIVE again.
pub async fn split_shard(
    client: &Client,
    stream: &str,
    shard_id: &str,
    new_starting_hash_key: Option<u128>,
    timeout: Duration,
) -> Result<(), StreamError> {
    let shards = list_shards(client, stream).await?;
    let shard = find_open(&shards, stream, shard_id)?;
    let (start, end) = (shard.starting_hash_key, shard.ending_hash_key);
    let at = new_starting_hash_key.unwrap_or(start + (end - start) / 2 + 1);
    if at <= start || at > end {
        return Err(StreamError::BadSplitPoint {
            shard_id: shard_id.to_string(),
            hash_key: at,
            start,
            end,
        });
    }
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard_id)
        .new_starting_hash_key(at.to_string())
        .send()
        .await
        .map_err(sdk_error("SplitShard", stream))?;
    wait_for_active(client, stream, timeout).await
}

/// Merges two adjacent open shards (in either order), then waits for ACTIVE.
pub async fn merge_shards(
    client: &Client,
    stream: &str,
    shard_a: &str,
    shard_b: &str,
    timeout: Duration,
) -> Result<(), StreamError> {
    let shards = list_shards(client, stream).await?;
    let a = find_open(&shards, stream, shard_a)?;
    let b = find_open(&shards, stream, shard_b)?;
    let (low, high) = if a.starting_hash_key < b.starting_hash_key {
        (a, b)
    } else {
        (b, a)
    };
    if low.ending_hash_key.checked_add(1) != Some(high.starting_hash_key) {
        return Err(StreamError::NotAdjacent {
            left: low.shard_id.clone(),
            right: high.shard_id.clone(),
        });
    }
    client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(&low.shard_id)
        .adjacent_shard_to_merge(&high.shard_id)
        .send()
        .await
        .map_err(sdk_error("MergeShards", stream))?;
    wait_for_active(client, stream, timeout).await
}
