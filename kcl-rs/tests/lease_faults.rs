//! Lease coordination when the lease table misbehaves the way real DynamoDB does:
//! transaction conflicts on lease writes, a hung connection, a malformed item. Every
//! worker talks to the embedded DynamoDB through the strict proxy (whose plan injects
//! the faults), signed as the documented worker policy; the test's own reads go
//! directly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::internals::LeasePhase;
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::leases::LostReason;
use kcl::leases::dynamo::DynamoLeaseStore;
use kcl::leases::{Lease, LeaseStore};
use kcl_local::LocalAws;
use kcl_local::faults::{Fault, FaultKind, FaultProxy, Rule, dynamodb_target};
use kcl_local::testing::{unique, wait_for};
use tokio_util::sync::CancellationToken;

mod common;
use common::strict;

const DEADLINE: Duration = Duration::from_secs(60);
const FAILOVER: Duration = Duration::from_secs(3);

struct Env {
    aws: LocalAws,
    table: String,
}

impl Env {
    async fn start(leases: usize) -> Env {
        let env = Env {
            aws: strict::local_aws().await,
            table: unique("leases"),
        };
        let store = env.direct_store().await;
        store.ensure_tables().await.unwrap();
        for i in 0..leases {
            let lease = Lease::new(
                format!("shardId-{i:012}"),
                ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
            );
            store.create_lease(&lease).await.unwrap();
        }
        env
    }

    /// The strict proxy in front of DynamoDB: its plan injects the faults.
    fn proxy(&self) -> &FaultProxy {
        self.aws.strict().expect("strict mode").dynamodb_proxy()
    }

    /// The test's own view, not through the proxy.
    async fn direct_store(&self) -> Arc<dyn LeaseStore> {
        Arc::new(DynamoLeaseStore::new(
            strict::admin(&self.aws).await.dynamodb,
            self.table.clone(),
        ))
    }

    /// A worker's store: its own SDK client, through the strict proxy, signed as the
    /// documented worker policy.
    async fn faulty_store(&self) -> Arc<dyn LeaseStore> {
        let clients = strict::worker_clients(&self.aws, "no-stream", &self.table).await;
        Arc::new(DynamoLeaseStore::new(clients.dynamodb, self.table.clone()))
    }

    /// Owner → lease keys (unowned under "").
    async fn owners(&self) -> BTreeMap<String, Vec<String>> {
        let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for lease in self.direct_store().await.list_leases().await.unwrap() {
            owners
                .entry(lease.owner.unwrap_or_default())
                .or_default()
                .push(lease.key);
        }
        owners
    }

    /// Matches the lease table's requests only (the worker table's name extends it).
    fn lease_table_fragment(&self) -> String {
        format!("\"TableName\":\"{}\"", self.table)
    }

    fn workers_table_fragment(&self) -> String {
        format!("\"TableName\":\"{}-Workers\"", self.table)
    }
}

/// A lease, when it was announced acquired, and when it was lost (any reason).
type Tenure = (String, Instant, Option<Instant>);

/// A coordinator that hands leases over when asked and records every lease it lost
/// for a reason other than a graceful handoff or release.
struct Worker {
    coordinator: Arc<LeaseCoordinator>,
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), kcl::leases::LeaseError>>,
    lost: Arc<Mutex<Vec<(String, LostReason)>>>,
    /// When each lease was announced acquired, and when it was lost (any reason).
    timeline: Arc<Mutex<Vec<Tenure>>>,
}

