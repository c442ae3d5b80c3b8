//! A shard Kinesis no longer knows: `ResourceNotFoundException` from GetShardIterator
//! or GetRecords.
//!
//! Real Kinesis removes a closed shard once it is older than the stream's retention
//! period: ListShards stops listing it and reads of it answer ResourceNotFound. Its
//! records are gone, so there is nothing left to read: the Java KCL treats it as
//! ended (SHARD_END), and so do we, so that its children can start. A deleted stream
//! answers ResourceNotFound too, and must not be mistaken for it: checkpointing
//! SHARD_END on every lease of a deleted (or wrongly named) stream would skip whatever
//! it holds if it is recreated. So the stream is looked at first, with ListShards only:
//! it answers ResourceNotFound for a missing stream too, and it is the one call of the
//! three a worker's documented IAM policy allows (DescribeStreamSummary is not in it).

use aws_sdk_kinesis::Client;

use super::polling::ChildShardRef;
use crate::stream::{ShardInfo, StreamError, list_shards};

/// What the stream says about the stream and the shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StreamView {
    /// ListShards answered ResourceNotFound: the stream itself is missing.
    StreamMissing,
    /// The stream exists and ListShards returned these shards.
    Listed(Vec<ShardInfo>),
    /// The stream could not be looked at (throttled, network, denied).
    Unknown(String),
}

/// What to do about a shard answered ResourceNotFound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The shard is gone: read it as ended; these are its children from the listing.
    Ended(Vec<ChildShardRef>),
    /// Not a trimmed shard (the stream is missing, or the shard is listed and open,
    /// which retention never removes): report the error.
    Fatal,
    /// The stream could not be looked at: back off and look again.
    Retry,
}

/// Decides from the stream's state. A shard absent from a stream that exists is gone;
/// so is one still listed but closed, because the listing may lag behind the trimming
/// (the reads already say it is gone, and a closed shard gets no new records).
pub(crate) fn judge(shard_id: &str, view: &StreamView) -> Verdict {
    let shards = match view {
        StreamView::StreamMissing => return Verdict::Fatal,
        StreamView::Unknown(_) => return Verdict::Retry,
        StreamView::Listed(shards) => shards,
    };
    if shards.iter().any(|s| s.shard_id == shard_id && s.is_open()) {
        return Verdict::Fatal;
    }
    let children = shards
        .iter()
        .filter(|s| s.parents().iter().any(|p| p == shard_id))
        .map(|s| ChildShardRef {
            shard_id: s.shard_id.clone(),
            parent_shard_ids: s.parents(),
            hash_key_range: Some((s.starting_hash_key, s.ending_hash_key)),
        })
        .collect();
    Verdict::Ended(children)
}

/// Looks at the stream with ListShards (every page): ResourceNotFound on the stream
/// means it is missing.
pub(crate) async fn look(client: &Client, stream: &str) -> StreamView {
    match list_shards(client, stream).await {
        Ok(shards) => StreamView::Listed(shards),
        Err(StreamError::StreamNotFound { .. }) => StreamView::StreamMissing,
        Err(e) => StreamView::Unknown(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], open: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| p.to_string()),
            adjacent_parent_shard_id: parents.get(1).map(|p| p.to_string()),
            starting_hash_key: 0,
            ending_hash_key: 99,
            starting_sequence_number: "1".into(),
            ending_sequence_number: (!open).then(|| "9".into()),
        }
    }

    fn ended(children: &[&str]) -> Verdict {
        Verdict::Ended(
            children
                .iter()
                .map(|c| ChildShardRef {
                    shard_id: c.to_string(),
                    parent_shard_ids: vec!["s0".into(), "s9".into()],
                    hash_key_range: Some((0, 99)),
                })
                .collect(),
        )
    }

    #[test]
    fn a_shard_is_gone_only_from_a_stream_that_exists() {
        // s0 and s9 were merged into s1.
        let merged = vec![shard("s1", &["s0", "s9"], true), shard("s9", &[], false)];
        let cases = [
            ("stream deleted", StreamView::StreamMissing, Verdict::Fatal),
            (
                "cannot look",
                StreamView::Unknown("throttled".into()),
                Verdict::Retry,
            ),
            (
                "absent from the listing",
                StreamView::Listed(merged.clone()),
                ended(&["s1"]),
            ),
            (
                "listed but closed (listing lags)",
                StreamView::Listed([merged.clone(), vec![shard("s0", &[], false)]].concat()),
                ended(&["s1"]),
            ),
            (
                "listed and open: never trimmed",
                StreamView::Listed(vec![shard("s0", &[], true)]),
                Verdict::Fatal,
            ),
            ("no children known", StreamView::Listed(vec![]), ended(&[])),
        ];
        for (what, view, expected) in cases {
            assert_eq!(judge("s0", &view), expected, "{what}");
        }
    }
}
