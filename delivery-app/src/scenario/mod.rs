//! A whole run, as `demo`, the tests and the benchmark do it: create the stream, start
//! statistics workers as separate processes, replay the simulation through the
//! producer, crash, restart and reshard along the way, then wait until the statistics
//! reflect every record and compare them with the ground truth.
//!
//! Every step waits on a condition (simulation progress, a lease owned, the stream
//! ACTIVE, the statistics caught up) with a deadline; nothing relies on a fixed sleep.

mod aws_process;
mod hosts;
mod latency;
mod workers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kcl::aws::{Clients, Endpoints};
use kcl::checkpoint::SequencePosition;
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use aws_process::{LocalAwsProcess, StrictNames};
pub use hosts::{HostNetwork, NetFault};
pub use latency::{LatencyTracker, percentile};
pub use workers::{WorkerLauncher, WorkerProcess};

use crate::autoscaler::{self, Action, ScalerConfig};
use crate::connect::{AwsArgs, NameArgs};
use crate::principals::Role;
use crate::report::{TruthComparison, compare, live_line};
use crate::sim::{GroundTruth, SimConfig, Simulation};
use crate::sink::{EventSink, Progress, replay};
use crate::stats::summary::thousands;
use crate::stats::{StatsStore, StoredStats};
use crate::worker::{Retrieval, WorkerFlags};

/// Something the scenario does mid-run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// SIGKILL a worker while it processes: the first (by start order) that holds a
    /// checkpointed lease.
    Kill,
    /// Start the last killed worker again, with a new id.
    Restart,
    /// Split the most loaded open shard.
    Split,
    /// Merge the least loaded pair of adjacent open shards.
    Merge,
    /// Stop every worker gracefully (SIGTERM) and start them all again.
    RestartAll,
    /// SIGKILL worker slot `n` (numbered from 0); an error if it does not run.
    KillWorker(usize),
    /// Start worker slot `n` with a new id; an error if it runs.
    StartWorker(usize),
    /// SIGSTOP worker slot `n` (which must run) until the others own all its leases (at least the
    /// failover time), then SIGCONT: a zombie that wakes up believing it still holds
    /// them.
    PauseWorker(usize),
    /// Stop worker slot `n` (which must run) gracefully (SIGTERM) and start it again
    /// with a new id.
    BounceWorker(usize),
    /// Restart the local AWS process ([`ScenarioConfig::local_aws`]).
    RestartAws,
    /// A network fault on worker slot `n`'s host (which must run), then healed: a
    /// partition or a DynamoDB-only cut lasts until the others own all its leases (at
    /// least 1.2× the failover time), a Kinesis-only cut 1.2× the failover time, a bad
    /// link its own duration. Needs [`run_with_hosts`].
    Network(usize, NetFault),
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct ScenarioConfig {
    /// The `delivery-app` executable the workers run.
    pub exe: PathBuf,
    /// Where AWS is.
    pub endpoints: Endpoints,
    /// Stream name.
    pub stream: String,
    /// Application name.
    pub app: String,
    /// Shards to create the stream with.
    pub shards: i32,
    /// Worker processes.
    pub workers: usize,
    /// Lease failover time of the workers.
    pub failover: Duration,
    /// Pause between GetRecords calls of a caught-up shard.
    pub poll: Duration,
    /// How the workers read the stream.
    pub retrieval: Retrieval,
    /// How the worker processes share leases.
    pub balance: crate::worker::BalanceFlag,
    /// The simulation.
    pub sim: SimConfig,
    /// Simulated seconds per real second; `None`: as fast as possible.
    pub speed: Option<f64>,
    /// Steps, each at a fraction (0–1) of the simulation's progress.
    pub steps: Vec<(f64, Step)>,
    /// Run the auto-scaler alongside.
    pub autoscale: Option<ScalerConfig>,
    /// Print live statistics this often.
    pub live_every: Option<Duration>,
    /// Workers' stderr goes to `<dir>/<id>.log`; inherited when `None`.
    pub log_dir: Option<PathBuf>,
    /// How long to wait, after the last event is written, for the statistics.
    pub settle_timeout: Duration,
    /// Measure end-to-end latency per event.
    pub track_latency: bool,
    /// Start the workers only once every event is written (to measure the consumers
    /// alone on a full stream); steps then run before they start.
    pub workers_after_production: bool,
    /// Each worker appends what it writes to `<dir>/<id>.jsonl` (see [`crate::audit`]).
    pub audit_dir: Option<PathBuf>,
    /// The local AWS, when it runs as a separate process that [`Step::RestartAws`]
    /// restarts.
    pub local_aws: Option<Arc<tokio::sync::Mutex<LocalAwsProcess>>>,
    /// Sign as the application's principals (see [`crate::principals`]): worker
    /// processes as `delivery-worker`, the producer as `delivery-produce`, splits,
    /// merges and the auto-scaler as `delivery-reshard`. On a strict local AWS with the
    /// documented policies bound, the run then proves those policies suffice. Local
    /// endpoints only; set-up and observation stay unrestricted.
    pub as_principals: bool,
    /// Each worker process serves Prometheus metrics at this address's port plus its
    /// slot (`w3` and its restarts at port + 3); none when `None`.
    pub metrics_base: Option<std::net::SocketAddr>,
    /// The producer's per-shard rate limit, percent of AWS's per-shard write limits;
    /// `None`: its default (150%). A benchmark on a local Kinesis without write limits
    /// lifts it to measure the pipeline rather than the shards' write capacity.
    pub producer_rate_limit: Option<u32>,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    /// What the simulation produced.
    pub truth: GroundTruth,
    /// What the statistics tables hold at the end.
    pub stats: StoredStats,
    /// The two compared.
    pub comparison: TruthComparison,
    /// From the first event put until the producer had written the last.
    pub produce_time: Duration,
    /// From the first event put until the statistics reflected every record.
    pub end_to_end_time: Duration,
    /// From the workers' start until the statistics reflected every record.
    pub consume_time: Duration,
    /// Put → reflected, one per event (with `track_latency`).
    pub latencies: Vec<Duration>,
    /// What the steps and the auto-scaler did.
    pub actions: Vec<String>,
    /// Some dead letters, when there are not exactly as many as were injected.
    pub unexpected_dead_letters: Vec<crate::stats::store::StoredDeadLetter>,
}

