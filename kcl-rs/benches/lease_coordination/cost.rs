//! Lease coordination under real-DynamoDB conditions: leases lost to transaction
//! conflicts, and the read capacity the lease table costs per worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kcl::aws::{Clients, Endpoints};
use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::leases::dynamo::DynamoLeaseStore;
use kcl::leases::{Lease, LeaseStore};
use kcl_local::faults::{Fault, FaultPlan, FaultProxy, Rule};
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio_util::sync::CancellationToken;

struct Running {
    coordinator: Arc<LeaseCoordinator>,
    cancel: CancellationToken,
}

fn start(store: Arc<dyn LeaseStore>, id: &str, failover: Duration) -> Running {
    let mut config = LeaseConfig::new(id);
    config.failover_time = failover;
    let (coordinator, mut events) = LeaseCoordinator::new(store, config);
    let cancel = CancellationToken::new();
    tokio::spawn({
        let coordinator = Arc::clone(&coordinator);
        let cancel = cancel.clone();
        async move { coordinator.run(cancel).await }
    });
    tokio::spawn(async move {
        while let Some(LeaseEvent::Acquired { handle, .. }) = events.recv().await {
            tokio::spawn(async move { handle.hand_over_when_asked().await });
        }
    });
    Running {
        coordinator,
        cancel,
    }
}

async fn create_leases(store: &dyn LeaseStore, count: usize) {
    store.ensure_tables().await.unwrap();
    for i in 0..count {
        let lease = Lease::new(
            format!("shardId-{i:012}"),
            ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
        );
        store.create_lease(&lease).await.unwrap();
    }
}

/// Waits until every one of `workers` holds `each` leases, as their own handles say.
async fn settle(workers: &[Running], each: usize) {
    let started = Instant::now();
    while !workers.iter().all(|w| {
        let held = w.coordinator.held();
        held.len() == each
            && held
                .iter()
                .all(|h| h.phase() == kcl::internals::LeasePhase::Held)
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "workers did not balance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes, hand-offs asked for and leases lost, summed over `workers`.
fn ownership_events(workers: &[Running]) -> [u64; 3] {
    workers.iter().fold([0; 3], |[takes, handoffs, lost], w| {
        let stats = w.coordinator.stats();
        [
            takes + stats.takes.load(Ordering::Relaxed),
            handoffs + stats.handoffs_requested.load(Ordering::Relaxed),
            lost + stats.leases_lost.load(Ordering::Relaxed),
        ]
    })
}

/// 2 workers on 8 leases (failover time 3 s), then a share (`probability`) of all
/// lease-table UpdateItem calls answered `TransactionConflictException` for `window`:
/// leases lost or moved.
pub async fn conflicts(window: Duration, probability: f64) -> u64 {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let proxy = FaultProxy::start(&aws.endpoints().dynamodb.unwrap(), FaultPlan::new(5))
        .await
        .unwrap();
    let table = "bench-conflicts";
    create_leases(
        &DynamoLeaseStore::new(aws.clients().await.dynamodb, table),
        8,
    )
    .await;
    let endpoints = Endpoints::local(aws.endpoints().kinesis.unwrap(), proxy.url());
    let failover = Duration::from_secs(3);
    let mut workers = Vec::new();
    for id in ["w0", "w1"] {
        let client = Clients::connect(&endpoints).await.dynamodb;
        let store = DynamoLeaseStore::new(client, table).with_failover_time(failover);
        workers.push(start(Arc::new(store), id, failover));
    }
    settle(&workers, 4).await;
    let before = ownership_events(&workers);
    proxy.plan().add(
        Rule::dynamodb(
            "UpdateItem",
            Fault::error(
                400,
                "TransactionConflictException",
                "Transaction is ongoing for the item",
            ),
        )
        .when_body_contains(format!("\"TableName\":\"{table}\""))
        .with_probability(probability),
    );
    tokio::time::sleep(window).await;
    let after = ownership_events(&workers);
    let [takes, handoffs, lost] = [0, 1, 2].map(|i| after[i] - before[i]);
    println!("  moved under conflicts: {takes} taken, {handoffs} hand-offs asked, {lost} lost");
    let lost = takes + handoffs + lost;
    for w in &workers {
        w.cancel.cancel();
    }
    proxy.shutdown().await;
    aws.shutdown().await;
    lost
}

/// Read capacity per worker per minute, and what the Java KCL 3.x would spend on the
/// same table (see [`java_kcl3_reads_per_worker_minute`]).
pub struct ReadCost {
    pub per_worker_minute: f64,
    pub java_kcl3: f64,
}

/// The Java KCL 3.x's lease-table reads at its defaults, from the cost of one
/// consistent scan of this table: the leader lists the table (eventually consistent,
/// half the units) every `leaseAssignmentIntervalMillis` (2 × failover time), and every
/// worker queries the `leaseOwner` index (keys only, at least 0.5 unit) every half of
/// that interval less 25 ms.
pub fn java_kcl3_reads_per_worker_minute(
    consistent_scan_units: f64,
    workers: usize,
    failover: Duration,
) -> f64 {
    let assignment = failover * 2;
    let leader = 60.0 / assignment.as_secs_f64() * consistent_scan_units / 2.0;
    let discovery = 60.0 / (assignment / 2 - Duration::from_millis(25)).as_secs_f64() * 0.5;
    leader / workers as f64 + discovery
}

/// `workers` coordinators on `leases` leases at the default failover time: read
/// capacity units per worker per minute over `window`, once balanced and settled.
pub async fn read_cost(leases: usize, workers: usize, window: Duration) -> ReadCost {
    let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
    let table = "bench-read-cost";
    let probe = DynamoLeaseStore::new(aws.clients().await.dynamodb, table);
    create_leases(&probe, leases).await;
    let before = probe.consumed_read_capacity();
    probe.list_leases().await.unwrap();
    let scan_units = probe.consumed_read_capacity() - before;
    let failover = Duration::from_secs(10);
    let mut stores = Vec::new();
    let mut running = Vec::new();
    for i in 0..workers {
        let store = DynamoLeaseStore::new(aws.clients().await.dynamodb, table);
        stores.push(store.clone());
        running.push(start(Arc::new(store), &format!("w{i}"), failover));
    }
    settle(&running, leases / workers).await;
    tokio::time::sleep(failover).await;
    let consumed = || {
        stores
            .iter()
            .map(|s| s.consumed_read_capacity())
            .sum::<f64>()
    };
    let before = consumed();
    tokio::time::sleep(window).await;
    let units = consumed() - before;
    for w in &running {
        w.cancel.cancel();
    }
    aws.shutdown().await;
    ReadCost {
        per_worker_minute: units / workers as f64 / (window.as_secs_f64() / 60.0),
        java_kcl3: java_kcl3_reads_per_worker_minute(scan_units, workers, failover),
    }
}
