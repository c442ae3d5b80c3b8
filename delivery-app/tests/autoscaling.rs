//! The auto-scaler, judging shard load from what the workers report on the leases,
//! splits a loaded shard mid-run; the statistics stay exact.

mod common;

use std::time::Duration;

use delivery_app::autoscaler::ScalerConfig;
use delivery_app::scenario;
use delivery_app::sim::KeyStrategy;

use common::{assert_exact, assert_no_call_denied, narrator, scenario, strict_aws};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loaded_shard_is_split_from_the_lease_loads() {
    let aws = strict_aws().await;
    let mut config = scenario(&aws, 800, 12.0, KeyStrategy::Region, 0, Vec::new());
    config.autoscale = Some(ScalerConfig {
        // About 200 events/s over 3 shards: every shard is "hot" at 1% of the limit.
        split_share: 0.01,
        merge_share: 0.001,
        sustain: Duration::from_secs(2),
        cooldown: Duration::from_secs(60),
        min_shards: 1,
        max_shards: 4,
        interval: Duration::from_millis(500),
    });
    let report = scenario::run(config, narrator("autoscale")).await.unwrap();
    assert_exact(&report);
    assert!(
        report
            .actions
            .iter()
            .any(|a| a.starts_with("auto-scaler: split")),
        "no split: {:?}",
        report.actions
    );
    assert_eq!(report.stats.shards.len(), 5, "3 shards + 2 children");
    assert_no_call_denied(&aws);
    aws.shutdown().await;
}