impl Worker {
    async fn start(store: Arc<dyn LeaseStore>, id: &str) -> Worker {
        let mut config = LeaseConfig::new(id);
        config.failover_time = FAILOVER;
        let (coordinator, mut events) = LeaseCoordinator::new(store, config);
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let coordinator = Arc::clone(&coordinator);
            let cancel = cancel.clone();
            async move { coordinator.run(cancel).await }
        });
        let lost = Arc::new(Mutex::new(Vec::new()));
        let timeline = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let lost = Arc::clone(&lost);
            let timeline = Arc::clone(&timeline);
            async move {
                while let Some(LeaseEvent::Acquired { handle, .. }) = events.recv().await {
                    let lost = Arc::clone(&lost);
                    let timeline = Arc::clone(&timeline);
                    let entry = {
                        let mut timeline = timeline.lock().unwrap();
                        timeline.push((handle.key().to_string(), Instant::now(), None));
                        timeline.len() - 1
                    };
                    tokio::spawn(async move {
                        let reason = handle.hand_over_when_asked().await;
                        timeline.lock().unwrap()[entry].2 = Some(Instant::now());
                        if !matches!(reason, LostReason::HandedOver | LostReason::Released) {
                            lost.lock()
                                .unwrap()
                                .push((handle.key().to_string(), reason));
                        }
                    });
                }
            }
        });
        Worker {
            coordinator,
            cancel,
            run,
            lost,
            timeline,
        }
    }

    fn ownership_changes(&self) -> u64 {
        let stats = self.coordinator.stats();
        stats.takes.load(std::sync::atomic::Ordering::Relaxed)
            + stats
                .handoffs_requested
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lost(&self) -> Vec<(String, LostReason)> {
        self.lost.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.run.await;
    }
}

fn balanced(owners: &BTreeMap<String, Vec<String>>, workers: usize, each: usize) -> bool {
    !owners.contains_key("")
        && owners.len() == workers
        && owners.values().all(|keys| keys.len() == each)
}

async fn two_balanced_workers(env: &Env) -> (Worker, Worker) {
    let a = Worker::start(env.faulty_store().await, "worker-a").await;
    let b = Worker::start(env.faulty_store().await, "worker-b").await;
    wait_for("4/4", DEADLINE, || async {
        balanced(&env.owners().await, 2, 4).then_some(())
    })
    .await;
    // The table shows a handoff as soon as it is requested; the workers' counters and
    // handles settle once every handoff has completed.
    wait_for("every handoff completed", DEADLINE, || async {
        [&a, &b]
            .iter()
            .all(|w| {
                let held = w.coordinator.held();
                held.len() == 4 && held.iter().all(|h| h.phase() == LeasePhase::Held)
            })
            .then_some(())
    })
    .await;
    (a, b)
}

/// Renewals race delivery-app's statistics transactions (each carries a condition
/// check on the lease item): on real DynamoDB a share of lease writes fail with
/// `TransactionConflictException`. They must be retried within the time left, never
/// cost a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_of_lease_writes_conflicted_costs_no_lease() {
    let env = Env::start(8).await;
    let (a, b) = two_balanced_workers(&env).await;
    let before = env.owners().await;
    let changes_before = a.ownership_changes() + b.ownership_changes();
    let counters_before: BTreeMap<String, u64> = env
        .direct_store()
        .await
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.key, l.counter))
        .collect();

    env.proxy().plan().add(
        Rule::dynamodb(
            "UpdateItem",
            Fault::error(
                400,
                "TransactionConflictException",
                "Transaction is ongoing for the item",
            ),
        )
        .when_body_contains(env.lease_table_fragment())
        .with_probability(0.5),
    );
    // A sustained period, not a synchronisation: five failover times of conflicts.
    tokio::time::sleep(FAILOVER * 5).await;
    env.proxy().plan().clear();

    let conflicted = env
        .proxy()
        .injected(&dynamodb_target("UpdateItem"), FaultKind::ClientError);
    assert!(conflicted >= 20, "only {conflicted} conflicts injected");
    let lost: Vec<_> = a.lost().into_iter().chain(b.lost()).collect();
    assert!(lost.is_empty(), "leases lost under conflicts: {lost:?}");
    assert_eq!(
        a.ownership_changes() + b.ownership_changes(),
        changes_before,
        "leases changed hands under conflicts"
    );
    assert_eq!(env.owners().await, before);
    // Renewals went on: every lease's counter moved several times.
    for lease in env.direct_store().await.list_leases().await.unwrap() {
        assert!(
            lease.counter >= counters_before[&lease.key] + 5,
            "{} renewed only {} times",
            lease.key,
            lease.counter - counters_before[&lease.key]
        );
    }
    a.stop().await;
    b.stop().await;
    env.aws.shutdown().await;
}

