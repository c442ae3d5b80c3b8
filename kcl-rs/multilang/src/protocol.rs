//! The MultiLangDaemon's JSON-lines protocol, both ways, with the Java daemon's field
//! names (`software.amazon.kinesis.multilang.messages`): one JSON object per line.
//!
//! To the child: `initialize`, `processRecords`, `leaseLost`, `shardEnded`,
//! `shutdownRequested`, and `checkpoint` (the answer to a checkpoint request). From the
//! child: `status` (the end of the message it answers) and `checkpoint` requests.

use base64::Engine;
use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::retrieval::KinesisClientRecord;
use serde::{Deserialize, Serialize};

/// A message the daemon writes to the child's stdin.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action")]
pub enum ToChild {
    /// The first message: the shard and where processing resumes.
    #[serde(rename = "initialize", rename_all = "camelCase")]
    Initialize {
        /// The shard.
        shard_id: String,
        /// The checkpoint's sequence number or sentinel (`TRIM_HORIZON`, ...).
        sequence_number: Option<String>,
        /// The checkpoint's sub-sequence number.
        sub_sequence_number: Option<u64>,
    },
    /// A batch of records.
    #[serde(rename = "processRecords", rename_all = "camelCase")]
    ProcessRecords {
        /// The records, in shard order.
        records: Vec<JsonRecord>,
        /// How far behind the tip of the shard the batch is.
        millis_behind_latest: Option<i64>,
    },
    /// Another worker owns the shard now: do not checkpoint.
    #[serde(rename = "leaseLost")]
    LeaseLost,
    /// The shard is closed and fully delivered: checkpoint (SHARD_END).
    #[serde(rename = "shardEnded")]
    ShardEnded,
    /// The worker stops or hands the lease over: checkpoint what is done.
    #[serde(rename = "shutdownRequested")]
    ShutdownRequested,
    /// The answer to a checkpoint request: the request's position, and the simple
    /// name of the Java exception the checkpoint raised (`null` when it succeeded).
    #[serde(rename = "checkpoint", rename_all = "camelCase")]
    Checkpoint {
        /// As requested.
        sequence_number: Option<String>,
        /// As requested.
        sub_sequence_number: Option<u64>,
        /// The Java exception's simple name, or `null`.
        error: Option<String>,
    },
}

impl ToChild {
    /// The `action` value, which the child's `status` message must echo.
    pub fn action(&self) -> &'static str {
        match self {
            ToChild::Initialize { .. } => "initialize",
            ToChild::ProcessRecords { .. } => "processRecords",
            ToChild::LeaseLost => "leaseLost",
            ToChild::ShardEnded => "shardEnded",
            ToChild::ShutdownRequested => "shutdownRequested",
            ToChild::Checkpoint { .. } => "checkpoint",
        }
    }

    /// The `initialize` message for a shard resuming at `checkpoint`.
    pub fn initialize(shard_id: &str, checkpoint: &ExtendedSequenceNumber) -> ToChild {
        ToChild::Initialize {
            shard_id: shard_id.to_string(),
            sequence_number: Some(checkpoint.position.as_str().to_string()),
            sub_sequence_number: Some(checkpoint.sub_sequence),
        }
    }

    /// One JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("messages always serialize");
        line.push('\n');
        line
    }
}

/// A record as the Java daemon's `JsonFriendlyRecord` writes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonRecord {
    /// The payload, base64 (standard alphabet, padded).
    pub data: String,
    /// The partition key.
    pub partition_key: String,
    /// The Kinesis sequence number.
    pub sequence_number: String,
    /// Arrival time at Kinesis, epoch milliseconds.
    pub approximate_arrival_timestamp: Option<i64>,
    /// Index inside a KPL aggregated record; 0 otherwise.
    pub sub_sequence_number: u64,
    /// Always `"record"`.
    pub action: &'static str,
}

