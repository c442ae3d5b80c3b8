//! Workers behind fault proxies, with processors that record what they were given:
//! the fixtures of the consumer failure and lineage tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use kcl::aws::Clients;
use kcl::checkpoint::Checkpointer;
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use kcl::processor::{ProcessRecordsInput, RecordProcessor};
use kcl::stream;
use kcl::worker::{Worker, WorkerError};
use kcl_local::LocalAws;
use kcl_local::faults::FaultProxy;
use kcl_local::testing::unique;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(60);
/// Room for the taking interval and a loaded machine on top of a bound under test.
pub const SLACK: Duration = Duration::from_secs(1);

/// A strict local AWS; faults are injected by the strict proxies' own plans.
pub struct Env {
    pub aws: LocalAws,
}

impl Env {
    pub async fn start() -> Env {
        Env {
            aws: super::strict::local_aws().await,
        }
    }

    /// The strict proxy in front of Kinesis: its plan injects faults, it counts calls.
    pub fn kinesis(&self) -> &FaultProxy {
        self.aws.strict().expect("strict mode").kinesis_proxy()
    }

    /// The strict proxy in front of DynamoDB, as [`Env::kinesis`].
    pub fn dynamodb(&self) -> &FaultProxy {
        self.aws.strict().expect("strict mode").dynamodb_proxy()
    }

    /// The administrator's clients straight to the servers: set-up and looking.
    pub async fn direct(&self) -> Clients {
        super::strict::admin(&self.aws).await
    }

    /// Both services through the strict proxies (and their faults), signed as the
    /// documented worker policy of `stream` and `app`.
    pub async fn faulty(&self, stream: &str, app: &str) -> Clients {
        super::strict::worker_clients(&self.aws, stream, app).await
    }

    pub async fn store(&self, app: &str) -> DynamoLeaseStore {
        DynamoLeaseStore::new(self.direct().await.dynamodb, app)
    }

    pub async fn put(&self, stream: &str, key: &str, data: &str) {
        self.direct()
            .await
            .kinesis
            .put_record()
            .stream_name(stream)
            .partition_key(key)
            .data(Blob::new(data.to_string()))
            .send()
            .await
            .unwrap();
    }

    /// A one-shard stream with `p0..p4` in its parent shard, split in two, with
    /// `c0..c19` (over many keys, so both children get some) written after the split.
    /// Returns the stream and the parent's shard id.
    pub async fn split_stream(&self) -> (String, String) {
        let name = unique("failures");
        let kinesis = self.direct().await.kinesis;
        stream::create_stream(&kinesis, &name, 1, WAIT)
            .await
            .unwrap();
        for i in 0..5 {
            self.put(&name, &format!("k{i}"), &format!("p{i}")).await;
        }
        let parent = stream::list_shards(&kinesis, &name).await.unwrap()[0]
            .shard_id
            .clone();
        stream::split_shard(&kinesis, &name, &parent, None, WAIT)
            .await
            .unwrap();
        for i in 0..20 {
            self.put(&name, &format!("k{i}"), &format!("c{i}")).await;
        }
        (name, parent)
    }

    pub async fn shutdown(self) {
        self.aws.shutdown().await;
    }
}

/// Every delivery as `(shard, data)`, in order.
#[derive(Clone, Default)]
pub struct Deliveries(pub Arc<Mutex<Vec<(String, String)>>>);

impl Deliveries {
    pub fn data(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, d)| d.clone())
            .collect()
    }

    pub fn count_with_prefix(&self, prefix: &str) -> usize {
        let mut seen: Vec<String> = self
            .data()
            .into_iter()
            .filter(|d| d.starts_with(prefix))
            .collect();
        seen.sort();
        seen.dedup();
        seen.len()
    }
}

/// Records deliveries and checkpoints each batch. With `panic_once` armed, the first
/// batch it sees panics instead (and disarms it).
pub struct Tracker {
    pub shard: String,
    pub deliveries: Deliveries,
    pub panic_once: Arc<AtomicBool>,
}

impl RecordProcessor for Tracker {
    async fn process_records(&mut self, input: ProcessRecordsInput, cp: &mut Checkpointer) {
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("a processor bug");
        }
        for r in &input.records {
            self.deliveries.0.lock().unwrap().push((
                self.shard.clone(),
                String::from_utf8_lossy(&r.data).into_owned(),
            ));
        }
        let _ = cp.checkpoint().await;
    }

    async fn shutdown_requested(&mut self, cp: &mut Checkpointer) {
        let _ = cp.checkpoint().await;
    }
}

pub struct Running {
    pub cancel: CancellationToken,
    pub run: tokio::task::JoinHandle<Result<(), WorkerError>>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<kcl::WorkerEvent>,
}

impl Running {
    pub fn start(
        config: kcl::config::WorkerConfig,
        clients: &Clients,
        deliveries: &Deliveries,
        panic_once: &Arc<AtomicBool>,
    ) -> Running {
        let (deliveries, panic_once) = (deliveries.clone(), Arc::clone(panic_once));
        let mut worker = Worker::new(config, clients, move |shard: &str| Tracker {
            shard: shard.to_string(),
            deliveries: deliveries.clone(),
            panic_once: Arc::clone(&panic_once),
        });
        let events = worker.events();
        let cancel = CancellationToken::new();
        let run = tokio::spawn(worker.run(cancel.clone()));
        Running {
            cancel,
            run,
            events,
        }
    }

    /// Waits for the worker to report that a shard consumer failed; its reason.
    #[allow(dead_code)] // not every test binary using this module asks
    pub async fn failure(&mut self) -> (String, String) {
        let failed = async {
            while let Some(event) = self.events.recv().await {
                if let kcl::WorkerEvent::ShardStopped {
                    shard_id,
                    outcome: kcl::ConsumerOutcome::Failed(why),
                } = event
                {
                    return (shard_id, why);
                }
            }
            panic!("the worker's events ended without a failure");
        };
        tokio::time::timeout(WAIT, failed)
            .await
            .expect("a shard consumer failure reported")
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.run)
            .await
            .expect("the worker stops")
            .unwrap()
            .unwrap();
    }
}

/// The lease's checkpoint; `None` also while the worker has not created the table yet.
pub async fn checkpoint_of(store: &DynamoLeaseStore, key: &str) -> Option<String> {
    store
        .get_lease(key)
        .await
        .ok()
        .flatten()
        .map(|l| l.checkpoint.to_string())
}