/// Errors that stop a run (a statistics mismatch is not one: see the report).
pub type ScenarioError = Box<dyn std::error::Error + Send + Sync>;

/// Prints progress messages (the demo) or logs them (tests).
pub type Narrator = Arc<dyn Fn(&str) + Send + Sync>;

struct Fleet {
    launcher: WorkerLauncher,
    hosts: Option<Arc<dyn HostNetwork>>,
    running: Vec<Option<WorkerProcess>>,
    restarts: usize,
    killed: Option<usize>,
}

impl Fleet {
    fn start(&mut self, n: usize) -> Result<String, ScenarioError> {
        let id = match self.restarts {
            0 => format!("w{}", n + 1),
            r => format!("w{}-r{r}", n + 1),
        };
        let prefix = self
            .hosts
            .as_ref()
            .map(|h| h.launch_prefix(n))
            .unwrap_or_default();
        self.running[n] = Some(self.launcher.spawn_in(&id, &prefix)?);
        Ok(id)
    }

    fn start_all(&mut self, workers: usize) -> Result<(), ScenarioError> {
        for n in 0..workers {
            self.start(n)?;
        }
        Ok(())
    }

    async fn stop_all(&mut self) {
        let stops = self
            .running
            .iter_mut()
            .filter_map(Option::take)
            .map(|w| w.stop(Duration::from_secs(30)));
        for stop in stops.collect::<Vec<_>>() {
            stop.await;
        }
    }
}

/// Runs a scenario to its end.
pub async fn run(config: ScenarioConfig, say: Narrator) -> Result<ScenarioReport, ScenarioError> {
    run_with_hosts(config, None, say).await
}

