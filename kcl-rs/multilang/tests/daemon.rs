//! The `kcl-multilang` binary with a scripted child (`fake_child.sh`) against the
//! embedded local AWS: what the daemon does around the protocol.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use kcl::local::testing::{unique, wait_for};
use kcl::local::{LocalAws, LocalAwsOptions};

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

    let dir: PathBuf = std::env::temp_dir().join(unique("kcl-multilang-daemon"));
    std::fs::create_dir_all(&dir).unwrap();
    // The child answers initialize, then never answers processRecords.
    std::fs::write(
        dir.join("script"),
        "expect initialize\nsend {\"action\":\"status\",\"responseFor\":\"initialize\"}\nexpect processRecords\nhang 600\n",
    )
    .unwrap();
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_child.sh");
    let endpoints = aws.endpoints();
    std::fs::write(
        dir.join("daemon.properties"),
        format!(
            "executableName = sh {} script received.log\nstreamName = {stream}\n\
             applicationName = {}\ninitialPositionInStream = TRIM_HORIZON\n\
             kinesisEndpoint = {}\ndynamoDBEndpoint = {}\nshutdownGraceMillis = 500\n",
            fake.display(),
            unique("hangApp"),
            endpoints.kinesis.unwrap(),
            endpoints.dynamodb.unwrap(),
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kcl-multilang"))
        .arg(dir.join("daemon.properties"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the child to get the record", WAIT, || {
        let got = std::fs::read_to_string(dir.join("received.log"))
            .is_ok_and(|r| r.contains("processRecords"));
        async move { got.then_some(()) }
    })
    .await;
    let pids = child_pids(&read_log());
    assert_eq!(pids.len(), 1, "{}", read_log());

    let stopped_at = Instant::now();
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_for("the daemon to exit", WAIT, || {
        let status = daemon.try_wait().unwrap();
        async move { status }
    })
    .await;
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
