//! The strict Kinesis decisions, driven with a clock of their own.

use hyper::StatusCode;
use hyper::header::HeaderMap;
use serde_json::json;

use super::*;

const ACCOUNT: &str = "123456789012";

struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn at(&self, millis: u64) -> (Instant, SystemTime) {
        let d = Duration::from_millis(millis);
        (self.start + d, self.wall + d)
    }
}

fn ok(answer: Value) -> ProxyResponse {
    ProxyResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: answer.to_string().into(),
        stream: None,
    }
}

/// Lets `action` through at `millis` and feeds it `answer`; the refusal's kind if not.
fn call(
    state: &mut State,
    clock: &Clock,
    millis: u64,
    action: &str,
    body: Value,
    answer: Value,
) -> Result<Value, (RefusalKind, &'static str, String)> {
    let (now, wall) = clock.at(millis);
    let pass = state
        .admit(action, &body, now, wall, ACCOUNT)
        .map_err(|r| (r.kind, r.code, r.message))?;
    let mut response = ok(answer);
    state.observe(pass, &mut response, now, wall);
    Ok(response.json().unwrap())
}

fn iterator_for(state: &mut State, clock: &Clock, shard: &str, iterator: &str) {
    let body = json!({ "StreamName": "s", "ShardId": shard, "ShardIteratorType": "LATEST" });
    call(
        state,
        clock,
        0,
        "GetShardIterator",
        body,
        json!({ "ShardIterator": iterator }),
    )
    .unwrap();
}

fn get_records(
    state: &mut State,
    clock: &Clock,
    millis: u64,
    iterator: &str,
    answer: Value,
) -> Result<Value, RefusalKind> {
    call(
        state,
        clock,
        millis,
        "GetRecords",
        json!({ "ShardIterator": iterator }),
        answer,
    )
    .map_err(|(kind, code, _)| {
        assert_ne!(code, "");
        kind
    })
}

#[test]
fn get_records_is_limited_per_shard_and_shards_are_independent() {
    let clock = Clock::new();
    let mut state = State::new(KinesisLimits::default());
    iterator_for(&mut state, &clock, "shardId-000000000000", "it-a");
    iterator_for(&mut state, &clock, "shardId-000000000001", "it-b");
    let empty = || json!({ "Records": [], "NextShardIterator": "it-a" });
    let admitted_a = (0..20)
        .filter(|_| get_records(&mut state, &clock, 0, "it-a", empty()).is_ok())
        .count();
    assert_eq!(admitted_a, 5);
    let refused = get_records(&mut state, &clock, 0, "it-a", empty()).unwrap_err();
    assert_eq!(refused, RefusalKind::ReadCallRate);
    let empty_b = || json!({ "Records": [], "NextShardIterator": "it-b" });
    let admitted_b = (0..20)
        .filter(|_| get_records(&mut state, &clock, 0, "it-b", empty_b()).is_ok())
        .count();
    assert_eq!(admitted_b, 5);
    // A second later the shard has its 5 calls again.
    let later = (0..20)
        .filter(|_| get_records(&mut state, &clock, 1_000, "it-a", empty()).is_ok())
        .count();
    assert_eq!(later, 5);
}

#[test]
fn the_refusal_names_shard_stream_and_account_as_aws_does() {
    let clock = Clock::new();
    let mut state = State::new(KinesisLimits {
        get_shard_iterator_per_shard: 1,
        ..KinesisLimits::default()
    });
    iterator_for(&mut state, &clock, "shardId-000000000003", "it");
    let body = json!({ "StreamName": "s", "ShardId": "shardId-000000000003", "ShardIteratorType": "LATEST" });
    let (kind, code, message) =
        call(&mut state, &clock, 0, "GetShardIterator", body, json!({})).unwrap_err();
    assert_eq!(kind, RefusalKind::ReadCallRate);
    assert_eq!(code, "ProvisionedThroughputExceededException");
    assert_eq!(
        message,
        "Rate exceeded for shard shardId-000000000003 in stream s under account 123456789012."
    );
}

#[test]
fn a_large_read_blocks_the_shard_until_its_debt_is_paid() {
    let clock = Clock::new();
    let mut state = State::new(KinesisLimits::default());
    iterator_for(&mut state, &clock, "shardId-000000000000", "it");
    // 10 records of 1 MiB each: 10 MiB, 8 MiB over the second's 2 MiB.
    let mib = "A".repeat((MIB as usize) / 3 * 4 + 4);
    let big = json!({
        "Records": (0..10).map(|_| json!({ "Data": mib })).collect::<Vec<_>>(),
        "NextShardIterator": "it",
    });
    get_records(&mut state, &clock, 0, "it", big).unwrap();
    let empty = || json!({ "Records": [], "NextShardIterator": "it" });
    // (time in ms, admitted?): the debt is paid back at 2 MiB/s, after ~4 s.
    for (millis, admitted) in [(200, false), (2_000, false), (3_900, false), (4_200, true)] {
        let result = get_records(&mut state, &clock, millis, "it", empty());
        assert_eq!(result.is_ok(), admitted, "{millis} ms: {result:?}");
        if let Err(kind) = result {
            assert_eq!(kind, RefusalKind::ReadThroughput);
        }
    }
}

#[test]
fn an_iterator_the_layer_never_saw_is_not_limited() {
    let clock = Clock::new();
    let mut state = State::new(KinesisLimits::default());
    for _ in 0..50 {
        get_records(
            &mut state,
            &clock,
            0,
            "made-elsewhere",
            json!({ "Records": [] }),
        )
        .unwrap();
    }
}

