//! The `kcl-multilang` binary with a scripted child (`fake_child.sh`) against the
//! embedded local AWS: what the daemon does around the protocol.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use kcl::leases::LeaseStore;
use kcl_local::testing::{unique, wait_for};
use kcl_local::{LocalAws, LocalAwsOptions};

const WAIT: Duration = Duration::from_secs(120);

fn child_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains("started child process"))
        .filter_map(|l| {
            l.split("child_pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) != Some("Z"))
        .unwrap_or(false)
}

/// A folder with a fake-child script and a properties file for `stream`.
fn daemon_folder(aws: &LocalAws, stream: &str, script: &str, extra: &str) -> PathBuf {
    daemon_folder_via(
        aws,
        &aws.endpoints().dynamodb.unwrap(),
        stream,
        script,
        extra,
    )
}

/// The same, with DynamoDB at `dynamodb` (a fault proxy).
fn daemon_folder_via(
    aws: &LocalAws,
    dynamodb: &str,
    stream: &str,
    script: &str,
    extra: &str,
) -> PathBuf {
    let dir: PathBuf = std::env::temp_dir().join(unique("kcl-multilang-daemon"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("script"), script).unwrap();
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_child.sh");
    let endpoints = aws.endpoints();
    std::fs::write(
        dir.join("daemon.properties"),
        format!(
            "executableName = sh {} script received.log\nstreamName = {stream}\n\
             applicationName = {}\ninitialPositionInStream = TRIM_HORIZON\n\
             kinesisEndpoint = {}\ndynamoDBEndpoint = {}\n{extra}",
            fake.display(),
            unique("daemonApp"),
            endpoints.kinesis.unwrap(),
            dynamodb,
        ),
    )
    .unwrap();
    dir
}

/// Every line the fake child received, as JSON.
fn read_received(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("received.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn application(dir: &Path) -> String {
    let properties = std::fs::read_to_string(dir.join("daemon.properties")).unwrap();
    properties
        .lines()
        .find_map(|l| l.strip_prefix("applicationName = "))
        .unwrap()
        .to_string()
}

fn start_daemon(dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kcl-multilang"))
        .arg(dir.join("daemon.properties"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap()
}

async fn sigterm_and_wait(daemon: &mut std::process::Child) -> std::process::ExitStatus {
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    wait_for("the daemon to exit", WAIT, || {
        let status = daemon.try_wait().unwrap();
        async move { status }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_whose_child_failed_on_its_last_batch_is_not_checkpointed_at_shard_end() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let stream = unique("ended");
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, WAIT)
        .await
        .unwrap();
    clients
        .kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap();
    // The parent is closed before the daemon starts: its one record and its end come
    // to the processor together.
    kcl::stream::split_shard(
        &clients.kinesis,
        &stream,
        "shardId-000000000000",
        None,
        WAIT,
    )
    .await
    .unwrap();
    // Every child dies on its first batch (the children shards have none).
    let dir = daemon_folder(
        &aws,
        &stream,
        "expect initialize\nsend {\"action\":\"status\",\"responseFor\":\"initialize\"}\nexpect processRecords\nexit 1\n",
        "",
    );
    let mut daemon = start_daemon(&dir);
    let read_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    wait_for("the child to fail on the parent's batch", WAIT, || {
        let failed = read_log().contains("giving the shard up");
        async move { failed.then_some(()) }
    })
    .await;
    // Stop during the backoff: the record was never processed, so the parent must not
    // be checkpointed at SHARD_END on the way out.
    let status = sigterm_and_wait(&mut daemon).await;
    assert!(status.success(), "exit {status}:\n{}", read_log());
    let lease = kcl::leases::DynamoLeaseStore::new(clients.dynamodb.clone(), application(&dir))
        .get_lease("shardId-000000000000")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !lease.checkpoint.is_shard_end(),
        "the unprocessed record was skipped:\n{}",
        read_log()
    );
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_within_the_grace_even_when_a_child_hangs() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let stream = unique("hang");
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, WAIT)
        .await
        .unwrap();
    clients
        .kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap();

    // The child answers initialize, then never answers processRecords.
    let dir = daemon_folder(
        &aws,
        &stream,
        "expect initialize\nsend {\"action\":\"status\",\"responseFor\":\"initialize\"}\nexpect processRecords\nhang 600\n",
        "shutdownGraceMillis = 500\n",
    );
    let mut daemon = start_daemon(&dir);
    let read_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    wait_for("the child to get the record", WAIT, || {
        let got = std::fs::read_to_string(dir.join("received.log"))
            .is_ok_and(|r| r.contains("processRecords"));
        async move { got.then_some(()) }
    })
    .await;
    let pids = child_pids(&read_log());
    assert_eq!(pids.len(), 1, "{}", read_log());

    let stopped_at = Instant::now();
    let status = sigterm_and_wait(&mut daemon).await;
    let took = stopped_at.elapsed();
    assert!(status.success(), "exit {status}:\n{}", read_log());
    // The grace (500 ms) for the batch in flight, then the lease release: well under
    // the failover time the outer bound adds.
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?}:\n{}",
        read_log()
    );
    assert!(
        !alive(pids[0]),
        "the hung child {} outlived the daemon",
        pids[0]
    );
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_hanging_past_the_timeout_is_killed_and_its_shard_restarted() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let stream = unique("timeout");
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, WAIT)
        .await
        .unwrap();
    clients
        .kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap();
    let dir = daemon_folder(
        &aws,
        &stream,
        "expect initialize\nsend {\"action\":\"status\",\"responseFor\":\"initialize\"}\nexpect processRecords\nhang 600\n",
        "timeoutInSeconds = 1\nshutdownGraceMillis = 500\n",
    );
    let mut daemon = start_daemon(&dir);
    let read_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let pids = wait_for("a second child for the shard", WAIT, || {
        let pids = child_pids(&read_log());
        async move { (pids.len() >= 2).then_some(pids) }
    })
    .await;
    let log = read_log();
    assert!(
        log.contains("no answer to processRecords within 1s"),
        "{log}"
    );
    assert!(
        log.contains("released the lease of the failed shard"),
        "{log}"
    );
    assert!(
        !alive(pids[0]),
        "the timed-out child {} still runs",
        pids[0]
    );
    let status = sigterm_and_wait(&mut daemon).await;
    assert!(status.success(), "exit {status}:\n{}", read_log());
    for pid in child_pids(&read_log()) {
        assert!(!alive(pid), "child {pid} outlived the daemon");
    }
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_answers_from_the_real_checkpointer() {
    use kcl_local::faults::{Fault, FaultPlan, FaultProxy, Rule};

    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let stream = unique("answers");
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, WAIT)
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for i in 0..2 {
        let put = clients
            .kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key(format!("k{i}"))
            .data(Blob::new("x"))
            .send()
            .await
            .unwrap();
        seqs.push(put.sequence_number().to_string());
    }
    // The lease table throttles every checkpoint write at the first record.
    let plan = FaultPlan::new(7).with(
        Rule::dynamodb("UpdateItem", Fault::throughput_exceeded()).when_body_contains(&seqs[0]),
    );
    let proxy = FaultProxy::start(&aws.endpoints().dynamodb.unwrap(), plan)
        .await
        .unwrap();
    let beyond = "9".repeat(60);
    let checkpoint = |seq: &str| {
        format!(
            "send {{\"action\":\"checkpoint\",\"sequenceNumber\":{seq},\"subSequenceNumber\":0}}\nexpect checkpoint\n"
        )
    };
    let script = format!(
        "expect initialize\nsend {{\"action\":\"status\",\"responseFor\":\"initialize\"}}\n\
         expect processRecords\n{}{}{}send {{\"action\":\"status\",\"responseFor\":\"processRecords\"}}\n",
        checkpoint(&format!("\"{beyond}\"")),
        checkpoint(&format!("\"{}\"", seqs[0])),
        checkpoint("null"),
    );
    let dir = daemon_folder_via(&aws, &proxy.url(), &stream, &script, "");
    let mut daemon = start_daemon(&dir);
    let read_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let answers = wait_for("three checkpoint answers", WAIT, || {
        let answers: Vec<serde_json::Value> = read_received(&dir)
            .into_iter()
            .filter(|m| m["action"] == "checkpoint")
            .collect();
        async move { (answers.len() == 3).then_some(answers) }
    })
    .await;
    let errors: Vec<serde_json::Value> = answers.iter().map(|a| a["error"].clone()).collect();
    assert_eq!(
        errors,
        vec![
            serde_json::json!("IllegalArgumentException"),
            serde_json::json!("ThrottlingException"),
            serde_json::Value::Null
        ],
        "{}",
        read_log()
    );
    // The successful one (everything delivered) is in the lease table.
    let lease = kcl::leases::DynamoLeaseStore::new(clients.dynamodb.clone(), application(&dir))
        .get_lease("shardId-000000000000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        lease.checkpoint,
        kcl::checkpoint::ExtendedSequenceNumber::at(seqs[1].clone(), 0)
    );
    let status = sigterm_and_wait(&mut daemon).await;
    assert!(status.success(), "exit {status}:\n{}", read_log());
    proxy.shutdown().await;
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_checkpointing_after_its_lease_was_taken_hears_shutdown_then_lease_lost() {
    use kcl::leases::store::{Change, Expect};

    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let stream = unique("stolen");
    kcl::stream::create_stream(&clients.kinesis, &stream, 1, WAIT)
        .await
        .unwrap();
    let put = clients
        .kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap();
    let seq = put.sequence_number().to_string();
    let status =
        |action: &str| format!("send {{\"action\":\"status\",\"responseFor\":\"{action}\"}}\n");
    let script = format!(
        "expect initialize\n{}expect processRecords\nawait stolen\n\
         send {{\"action\":\"checkpoint\",\"sequenceNumber\":null,\"subSequenceNumber\":null}}\nexpect checkpoint\n\
         {}expect leaseLost\n\
         send {{\"action\":\"checkpoint\",\"sequenceNumber\":\"{seq}\",\"subSequenceNumber\":0}}\nexpect checkpoint\n{}",
        status("initialize"),
        status("processRecords"),
        status("leaseLost"),
    );
    let dir = daemon_folder(&aws, &stream, &script, "workerId = daemon-1\n");
    let mut daemon = start_daemon(&dir);
    let read_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    wait_for("the child to get the record", WAIT, || {
        let got = read_received(&dir)
            .iter()
            .any(|m| m["action"] == "processRecords");
        async move { got.then_some(()) }
    })
    .await;

    // Another worker takes the lease while the child holds the batch.
    let store = kcl::leases::DynamoLeaseStore::new(clients.dynamodb.clone(), application(&dir));
    store
        .update_lease(
            "shardId-000000000000",
            Expect {
                counter: None,
                owner: Some(Some("daemon-1".into())),
                ..Expect::default()
            },
            Change {
                bump_counter: true,
                owner: Some(Some("thief".into())),
                ..Change::default()
            },
        )
        .await
        .unwrap();
    std::fs::write(dir.join("stolen"), "").unwrap();

    let answers = wait_for("both checkpoint answers", WAIT, || {
        let answers: Vec<serde_json::Value> = read_received(&dir)
            .into_iter()
            .filter(|m| m["action"] == "checkpoint")
            .collect();
        async move { (answers.len() == 2).then_some(answers) }
    })
    .await;
    assert!(
        read_received(&dir)
            .iter()
            .any(|m| m["action"] == "leaseLost")
    );
    assert_eq!(answers[0]["error"], "ShutdownException", "{}", read_log());
    assert_eq!(
        answers[1]["error"],
        "InvalidStateException",
        "{}",
        read_log()
    );
    let lease = store
        .get_lease("shardId-000000000000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.owner.as_deref(), Some("thief"));
    assert!(
        !lease.checkpoint.to_string().starts_with(&seq),
        "a lost lease was checkpointed"
    );
    let status = sigterm_and_wait(&mut daemon).await;
    assert!(status.success(), "exit {status}:\n{}", read_log());
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
