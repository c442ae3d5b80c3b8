//! Bounded shutdown of `delivery-app worker` processes whose DynamoDB went silent or
//! away, and exact statistics after the next owner replays what was not checkpointed.
//! On a strict local AWS enforcing the documented policies; each process signs as its
//! command's principal.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use delivery_app::principals::Role;
use delivery_app::stats::StatsStore;
use kcl::aws::Clients;
use kcl_local::LocalAws;
use kcl_local::faults::{Fault, FaultKind, FaultPlan, FaultProxy, Rule, dynamodb_target};
use kcl_local::testing::{unique, wait_for};
use tokio::process::{Child, Command};

use common::{enforce_policies, strict_aws};

const EXE: &str = env!("CARGO_BIN_EXE_delivery-app");

/// Orders `from..to`, each created at `1_000 * n` and completed 700 ms later.
async fn put_orders(clients: &Clients, stream: &str, from: u64, to: u64) {
    for n in from..to {
        let order = format!("o{n}");
        let at = 1_000 * n as i64;
        let events = [
            format!(
                r#"{{"type":"order_created","order_id":"{order}","created_at":{at},"pickup":{{"x":1,"y":2}},"dropoff":{{"x":3,"y":4}},"price_cents":100}}"#
            ),
            format!(
                r#"{{"type":"order_completed","order_id":"{order}","completed_at":{}}}"#,
                at + 700
            ),
        ];
        for event in events {
            clients
                .kinesis
                .put_record()
                .stream_name(stream)
                .partition_key(&order)
                .data(aws_sdk_kinesis::primitives::Blob::new(event.into_bytes()))
                .send()
                .await
                .unwrap();
        }
    }
}

