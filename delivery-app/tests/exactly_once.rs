//! The acceptance tests: the simulator with a fixed seed against 3 worker processes,
//! with crashes, restarts, a split and a merge; the statistics must equal the ground
//! truth exactly (totals to the cent, averages from exact sums and counts, the same
//! top 10), and bad events must each be dead-lettered exactly once.
//!
//! Runs against the embedded Kinesis, or kinesis-mock when `KCL_TEST_KINESIS_ENDPOINT`
//! is set.

mod common;

use delivery_app::events::Reason;
use delivery_app::scenario::{self, Step};
use delivery_app::sim::KeyStrategy;
use delivery_app::stats::StatsStore;
use delivery_app::worker::Retrieval;
use kcl_local::strict::RefusalKind;

use common::{assert_exact, assert_no_call_denied, narrator, scenario, strict_aws};

/// Orders per test: a few thousand events.
fn orders() -> u64 {
    if kcl_local::testing::external_kinesis() {
        700
    } else {
        1_000
    }
}

/// A worker killed, a split, the worker restarted, a merge.
fn crash_split_merge() -> Vec<(f64, Step)> {
    vec![
        (0.2, Step::Kill),
        (0.35, Step::Split),
        (0.5, Step::Restart),
        (0.65, Step::Merge),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_keys_exact_through_a_crash_a_split_and_a_merge() {
    let aws = strict_aws().await;
    let steps = crash_split_merge();
    let config = scenario(&aws, orders(), 10.0, KeyStrategy::Order, 0, steps);
    let report = scenario::run(config, narrator("order-keys")).await.unwrap();
    assert_exact(&report);
    assert_eq!(report.actions.len(), 4, "{:?}", report.actions);
    assert!(
        report.actions[0].contains("while it held shardId"),
        "{:?}",
        report.actions
    );
    assert_eq!(report.stats.totals.dead_letter_count(), 0);
    // 3 shards, 2 children of the split, 1 of the merge.
    assert_eq!(report.stats.shards.len(), 6, "{:?}", report.stats.shards);
    assert!(
        report.stats.totals.cross_shard_completions > 0,
        "no order was created in a parent and completed in a child"
    );
    assert_no_call_denied(&aws);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_workers_exact_through_a_crash_a_split_and_a_merge() {
    let aws = strict_aws().await;
    let steps = crash_split_merge();
    let mut config = scenario(&aws, orders(), 10.0, KeyStrategy::Order, 0, steps);
    config.retrieval = Retrieval::FanOut;
    let report = scenario::run(config, narrator("fan-out")).await.unwrap();
    assert_exact(&report);
    assert_eq!(report.actions.len(), 4, "{:?}", report.actions);
    assert_eq!(report.stats.shards.len(), 6, "{:?}", report.stats.shards);
    if let Some(strict) = aws.strict() {
        // The workers read through SubscribeToShard, allowed by the documented policy.
        assert!(strict.iam().checked("SubscribeToShard") > 0);
        assert!(strict.iam().checked("RegisterStreamConsumer") > 0);
        assert_eq!(
            strict.refusal_counts().kind(RefusalKind::AccessDenied),
            0,
            "calls denied: {:?}",
            strict.refusal_counts().snapshot()
        );
    }
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn region_keys_exact_through_a_restart_of_every_worker_and_a_crash() {
    let aws = strict_aws().await;
    let steps = vec![
        (0.2, Step::RestartAll),
        (0.4, Step::Split),
        (0.55, Step::Kill),
        (0.7, Step::Merge),
        (0.8, Step::Restart),
    ];
    let config = scenario(&aws, orders(), 10.0, KeyStrategy::Region, 0, steps);
    let report = scenario::run(config, narrator("region-keys"))
        .await
        .unwrap();
    assert_exact(&report);
    assert_eq!(report.actions.len(), 5, "{:?}", report.actions);
    assert_no_call_denied(&aws);
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_events_are_dead_lettered_exactly_once() {
    let aws = strict_aws().await;
    let injected = 35; // five of each kind
    let steps = vec![(0.3, Step::Kill), (0.45, Step::Split), (0.6, Step::Restart)];
    let config = scenario(&aws, orders(), 10.0, KeyStrategy::Order, injected, steps);
    let app = config.app.clone();
    let report = scenario::run(config, narrator("bad-events")).await.unwrap();
    assert_exact(&report);
    assert_eq!(report.truth.dead_letter_count(), injected);
    assert_eq!(report.stats.totals.dead_letter_count(), injected);
    for reason in Reason::SIMULATED {
        assert_eq!(report.stats.totals.dead_letters[&reason], 5, "{reason}");
    }
    // Each one is in the dead-letter table, with its reason and raw bytes.
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    let dead = store.dead_letters(1_000).await.unwrap();
    assert_eq!(dead.len() as u64, injected);
    assert!(dead.iter().all(|d| !d.raw.is_empty() && d.raw_len > 0));
    assert!(dead.iter().any(|d| d.reason == "malformed_json"));
    assert_no_call_denied(&aws);
    aws.shutdown().await;
}

/// Issue 12: records DynamoDB would refuse (a 3,000-byte order id, a 500 KB driver id,
/// 98 assignments with 50 KB driver ids: over one transaction's 4 MB) and a completion
/// whose time difference overflows the sums, put at 30% of a run with a crash, a split
/// and a merge. Each is one dead letter with its reason, everything else is exact, the
/// shard's watermark passes them and its children are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_dynamodb_would_refuse_each_end_as_one_dead_letter() {
    let aws = strict_aws().await;
    let steps = crash_split_merge();
    let mut config = scenario(&aws, orders(), 10.0, KeyStrategy::Order, 0, steps);
    config.sim.hostile_events = true;
    let app = config.app.clone();
    let report = scenario::run(config, narrator("hostile")).await.unwrap();
    assert_exact(&report);
    let dead = &report.stats.totals.dead_letters;
    assert_eq!(dead.get(&Reason::FieldTooLong), Some(&100), "{dead:?}");
    assert_eq!(dead.get(&Reason::SumOverflow), Some(&1), "{dead:?}");
    assert_eq!(report.stats.totals.dead_letter_count(), 101);
    // 3 shards, 2 children of the split, 1 of the merge: every child was processed.
    assert_eq!(report.stats.shards.len(), 6, "{:?}", report.stats.shards);
    // Each dead letter is stored once, within its shard's watermark.
    let store = StatsStore::new(aws.clients().await.dynamodb, &app);
    let stored = store.dead_letters(1_000).await.unwrap();
    assert_eq!(stored.len(), 101);
    for letter in &stored {
        let shard = letter.shard_id.as_str();
        let watermark = report
            .stats
            .shards
            .iter()
            .find(|s| s.shard_id == shard)
            .and_then(|s| s.watermark.clone())
            .unwrap_or_else(|| panic!("no watermark for {shard}"));
        assert!(
            letter.position.compare(&watermark).is_le(),
            "{} is past the watermark {watermark:?}",
            letter.id
        );
        assert!(letter.raw_len > 0 && !letter.raw.is_empty());
    }
    assert_no_call_denied(&aws);
    aws.shutdown().await;
}
