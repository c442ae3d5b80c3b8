//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod faulty_worker;

pub mod strict {
    //! The local AWS of every suite about leases, resharding and the worker: strict mode
    //! (AWS's read and control-plane limits, transaction conflicts, IAM), so the tests
    //! meet what production meets. Set-up and observation use the administrator's key
    //! around the strict proxies; workers sign as the documented "kcl-rs worker" policy.

    use kcl::aws::Clients;
    use kcl_local::strict::DEFAULT_ACCOUNT_ID;
    use kcl_local::strict::iam::{Placeholders, Policy};
    use kcl_local::{LocalAws, LocalAwsOptions};

    const IAM_POLICY_DOC: &str = include_str!("../../../docs/iam-policy.md");

    /// A local AWS in strict mode with AWS's limits ([`LocalAwsOptions::strict`] starts
    /// from `from_env`, so an external Kinesis still works).
    pub async fn local_aws() -> LocalAws {
        LocalAws::start(options()).await.unwrap()
    }

    /// The options [`local_aws`] starts with, for suites that change some of them.
    pub fn options() -> LocalAwsOptions {
        LocalAwsOptions::strict()
    }

    /// Administrator clients straight to the servers: creating streams and tables,
    /// putting records and looking at leases meet neither limits nor injected faults.
    pub async fn admin(aws: &LocalAws) -> Clients {
        Clients::connect(&aws.direct_endpoints()).await
    }

    /// The access key of the worker principal of `app`.
    pub fn worker_key(app: &str) -> String {
        format!("AKIDWORKER{app}")
    }

    /// The "kcl-rs worker" policy of docs/iam-policy.md for `stream` and `app`.
    pub fn worker_policy(stream: &str, app: &str) -> Policy {
        documented_policy("kcl-rs worker", stream, app)
    }

    /// The policy under `heading` in docs/iam-policy.md, with `STREAM` (which may be a
    /// pattern) and `APP` filled in.
    pub fn documented_policy(heading: &str, stream: &str, app: &str) -> Policy {
        let placeholders = Placeholders {
            region: kcl::aws::LOCAL_REGION.into(),
            account: DEFAULT_ACCOUNT_ID.into(),
            stream: stream.into(),
            app: app.into(),
            key_id: "unused".into(),
        };
        Policy::from_markdown(IAM_POLICY_DOC, heading, &placeholders).unwrap()
    }

    /// Binds the worker policy of `stream` and `app` to [`worker_key`] (next to the
    /// principals already bound) and returns that key: any call a worker makes that the
    /// documented policy does not allow is denied. A no-op without strict mode.
    pub fn bind_worker(aws: &LocalAws, stream: &str, app: &str) -> String {
        bind_policy(aws, app, worker_policy(stream, app))
    }

    /// Binds `policy` to the worker key of `app` and returns the key (a no-op without
    /// strict mode).
    pub fn bind_policy(aws: &LocalAws, app: &str, policy: Policy) -> String {
        let key = worker_key(app);
        if let Some(strict) = aws.strict() {
            let iam = strict.iam();
            iam.set_principals(iam.principals().with(&key, "kcl-worker", policy));
        }
        key
    }

    /// Clients through the strict proxies signed as the worker of `stream` and `app`.
    pub async fn worker_clients(aws: &LocalAws, stream: &str, app: &str) -> Clients {
        let key = bind_worker(aws, stream, app);
        aws.clients_as(&key).await
    }
}

pub mod consumers {
    //! Workers that record every delivery, in this process or as `kcl-record-worker`
    //! processes, and the checks made on what they delivered.