impl From<&KinesisClientRecord> for JsonRecord {
    fn from(record: &KinesisClientRecord) -> JsonRecord {
        JsonRecord {
            data: base64::engine::general_purpose::STANDARD.encode(&record.data),
            partition_key: record.partition_key.clone(),
            sequence_number: record.sequence_number.clone(),
            approximate_arrival_timestamp: record.approximate_arrival_timestamp.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            }),
            sub_sequence_number: record.sub_sequence_number,
            action: "record",
        }
    }
}

/// A message the child writes to its stdout.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "action")]
pub enum FromChild {
    /// The child finished handling the message named by `responseFor`.
    #[serde(rename = "status", rename_all = "camelCase")]
    Status {
        /// The action answered.
        response_for: Option<String>,
    },
    /// The child asks for a checkpoint; `null` sequence number means "everything
    /// delivered so far".
    #[serde(rename = "checkpoint", rename_all = "camelCase")]
    Checkpoint {
        /// A sequence number, `SHARD_END`, or `null`.
        #[serde(default, deserialize_with = "string_or_number")]
        sequence_number: Option<String>,
        /// A sub-sequence number or `null`.
        #[serde(default)]
        sub_sequence_number: Option<u64>,
    },
}

/// What a stdout line is.
#[derive(Clone, Debug, PartialEq)]
pub enum ChildLine {
    /// A protocol message.
    Message(FromChild),
    /// Nothing (kclpy writes a blank line before and after each message).
    Blank,
    /// Anything else a child prints (debug output, a library's banner): skipped.
    Other(String),
}

/// Classifies one line of the child's stdout.
pub fn parse_child_line(line: &str) -> ChildLine {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return ChildLine::Blank;
    }
    match serde_json::from_str::<FromChild>(trimmed) {
        Ok(message) => ChildLine::Message(message),
        Err(_) => ChildLine::Other(trimmed.to_string()),
    }
}

// Java's Jackson reads a JSON number into the String field too; so do we.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "sequenceNumber must be a string, got {other}"
            )));
        }
    })
}

/// A checkpoint request, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointRequest {
    /// `sequenceNumber: null`: everything delivered so far (SHARD_END at shard end).
    LastDelivered,
    /// A record position (a missing sub-sequence number means 0, as in Java).
    At(ExtendedSequenceNumber),
    /// `"SHARD_END"`.
    ShardEnd,
    /// Not a sequence number: Java's checkpointer throws `IllegalArgumentException`.
    Invalid(String),
}

