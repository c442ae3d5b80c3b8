//! Record processing through splits, merges, crashes and restarts, with several workers
//! (in this process and as separate processes), against the embedded Kinesis or the
//! external one named by `KCL_TEST_KINESIS_ENDPOINT`.

use std::time::Duration;

use kcl::stream;

mod common;
use common::consumers::{
    InProcess, Log, Process, assert_children_after_parents, assert_per_key_order, produce,
    produce_through_split_and_merge,
};
use common::strict;
use kcl_local::testing::{unique, wait_for};

const KEYS: usize = 15;
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_flow_in_order_through_split_and_merge_with_three_workers() {
    let aws = strict::local_aws().await;
    let clients = strict::admin(&aws).await;
    let endpoints = aws.endpoints();
    let name = unique("reshard");
    let app = unique("reshard-app");
    let worker_clients = strict::worker_clients(&aws, &name, &app).await;
    let key = strict::worker_key(&app);
    stream::create_stream(&clients.kinesis, &name, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let log = Log::default();
    let a = InProcess::start_with(&worker_clients, &name, &app, "in-a", &log);
    let b = InProcess::start_with(&worker_clients, &name, &app, "in-b", &log);
    let c = Process::spawn_as(&endpoints, &key, &name, &app, "proc-c", &log);

    // A split of the lower shard, then a merge of its upper child with the upper shard.
    produce_through_split_and_merge(&clients, &name, KEYS).await;

    let total = KEYS * 60;
    wait_for("every record processed", WAIT, || async {
        (log.distinct_data() == total).then_some(())
    })
    .await;
    let deliveries = log.snapshot();
    assert_per_key_order(&deliveries);
    let shards = stream::list_shards(&clients.kinesis, &name).await.unwrap();
    assert_eq!(
        shards.len(),
        5,
        "2 + 2 children of the split + 1 of the merge"
    );
    assert_children_after_parents(&deliveries, &shards);
    // No faults: nothing processed twice.
    assert_eq!(deliveries.len(), total, "duplicates without faults");
    // Workers report each shard's observed throughput on its lease at renewal.
    let store = kcl::leases::DynamoLeaseStore::new(clients.dynamodb.clone(), app.clone());
    wait_for(
        "a lease carrying its shard's observed load",
        WAIT,
        || async {
            let leases = kcl::leases::LeaseStore::list_leases(&store).await.unwrap();
            leases
                .iter()
                .any(|l| {
                    l.load
                        .is_some_and(|load| load.records_per_sec > 0.0 && load.bytes_per_sec > 0.0)
                })
                .then_some(())
        },
    )
    .await;

    // Graceful shutdown of all, then a restart reprocesses nothing.
    c.signal(libc::SIGTERM);
    assert!(c.wait().await.success());
    a.stop().await;
    b.stop().await;
    let before = log.snapshot().len();
    let restarted = InProcess::start_with(&worker_clients, &name, &app, "in-restarted", &log);
    produce(&clients, &name, KEYS, 60..61).await;
    wait_for("the records put after the restart", WAIT, || async {
        (log.distinct_data() == total + KEYS).then_some(())
    })
    .await;
    let after: Vec<_> = log.snapshot().into_iter().skip(before).collect();
    assert_eq!(after.len(), KEYS, "only the new records: {after:?}");
    assert!(after.iter().all(|d| d.data.ends_with(":60")));
    restarted.stop().await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_batch_replays_only_after_the_last_checkpoint() {
    let aws = strict::local_aws().await;
    let clients = strict::admin(&aws).await;
    let endpoints = aws.endpoints();
    let name = unique("crash");
    let app = unique("crash-app");
    let key = strict::bind_worker(&aws, &name, &app);
    stream::create_stream(&clients.kinesis, &name, 3, Duration::from_secs(30))
        .await
        .unwrap();
    let log = Log::default();
    let victim = Process::spawn_as(&endpoints, &key, &name, &app, "victim", &log);
    let survivors = [
        Process::spawn_as(&endpoints, &key, &name, &app, "survivor-1", &log),
        Process::spawn_as(&endpoints, &key, &name, &app, "survivor-2", &log),
    ];
    produce(&clients, &name, KEYS, 0..30).await;
    wait_for("the victim to process some records", WAIT, || async {
        log.snapshot()
            .iter()
            .any(|d| d.worker == "victim")
            .then_some(())
    })
    .await;
    victim.signal(libc::SIGKILL);
    let victim_status = victim.wait().await;
    assert!(!victim_status.success());
    produce(&clients, &name, KEYS, 30..60).await;
    wait_for("every record processed after the crash", WAIT, || async {
        (log.distinct_data() == KEYS * 60).then_some(())
    })
    .await;

    let deliveries = log.snapshot();
    assert_per_key_order(&deliveries);
    // Whatever was delivered twice was first delivered to the victim after its last
    // checkpoint of that shard.
    let checkpoints = log.checkpoints.lock().unwrap().clone();
    let mut seen = std::collections::HashMap::new();
    for d in &deliveries {
        if let Some(first) = seen.insert(d.data.clone(), d.clone()) {
            assert_eq!(
                first.worker, "victim",
                "duplicate not from the crash: {d:?}"
            );
            let last_cp = checkpoints
                .iter()
                .filter(|c| c.worker == "victim" && c.shard == first.shard)
                .map(|c| kcl::checkpoint::ExtendedSequenceNumber::at(c.seq.clone(), c.sub))
                .max_by(|x, y| x.compare(y));
            let position =
                kcl::checkpoint::ExtendedSequenceNumber::at(first.seq.clone(), first.sub);
            if let Some(cp) = last_cp {
                assert!(
                    position.compare(&cp).is_gt(),
                    "{d:?} replayed although checkpointed at {cp}"
                );
            }
        }
    }
    for survivor in survivors {
        survivor.signal(libc::SIGTERM);
        assert!(survivor.wait().await.success());
    }
    // The processes called as the documented worker policy, and it allowed them.
    let strict = aws.strict().expect("strict mode");
    assert!(strict.iam().checked("GetRecords") > 0);
    assert!(strict.iam().checked("UpdateItem") > 0);
    assert_eq!(
        strict.refusals_of("GetRecords", kcl_local::strict::RefusalKind::AccessDenied)
            + strict.refusals_of("UpdateItem", kcl_local::strict::RefusalKind::AccessDenied),
        0
    );
    aws.shutdown().await;
}
