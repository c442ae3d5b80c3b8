//! Lease coordination figures on the embedded DynamoDB:
//! - failover: SIGKILL of a worker process → its last lease owned again (× failover time)
//! - graceful release: SIGTERM of a worker process → its last lease owned by another
//! - taking cycles to converge when scaling 1→4 and 4→8 workers on 16 leases
//! - lease-table write requests per lease per minute at steady state
//! - leases lost with half of the lease-table writes answered `TransactionConflict`
//! - lease-table read capacity per worker per minute, 1,000 leases and 20 workers,
//!   against what the Java KCL 3.x spends on the same table
//!
//! Run: `cargo bench -p kcl-rs --bench lease_coordination` (TRIALS=n to change the
//! number of trials, default 10; STEADY_SECS=n for the steady-state window, default 60;
//! CONFLICT_SECS=n for the conflict window, default 60; CONFLICT_PERCENT=n for the share
//! of lease writes refused in it, default 50; READ_COST_SECS=n for the read
//! cost window, default 60; LEASE_BENCH=conflicts,read_cost,... to run only some of
//! handover, converge, steady, conflicts, read_cost).
//! Besides the human lines, one `BENCH {json}` line per figure for `.ci/bench-report`.

mod common;
#[path = "lease_coordination/cost.rs"]
mod cost;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::leases::dynamo::DynamoLeaseStore;
use kcl::leases::{BoxFuture, Change, Expect, Lease, LeaseError, LeaseStore, Membership};
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Counts write requests to the lease table; delegates everything.
struct CountingStore {
    inner: Arc<dyn LeaseStore>,
    lease_writes: AtomicU64,
}

impl LeaseStore for CountingStore {
    fn ensure_tables(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        self.inner.ensure_tables()
    }
    fn list_leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseError>> {
        self.inner.list_leases()
    }
    fn get_lease<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        self.inner.get_lease(key)
    }
    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.lease_writes.fetch_add(1, Ordering::Relaxed);
        self.inner.create_lease(lease)
    }
    fn update_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
        change: Change,
    ) -> BoxFuture<'a, Result<Lease, LeaseError>> {
        self.lease_writes.fetch_add(1, Ordering::Relaxed);
        self.inner.update_lease(key, expect, change)
    }
    fn delete_lease<'a>(
        &'a self,
        key: &'a str,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.lease_writes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete_lease(key, expect)
    }
    fn join<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        self.inner.join(worker_id)
    }
    fn heartbeat<'a>(
        &'a self,
        worker_id: &'a str,
        leases: u64,
    ) -> BoxFuture<'a, Result<Membership, LeaseError>> {
        self.inner.heartbeat(worker_id, leases)
    }
    fn evict_worker<'a>(
        &'a self,
        worker_id: &'a str,
        heartbeat: u64,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.inner.evict_worker(worker_id, heartbeat)
    }
    fn remove_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.inner.remove_worker(worker_id)
    }
    fn membership(&self) -> BoxFuture<'_, Result<Membership, LeaseError>> {
        self.inner.membership()
    }
    fn note_leases_changed(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        self.inner.note_leases_changed()
    }
}

struct Bench {
    aws: LocalAws,
    table: String,
}

impl Bench {
    async fn new(table: &str, leases: usize) -> Bench {
        let aws = LocalAws::start(LocalAwsOptions::default()).await.unwrap();
        let bench = Bench {
            aws,
            table: table.to_string(),
        };
        let store = bench.store().await;
        store.ensure_tables().await.unwrap();
        for i in 0..leases {
            let lease = Lease::new(
                format!("shardId-{i:012}"),
                ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
            );
            store.create_lease(&lease).await.unwrap();
        }
        bench
    }

    async fn store(&self) -> Arc<dyn LeaseStore> {
        Arc::new(DynamoLeaseStore::new(
            self.aws.clients().await.dynamodb,
            self.table.clone(),
        ))
    }

    async fn owners(&self, store: &Arc<dyn LeaseStore>) -> BTreeMap<String, Vec<String>> {
        let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for lease in store.list_leases().await.unwrap() {
            owners
                .entry(lease.owner.unwrap_or_default())
                .or_default()
                .push(lease.key);
        }
        owners
    }

