//! Lease coordination against the embedded DynamoDB: taking, balancing, failover,
//! graceful release and zombie fencing, with workers in this process and as separate
//! processes (`kcl-lease-worker`).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kcl::checkpoint::ExtendedSequenceNumber;
use kcl::internals::{HandleError, LeaseHandle, RenewOutcome};
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::leases::dynamo::DynamoLeaseStore;
use kcl::leases::{Lease, LeaseStore};
use kcl_local::LocalAws;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod common;
use common::strict;
use kcl_local::testing::{unique, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

struct Table {
    aws: LocalAws,
    name: String,
}

impl Table {
    async fn with_leases(count: usize) -> Table {
        let aws = strict::local_aws().await;
        let table = Table {
            aws,
            name: unique("leases"),
        };
        let store = table.store().await;
        store.ensure_tables().await.unwrap();
        for i in 0..count {
            let lease = Lease::new(
                format!("shardId-{i:012}"),
                ExtendedSequenceNumber::new(kcl::checkpoint::SequencePosition::TrimHorizon),
            );
            store.create_lease(&lease).await.unwrap();
        }
        table
    }

    /// Each worker gets its own SDK client, as separate machines would, signed as the
    /// documented worker policy (the lease table is the only resource used here).
    async fn store(&self) -> Arc<dyn LeaseStore> {
        let clients = strict::worker_clients(&self.aws, "no-stream", &self.name).await;
        Arc::new(DynamoLeaseStore::new(clients.dynamodb, self.name.clone()))
    }

    /// Owner → number of leases (unowned under "").
    async fn owners(&self) -> BTreeMap<String, usize> {
        let mut owners = BTreeMap::new();
        for lease in self.store().await.list_leases().await.unwrap() {
            *owners.entry(lease.owner.unwrap_or_default()).or_default() += 1;
        }
        owners
    }
}

struct InProcessWorker {
    coordinator: Arc<LeaseCoordinator>,
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<()>,
    acquired: mpsc::UnboundedReceiver<Arc<LeaseHandle>>,
}

impl InProcessWorker {
    /// Starts a worker that, lacking a processor, hands leases over as soon as asked.
    async fn start(table: &Table, id: &str, failover: Duration) -> InProcessWorker {
        let mut config = LeaseConfig::new(id);
        config.failover_time = failover;
        let (coordinator, mut events) = LeaseCoordinator::new(table.store().await, config);
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let coordinator = Arc::clone(&coordinator);
            let cancel = cancel.clone();
            async move { coordinator.run(cancel).await.unwrap() }
        });
        let (tx, acquired) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(LeaseEvent::Acquired { handle, .. }) = events.recv().await {
                let _ = tx.send(Arc::clone(&handle));
                tokio::spawn(async move { handle.hand_over_when_asked().await });
            }
        });
        InProcessWorker {
            coordinator,
            cancel,
            run,
            acquired,
        }
    }

    async fn stop_gracefully(self) {
        self.cancel.cancel();
        self.run.await.unwrap();
        self.coordinator.release_all().await.unwrap();
    }
}