/// One lease renewal and one heartbeat hang (the connection is held without an answer
/// for longer than the failover time): the other leases' renewals go on, and the hung
/// one is retried in time on another attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_renewal_or_heartbeat_costs_no_lease() {
    let env = Env::start(8).await;
    let (a, b) = two_balanced_workers(&env).await;
    let before = env.owners().await;
    let changes_before = a.ownership_changes() + b.ownership_changes();
    let hold = Fault::Timeout {
        hold: Duration::from_secs(60),
    };
    env.proxy().plan().add(
        Rule::dynamodb("UpdateItem", hold.clone())
            .when_body_contains(env.lease_table_fragment())
            .for_next(2),
    );
    env.proxy().plan().add(
        Rule::dynamodb("UpdateItem", hold)
            .when_body_contains(env.workers_table_fragment())
            .for_next(2),
    );
    tokio::time::sleep(FAILOVER * 4).await;
    let hung = env
        .proxy()
        .injected(&dynamodb_target("UpdateItem"), FaultKind::Timeout);
    assert_eq!(hung, 4, "the hung calls were not all made");
    let lost: Vec<_> = a.lost().into_iter().chain(b.lost()).collect();
    assert!(
        lost.is_empty(),
        "leases lost to a hung connection: {lost:?}"
    );
    assert_eq!(
        a.ownership_changes() + b.ownership_changes(),
        changes_before
    );
    assert_eq!(env.owners().await, before);
    a.stop().await;
    b.stop().await;
    env.aws.shutdown().await;
}

/// A worker whose heartbeats fail while its lease renewals succeed gives up every
/// lease a failover time after its last heartbeat; the other worker evicts it and
/// takes them at once, but never before they were given up. When the heartbeats pass
/// again it joins again and the leases are shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_without_heartbeats_gives_up_its_leases_before_they_are_taken() {
    let env = Env::start(8).await;
    let (a, b) = two_balanced_workers(&env).await;
    let a_leases = env.owners().await["worker-a"].clone();
    let failing = Instant::now();
    // Only worker-a's heartbeats (and joins) fail; its eviction by worker-b passes.
    let rule = env.proxy().plan().add(
        Rule::dynamodb("UpdateItem", Fault::service_unavailable())
            .when_body_contains("\"#member\":\"hb:worker-a\""),
    );
    wait_for("worker-b to hold all 8", DEADLINE, || async {
        (env.owners().await.get("worker-b").map(Vec::len) == Some(8)).then_some(())
    })
    .await;
    let taken = failing.elapsed();
    assert!(
        b.coordinator
            .stats()
            .evictions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "worker-b evicted worker-a"
    );
    let a_lost = a.lost();
    assert_eq!(a_lost.len(), 4, "{a_lost:?}");
    assert!(a_lost.iter().all(|(_, r)| *r == LostReason::ExpiredLocally));
    let a_timeline = a.timeline.lock().unwrap().clone();
    let b_timeline = b.timeline.lock().unwrap().clone();
    for key in &a_leases {
        let given_up = a_timeline
            .iter()
            .filter(|(k, _, _)| k == key)
            .filter_map(|(_, _, lost)| *lost)
            .max()
            .expect("worker-a gave it up");
        let acquired = b_timeline
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, at, _)| *at)
            .max()
            .expect("worker-b acquired it");
        assert!(
            acquired >= given_up,
            "{key}: acquired by worker-b {:?} before worker-a gave it up",
            given_up - acquired
        );
    }
    // Within the failover time plus a heartbeat interval and a few cycles.
    assert!(taken < FAILOVER * 2, "took {taken:?}");
    env.proxy().plan().remove(rule);
    wait_for("4/4 again once worker-a heartbeats", DEADLINE, || async {
        balanced(&env.owners().await, 2, 4).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
    env.aws.shutdown().await;
}

/// An item in the lease table that is not a lease (written by hand, by another tool,
/// or half-written) is skipped and counted; the worker keeps taking and renewing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_lease_item_does_not_stop_the_worker() {
    let env = Env::start(4).await;
    env.aws
        .clients()
        .await
        .dynamodb
        .put_item()
        .table_name(&env.table)
        .item("leaseKey", AttributeValue::S("shardId-bad".into()))
        .item("leaseCounter", AttributeValue::S("not a number".into()))
        .send()
        .await
        .unwrap();
    let worker = Worker::start(env.faulty_store().await, "worker-a").await;
    wait_for("worker-a to hold the 4 good leases", DEADLINE, || async {
        (env.owners().await.get("worker-a").map(Vec::len) == Some(4)).then_some(())
    })
    .await;
    wait_for("the bad item to be counted", DEADLINE, || async {
        (worker
            .coordinator
            .stats()
            .malformed_items
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1)
            .then_some(())
    })
    .await;
    assert!(!worker.run.is_finished(), "the coordinator stopped");
    worker.stop().await;
    env.aws.shutdown().await;
}