#[test]
fn control_plane_limits_are_per_stream_or_per_account() {
    let clock = Clock::new();
    let mut state = State::new(KinesisLimits::default());
    // (action, body, calls at one instant, admitted)
    let list = |stream: &str| json!({ "StreamName": stream });
    let table = [
        ("ListShards", list("s1"), 150, 100),
        ("ListShards", list("s2"), 150, 100),
        ("DescribeStream", list("s1"), 15, 10),
        ("DescribeStream", list("s2"), 15, 0),
        ("DescribeStreamSummary", list("s2"), 30, 20),
        ("ListStreams", json!({}), 1_000, 1_000),
    ];
    for (action, body, calls, admitted) in table {
        let mut refusals = Vec::new();
        let ok = (0..calls)
            .filter(
                |_| match call(&mut state, &clock, 0, action, body.clone(), json!({})) {
                    Ok(_) => true,
                    Err(refusal) => {
                        refusals.push(refusal);
                        false
                    }
                },
            )
            .count();
        assert_eq!(ok, admitted, "{action} {body}");
        for (kind, code, message) in refusals {
            assert_eq!(
                (kind, code),
                (RefusalKind::ControlPlaneRate, "LimitExceededException")
            );
            assert!(
                message.starts_with("Rate exceeded for stream s"),
                "{message}"
            );
        }
    }
}

#[test]
fn list_shards_pages_count_against_their_stream() {
    let clock = Clock::new();
    let mut state = State::new(KinesisLimits {
        list_shards_per_stream: 2,
        ..KinesisLimits::default()
    });
    call(
        &mut state,
        &clock,
        0,
        "ListShards",
        json!({ "StreamName": "s" }),
        json!({ "Shards": [], "NextToken": "page-2" }),
    )
    .unwrap();
    call(
        &mut state,
        &clock,
        0,
        "ListShards",
        json!({ "NextToken": "page-2" }),
        json!({ "Shards": [] }),
    )
    .unwrap();
    let refused = call(
        &mut state,
        &clock,
        0,
        "ListShards",
        json!({ "NextToken": "page-2" }),
        json!({}),
    );
    assert_eq!(refused.unwrap_err().0, RefusalKind::ControlPlaneRate);
}

#[test]
fn retention_trims_records_and_removes_a_closed_shard() {
    let clock = Clock::new();
    let mut state = State::new(KinesisLimits {
        retention: Duration::from_secs(10),
        ..KinesisLimits::default()
    });
    let parent = "shardId-000000000000";
    iterator_for(&mut state, &clock, parent, "it");
    let epoch = |millis: u64| retention_epoch(clock.at(millis).1);
    let records = json!({
        "Records": [
            { "Data": "YQ==", "ApproximateArrivalTimestamp": epoch(0) },
            { "Data": "Yg==", "ApproximateArrivalTimestamp": epoch(5_000) },
        ],
        "NextShardIterator": "it",
    });
    let read = get_records(&mut state, &clock, 12_000, "it", records).unwrap();
    assert_eq!(read["Records"].as_array().unwrap().len(), 1);
    assert_eq!(read["Records"][0]["Data"], "Yg==");
    assert_eq!(state.trimmed, 1);

    let split = json!({ "StreamName": "s", "ShardToSplit": parent, "NewStartingHashKey": "1" });
    call(&mut state, &clock, 20_000, "SplitShard", split, json!({})).unwrap();
    let listing = json!({ "Shards": [
        { "ShardId": parent, "SequenceNumberRange": { "StartingSequenceNumber": "1", "EndingSequenceNumber": "2" } },
        { "ShardId": "shardId-000000000001", "ParentShardId": parent, "SequenceNumberRange": { "StartingSequenceNumber": "3" } },
    ]});
    let list = json!({ "StreamName": "s" });
    let before = call(
        &mut state,
        &clock,
        29_000,
        "ListShards",
        list.clone(),
        listing.clone(),
    )
    .unwrap();
    assert_eq!(before["Shards"].as_array().unwrap().len(), 2);
    let after = call(&mut state, &clock, 30_000, "ListShards", list, listing).unwrap();
    assert_eq!(after["Shards"].as_array().unwrap().len(), 1);
    assert_eq!(after["Shards"][0]["ShardId"], "shardId-000000000001");

    let body = json!({ "StreamName": "s", "ShardId": parent, "ShardIteratorType": "TRIM_HORIZON" });
    let (kind, code, message) = call(
        &mut state,
        &clock,
        30_000,
        "GetShardIterator",
        body,
        json!({}),
    )
    .unwrap_err();
    assert_eq!(
        (kind, code),
        (RefusalKind::ShardGone, "ResourceNotFoundException")
    );
    assert_eq!(
        message,
        format!("Shard {parent} in stream s under account {ACCOUNT} does not exist")
    );
    assert_eq!(
        get_records(&mut state, &clock, 30_000, "it", json!({})).unwrap_err(),
        RefusalKind::ShardGone
    );
}

fn retention_epoch(time: SystemTime) -> f64 {
    super::super::retention::epoch_seconds(time)
}

#[test]
fn streams_are_named_by_name_or_arn() {
    assert_eq!(
        stream_of(&json!({ "StreamName": "a" })).as_deref(),
        Some("a")
    );
    assert_eq!(
        stream_of(&json!({ "StreamARN": "arn:aws:kinesis:us-east-1:123456789012:stream/b" }))
            .as_deref(),
        Some("b")
    );
    assert_eq!(stream_of(&json!({})), None);
}