impl CheckpointRequest {
    /// Decodes the request's fields.
    pub fn decode(sequence_number: Option<&str>, sub_sequence_number: Option<u64>) -> Self {
        match sequence_number {
            None => CheckpointRequest::LastDelivered,
            Some(s) => match SequencePosition::parse(s) {
                Some(SequencePosition::Sequence(n)) => CheckpointRequest::At(
                    ExtendedSequenceNumber::at(n, sub_sequence_number.unwrap_or(0)),
                ),
                Some(SequencePosition::ShardEnd) => CheckpointRequest::ShardEnd,
                _ => CheckpointRequest::Invalid(s.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn json(message: &ToChild) -> serde_json::Value {
        serde_json::from_str(&message.to_line()).unwrap()
    }

    #[test]
    fn messages_to_the_child_use_the_java_field_names() {
        let record = KinesisClientRecord {
            sequence_number: "4959".into(),
            sub_sequence_number: 2,
            aggregated: true,
            partition_key: "pk".into(),
            explicit_hash_key: None,
            data: b"hello".to_vec(),
            approximate_arrival_timestamp: Some(
                UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            ),
        };
        let table: Vec<(ToChild, serde_json::Value)> = vec![
            (
                ToChild::initialize(
                    "shardId-000000000001",
                    &ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
                ),
                serde_json::json!({"action":"initialize","shardId":"shardId-000000000001","sequenceNumber":"TRIM_HORIZON","subSequenceNumber":0}),
            ),
            (
                ToChild::ProcessRecords {
                    records: vec![JsonRecord::from(&record)],
                    millis_behind_latest: Some(7),
                },
                serde_json::json!({"action":"processRecords","millisBehindLatest":7,"records":[
                    {"action":"record","data":"aGVsbG8=","partitionKey":"pk","sequenceNumber":"4959",
                     "subSequenceNumber":2,"approximateArrivalTimestamp":1_700_000_000_123i64}]}),
            ),
            (
                ToChild::LeaseLost,
                serde_json::json!({"action":"leaseLost"}),
            ),
            (
                ToChild::ShardEnded,
                serde_json::json!({"action":"shardEnded"}),
            ),
            (
                ToChild::ShutdownRequested,
                serde_json::json!({"action":"shutdownRequested"}),
            ),
            (
                ToChild::Checkpoint {
                    sequence_number: None,
                    sub_sequence_number: None,
                    error: None,
                },
                serde_json::json!({"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":null}),
            ),
            (
                ToChild::Checkpoint {
                    sequence_number: Some("12".into()),
                    sub_sequence_number: Some(3),
                    error: Some("ShutdownException".into()),
                },
                serde_json::json!({"action":"checkpoint","sequenceNumber":"12","subSequenceNumber":3,"error":"ShutdownException"}),
            ),
        ];
        for (message, expected) in table {
            assert_eq!(json(&message), expected, "{message:?}");
            assert_eq!(json(&message)["action"], message.action());
            assert!(
                message.to_line().ends_with('\n') && message.to_line().matches('\n').count() == 1
            );
        }
    }

    #[test]
    fn lines_from_the_child() {
        use ChildLine::*;
        let table: Vec<(&str, ChildLine)> = vec![
            ("", Blank),
            ("   ", Blank),
            (
                r#"{"action": "status", "responseFor": "initialize"}"#,
                Message(FromChild::Status {
                    response_for: Some("initialize".into()),
                }),
            ),
            (
                r#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#,
                Message(FromChild::Checkpoint {
                    sequence_number: None,
                    sub_sequence_number: None,
                }),
            ),
            (
                r#"{"action":"checkpoint","sequenceNumber":"123","subSequenceNumber":4}"#,
                Message(FromChild::Checkpoint {
                    sequence_number: Some("123".into()),
                    sub_sequence_number: Some(4),
                }),
            ),
            (
                r#"{"action":"checkpoint","sequenceNumber":123}"#,
                Message(FromChild::Checkpoint {
                    sequence_number: Some("123".into()),
                    sub_sequence_number: None,
                }),
            ),
            (
                "Encountered shutdown exception, skipping checkpoint",
                Other("Encountered shutdown exception, skipping checkpoint".into()),
            ),
            (
                r#"{"action":"dance"}"#,
                Other(r#"{"action":"dance"}"#.into()),
            ),
            (r#"{"no":"action"}"#, Other(r#"{"no":"action"}"#.into())),
        ];
        for (line, expected) in table {
            assert_eq!(parse_child_line(line), expected, "{line:?}");
        }
    }

    #[test]
    fn checkpoint_requests_decode() {
        use CheckpointRequest::*;
        let table: Vec<(Option<&str>, Option<u64>, CheckpointRequest)> = vec![
            (None, None, LastDelivered),
            (None, Some(3), LastDelivered),
            (
                Some("4959"),
                None,
                At(ExtendedSequenceNumber::at("4959", 0)),
            ),
            (
                Some("4959"),
                Some(3),
                At(ExtendedSequenceNumber::at("4959", 3)),
            ),
            (Some("SHARD_END"), None, ShardEnd),
            (Some("TRIM_HORIZON"), None, Invalid("TRIM_HORIZON".into())),
            (Some("12ab"), None, Invalid("12ab".into())),
            (Some(""), None, Invalid("".into())),
        ];
        for (seq, sub, expected) in table {
            assert_eq!(
                CheckpointRequest::decode(seq, sub),
                expected,
                "{seq:?} {sub:?}"
            );
        }
    }
}