    use std::collections::{BTreeMap, HashMap};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    use kcl::aws::{Clients, Endpoints};
    use kcl::checkpoint::Checkpointer;
    use kcl::config::{InitialPosition, WorkerConfig, WorkerConfigBuilder};
    use kcl::processor::{ProcessRecordsInput, RecordProcessor};
    use kcl::stream::ShardInfo;
    use kcl::worker::Worker;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};
    use tokio_util::sync::CancellationToken;

    /// One record delivered to a processor.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Delivery {
        pub worker: String,
        pub shard: String,
        pub seq: String,
        pub sub: u64,
        pub pk: String,
        pub data: String,
        pub t: u128,
    }

    /// A successful checkpoint.
    #[derive(Clone, Debug)]
    pub struct CheckpointSeen {
        pub worker: String,
        pub shard: String,
        pub seq: String,
        pub sub: u64,
    }

    /// Everything every worker reported.
    #[derive(Clone, Default)]
    pub struct Log {
        pub deliveries: Arc<Mutex<Vec<Delivery>>>,
        pub checkpoints: Arc<Mutex<Vec<CheckpointSeen>>>,
    }

    fn now() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    impl Log {
        pub fn distinct_data(&self) -> usize {
            let deliveries = self.deliveries.lock().unwrap();
            deliveries
                .iter()
                .map(|d| d.data.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len()
        }

        pub fn snapshot(&self) -> Vec<Delivery> {
            let mut all = self.deliveries.lock().unwrap().clone();
            all.sort_by_key(|d| d.t);
            all
        }

        fn ingest(&self, line: &str) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                return;
            };
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            match v["ev"].as_str() {
                Some("rec") => self.deliveries.lock().unwrap().push(Delivery {
                    worker: s("w"),
                    shard: s("shard"),
                    seq: s("seq"),
                    sub: v["sub"].as_u64().unwrap(),
                    pk: s("pk"),
                    data: s("data"),
                    t: v["t"]
                        .as_u64()
                        .map(u128::from)
                        .unwrap_or_else(|| v["t"].as_f64().map(|f| f as u128).unwrap_or_default()),
                }),
                Some("cp") => self.checkpoints.lock().unwrap().push(CheckpointSeen {
                    worker: s("w"),
                    shard: s("shard"),
                    seq: s("seq"),
                    sub: v["sub"].as_u64().unwrap(),
                }),
                _ => {}
            }
        }
    }

    /// Records deliveries and checkpoints after every batch, like the process worker.
    pub struct Recorder {
        worker: String,
        shard: String,
        log: Log,
    }

    impl RecordProcessor for Recorder {
        async fn process_records(
            &mut self,
            input: ProcessRecordsInput,
            checkpointer: &mut Checkpointer,
        ) {
            {
                let mut deliveries = self.log.deliveries.lock().unwrap();
                for r in &input.records {
                    deliveries.push(Delivery {
                        worker: self.worker.clone(),
                        shard: self.shard.clone(),
                        seq: r.sequence_number.clone(),
                        sub: r.sub_sequence_number,
                        pk: r.partition_key.clone(),
                        data: String::from_utf8_lossy(&r.data).into_owned(),
                        t: now(),
                    });
                }
            }
            if checkpointer.checkpoint().await.is_ok() {
                let cp = checkpointer.last_checkpoint();
                self.log.checkpoints.lock().unwrap().push(CheckpointSeen {
                    worker: self.worker.clone(),
                    shard: self.shard.clone(),
                    seq: cp.position.as_str().to_string(),
                    sub: cp.sub_sequence,
                });
            }
        }

        async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
            let _ = checkpointer.checkpoint().await;
        }
    }

    pub const FAILOVER: Duration = Duration::from_secs(3);

    pub fn config(stream: &str, app: &str, id: &str) -> WorkerConfig {
        builder(stream, app, id).build().unwrap()
    }

    /// [`config`]'s settings, to change some before building.
    pub fn builder(stream: &str, app: &str, id: &str) -> WorkerConfigBuilder {
        WorkerConfig::builder(stream, app)
            .worker_id(id)
            .initial_position(InitialPosition::TrimHorizon)
            .failover_time(FAILOVER)
            .idle_time_between_reads(Duration::from_millis(100))
    }

    /// A worker running in this process.
    pub struct InProcess {
        pub cancel: CancellationToken,
        pub run: tokio::task::JoinHandle<Result<(), kcl::worker::WorkerError>>,
    }

    impl InProcess {
        pub async fn start(
            endpoints: &Endpoints,
            stream: &str,
            app: &str,
            id: &str,
            log: &Log,
        ) -> InProcess {
            InProcess::start_with(&Clients::connect(endpoints).await, stream, app, id, log)
        }

        /// A worker using `clients` (in strict mode, signed as the worker principal).
        pub fn start_with(
            clients: &Clients,
            stream: &str,
            app: &str,
            id: &str,
            log: &Log,
        ) -> InProcess {
            InProcess::start_config(clients, config(stream, app, id), log)
        }

        /// A worker with its own configuration (for example in fan-out mode).
        pub fn start_config(clients: &Clients, config: WorkerConfig, log: &Log) -> InProcess {
            let log = log.clone();
            let worker_id = config.worker_id().to_string();
            let worker = Worker::new(config, clients, move |shard: &str| Recorder {
                worker: worker_id.clone(),
                shard: shard.to_string(),
                log: log.clone(),
            });
            let cancel = CancellationToken::new();
            let run = tokio::spawn(worker.run(cancel.clone()));
            InProcess { cancel, run }
        }

        pub async fn stop(self) {
            self.cancel.cancel();
            self.run.await.unwrap().unwrap();
        }
    }

    /// A `kcl-record-worker` process; its stdout feeds the log.
    pub struct Process {
        pub child: Child,
        reader: tokio::task::JoinHandle<()>,
    }

    impl Process {
        pub fn spawn(
            endpoints: &Endpoints,
            stream: &str,
            app: &str,
            id: &str,
            log: &Log,
        ) -> Process {
            Process::spawn_as(endpoints, "", stream, app, id, log)
        }

        /// A process reading with enhanced fan-out.
        pub fn spawn_fan_out(
            endpoints: &Endpoints,
            stream: &str,
            app: &str,
            id: &str,
            log: &Log,
        ) -> Process {
            Process::spawn_env(endpoints, "", stream, app, id, log, true)
        }

        /// A process signing its requests with `access_key_id` (empty: the default
        /// local key), in strict mode the principal bound to it.
        pub fn spawn_as(
            endpoints: &Endpoints,
            access_key_id: &str,
            stream: &str,
            app: &str,
            id: &str,
            log: &Log,
        ) -> Process {
            Process::spawn_env(endpoints, access_key_id, stream, app, id, log, false)
        }

        fn spawn_env(
            endpoints: &Endpoints,
            access_key_id: &str,
            stream: &str,
            app: &str,
            id: &str,
            log: &Log,
            fan_out: bool,
        ) -> Process {
            let mut child = Command::new(env!("CARGO_BIN_EXE_kcl-record-worker"))
                .env(kcl::aws::LOCAL_ACCESS_KEY_ENV, access_key_id)
                .env("KCL_RECORD_WORKER_FAN_OUT", if fan_out { "1" } else { "0" })
                .arg(endpoints.kinesis.as_deref().unwrap())
                .arg(endpoints.dynamodb.as_deref().unwrap())
                .arg(stream)
                .arg(app)
                .arg(id)
                .arg(FAILOVER.as_millis().to_string())
                .env(
                    "RUST_LOG",
                    std::env::var("WORKER_LOG").unwrap_or("warn".into()),
                )
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let log = log.clone();
            let reader = tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.ingest(&line);
                }
            });
            Process { child, reader }
        }

        pub fn signal(&self, signal: i32) {
            let pid = self.child.id().expect("running") as i32;
            assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        }

        /// Waits for exit and for its last output to be read.
        pub async fn wait(mut self) -> std::process::ExitStatus {
            let status = self.child.wait().await.unwrap();
            let _ = self.reader.await;
            status
        }
    }

    /// Puts `rounds` rounds of one record per key (`k{i}` → data `k{i}:{n}`), one
    /// PutRecords call per round so that each key's records are written in order.
    pub async fn produce(
        clients: &Clients,
        stream: &str,
        keys: usize,
        rounds: std::ops::Range<usize>,
    ) {
        for n in rounds {
            let entries: Vec<_> = (0..keys)
                .map(|k| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(format!("k{k}"))
                        .data(Blob::new(format!("k{k}:{n}")))
                        .build()
                        .unwrap()
                })
                .collect();
            let out = clients
                .kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0));
        }
    }

    /// The open shards of `stream`, by hash range.
    pub async fn open_shards_by_range(clients: &Clients, stream: &str) -> Vec<ShardInfo> {
        let mut open: Vec<_> = kcl::stream::list_shards(&clients.kinesis, stream)
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.is_open())
            .collect();
        open.sort_by_key(|s| s.starting_hash_key);
        open
    }

    /// On a 2-shard `stream`: 20 rounds of `keys` records, a split of the lower shard,
    /// 20 rounds, a merge of the split's upper child with the upper shard, 20 rounds
    /// (rounds 0..60; 5 shards in the end).
    pub async fn produce_through_split_and_merge(clients: &Clients, stream: &str, keys: usize) {
        produce(clients, stream, keys, 0..20).await;
        let open = open_shards_by_range(clients, stream).await;
        kcl::stream::split_shard(
            &clients.kinesis,
            stream,
            &open[0].shard_id,
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        produce(clients, stream, keys, 20..40).await;
        let open = open_shards_by_range(clients, stream).await;
        kcl::stream::merge_shards(
            &clients.kinesis,
            stream,
            &open[1].shard_id,
            &open[2].shard_id,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        produce(clients, stream, keys, 40..60).await;
    }

    /// Per key, the first deliveries (in time) come in the order the records were put:
    /// a replay after a crash may repeat records, never put a later one first.
    pub fn assert_per_key_order(deliveries: &[Delivery]) {
        let mut next: HashMap<&str, usize> = HashMap::new();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for d in deliveries {
            if !seen.insert(d.data.as_str()) {
                continue;
            }
            let n: usize = d.data.rsplit(':').next().unwrap().parse().unwrap();
            let expected = next.entry(d.pk.as_str()).or_insert(0);
            assert_eq!(n, *expected, "key {} out of order at {:?}", d.pk, d);
            *expected += 1;
        }
    }

    /// No record of a child shard was delivered before the last record of each parent.
    pub fn assert_children_after_parents(deliveries: &[Delivery], shards: &[ShardInfo]) {
        let mut first: BTreeMap<&str, u128> = BTreeMap::new();
        let mut last: BTreeMap<&str, u128> = BTreeMap::new();
        for d in deliveries {
            first.entry(d.shard.as_str()).or_insert(d.t);
            last.insert(d.shard.as_str(), d.t);
        }
        for shard in shards {
            let Some(child_first) = first.get(shard.shard_id.as_str()) else {
                continue;
            };
            for parent in shard.parents() {
                if let Some(parent_last) = last.get(parent.as_str()) {
                    assert!(
                        parent_last < child_first,
                        "child {} started before parent {parent} ended",
                        shard.shard_id
                    );
                }
            }
        }
    }
}
