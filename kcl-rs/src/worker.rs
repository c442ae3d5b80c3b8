//! The worker (the Java KCL's scheduler): runs shard sync, the lease coordinator and one
//! shard consumer per held lease, until cancelled; then shuts down gracefully.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::aws::Clients;
use crate::config::{ConfigError, WorkerConfig};
use crate::leases::coordinator::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use crate::leases::{DynamoLeaseStore, LeaseError, LeaseStore};
use crate::lifecycle::{
    ConsumerContext, ConsumerOutcome, let_go, let_go_limit, park, run_supervised,
};
use crate::multi_stream::tracker::{Placement, Streams, Tracker};
use crate::multi_stream::{DynProvider, StreamProvider};
use crate::processor::RecordProcessorFactory;
use crate::retrieval::fanout::ConsumerError;
use crate::shard_sync::ShardSyncError;

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The lease table could not be used (wrong schema, access denied, unreachable).
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The stream could not be listed (missing stream, unreachable endpoint).
    #[error(transparent)]
    ShardSync(#[from] ShardSyncError),
    /// Fan-out mode: the stream consumer could not be registered or did not become
    /// active in time.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// A multi-stream configuration given to [`Worker::new`] (or the reverse).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Multi-stream mode: the stream provider failed at start.
    #[error("the stream provider failed: {0}")]
    StreamProvider(String),
}

/// How long a worker in fan-out mode waits at start for its stream consumer to become
/// ACTIVE (real Kinesis takes some seconds to register one).
pub const CONSUMER_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// What a running [`Worker`] reports to its caller (see [`Worker::events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// This worker acquired the shard's lease and starts processing it.
    ShardStarted {
        /// The shard.
        shard_id: String,
    },
    /// The shard's consumer ended, and how. [`ConsumerOutcome::Failed`] is a consumer
    /// that failed for good (reading failed for good — the stream deleted, access
    /// denied —, the SHARD_END checkpoint could not be written, or the processor
    /// panicked): its lease was let go, and the shard is read again from its checkpoint
    /// by whichever worker takes it, this one included. The worker itself goes on.
    ShardStopped {
        /// The shard.
        shard_id: String,
        /// How its consumer ended.
        outcome: ConsumerOutcome,
    },
}

/// A consumer worker: build it, run it until a token is cancelled.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use kcl::checkpoint::Checkpointer;
/// use kcl::config::{InitialPosition, WorkerConfig};
/// use kcl_local::{LocalAws, LocalAwsOptions};
/// use kcl::processor::{ProcessRecordsInput, RecordProcessor};
/// use kcl::worker::Worker;
/// use tokio_util::sync::CancellationToken;
///
/// struct Counter(tokio::sync::mpsc::UnboundedSender<usize>);
///
/// impl RecordProcessor for Counter {
///     async fn process_records(&mut self, input: ProcessRecordsInput, checkpointer: &mut Checkpointer) {
///         let _ = self.0.send(input.records.len());
///         let _ = checkpointer.checkpoint().await;
///     }
/// }
///
/// let aws = LocalAws::start(LocalAwsOptions::default()).await?;
/// let clients = aws.clients().await;
/// kcl::stream::create_stream(&clients.kinesis, "Orders", 2, Duration::from_secs(10)).await?;
/// for i in 0..10 {
///     clients.kinesis.put_record().stream_name("Orders").partition_key(format!("k{i}"))
///         .data(aws_sdk_kinesis::primitives::Blob::new("hello")).send().await?;
/// }
///
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let config = WorkerConfig::builder("Orders", "OrdersApp")
///     .initial_position(InitialPosition::TrimHorizon)
///     .build()?;
/// let worker = Worker::new(config, &clients, move |_shard: &str| Counter(tx.clone()));
/// let cancel = CancellationToken::new();
/// let running = tokio::spawn(worker.run(cancel.clone()));
///
/// let mut seen = 0;
/// while seen < 10 {
///     seen += rx.recv().await.unwrap();
/// }
/// cancel.cancel(); // graceful: processors checkpoint, leases are released
/// running.await??;
/// aws.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Worker<F: RecordProcessorFactory> {
    config: Arc<WorkerConfig>,
    kinesis: aws_sdk_kinesis::Client,
    store: Arc<dyn LeaseStore>,
    factory: Arc<F>,
    events: Option<mpsc::UnboundedSender<WorkerEvent>>,
    /// Multi-stream mode: where the streams come from.
    provider: Option<Arc<dyn DynProvider>>,
}

impl<F: RecordProcessorFactory> Worker<F> {
    /// A worker reading `config.stream_name` with leases in the DynamoDB table
    /// `config.application_name`.
    pub fn new(config: WorkerConfig, clients: &Clients, factory: F) -> Worker<F> {
        let store = Arc::new(
            DynamoLeaseStore::new(clients.dynamodb.clone(), config.application_name.clone())
                .with_failover_time(config.failover_time),
        );
        Worker {
            config: Arc::new(config),
            kinesis: clients.kinesis.clone(),
            store,
            factory: Arc::new(factory),
            events: None,
            provider: None,
        }
    }

