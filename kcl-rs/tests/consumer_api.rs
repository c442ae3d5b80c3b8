//! The user-facing API: checkpointer rules, graceful handoff without duplicates, and
//! the lease coordinator over the in-memory store.

use std::sync::Arc;
use std::time::Duration;

use kcl::checkpoint::{CheckpointError, Checkpointer, ExtendedSequenceNumber, SequencePosition};
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::leases::{Lease, LeaseStore, MemoryLeaseStore};
use kcl::processor::{InitializationInput, ProcessRecordsInput, RecordProcessor};
use kcl::stream;
use kcl::worker::Worker;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod common;
use common::consumers::{InProcess, Log, config, produce};
use common::strict;
use kcl_local::testing::{unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Tries the checkpointer's rules on its first batch and reports each outcome.
struct Prober {
    report: mpsc::UnboundedSender<(String, Result<(), CheckpointError>)>,
    probed: bool,
}

impl RecordProcessor for Prober {
    async fn initialize(&mut self, input: InitializationInput) {
        let _ = self
            .report
            .send((format!("init {}", input.checkpoint), Ok(())));
    }

    async fn process_records(&mut self, input: ProcessRecordsInput, cp: &mut Checkpointer) {
        if self.probed || input.records.len() < 3 {
            return;
        }
        self.probed = true;
        let first = input.records[0].extended_sequence_number();
        let third = input.records[2].extended_sequence_number();
        let last = input.records.last().unwrap().extended_sequence_number();
        let beyond = ExtendedSequenceNumber::at(format!("{}9", last.position.as_str()), 0);
        let r = cp.checkpoint_at(beyond).await;
        let _ = self.report.send(("beyond delivered".into(), r));
        let r = cp.checkpoint_at(third.clone()).await;
        let _ = self.report.send(("at third".into(), r));
        let r = cp.checkpoint_at(first).await;
        let _ = self.report.send(("behind last".into(), r));
        let r = cp.commit_prepared().await;
        let _ = self.report.send(("commit without prepare".into(), r));
        let r = cp.prepare_checkpoint(last.clone()).await;
        let _ = self.report.send(("prepare last".into(), r));
        let r = cp.commit_prepared().await;
        let _ = self.report.send(("commit prepared".into(), r));
        let _ = self
            .report
            .send((format!("checkpoint now {}", cp.last_checkpoint()), Ok(())));
        let owner = cp.ownership();
        let _ = self
            .report
            .send((format!("owner {} {}", owner.worker_id, owner.epoch), Ok(())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointer_rejects_positions_it_must_not_accept() {
    let aws = strict::local_aws().await;
    let clients = strict::admin(&aws).await;
    let name = unique("checkpointer");
    let app = unique("checkpointer-app");
    let worker_clients = strict::worker_clients(&aws, &name, &app).await;
    stream::create_stream(&clients.kinesis, &name, 1, Duration::from_secs(30))
        .await
        .unwrap();
    produce(&clients, &name, 5, 0..1).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::new(
        config(&name, &app, "prober"),
        &worker_clients,
        move |_: &str| Prober {
            report: tx.clone(),
            probed: false,
        },
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    let mut outcomes = Vec::new();
    while outcomes.len() < 9 {
        outcomes.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(outcomes[0].0, "init TRIM_HORIZON");
    assert!(
        matches!(outcomes[1].1, Err(CheckpointError::BeyondDelivered { .. })),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2].1, Ok(()));
    assert!(
        matches!(outcomes[3].1, Err(CheckpointError::BehindLast { .. })),
        "{outcomes:?}"
    );
    assert!(matches!(
        outcomes[4].1,
        Err(CheckpointError::NothingPrepared { .. })
    ));
    assert_eq!(outcomes[5].1, Ok(()));
    assert_eq!(outcomes[6].1, Ok(()));
    cancel.cancel();
    run.await.unwrap().unwrap();

    // The lease holds the committed checkpoint and no pending one.
    let store = kcl::leases::DynamoLeaseStore::new(clients.dynamodb.clone(), app.clone());
    let lease = store.list_leases().await.unwrap().pop().unwrap();
    assert_eq!(
        format!("checkpoint now {}", lease.checkpoint),
        outcomes[7].0
    );
    assert_eq!(lease.pending_checkpoint, None);
    assert_eq!(lease.owner, None, "released at shutdown");
    // The ownership epoch is the counter the take left: every later write (renewals,
    // the checkpoints above, the release) bumped the counter past it.
    let (owner, epoch) = outcomes[8].0["owner ".len()..].split_once(' ').unwrap();
    assert_eq!(owner, "prober");
    let epoch: u64 = epoch.parse().unwrap();
    assert!(
        epoch >= 1 && epoch + 3 <= lease.counter,
        "epoch {epoch}, counter {}",
        lease.counter
    );

    // A restarted processor starts after it.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::new(
        config(&name, &app, "prober-2"),
        &worker_clients,
        move |_: &str| Prober {
            report: tx.clone(),
            probed: false,
        },
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    let init = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(init.0, format!("init {}", lease.checkpoint));
    cancel.cancel();
    run.await.unwrap().unwrap();
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_out_hands_leases_over_without_processing_anything_twice() {
    let aws = strict::local_aws().await;
    let clients = strict::admin(&aws).await;
    let name = unique("handoff");
    let app = unique("handoff-app");
    let worker_clients = strict::worker_clients(&aws, &name, &app).await;
    stream::create_stream(&clients.kinesis, &name, 4, Duration::from_secs(30))
        .await
        .unwrap();
    let log = Log::default();
    let first = InProcess::start_with(&worker_clients, &name, &app, "first", &log);
    produce(&clients, &name, 12, 0..10).await;
    wait_for(
        "the first worker to process the first records",
        WAIT,
        || async { (log.distinct_data() == 120).then_some(()) },
    )
    .await;
    // A second worker joins while records keep coming: two leases move by handoff.
    let second = InProcess::start_with(&worker_clients, &name, &app, "second", &log);
    let producing = {
        let clients = clients.clone();
        let name = name.clone();
        // Paced, so records keep arriving while the leases change hands.
        tokio::spawn(async move {
            for round in 10..40 {
                produce(&clients, &name, 12, round..round + 1).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let store = kcl::leases::DynamoLeaseStore::new(clients.dynamodb.clone(), app.clone());
    wait_for("two leases each", WAIT, || async {
        let leases = store.list_leases().await.unwrap();
        let second_holds = leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some("second") && l.checkpoint_owner.is_none())
            .count();
        (second_holds == 2).then_some(())
    })
    .await;
    producing.await.unwrap();
    wait_for("every record", WAIT, || async {
        (log.distinct_data() == 12 * 40).then_some(())
    })
    .await;
    let deliveries = log.snapshot();
    assert_eq!(
        deliveries.len(),
        12 * 40,
        "a graceful handoff processes nothing twice"
    );
    assert!(deliveries.iter().any(|d| d.worker == "second"));
    common::consumers::assert_per_key_order(&deliveries);
    first.stop().await;
    second.stop().await;
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_balance_over_the_in_memory_store() {
    let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeaseStore::new());
    for i in 0..6 {
        store
            .create_lease(&Lease::new(
                format!("shardId-{i}"),
                ExtendedSequenceNumber::new(SequencePosition::TrimHorizon),
            ))
            .await
            .unwrap();
    }
    let cancel = CancellationToken::new();
    let mut coordinators = Vec::new();
    for id in ["a", "b", "c"] {
        let mut config = LeaseConfig::new(id);
        config.failover_time = Duration::from_secs(2);
        let (coordinator, mut events) = LeaseCoordinator::new(Arc::clone(&store), config);
        tokio::spawn({
            let coordinator = Arc::clone(&coordinator);
            let cancel = cancel.clone();
            async move { coordinator.run(cancel).await.unwrap() }
        });
        // No processor: answer handoff requests at once.
        tokio::spawn(async move {
            while let Some(LeaseEvent::Acquired { handle, .. }) = events.recv().await {
                tokio::spawn(async move { handle.hand_over_when_asked().await });
            }
        });
        coordinators.push(coordinator);
    }
    wait_for("2/2/2", WAIT, || async {
        let leases = store.list_leases().await.unwrap();
        ["a", "b", "c"]
            .iter()
            .all(|id| {
                leases
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some(*id) && l.checkpoint_owner.is_none())
                    .count()
                    == 2
            })
            .then_some(())
    })
    .await;
    cancel.cancel();
    for coordinator in coordinators {
        coordinator.release_all().await.unwrap();
    }
    assert!(
        store
            .list_leases()
            .await
            .unwrap()
            .iter()
            .all(|l| l.owner.is_none())
    );
}

/// What the worker hands a processor.
#[derive(Debug)]
enum Seen {
    Init(InitializationInput),
    Batch {
        shard: String,
        data: Vec<Vec<u8>>,
        foreign: usize,
    },
}

struct Recorder {
    shard: String,
    report: mpsc::UnboundedSender<Seen>,
}

impl RecordProcessor for Recorder {
    async fn initialize(&mut self, input: InitializationInput) {
        let _ = self.report.send(Seen::Init(input));
    }

    async fn process_records(&mut self, input: ProcessRecordsInput, cp: &mut Checkpointer) {
        let _ = self.report.send(Seen::Batch {
            shard: self.shard.clone(),
            data: input.records.into_iter().map(|r| r.data).collect(),
            foreign: input.foreign_records_dropped,
        });
        let _ = cp.checkpoint().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_learn_their_lineage_and_foreign_aggregates_are_left_out() {
    use aws_sdk_kinesis::primitives::Blob;
    use kcl::kpl::Aggregator;

    let aws = strict::local_aws().await;
    let clients = strict::admin(&aws).await;
    let name = unique("foreign");
    let app = unique("foreign-app");
    let worker_clients = strict::worker_clients(&aws, &name, &app).await;
    stream::create_stream(&clients.kinesis, &name, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let parent = stream::list_shards(&clients.kinesis, &name).await.unwrap()[0]
        .shard_id
        .clone();
    let middle = 1u128 << 127;
    stream::split_shard(
        &clients.kinesis,
        &name,
        &parent,
        Some(middle),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let low = stream::list_shards(&clients.kinesis, &name)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.is_open() && s.starting_hash_key == 0)
        .unwrap()
        .shard_id;

    // Stored in the low child (explicit hash key 0): an aggregate of its own keys, an
    // aggregate holding one user record of the high child, a plain record.
    let mut own = Aggregator::new();
    own.add("p", Some("1"), b"own-1".to_vec());
    own.add("p", Some("2"), b"own-2".to_vec());
    let mut foreign = Aggregator::new();
    foreign.add("p", Some("3"), b"foreign-1".to_vec());
    foreign.add("p", Some(&u128::MAX.to_string()), b"foreign-2".to_vec());
    for data in [own.encode(), foreign.encode(), b"plain".to_vec()] {
        clients
            .kinesis
            .put_record()
            .stream_name(&name)
            .partition_key("p")
            .explicit_hash_key("0")
            .data(Blob::new(data))
            .send()
            .await
            .unwrap();
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::new(
        config(&name, &app, "recorder"),
        &worker_clients,
        move |shard: &str| Recorder {
            shard: shard.to_string(),
            report: tx.clone(),
        },
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn(worker.run(cancel.clone()));
    let (mut inits, mut delivered, mut dropped) = (Vec::new(), Vec::new(), 0);
    while !delivered.iter().any(|d: &Vec<u8>| d == b"plain") {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Seen::Init(input) => inits.push(input),
            Seen::Batch {
                shard,
                data,
                foreign,
            } => {
                if shard == low {
                    delivered.extend(data);
                    dropped += foreign;
                }
            }
        }
    }
    cancel.cancel();
    run.await.unwrap().unwrap();

    assert_eq!(
        delivered,
        [b"own-1".to_vec(), b"own-2".to_vec(), b"plain".to_vec()]
    );
    assert_eq!(dropped, 2, "both user records of the foreign aggregate");
    let init_of = |shard: &str| inits.iter().find(|i| i.shard_id == shard).unwrap();
    assert_eq!(init_of(&parent).parent_shard_ids, Vec::<String>::new());
    assert_eq!(init_of(&parent).hash_key_range, Some((0, u128::MAX)));
    assert_eq!(init_of(&low).parent_shard_ids, vec![parent.clone()]);
    assert_eq!(init_of(&low).hash_key_range, Some((0, middle - 1)));
    aws.shutdown().await;
}