/// Runs a scenario to its end, with each worker on its own network host when `hosts`
/// is given (the workers then reach AWS at [`HostNetwork::worker_endpoints`], and
/// [`Step::Network`] faults can be injected).
///
/// In phases: `prepare` the stream, tables and worker fleet; start producing and the
/// background tasks (`Background`); perform the steps as the simulation reaches
/// them; `settle` until the statistics reflect every record; stop and report.
pub async fn run_with_hosts(
    config: ScenarioConfig,
    hosts: Option<Arc<dyn HostNetwork>>,
    say: Narrator,
) -> Result<ScenarioReport, ScenarioError> {
    let Prepared {
        producer,
        resharder,
        store,
        leases,
        mut fleet,
    } = prepare(&config, hosts).await?;
    let mut consume_started = Instant::now();
    if !config.workers_after_production {
        fleet.start_all(config.workers)?;
    }
    say(&format!(
        "{} {} worker processes ({}), stream {} with {} shards",
        if config.workers_after_production {
            "will start"
        } else {
            "started"
        },
        config.workers,
        (1..=config.workers)
            .map(|n| format!("w{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        config.stream,
        config.shards
    ));

    // Producing, and what watches it.
    let (progress_tx, progress) = watch::channel(Progress::default());
    let mut sink = EventSink::with_rate_limit(
        producer.kinesis.clone(),
        &config.stream,
        config.track_latency,
        config.producer_rate_limit,
    )?;
    let started = Instant::now();
    let background =
        Background::start(&config, &sink, &store, &resharder, &progress, &say, started);
    let producing = tokio::spawn({
        let (sim_config, speed, cancel) =
            (config.sim.clone(), config.speed, background.stop.clone());
        async move {
            let mut sim = Simulation::new(sim_config);
            replay(&mut sim, &mut sink, speed, &progress_tx, &cancel).await;
            let truth = sim.truth();
            sink.finish().await?;
            Ok::<_, ScenarioError>((truth, started.elapsed()))
        }
    });

    // The steps, each when the simulation reaches it.
    let mut steps = config.steps.clone();
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, step) in steps {
        let mut progress = progress.clone();
        let _ = progress.wait_for(|p| p.fraction >= at || p.done).await;
        let text = perform(&step, &mut fleet, &resharder, leases.as_ref(), &config).await?;
        say(&text);
        background.note(text);
    }

    let (truth, produce_time) = producing.await??;
    if config.workers_after_production {
        consume_started = Instant::now();
        fleet.start_all(config.workers)?;
    }
    say(&format!(
        "all {} events written in {:.1}s; waiting for the statistics to reflect them",
        thousands(truth.records),
        produce_time.as_secs_f64()
    ));
    settle(&store, &truth, Instant::now() + config.settle_timeout).await?;
    let (end_to_end_time, consume_time) = (started.elapsed(), consume_started.elapsed());

    // Stop and report.
    let (latencies, actions) = background.finish().await?;
    let stats = store.read().await?;
    let unexpected_dead_letters = if stats.totals.dead_letters == truth.dead_letters {
        Vec::new()
    } else {
        store.dead_letters(20).await.unwrap_or_default()
    };
    fleet.stop_all().await;
    Ok(ScenarioReport {
        comparison: compare(&stats, &truth),
        truth,
        stats,
        produce_time,
        end_to_end_time,
        consume_time,
        latencies,
        actions,
        unexpected_dead_letters,
    })
}

/// What [`prepare`] sets up.
struct Prepared {
    /// Signs as `delivery-app produce` would.
    producer: Clients,
    /// Signs as `delivery-app reshard` would.
    resharder: Clients,
    store: Arc<StatsStore>,
    leases: Arc<dyn LeaseStore>,
    /// No worker started yet.
    fleet: Fleet,
}

/// The first phase: the stream and tables exist, and the fleet is ready to start.
async fn prepare(
    config: &ScenarioConfig,
    hosts: Option<Arc<dyn HostNetwork>>,
) -> Result<Prepared, ScenarioError> {
    let clients = Clients::connect(&config.endpoints).await;
    clients.verify().await?;
    // Who does what: the administrator (unrestricted) sets up and looks; the producer
    // and the resharding sign as their commands would.
    let (producer, resharder) = if config.as_principals {
        (
            Clients::connect_as(&config.endpoints, Role::Produce.access_key_id()).await,
            Clients::connect_as(&config.endpoints, Role::Reshard.access_key_id()).await,
        )
    } else {
        (clients.clone(), clients.clone())
    };
    kcl::stream::create_stream(
        &clients.kinesis,
        &config.stream,
        config.shards,
        Duration::from_secs(60),
    )
    .await?;
    let store = Arc::new(StatsStore::new(clients.dynamodb.clone(), &config.app));
    store.ensure_tables().await?;
    let leases: Arc<dyn LeaseStore> =
        Arc::new(DynamoLeaseStore::new(clients.dynamodb.clone(), &config.app));

    let worker_endpoints = hosts
        .as_ref()
        .map(|h| h.worker_endpoints())
        .unwrap_or_else(|| config.endpoints.clone());
    let mut args: Vec<std::ffi::OsString> = AwsArgs::to_args(&worker_endpoints)
        .into_iter()
        .map(Into::into)
        .collect();
    args.extend(
        NameArgs {
            stream: config.stream.clone(),
            app: config.app.clone(),
        }
        .to_args(),
    );
    let fleet = Fleet {
        launcher: WorkerLauncher {
            exe: config.exe.clone(),
            args,
            flags: WorkerFlags {
                retrieval: config.retrieval,
                balance: config.balance,
                ..WorkerFlags::new(config.failover, config.poll)
            },
            log_dir: config.log_dir.clone(),
            audit_dir: config.audit_dir.clone(),
            metrics_base: config.metrics_base,
            access_key_id: config
                .as_principals
                .then(|| Role::Worker.access_key_id().to_string()),
        },
        hosts,
        running: (0..config.workers).map(|_| None).collect(),
        restarts: 0,
        killed: None,
    };
    Ok(Prepared {
        producer,
        resharder,
        store,
        leases,
        fleet,
    })
}

/// The tasks that run beside producing until the statistics settle: the live line,
/// the auto-scaler and the latency tracker; and the log of actions taken (steps and
/// the auto-scaler's decisions).
struct Background {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    latency: Option<tokio::task::JoinHandle<Vec<Duration>>>,
    actions_tx: tokio::sync::mpsc::UnboundedSender<String>,
    actions: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Background {
    fn start(
        config: &ScenarioConfig,
        sink: &EventSink,
        store: &Arc<StatsStore>,
        resharder: &Clients,
        progress: &watch::Receiver<Progress>,
        say: &Narrator,
        started: Instant,
    ) -> Background {
        let stop = CancellationToken::new();
        let (actions_tx, actions) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(every) = config.live_every {
            let (store, say, progress, stop) = (
                Arc::clone(store),
                Arc::clone(say),
                progress.clone(),
                stop.clone(),
            );
            let counters = sink.counters();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    if let Ok(stats) = store.read().await {
                        let p = *progress.borrow();
                        say(&format!(
                            "[{:>5.1}s] sim {:>3.0}%, put {:>7} | {}",
                            started.elapsed().as_secs_f64(),
                            p.fraction * 100.0,
                            thousands(
                                counters
                                    .acknowledged
                                    .load(std::sync::atomic::Ordering::Relaxed)
                            ),
                            live_line(&stats)
                        ));
                    }
                }
            });
        }
        if let Some(scaler) = config.autoscale.clone() {
            let (kinesis, leases, stream, stop) = (
                resharder.kinesis.clone(),
                Arc::new(DynamoLeaseStore::new(
                    resharder.dynamodb.clone(),
                    &config.app,
                )) as Arc<dyn LeaseStore>,
                config.stream.clone(),
                stop.clone(),
            );
            let (say, actions_tx) = (Arc::clone(say), actions_tx.clone());
            tasks.spawn(async move {
                autoscaler::run(kinesis, leases, stream, scaler, stop, move |action, _| {
                    let text = format!("auto-scaler: {}", describe(action));
                    say(&text);
                    let _ = actions_tx.send(text);
                })
                .await;
            });
        }
        let positions = sink.positions();
        let latency = config.track_latency.then(|| {
            let (store, stop) = (Arc::clone(store), stop.clone());
            tokio::spawn(async move {
                let mut tracker = LatencyTracker::default();
                loop {
                    if let Some(positions) = &positions {
                        tracker.add(std::mem::take(
                            &mut *positions.lock().expect("not poisoned"),
                        ));
                    }
                    if let Ok(marks) = store.watermarks().await {
                        tracker.resolve(&marks, Instant::now());
                    }
                    if stop.is_cancelled() {
                        return tracker.samples;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        Background {
            stop,
            tasks,
            latency,
            actions_tx,
            actions,
        }
    }

    /// Records an action taken.
    fn note(&self, action: String) {
        let _ = self.actions_tx.send(action);
    }

    /// Stops every task; returns the latency samples and every action taken.
    async fn finish(mut self) -> Result<(Vec<Duration>, Vec<String>), ScenarioError> {
        let mut latencies = Vec::new();
        if let Some(task) = self.latency {
            // Let the tracker take one more look, then stop it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.stop.cancel();
            latencies = task.await?;
        }
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        drop(self.actions_tx);
        let mut actions = Vec::new();
        while let Some(a) = self.actions.recv().await {
            actions.push(a);
        }
        Ok((latencies, actions))
    }
}

/// Waits until the statistics account for every record of `truth` (applied or dead
/// lettered), or `deadline` passes: the report then shows what is missing.
async fn settle(
    store: &StatsStore,
    truth: &GroundTruth,
    deadline: Instant,
) -> Result<(), ScenarioError> {
    loop {
        let stats = store.read().await?;
        let applied = stats.totals.sums.events + stats.totals.dead_letter_count();
        if applied >= truth.records || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits at least 1.2× the failover time after `since` (until nobody could believe
/// the leases are still `id`'s), then until the others own every one of them, or a
/// deadline (4× the failover time and 10 s after `since`) passes.
async fn wait_until_taken_over(
    leases: &dyn LeaseStore,
    id: &str,
    since: Instant,
    failover: Duration,
) {
    tokio::time::sleep_until(since + failover.mul_f64(1.2)).await;
    let deadline = since + failover * 4 + Duration::from_secs(10);
    loop {
        let all = leases.list_leases().await.unwrap_or_default();
        let mine = all
            .iter()
            .any(|l| l.owner.as_deref() == Some(id) || l.checkpoint_owner.as_deref() == Some(id));
        if !mine || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Split { shard_id } => format!("split {shard_id}"),
        Action::Merge { low, high } => format!("merged {low} and {high}"),
    }
}

async fn perform(
    step: &Step,
    fleet: &mut Fleet,
    // Signed as the resharding principal: used for splits and merges only.
    clients: &Clients,
    leases: &dyn LeaseStore,
    config: &ScenarioConfig,
) -> Result<String, ScenarioError> {
    match step {
        Step::Kill => {
            // Kill a worker while it is working: one that holds a lease it has
            // checkpointed (so there is progress to resume and a batch to replay).
            let deadline = Instant::now() + Duration::from_secs(30);
            let (victim, held) = loop {
                let all = leases.list_leases().await.unwrap_or_default();
                let busy = fleet.running.iter().enumerate().find_map(|(n, w)| {
                    let w = w.as_ref()?;
                    let held: Vec<String> = all
                        .iter()
                        .filter(|l| l.owner.as_deref() == Some(w.id.as_str()))
                        .filter(|l| matches!(l.checkpoint.position, SequencePosition::Sequence(_)))
                        .map(|l| l.key.clone())
                        .collect();
                    (!held.is_empty()).then_some((n, held))
                });
                if let Some(found) = busy {
                    break found;
                }
                if Instant::now() > deadline {
                    let n = fleet
                        .running
                        .iter()
                        .position(Option::is_some)
                        .ok_or("no worker is running")?;
                    break (n, Vec::new());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let mut process = fleet.running[victim].take().expect("running");
            process.kill().await?;
            fleet.killed = Some(victim);
            Ok(format!(
                "killed worker {} (SIGKILL) while it held {}; its shards are taken over after \
                 the {:.1}s failover and replayed from their checkpoints",
                process.id,
                if held.is_empty() {
                    "no lease".to_string()
                } else {
                    held.join(", ")
                },
                config.failover.as_secs_f64()
            ))
        }
        Step::Restart => {
            let Some(n) = fleet.killed.take() else {
                return Ok("no worker was killed; nothing to restart".into());
            };
            fleet.restarts += 1;
            let id = fleet.start(n)?;
            Ok(format!(
                "restarted the killed worker as {id}; it takes its share of the leases by \
                 graceful handoff"
            ))
        }
        Step::Split | Step::Merge => {
            // As `delivery-app reshard` does it: the loads from the lease table, read
            // with the resharding principal's clients.
            let reshard_leases = DynamoLeaseStore::new(clients.dynamodb.clone(), &config.app);
            let open =
                autoscaler::shard_views(&clients.kinesis, &reshard_leases, &config.stream).await?;
            let action = if *step == Step::Split {
                let shard = autoscaler::hottest(&open).ok_or("no open shard to split")?;
                Action::Split {
                    shard_id: shard.shard_id.clone(),
                }
            } else {
                let (low, high) =
                    autoscaler::coldest_pair(&open).ok_or("no adjacent shards to merge")?;
                Action::Merge {
                    low: low.shard_id.clone(),
                    high: high.shard_id.clone(),
                }
            };
            autoscaler::act(&clients.kinesis, &config.stream, &action).await?;
            Ok(format!(
                "{} ({} open shards before)",
                describe(&action),
                open.len()
            ))
        }
        Step::KillWorker(n) => {
            let mut process = fleet.running[*n].take().ok_or("the worker does not run")?;
            process.kill().await?;
            Ok(format!("killed worker {} (SIGKILL)", process.id))
        }
        Step::StartWorker(n) => {
            if fleet.running[*n].is_some() {
                return Err("the worker runs already".into());
            }
            fleet.restarts += 1;
            Ok(format!("started worker {}", fleet.start(*n)?))
        }
        Step::PauseWorker(n) => {
            let process = fleet.running[*n]
                .as_ref()
                .ok_or("the worker does not run")?;
            let paused = Instant::now();
            process.signal(libc::SIGSTOP)?;
            // Until nobody could believe the leases are still its, and then until the
            // others own every one of them.
            wait_until_taken_over(leases, &process.id, paused, config.failover).await;
            process.signal(libc::SIGCONT)?;
            Ok(format!(
                "paused worker {} (SIGSTOP) for {:.1}s, past the {:.1}s failover, then let it \
                 continue (SIGCONT) as a zombie",
                process.id,
                paused.elapsed().as_secs_f64(),
                config.failover.as_secs_f64()
            ))
        }
        Step::BounceWorker(n) => {
            let process = fleet.running[*n].take().ok_or("the worker does not run")?;
            let old = process.id.clone();
            process.stop(Duration::from_secs(30)).await;
            fleet.restarts += 1;
            let id = fleet.start(*n)?;
            Ok(format!(
                "stopped worker {old} gracefully (SIGTERM) and started {id}"
            ))
        }
        Step::RestartAws => {
            let aws = config
                .local_aws
                .as_ref()
                .ok_or("the local AWS does not run as a separate process")?;
            let down = aws.lock().await.restart().await?;
            Ok(format!(
                "restarted the local AWS process (down {:.2}s, its state kept on disk)",
                down.as_secs_f64()
            ))
        }
        Step::Network(n, fault) => {
            let hosts = fleet
                .hosts
                .clone()
                .ok_or("network faults need workers on hosts of their own")?;
            let id = fleet.running[*n]
                .as_ref()
                .ok_or("the worker does not run")?
                .id
                .clone();
            hosts::inject(hosts.as_ref(), *n, &id, fault, leases, config.failover).await
        }
        Step::RestartAll => {
            fleet.stop_all().await;
            fleet.restarts += 1;
            let ids: Vec<String> = (0..fleet.running.len())
                .map(|n| fleet.start(n))
                .collect::<Result<_, _>>()?;
            Ok(format!(
                "stopped every worker (SIGTERM) and started {}",
                ids.join(", ")
            ))
        }
    }
}