/// Graceful exit while lease-table writes fail transiently: every lease is released
/// anyway (retried, never skipped) and the worker record removed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_all_retries_transient_errors_and_releases_every_lease() {
    let env = Env::start(4).await;
    let worker = Worker::start(env.faulty_store().await, "worker-a").await;
    wait_for("worker-a to hold all 4", DEADLINE, || async {
        (env.owners().await.get("worker-a").map(Vec::len) == Some(4)).then_some(())
    })
    .await;
    worker.cancel.cancel();
    worker.run.await.unwrap().unwrap();
    env.proxy().plan().add(
        Rule::dynamodb("DeleteItem", Fault::service_unavailable())
            .when_body_contains(env.workers_table_fragment())
            .for_next(4),
    );
    env.proxy().plan().add(
        Rule::dynamodb(
            "UpdateItem",
            Fault::error(
                400,
                "TransactionConflictException",
                "Transaction is ongoing for the item",
            ),
        )
        .when_body_contains(env.lease_table_fragment())
        .for_next(6),
    );
    worker.coordinator.release_all().await.unwrap();
    assert_eq!(
        env.owners().await.keys().collect::<Vec<_>>(),
        [""],
        "every lease released"
    );
    let workers = env.direct_store().await.list_workers().await.unwrap();
    assert!(workers.is_empty(), "worker record left: {workers:?}");
    assert!(worker.lost.lock().unwrap().is_empty());
    env.aws.shutdown().await;
}

/// With DynamoDB hanging every call, cancelling the coordinator and releasing return
/// within about two failover times, not after the SDK's usual timeouts back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_is_bounded_when_dynamodb_hangs() {
    let env = Env::start(4).await;
    let worker = Worker::start(env.faulty_store().await, "worker-a").await;
    wait_for("worker-a to hold all 4", DEADLINE, || async {
        (env.owners().await.get("worker-a").map(Vec::len) == Some(4)).then_some(())
    })
    .await;
    env.proxy().plan().add(Rule::dynamodb(
        "*",
        Fault::Timeout {
            hold: Duration::from_secs(120),
        },
    ));
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(60), async {
        worker.cancel.cancel();
        let _ = worker.run.await;
        worker.coordinator.release_all().await
    })
    .await
    .expect("shutdown did not return within 60 s");
    let took = started.elapsed();
    assert!(
        stopped.is_err(),
        "the worker record cannot have been removed"
    );
    assert!(
        took <= FAILOVER * 2 + Duration::from_secs(1),
        "shutdown took {took:?} with DynamoDB hanging (failover time {FAILOVER:?})"
    );
    env.proxy().plan().clear();
    env.aws.shutdown().await;
}