fn balanced(owners: &BTreeMap<String, usize>, workers: usize, per_worker: usize) -> bool {
    !owners.contains_key("") && owners.len() == workers && owners.values().all(|&n| n == per_worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_worker_takes_all_then_four_converge_within_two_cycles() {
    let table = Table::with_leases(8).await;
    let failover = Duration::from_secs(3);
    let first = InProcessWorker::start(&table, "worker-a", failover).await;
    wait_for("worker-a to hold all 8 leases", DEADLINE, || async {
        (table.owners().await.get("worker-a") == Some(&8)).then_some(())
    })
    .await;

    let mut newcomers = Vec::new();
    for id in ["worker-b", "worker-c", "worker-d"] {
        newcomers.push(InProcessWorker::start(&table, id, failover).await);
    }
    wait_for("2/2/2/2", DEADLINE, || async {
        balanced(&table.owners().await, 4, 2).then_some(())
    })
    .await;
    for worker in &newcomers {
        let rounds = worker
            .coordinator
            .stats()
            .active_cycles
            .load(Ordering::Relaxed);
        assert!(
            (1..=2).contains(&rounds),
            "{} needed {rounds} taking cycles with actions",
            worker.coordinator.config().worker_id
        );
    }
    // Balance holds: nobody keeps stealing once balanced.
    let cycles_before: Vec<u64> = newcomers
        .iter()
        .map(|w| w.coordinator.stats().taking_cycles.load(Ordering::Relaxed))
        .collect();
    wait_for(
        "three more taking cycles of every newcomer",
        DEADLINE,
        || async {
            newcomers
                .iter()
                .zip(&cycles_before)
                .all(|(w, before)| {
                    w.coordinator.stats().taking_cycles.load(Ordering::Relaxed) >= before + 3
                })
                .then_some(())
        },
    )
    .await;
    assert!(balanced(&table.owners().await, 4, 2));
    for worker in newcomers {
        worker.stop_gracefully().await;
    }
    first.stop_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_releases_without_waiting_for_expiry() {
    let table = Table::with_leases(6).await;
    // A failover time far longer than the test's deadline: only a release can move
    // the leases in time.
    let failover = Duration::from_secs(600);
    let a = InProcessWorker::start(&table, "worker-a", failover).await;
    let b = InProcessWorker::start(&table, "worker-b", failover).await;
    wait_for("3/3", DEADLINE, || async {
        balanced(&table.owners().await, 2, 3).then_some(())
    })
    .await;
    a.stop_gracefully().await;
    wait_for(
        "worker-b to hold all 6",
        Duration::from_secs(20),
        || async { (table.owners().await.get("worker-b") == Some(&6)).then_some(()) },
    )
    .await;
    b.stop_gracefully().await;
    assert_eq!(
        table.owners().await.get(""),
        Some(&6),
        "all released at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_worker_cannot_renew_or_checkpoint_leases_taken_meanwhile() {
    let table = Table::with_leases(4).await;
    let failover = Duration::from_secs(2);
    let mut zombie = InProcessWorker::start(&table, "zombie", failover).await;
    wait_for("zombie to hold all 4", DEADLINE, || async {
        (table.owners().await.get("zombie") == Some(&4)).then_some(())
    })
    .await;
    let mut handles = Vec::new();
    while let Ok(handle) = zombie.acquired.try_recv() {
        handles.push(handle);
    }
    assert_eq!(handles.len(), 4);
    // "Pause": its loops stop (no renewal, no release), its handles live on.
    zombie.cancel.cancel();
    zombie.run.await.unwrap();

    let survivor = InProcessWorker::start(&table, "survivor", failover).await;
    wait_for("survivor to take all 4 after expiry", DEADLINE, || async {
        (table.owners().await.get("survivor") == Some(&4)).then_some(())
    })
    .await;
    for handle in &handles {
        let checkpoint = handle
            .checkpoint(ExtendedSequenceNumber::at("12345", 0))
            .await;
        assert!(
            matches!(checkpoint, Err(HandleError::Lost { .. })),
            "{checkpoint:?}"
        );
        assert_ne!(handle.renew().await, Ok(RenewOutcome::Renewed));
        assert!(!handle.may_process().await);
    }
    for lease in table.store().await.list_leases().await.unwrap() {
        assert_eq!(lease.owner.as_deref(), Some("survivor"));
        assert_eq!(
            lease.checkpoint,
            ExtendedSequenceNumber::new(kcl::checkpoint::SequencePosition::TrimHorizon),
            "no checkpoint of the zombie was accepted"
        );
    }
    survivor.stop_gracefully().await;
}

/// A `kcl-lease-worker` process and the lease events it printed.
struct WorkerProcess {
    child: Child,
    events: mpsc::UnboundedReceiver<String>,
}

impl WorkerProcess {
    fn spawn(table: &Table, id: &str, failover: Duration) -> WorkerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kcl-lease-worker"))
            .arg(table.aws.endpoints().dynamodb.unwrap())
            .env(
                kcl::aws::LOCAL_ACCESS_KEY_ENV,
                strict::bind_worker(&table.aws, "no-stream", &table.name),
            )
            .arg(&table.name)
            .arg(id)
            .arg(failover.as_millis().to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        WorkerProcess { child, events }
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    async fn terminate(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "{status}");
        let mut saw_stopped = false;
        // Until the reader saw end of output: the last lines may still be in flight.
        while let Some(line) = self.events.recv().await {
            saw_stopped |= line.contains("\"stopped\"");
        }
        assert!(saw_stopped, "graceful shutdown completed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_one_of_four_worker_processes_moves_its_leases_to_survivors() {
    let table = Table::with_leases(8).await;
    let failover = Duration::from_secs(2);
    let mut workers: Vec<WorkerProcess> = (0..4)
        .map(|i| WorkerProcess::spawn(&table, &format!("proc-{i}"), failover))
        .collect();
    wait_for("2/2/2/2 across processes", DEADLINE, || async {
        balanced(&table.owners().await, 4, 2).then_some(())
    })
    .await;
    let mut victim = workers.remove(1);
    victim.signal(libc::SIGKILL);
    victim.child.wait().await.unwrap();
    // The leader may first take every lease the victim left (4/2/2); the others see
    // in its heartbeats that it is above its share and ask it for one (3/3/2).
    wait_for(
        "every lease owned by a survivor, evenly",
        DEADLINE,
        || async {
            let owners = table.owners().await;
            let survivors = ["proc-0", "proc-2", "proc-3"];
            (owners.len() == 3
                && survivors
                    .iter()
                    .all(|w| owners.get(*w).is_some_and(|n| (2..=3).contains(n))))
            .then_some(())
        },
    )
    .await;
    for worker in workers {
        worker.terminate().await;
    }
    assert_eq!(table.owners().await.get(""), Some(&8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstopped_worker_process_is_fenced_when_it_resumes() {
    let table = Table::with_leases(4).await;
    let failover = Duration::from_secs(2);
    let mut zombie = WorkerProcess::spawn(&table, "zombie", failover);
    wait_for("zombie to hold all 4", DEADLINE, || async {
        (table.owners().await.get("zombie") == Some(&4)).then_some(())
    })
    .await;
    zombie.signal(libc::SIGSTOP);
    let survivor = WorkerProcess::spawn(&table, "survivor", failover);
    wait_for("survivor to take all 4", DEADLINE, || async {
        (table.owners().await.get("survivor") == Some(&4)).then_some(())
    })
    .await;
    zombie.signal(libc::SIGCONT);
    // On resume the zombie learns, from its own clock or a rejected write, that every
    // lease is gone.
    let mut lost = std::collections::BTreeSet::new();
    while lost.len() < 4 {
        let line = tokio::time::timeout(DEADLINE, zombie.events.recv())
            .await
            .expect("zombie reports its lost leases")
            .unwrap();
        if line.contains("\"lost\"") {
            lost.insert(line);
        }
    }
    // Alive again, the zombie may rebalance through proper handoffs, never by
    // renewing what it held before the pause.
    let owners = table.owners().await;
    assert!(!owners.contains_key(""), "{owners:?}");
    zombie.terminate().await;
    survivor.terminate().await;
}