fn spawn_worker(
    kinesis: &str,
    dynamodb: &str,
    stream: &str,
    app: &str,
    id: &str,
    log: &Path,
    failover: Duration,
) -> Child {
    Command::new(EXE)
        .args([
            "worker",
            "--kinesis-endpoint",
            kinesis,
            "--dynamodb-endpoint",
            dynamodb,
        ])
        .args(["--stream", stream, "--app", app, "--worker-id", id])
        .args(["--failover-ms", &failover.as_millis().to_string()])
        .args(["--poll-ms", "100"])
        .env("AWS_ACCESS_KEY_ID", Role::Worker.access_key_id())
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// SIGTERM, and how long the process took to exit (panics past 30 s).
async fn terminate(worker: &mut Child) -> Duration {
    let pid = worker.id().unwrap() as i32;
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker exits within 30 s of SIGTERM")
        .unwrap();
    sent.elapsed()
}

async fn records(store: &StatsStore) -> u64 {
    store.read().await.map_or(0, |s| s.totals.records())
}

/// The leases of `s`'s application, as the table holds them now (`None` on an error).
async fn leases(s: &Setup) -> Option<Vec<kcl::leases::Lease>> {
    let store = kcl::leases::DynamoLeaseStore::new(s.clients.dynamodb.clone(), &s.app);
    kcl::leases::LeaseStore::list_leases(&store).await.ok()
}

struct Setup {
    aws: LocalAws,
    proxy: FaultProxy,
    clients: Clients,
    kinesis: String,
    stream: String,
    app: String,
    store: StatsStore,
    dir: PathBuf,
}

async fn setup() -> Setup {
    let aws = strict_aws().await;
    let endpoints = aws.endpoints();
    let proxy = FaultProxy::start(endpoints.dynamodb.as_deref().unwrap(), FaultPlan::new(3))
        .await
        .unwrap();
    let clients = aws.clients().await;
    let stream = unique("shutdown");
    let app = unique("shutdown-app");
    enforce_policies(&aws, &stream, &app);
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let store = StatsStore::new(clients.dynamodb.clone(), &app);
    let dir = std::env::temp_dir().join(unique("shutdown-logs"));
    std::fs::create_dir_all(&dir).unwrap();
    Setup {
        kinesis: endpoints.kinesis.clone().unwrap(),
        aws,
        proxy,
        clients,
        stream,
        app,
        store,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_worker_whose_dynamodb_went_silent_and_the_next_owner_is_exact() {
    let s = setup().await;
    put_orders(&s.clients, &s.stream, 0, 10).await;
    let log = s.dir.join("w1.log");
    // Once DynamoDB is silent, w1 still holds its lease for up to the failover time, and
    // must read and apply the next orders within it: long enough for a loaded machine.
    let failover = Duration::from_secs(10);
    let mut w1 = spawn_worker(
        &s.kinesis,
        &s.proxy.url(),
        &s.stream,
        &s.app,
        "w1",
        &log,
        failover,
    );
    // And checkpointed: the checkpoint follows the batch's transactions, and one still
    // in flight when DynamoDB falls silent would hold the processor before the
    // transaction this test needs.
    wait_for(
        "the first orders applied and checkpointed",
        Duration::from_secs(60),
        || async {
            if records(&s.store).await < 20 {
                return None;
            }
            let watermarks = s.store.watermarks().await.ok()?;
            leases(&s)
                .await?
                .iter()
                .all(|lease| {
                    watermarks
                        .get(&lease.key)
                        .is_some_and(|w| lease.checkpoint.compare(w).is_eq())
                })
                .then_some(())
        },
    )
    .await;

    // The next statistics transaction is applied but its answer is lost; from then on
    // DynamoDB holds every request without answering.
    s.proxy
        .plan()
        .add(Rule::dynamodb("TransactWriteItems", Fault::DropResponse).for_next(1));
    // Before it, the batch reads its new orders' states (a creation is never assumed
    // absent): that one read is answered.
    s.proxy.plan().add(
        Rule::dynamodb(
            "BatchGetItem",
            Fault::Latency {
                delay: Duration::ZERO,
            },
        )
        .for_next(1),
    );
    s.proxy.plan().add(Rule::new(
        "DynamoDB_20120810.*",
        Fault::Timeout {
            hold: Duration::from_secs(600),
        },
    ));
    put_orders(&s.clients, &s.stream, 10, 20).await;
    let target = dynamodb_target("TransactWriteItems");
    wait_for(
        "a transaction applied without an answer",
        Duration::from_secs(60),
        || async { (s.proxy.injected(&target, FaultKind::DroppedResponse) >= 1).then_some(()) },
    )
    .await;
    let took = terminate(&mut w1).await;
    eprintln!("w1 exited {took:?} after SIGTERM");

    // Logs written to a file carry no colour codes.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in a log file:\n{text}"
    );

    // DynamoDB answers again; the next owner replays what w1 did not checkpoint, and
    // the watermark drops what its lost transaction applied.
    s.proxy.plan().clear();
    let dynamodb = s.aws.endpoints().dynamodb.unwrap();
    let mut w2 = spawn_worker(
        &s.kinesis,
        &dynamodb,
        &s.stream,
        &s.app,
        "w2",
        &s.dir.join("w2.log"),
        failover,
    );
    let stats = wait_for("every order applied", Duration::from_secs(60), || async {
        let stats = s.store.read().await.ok()?;
        (stats.totals.records() >= 40).then_some(stats)
    })
    .await;
    // And no more than once: one more look after the replay settled.
    wait_for("w2 holding the lease", Duration::from_secs(30), || async {
        leases(&s)
            .await?
            .iter()
            .any(|l| {
                l.owner.as_deref() == Some("w2") && l.checkpoint.position.as_str() != "TRIM_HORIZON"
            })
            .then_some(())
    })
    .await;
    let stats = s.store.read().await.unwrap_or(stats);
    let totals = &stats.totals;
    assert_eq!(totals.sums.events, 40, "{totals:?}");
    assert_eq!(totals.sums.orders_created, 20);
    assert_eq!(totals.sums.orders_completed, 20);
    assert_eq!(totals.sums.created_price_cents, 2_000);
    assert_eq!(totals.sums.completion_ms_sum, 20 * 700);
    assert_eq!(totals.dead_letter_count(), 0, "{:?}", totals.dead_letters);
    assert_eq!(totals.redeliveries_skipped, 0);
    terminate(&mut w2).await;
    s.proxy.shutdown().await;
    s.aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_worker_whose_dynamodb_went_away() {
    let s = setup().await;
    put_orders(&s.clients, &s.stream, 0, 5).await;
    let log = s.dir.join("w1.log");
    let mut w1 = spawn_worker(
        &s.kinesis,
        &s.proxy.url(),
        &s.stream,
        &s.app,
        "w1",
        &log,
        Duration::from_secs(3),
    );
    wait_for(
        "the first orders applied",
        Duration::from_secs(60),
        || async { (records(&s.store).await >= 10).then_some(()) },
    )
    .await;
    // The endpoint closes: every call is refused from now on.
    s.proxy.shutdown().await;
    put_orders(&s.clients, &s.stream, 5, 10).await;
    wait_for("the worker retrying", Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("retrying").then_some(())
    })
    .await;
    let took = terminate(&mut w1).await;
    eprintln!("w1 exited {took:?} after SIGTERM");
    s.aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_produce_whose_kinesis_went_silent() {
    let aws = strict_aws().await;
    let endpoints = aws.endpoints();
    let proxy = FaultProxy::start(endpoints.kinesis.as_deref().unwrap(), FaultPlan::new(5))
        .await
        .unwrap();
    let clients = aws.clients().await;
    let stream = unique("produce-silent");
    enforce_policies(&aws, &stream, "no-app");
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique("produce-silent"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut produce = Command::new(EXE)
        .args(["produce", "--kinesis-endpoint", &proxy.url()])
        .args([
            "--dynamodb-endpoint",
            endpoints.dynamodb.as_deref().unwrap(),
        ])
        .args(["--stream", &stream, "--speed", "10", "--sim-seconds", "600"])
        .arg("--truth-file")
        .arg(dir.join("truth.json"))
        .env("AWS_ACCESS_KEY_ID", Role::Produce.access_key_id())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let put = kcl_local::faults::kinesis_target("PutRecords");
    wait_for("events put", Duration::from_secs(60), || async {
        (proxy.calls(&put) >= 1).then_some(())
    })
    .await;
    // Kinesis holds every request from now on.
    proxy.plan().add(Rule::new(
        "Kinesis_20131202.*",
        Fault::Timeout {
            hold: Duration::from_secs(600),
        },
    ));
    wait_for("a put held", Duration::from_secs(60), || async {
        (proxy.injected(&put, FaultKind::Timeout) >= 1).then_some(())
    })
    .await;
    let took = terminate(&mut produce).await;
    eprintln!("produce exited {took:?} after SIGTERM");
    proxy.shutdown().await;
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_demo_and_its_workers() {
    // An AWS that outlives the demo (as `delivery-app local` does): its workers would
    // run on if the demo left them behind.
    let aws = strict_aws().await;
    let endpoints = aws.endpoints();
    let dir = std::env::temp_dir().join(unique("demo-stop"));
    let (stream, app) = (unique("demo-stop"), unique("demo-stop-app"));
    enforce_policies(&aws, &stream, &app);
    let mut demo = Command::new(EXE)
        .args(["demo", "--seconds", "60", "--log-dir"])
        .arg(&dir)
        .args(["--kinesis-endpoint", endpoints.kinesis.as_deref().unwrap()])
        .args([
            "--dynamodb-endpoint",
            endpoints.dynamodb.as_deref().unwrap(),
        ])
        .args(["--stream", &stream, "--app", &app])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Until its workers run: the first live line comes after they started.
    let stdout = demo.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("worker processes") {
                return line;
            }
        }
        panic!("the demo ended before starting its workers");
    })
    .await
    .expect("the demo starts its workers");
    assert!(started.contains("started"), "{started}");
    // Each worker holds its log open while it runs (checked through /proc).
    let logs: Vec<PathBuf> = wait_for(
        "the workers' logs open",
        Duration::from_secs(30),
        || async {
            let logs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            (logs.len() == 3 && any_process_has_open(&logs)).then_some(logs)
        },
    )
    .await;
    let took = terminate(&mut demo).await;
    eprintln!("demo exited {took:?} after SIGTERM");
    // Its workers went with it.
    wait_for(
        "no process writing the workers' logs",
        Duration::from_secs(10),
        || async { (!any_process_has_open(&logs)).then_some(()) },
    )
    .await;
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether any process of this user has one of `files` open (Linux `/proc`).
fn any_process_has_open(files: &[PathBuf]) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| fds.filter_map(Result::ok))
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| files.contains(&target))
}