    fn spawn_process(&self, id: &str, failover: Duration) -> Child {
        Command::new(env!("CARGO_BIN_EXE_kcl-lease-worker"))
            .arg(self.aws.endpoints().dynamodb.unwrap())
            .arg(&self.table)
            .arg(id)
            .arg(failover.as_millis().to_string())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

async fn until<F, Fut>(deadline: Duration, mut check: F) -> Instant
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Instant::now();
        }
        assert!(
            started.elapsed() < deadline,
            "condition not reached in {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn balanced(owners: &BTreeMap<String, Vec<String>>, workers: usize) -> bool {
    let counts: Vec<usize> = owners.values().map(Vec::len).collect();
    !owners.contains_key("")
        && owners.len() == workers
        && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
}

/// The human line (median, min, max, against the goal) and the `BENCH` line with every
/// trial; `report_unit` is the unit spelled out for the report.
fn summary(
    figure: &str,
    label: &str,
    mut values: Vec<f64>,
    (unit, report_unit): (&str, &str),
    goal: Option<(f64, &str)>,
) {
    common::result_line(
        "lease_coordination",
        figure,
        label,
        report_unit,
        &values,
        goal.map(|(limit, text)| ("<=", limit, text)),
    );
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let (min, max) = (values[0], values[values.len() - 1]);
    let verdict = match goal {
        Some((limit, text)) => format!(
            " | goal {text}: median/goal {:.2}, max/goal {:.2} — {}",
            median / limit,
            max / limit,
            if max <= limit { "met" } else { "NOT met" }
        ),
        None => String::new(),
    };
    println!(
        "{label}: median {median:.3}{unit}, min {min:.3}{unit}, max {max:.3}{unit} over {} trials{verdict}",
        values.len()
    );
}

/// Kill or stop one of 4 worker processes holding 8 leases; time until its last lease
/// is owned by another worker.
async fn handover_trial(trial: usize, failover: Duration, graceful: bool) -> Duration {
    let bench = Bench::new(&format!("bench-handover-{trial}-{graceful}"), 8).await;
    let store = bench.store().await;
    let mut children: Vec<Child> = (0..4)
        .map(|i| bench.spawn_process(&format!("w{i}"), failover))
        .collect();
    until(Duration::from_secs(60), || async {
        balanced(&bench.owners(&store).await, 4)
    })
    .await;
    // Let the balance settle for a renewal so the victim's leases are mid-interval.
    tokio::time::sleep(failover / 2).await;
    let victim_leases = bench.owners(&store).await.remove("w0").unwrap();
    let pid = children[0].id().unwrap() as i32;
    let signal = if graceful {
        libc::SIGTERM
    } else {
        libc::SIGKILL
    };
    let signalled = Instant::now();
    unsafe { libc::kill(pid, signal) };
    let done = until(Duration::from_secs(120), || async {
        let leases = store.list_leases().await.unwrap();
        victim_leases.iter().all(|key| {
            leases
                .iter()
                .any(|l| &l.key == key && l.owner.as_deref().is_some_and(|o| o != "w0"))
        })
    })
    .await;
    for child in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    bench.aws.shutdown().await;
    done - signalled
}

struct InProcess {
    coordinator: Arc<LeaseCoordinator>,
    cancel: CancellationToken,
}

async fn start_in_process(store: Arc<dyn LeaseStore>, id: &str, failover: Duration) -> InProcess {
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
    InProcess {
        coordinator,
        cancel,
    }
}

/// Scale 1→4→8 workers on 16 leases; returns the most taking cycles with actions any
/// newcomer needed at each step, and the time each step took.
async fn convergence_trial(trial: usize) -> ((u64, Duration), (u64, Duration)) {
    let bench = Bench::new(&format!("bench-converge-{trial}"), 16).await;
    let store = bench.store().await;
    let failover = Duration::from_secs(10);
    let mut workers = vec![start_in_process(bench.store().await, "w0", failover).await];
    until(Duration::from_secs(60), || async {
        bench.owners(&store).await.get("w0").map(Vec::len) == Some(16)
    })
    .await;
    let mut steps = Vec::new();
    for (from, to) in [(1, 4), (4, 8)] {
        let started = Instant::now();
        for i in from..to {
            workers.push(start_in_process(bench.store().await, &format!("w{i}"), failover).await);
        }
        let done = until(Duration::from_secs(60), || async {
            balanced(&bench.owners(&store).await, to)
        })
        .await;
        let cycles = workers[from..]
            .iter()
            .map(|w| w.coordinator.stats().active_cycles.load(Ordering::Relaxed))
            .max()
            .unwrap();
        steps.push((cycles, done - started));
    }
    for w in &workers {
        w.cancel.cancel();
    }
    bench.aws.shutdown().await;
    (steps[0], steps[1])
}

/// 4 workers, 16 leases, default failover (10 s): lease-table writes per lease per minute.
async fn steady_state_writes(measure: Duration) -> f64 {
    let bench = Bench::new("bench-steady", 16).await;
    let store = bench.store().await;
    let counting = Arc::new(CountingStore {
        inner: bench.store().await,
        lease_writes: AtomicU64::new(0),
    });
    let failover = Duration::from_secs(10);
    let mut workers = Vec::new();
    for i in 0..4 {
        let s: Arc<dyn LeaseStore> = counting.clone();
        workers.push(start_in_process(s, &format!("w{i}"), failover).await);
    }
    until(Duration::from_secs(60), || async {
        balanced(&bench.owners(&store).await, 4)
    })
    .await;
    tokio::time::sleep(failover).await;
    let before = counting.lease_writes.load(Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    let writes = counting.lease_writes.load(Ordering::Relaxed) - before;
    for w in &workers {
        w.cancel.cancel();
    }
    writes as f64 / 16.0 / (measure.as_secs_f64() / 60.0)
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(default)
}

/// Whether `part` is selected by `LEASE_BENCH` (all when unset).
fn selected(part: &str) -> bool {
    std::env::var("LEASE_BENCH").map_or(true, |parts| parts.split(',').any(|p| p.trim() == part))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // RUST_LOG=kcl=debug (say) shows why a lease moved; silent without it.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let trials = setting("TRIALS", 10) as usize;
    let failover = Duration::from_secs(3);
    let renewal = failover / 3;
    println!(
        "lease coordination on the embedded DynamoDB, {} cores; failover_time {failover:?}, renewal {renewal:?}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    if selected("handover") {
        handover(trials, failover, renewal).await;
    }
    if selected("converge") {
        converge(trials).await;
    }
    if selected("steady") {
        steady().await;
    }
    if selected("conflicts") {
        conflicts().await;
    }
    if selected("read_cost") {
        read_cost().await;
    }
}

async fn handover(trials: usize, failover: Duration, renewal: Duration) {
    let mut failovers = Vec::new();
    for trial in 0..trials {
        failovers.push(
            handover_trial(trial, failover, false).await.as_secs_f64() / failover.as_secs_f64(),
        );
    }
    let goal = 1.1 + renewal.as_secs_f64() / failover.as_secs_f64();
    summary(
        "failover",
        "SIGKILL → last lease owned again (× failover_time)",
        failovers,
        ("×", "× failover time"),
        Some((goal, "≤ 1.1× failover + 1 renewal interval")),
    );

    let mut releases = Vec::new();
    for trial in 0..trials {
        releases.push(handover_trial(trial, failover, true).await.as_secs_f64());
    }
    summary(
        "graceful_release",
        "SIGTERM (graceful release) → last lease owned by another worker",
        releases,
        (" s", "s"),
        Some((1.0, "≤ 1 s")),
    );
}

async fn converge(trials: usize) {
    let mut up4 = Vec::new();
    let mut up8 = Vec::new();
    let mut up4_time = Vec::new();
    let mut up8_time = Vec::new();
    for trial in 0..trials.min(5) {
        let ((c4, t4), (c8, t8)) = convergence_trial(trial).await;
        up4.push(c4 as f64);
        up8.push(c8 as f64);
        up4_time.push(t4.as_secs_f64());
        up8_time.push(t8.as_secs_f64());
    }
    summary(
        "converge_1_4_cycles",
        "taking cycles to converge 1→4 workers, 16 leases",
        up4,
        ("", "cycles"),
        Some((2.0, "≤ 2 cycles")),
    );
    summary(
        "converge_1_4_time",
        "time to converge 1→4 workers, 16 leases",
        up4_time,
        (" s", "s"),
        None,
    );
    summary(
        "converge_4_8_cycles",
        "taking cycles to converge 4→8 workers, 16 leases",
        up8,
        ("", "cycles"),
        Some((2.0, "≤ 2 cycles")),
    );
    summary(
        "converge_4_8_time",
        "time to converge 4→8 workers, 16 leases",
        up8_time,
        (" s", "s"),
        None,
    );
}

async fn steady() {
    let steady_secs = setting("STEADY_SECS", 60);
    let per_minute = steady_state_writes(Duration::from_secs(steady_secs)).await;
    println!(
        "steady state, 4 workers, 16 leases, failover 10 s: {per_minute:.1} lease-table writes per lease per minute (renewal every 3.33 s = 18.0)"
    );
    common::result_line(
        "lease_coordination",
        "steady_state_writes",
        "steady state, 4 workers, 16 leases, failover 10 s: lease-table writes per lease per minute (renewal every 3.33 s = 18.0)",
        "writes/lease/min",
        &[per_minute],
        None,
    );
}

async fn conflicts() {
    let secs = setting("CONFLICT_SECS", 60);
    let percent = setting("CONFLICT_PERCENT", 50).min(100);
    let lost = cost::conflicts(Duration::from_secs(secs), percent as f64 / 100.0).await;
    let label = format!(
        "renewals under {percent}% transaction conflicts: leases lost (2 workers, 8 leases, failover 3 s)"
    );
    println!("{label}: {lost} in {secs} s");
    common::result_line(
        "lease_coordination",
        "conflict_leases_lost",
        &label,
        "leases",
        &[lost as f64],
        Some(("<=", 0.0, "no lease lost")),
    );
}

async fn read_cost() {
    let secs = setting("READ_COST_SECS", 60);
    let leases = setting("READ_COST_LEASES", 1000) as usize;
    let workers = setting("READ_COST_WORKERS", 20) as usize;
    let cost = cost::read_cost(leases, workers, Duration::from_secs(secs)).await;
    println!(
        "lease-table reads, {workers} workers, {leases} leases, failover 10 s: {:.1} read units per worker per minute (Java KCL 3.x: {:.1})",
        cost.per_worker_minute, cost.java_kcl3
    );
    common::result_line(
        "lease_coordination",
        "read_units_per_worker_minute",
        &format!(
            "lease-table read capacity per worker per minute, {workers} workers, {leases} leases"
        ),
        "RCU/worker/min",
        &[cost.per_worker_minute],
        Some((
            "<=",
            cost.java_kcl3,
            "≤ the Java KCL 3.x (leader scan every 2× failover, leaseOwner index query)",
        )),
    );
}