    /// A multi-stream worker (see [`crate::multi_stream`]): the streams `provider`
    /// names, with leases in the DynamoDB table `config.application_name`. Build the
    /// configuration with [`WorkerConfig::multi_stream_builder`].
    pub fn multi_stream(
        config: WorkerConfig,
        clients: &Clients,
        provider: impl StreamProvider,
        factory: F,
    ) -> Worker<F> {
        let mut worker = Worker::new(config, clients, factory);
        worker.provider = Some(Arc::new(provider));
        worker
    }

    /// The worker's events from now on: each shard it starts and how each of its shard
    /// consumers ended, failures included (which are also logged). Call before
    /// [`Worker::run`]; a second call replaces the first stream. Events are few (one
    /// per lease movement), so the stream is unbounded; events the caller stopped
    /// receiving are dropped.
    ///
    /// ```
    /// # async fn demo(worker: &mut kcl::Worker<fn(&str) -> Noop>) {
    /// use kcl::{ConsumerOutcome, WorkerEvent};
    /// let mut events = worker.events();
    /// tokio::spawn(async move {
    ///     while let Some(event) = events.recv().await {
    ///         if let WorkerEvent::ShardStopped { shard_id, outcome: ConsumerOutcome::Failed(why) } = event {
    ///             eprintln!("shard {shard_id} failed: {why}");
    ///         }
    ///     }
    /// });
    /// # }
    /// # struct Noop;
    /// # impl kcl::RecordProcessor for Noop {
    /// #     async fn process_records(&mut self, _: kcl::ProcessRecordsInput, _: &mut kcl::Checkpointer) {}
    /// # }
    /// ```
    pub fn events(&mut self) -> mpsc::UnboundedReceiver<WorkerEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.events = Some(sender);
        receiver
    }

    fn report(&self, event: WorkerEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Uses another lease store (for example a wrapper that injects faults).
    pub fn with_lease_store(mut self, store: Arc<dyn LeaseStore>) -> Worker<F> {
        self.store = store;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs until `cancel` is cancelled, then shuts down gracefully: stops taking
    /// leases, tells every processor (`shutdown_requested`, where it checkpoints),
    /// releases every lease and returns. An error is returned at once when the lease
    /// table or the stream cannot be used at start, or, in fan-out mode, when the
    /// stream consumer cannot be registered.
    ///
    /// Shutdown is bounded: `run` returns at most
    /// [`WorkerConfig::shutdown_grace`] (default 20 s) after `cancel`, even when
    /// DynamoDB does not answer or a processor does not return from a callback. Past
    /// the grace, the processors still running are dropped where they are and leases
    /// not yet released are left to expire (after the failover time). Whatever was not
    /// checkpointed by then is processed again by the next owner of the shard, from the
    /// last checkpoint written.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), WorkerError> {
        let config = &self.config;
        if config.multi_stream != self.provider.is_some() {
            return Err(ConfigError {
                field: "multi_stream",
                problem: "a multi-stream configuration goes with Worker::multi_stream, a single-stream one with Worker::new".to_string(),
            }
            .into());
        }
        self.store.ensure_tables().await?;
        // Built first (no I/O) so the syncers can ask it who leads.
        let mut lease_config = LeaseConfig::new(config.worker_id.clone());
        lease_config.failover_time = config.failover_time;
        lease_config.taking_interval = config.taking_interval;
        lease_config.max_leases_per_worker = config.max_leases_per_worker;
        lease_config.balance = config.balance;
        lease_config.handoff_timeout = Some(config.handoff_timeout);
        let (coordinator, mut events) =
            LeaseCoordinator::new(Arc::clone(&self.store), lease_config);
        let leader = {
            let coordinator = Arc::clone(&coordinator);
            Arc::new(move || coordinator.is_leader())
        };
        let background = CancellationToken::new();
        let (streams, sync_task) = match &self.provider {
            None => {
                let ctx = Arc::new(
                    ConsumerContext::for_stream(
                        &self.kinesis,
                        Arc::clone(&self.store),
                        &self.config,
                        &config.stream_name,
                        config.initial_position,
                        leader,
                    )
                    .await?,
                );
                ctx.syncer.sync_once().await?;
                let task = tokio::spawn({
                    let syncer = Arc::clone(&ctx.syncer);
                    let interval = config.shard_sync_interval;
                    let stop = background.clone();
                    async move { syncer.run(interval, stop).await }
                });
                (Arc::new(Streams::Single(ctx)), task)
            }
            Some(provider) => {
                let tracker = Tracker::new(
                    self.kinesis.clone(),
                    Arc::clone(&self.store),
                    Arc::clone(&self.config),
                    Arc::clone(provider),
                    leader,
                    background.clone(),
                );
                tracker
                    .poll()
                    .await
                    .map_err(|e| WorkerError::StreamProvider(e.to_string()))?;
                let streams = Arc::new(Streams::Multi(Box::new(tracker)));
                let task = tokio::spawn({
                    let streams = Arc::clone(&streams);
                    let stop = background.clone();
                    async move {
                        if let Streams::Multi(tracker) = &*streams {
                            tracker.run(stop).await;
                        }
                    }
                });
                (streams, task)
            }
        };
        let coordinator_task = tokio::spawn({
            let coordinator = Arc::clone(&coordinator);
            let stop = background.clone();
            async move { coordinator.run(stop).await }
        });

        let consumers_stop = CancellationToken::new();
        let mut consumers = JoinSet::new();
        let mut coordinator_task = Some(coordinator_task);
        let mut failure = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = events.recv() => {
                    let Some(LeaseEvent::Acquired { handle, lease }) = event else { break };
                    tracing::info!(shard = %lease.key, worker = %config.worker_id, checkpoint = %lease.checkpoint, "processing shard");
                    self.report(WorkerEvent::ShardStarted { shard_id: lease.key.clone() });
                    let shard_id = lease.key.clone();
                    let streams = Arc::clone(&streams);
                    let factory = Arc::clone(&self.factory);
                    let stop = consumers_stop.clone();
                    let limit = let_go_limit(config.failover_time);
                    consumers.spawn(async move {
                        let placed = tokio::select! {
                            placed = streams.place(lease) => placed,
                            _ = stop.cancelled() => Err("the worker stopped".to_string()),
                        };
                        let outcome = match placed {
                            Ok(Placement::Process(ctx, lease)) => run_supervised(ctx, handle, *lease, factory, stop).await,
                            Ok(Placement::Park(why)) => {
                                tracing::info!(shard = %shard_id, %why, "holding the lease without reading until it is deleted");
                                park(&handle, &stop, limit).await
                            }
                            Err(e) => {
                                tracing::warn!(shard = %shard_id, error = %e, "cannot process the lease; letting it go");
                                let_go(&handle, limit).await;
                                ConsumerOutcome::Failed(e)
                            }
                        };
                        (shard_id, outcome)
                    });
                }
                Some(done) = consumers.join_next(), if !consumers.is_empty() => {
                    match done {
                        Ok((shard_id, outcome)) => {
                            match &outcome {
                                ConsumerOutcome::Failed(e) => tracing::warn!(shard = %shard_id, error = %e, "shard consumer failed"),
                                outcome => tracing::debug!(shard = %shard_id, ?outcome, "shard consumer finished"),
                            }
                            self.report(WorkerEvent::ShardStopped { shard_id, outcome });
                        }
                        Err(e) => tracing::error!(error = %e, "shard consumer task failed"),
                    }
                }
                done = async { coordinator_task.as_mut().unwrap().await }, if coordinator_task.is_some() => {
                    coordinator_task = None;
                    if let Ok(Err(e)) = done {
                        tracing::error!(error = %e, "lease coordinator failed");
                        failure = Some(e);
                    }
                    break;
                }
            }
        }

        // Graceful shutdown, bounded by the grace: no new leases; others see one worker
        // fewer at once; each processor checkpoints and its consumer lets its lease go
        // (renewal keeps the leases alive until then); what is still held is released.
        // Past the grace everything left is dropped: leases not released expire after
        // the failover time and the next owner reads from the last checkpoint.
        let coordinator_abort = coordinator_task.as_ref().map(|t| t.abort_handle());
        let sync_abort = sync_task.abort_handle();
        let mut sync_task = sync_task;
        let graceful = async {
            coordinator.stop_taking();
            let remove_worker = async {
                if let Err(e) = coordinator.leave().await {
                    tracing::warn!(error = %e, "could not leave the worker group");
                }
            };
            // Concurrently: a DynamoDB that does not answer must not keep the
            // processors from hearing of the shutdown.
            let stop_consumers = async {
                consumers_stop.cancel();
                while let Some(done) = consumers.join_next().await {
                    if let Ok((shard_id, outcome)) = done {
                        self.report(WorkerEvent::ShardStopped { shard_id, outcome });
                    }
                }
            };
            tokio::join!(remove_worker, stop_consumers);
            background.cancel();
            if let Some(task) = coordinator_task.as_mut() {
                let _ = task.await;
            }
            let _ = (&mut sync_task).await;
            // Releases what is still held; the record is already gone (`leave` is
            // idempotent), or its removal is tried once more.
            if let Err(e) = coordinator.release_all().await {
                tracing::warn!(error = %e, "could not leave the worker group");
            }
        };
        if tokio::time::timeout(config.shutdown_grace, graceful)
            .await
            .is_err()
        {
            tracing::warn!(worker = %config.worker_id, grace = ?config.shutdown_grace, "shutdown grace over; leases not released expire and are processed again from their checkpoints");
            background.cancel();
            consumers.abort_all();
            if let Some(abort) = coordinator_abort {
                abort.abort();
            }
            sync_abort.abort();
        }
        tracing::info!(worker = %config.worker_id, "worker stopped");
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
