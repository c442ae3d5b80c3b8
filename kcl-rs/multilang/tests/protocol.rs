//! The protocol with a scripted fake child (`fake_child.sh`): every message the daemon
//! sends, every answer to a checkpoint request, and every way a child can fail.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use kcl::checkpoint::{ExtendedSequenceNumber, SequencePosition};
use kcl::processor::ProcessRecordsInput;
use kcl::retrieval::KinesisClientRecord;
use kcl_multilang::child::ChildSpec;
use kcl_multilang::session::{Checkpointing, JavaCheckpointError, Session, SessionError};
use serde_json::{Value, json};

/// A temporary folder with the script; the child's received lines land in `log`.
struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new(name: &str, steps: &[&str]) -> Fake {
        let dir = std::env::temp_dir().join(format!(
            "kcl-multilang-protocol-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("script"), steps.join("\n") + "\n").unwrap();
        Fake { dir }
    }

    fn spec(&self) -> ChildSpec {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake_child.sh");
        ChildSpec {
            command: vec![
                "sh".into(),
                script.display().to_string(),
                self.dir.join("script").display().to_string(),
                self.dir.join("log").display().to_string(),
            ],
            working_dir: self.dir.clone(),
        }
    }

    fn start(&self, timeout: Option<Duration>) -> Session {
        Session::start(&self.spec(), "shardId-000000000001", timeout).unwrap()
    }

    /// Every line the child received, as JSON.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A checkpointer that records its calls and answers from a script (success when the
/// script is empty).
#[derive(Default)]
struct FakeCheckpointer {
    calls: Vec<String>,
    answers: VecDeque<Result<(), JavaCheckpointError>>,
    /// How long each checkpoint write takes.
    delay: Duration,
}

impl Checkpointing for FakeCheckpointer {
    async fn checkpoint_delivered(&mut self) -> Result<(), JavaCheckpointError> {
        self.calls.push("delivered".into());
        tokio::time::sleep(self.delay).await;
        self.answers.pop_front().unwrap_or(Ok(()))
    }

    async fn checkpoint_at(
        &mut self,
        position: ExtendedSequenceNumber,
    ) -> Result<(), JavaCheckpointError> {
        self.calls.push(format!("at {position}"));
        tokio::time::sleep(self.delay).await;
        self.answers.pop_front().unwrap_or(Ok(()))
    }
}

fn records() -> ProcessRecordsInput {
    let record = |seq: &str, sub: u64, key: &str, data: &[u8]| KinesisClientRecord {
        sequence_number: seq.into(),
        sub_sequence_number: sub,
        aggregated: sub > 0,
        partition_key: key.into(),
        explicit_hash_key: None,
        data: data.to_vec(),
        approximate_arrival_timestamp: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)),
    };
    ProcessRecordsInput {
        records: vec![
            record("100", 0, "a", b"one"),
            record("200", 3, "b", b"\x00\xff"),
        ],
        millis_behind_latest: Some(1234),
        undecodable_aggregates: 0,
        foreign_records_dropped: 0,
    }
}

const STATUS: fn(&str) -> String =
    |action| format!(r#"send {{"action":"status","responseFor":"{action}"}}"#);

#[tokio::test]
async fn initialize_sends_shard_and_checkpoint_and_refuses_checkpoints() {
    let status = STATUS("initialize");
    let fake = Fake::new(
        "init",
        &[
            "expect initialize",
            // Debug output and kclpy's blank lines around messages are skipped.
            "send this is not JSON",
            "send ",
            r#"send {"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#,
            "expect checkpoint",
            "err a log line without a newline",
            &status,
        ],
    );
    let mut session = fake.start(Some(Duration::from_secs(20)));
    session
        .initialize(&ExtendedSequenceNumber::at("4959", 2))
        .await
        .unwrap();
    session.finish(Duration::from_secs(5)).await;
    assert_eq!(
        fake.received(),
        vec![
            json!({"action":"initialize","shardId":"shardId-000000000001","sequenceNumber":"4959","subSequenceNumber":2}),
            json!({"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":"InvalidStateException"}),
        ]
    );

    let fake = Fake::new("init-sentinel", &["expect initialize", &status]);
    let mut session = fake.start(None);
    session
        .initialize(&ExtendedSequenceNumber::new(SequencePosition::TrimHorizon))
        .await
        .unwrap();
    session.finish(Duration::from_secs(5)).await;
    assert_eq!(
        fake.received()[0],
        json!({"action":"initialize","shardId":"shardId-000000000001","sequenceNumber":"TRIM_HORIZON","subSequenceNumber":0})
    );
}

#[tokio::test]
async fn process_records_and_every_checkpoint_answer() {
    let checkpoint = |seq: &str, sub: &str| {
        format!(
            r#"send {{"action":"checkpoint","sequenceNumber":{seq},"subSequenceNumber":{sub}}}"#
        )
    };
    let mut steps = vec![
        "expect initialize".to_string(),
        STATUS("initialize"),
        "expect processRecords".into(),
    ];
    // (request, what the fake checkpointer answers) in order; answers are asserted below.
    for (seq, sub) in [
        ("null", "null"),           // everything delivered: ok
        (r#""200""#, "3"),          // a record position: ok
        (r#""100""#, "null"),       // sub-sequence defaults to 0: ShutdownException
        (r#""200""#, "3"),          // ThrottlingException
        (r#""200""#, "3"),          // KinesisClientLibDependencyException
        (r#""999""#, "0"),          // IllegalArgumentException (beyond delivered)
        (r#""SHARD_END""#, "null"), // SHARD_END before the end: IllegalArgumentException
        (r#""abc""#, "null"),       // not a sequence number: IllegalArgumentException
    ] {
        steps.push(checkpoint(seq, sub));
        steps.push("expect checkpoint".into());
    }
    steps.push(STATUS("processRecords"));
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let fake = Fake::new("records", &steps);

    let mut checkpointer = FakeCheckpointer {
        answers: VecDeque::from([
            Ok(()),
            Ok(()),
            Err(JavaCheckpointError::Shutdown),
            Err(JavaCheckpointError::Throttling),
            Err(JavaCheckpointError::Dependency),
            Err(JavaCheckpointError::IllegalArgument),
        ]),
        ..FakeCheckpointer::default()
    };
    let mut session = fake.start(Some(Duration::from_secs(20)));
    session
        .initialize(&ExtendedSequenceNumber::new(SequencePosition::Latest))
        .await
        .unwrap();
    session
        .process_records(&records(), &mut checkpointer)
        .await
        .unwrap();
    session.finish(Duration::from_secs(5)).await;

    assert_eq!(
        checkpointer.calls,
        vec![
            "delivered",
            "at 200.3",
            "at 100.0",
            "at 200.3",
            "at 200.3",
            "at 999.0"
        ],
        "SHARD_END and invalid numbers never reach the checkpointer"
    );
    let received = fake.received();
    assert_eq!(
        received[1],
        json!({"action":"processRecords","millisBehindLatest":1234,"records":[
            {"action":"record","data":"b25l","partitionKey":"a","sequenceNumber":"100","subSequenceNumber":0,"approximateArrivalTimestamp":1_700_000_000_500i64},
            {"action":"record","data":"AP8=","partitionKey":"b","sequenceNumber":"200","subSequenceNumber":3,"approximateArrivalTimestamp":1_700_000_000_500i64}]})
    );
    let answers: Vec<Value> = received[2..].to_vec();
    assert_eq!(
        answers,
        vec![
            json!({"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":null}),
            json!({"action":"checkpoint","sequenceNumber":"200","subSequenceNumber":3,"error":null}),
            json!({"action":"checkpoint","sequenceNumber":"100","subSequenceNumber":null,"error":"ShutdownException"}),
            json!({"action":"checkpoint","sequenceNumber":"200","subSequenceNumber":3,"error":"ThrottlingException"}),
            json!({"action":"checkpoint","sequenceNumber":"200","subSequenceNumber":3,"error":"KinesisClientLibDependencyException"}),
            json!({"action":"checkpoint","sequenceNumber":"999","subSequenceNumber":0,"error":"IllegalArgumentException"}),
            json!({"action":"checkpoint","sequenceNumber":"SHARD_END","subSequenceNumber":null,"error":"IllegalArgumentException"}),
            json!({"action":"checkpoint","sequenceNumber":"abc","subSequenceNumber":null,"error":"IllegalArgumentException"}),
        ]
    );
}

#[tokio::test]
async fn lease_lost_refuses_checkpoints() {
    let fake = Fake::new(
        "lost",
        &[
            "expect initialize",
            &STATUS("initialize"),
            "expect leaseLost",
            r#"send {"action":"checkpoint","sequenceNumber":"5","subSequenceNumber":0}"#,
            "expect checkpoint",
            &STATUS("leaseLost"),
        ],
    );
    let mut session = fake.start(Some(Duration::from_secs(20)));
    session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap();
    session.lease_lost().await.unwrap();
    session.finish(Duration::from_secs(5)).await;
    let received = fake.received();
    assert_eq!(received[1], json!({"action":"leaseLost"}));
    assert_eq!(
        received[2],
        json!({"action":"checkpoint","sequenceNumber":"5","subSequenceNumber":0,"error":"InvalidStateException"})
    );
}

#[tokio::test]
async fn shard_ended_accepts_shard_end_and_the_last_record() {
    let fake = Fake::new(
        "ended",
        &[
            "expect initialize",
            &STATUS("initialize"),
            "expect shardEnded",
            r#"send {"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#,
            "expect checkpoint",
            r#"send {"action":"checkpoint","sequenceNumber":"SHARD_END","subSequenceNumber":null}"#,
            "expect checkpoint",
            &STATUS("shardEnded"),
        ],
    );
    let mut checkpointer = FakeCheckpointer::default();
    let mut session = fake.start(Some(Duration::from_secs(20)));
    session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap();
    session.shard_ended(&mut checkpointer).await.unwrap();
    session.finish(Duration::from_secs(5)).await;
    // SHARD_END itself is written by kcl-rs after shardEnded returns.
    assert_eq!(checkpointer.calls, vec!["delivered"]);
    let received = fake.received();
    assert_eq!(received[1], json!({"action":"shardEnded"}));
    assert_eq!(received[2]["error"], Value::Null);
    assert_eq!(
        received[3],
        json!({"action":"checkpoint","sequenceNumber":"SHARD_END","subSequenceNumber":null,"error":null})
    );
}

#[tokio::test]
async fn shutdown_requested_lets_the_child_checkpoint() {
    let fake = Fake::new(
        "shutdown",
        &[
            "expect initialize",
            &STATUS("initialize"),
            "expect shutdownRequested",
            r#"send {"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#,
            "expect checkpoint",
            &STATUS("shutdownRequested"),
        ],
    );
    let mut checkpointer = FakeCheckpointer::default();
    let mut session = fake.start(None);
    session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap();
    session
        .shutdown_requested(&mut checkpointer, Duration::from_secs(20))
        .await
        .unwrap();
    session.finish(Duration::from_secs(5)).await;
    assert_eq!(checkpointer.calls, vec!["delivered"]);
    assert_eq!(fake.received()[1], json!({"action":"shutdownRequested"}));
    assert_eq!(fake.received()[2]["error"], Value::Null);
}

#[tokio::test]
async fn a_status_for_another_message_fails_the_exchange() {
    let fake = Fake::new("wrong", &["expect initialize", &STATUS("processRecords")]);
    let mut session = fake.start(Some(Duration::from_secs(20)));
    let err = session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SessionError::WrongStatus { expected: "initialize", got: Some(got) } if got == "processRecords"),
        "{err}"
    );
    session.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_child_that_exits_fails_the_exchange() {
    let fake = Fake::new(
        "exit",
        &[
            "expect initialize",
            &STATUS("initialize"),
            "expect processRecords",
            "exit 1",
        ],
    );
    let mut session = fake.start(Some(Duration::from_secs(20)));
    session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap();
    let err = session
        .process_records(&records(), &mut FakeCheckpointer::default())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Child(_)), "{err}");
    session.finish(Duration::from_secs(5)).await;

    // A program that cannot start is an error at once, naming the command.
    let spec = ChildSpec {
        command: vec!["/nonexistent/child".into()],
        working_dir: std::env::temp_dir(),
    };
    let err = Session::start(&spec, "s", None).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/child"), "{err}");
}

#[tokio::test]
async fn a_child_that_hangs_times_out_and_is_killed() {
    let fake = Fake::new(
        "hang",
        &[
            "expect initialize",
            &STATUS("initialize"),
            "expect processRecords",
            "hang 60",
        ],
    );
    let mut session = fake.start(Some(Duration::from_secs(1)));
    session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap();
    let pid = session.pid().unwrap();
    let started = std::time::Instant::now();
    let err = session
        .process_records(&records(), &mut FakeCheckpointer::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Timeout {
                action: "processRecords",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // It ignores the end of its input (it sleeps): finish kills it after the grace.
    session.finish(Duration::from_millis(200)).await;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
        "child {pid} still runs"
    );

    // shutdownRequested is bounded by the shutdown grace even without a timeout.
    let fake = Fake::new(
        "hang-shutdown",
        &[
            "expect initialize",
            &STATUS("initialize"),
            "expect shutdownRequested",
            "hang 60",
        ],
    );
    let mut session = fake.start(None);
    session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap();
    let err = session
        .shutdown_requested(&mut FakeCheckpointer::default(), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Timeout {
                action: "shutdownRequested",
                ..
            }
        ),
        "{err}"
    );
    session.finish(Duration::from_millis(200)).await;
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}

#[tokio::test]
async fn the_timeout_bounds_each_wait_for_the_child_not_the_checkpoint_writes() {
    let checkpoint =
        r#"send {"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#;
    let fake = Fake::new(
        "slow-writes",
        &[
            "expect initialize",
            &STATUS("initialize"),
            "expect processRecords",
            checkpoint,
            "expect checkpoint",
            checkpoint,
            "expect checkpoint",
            &STATUS("processRecords"),
        ],
    );
    // Two lease-table writes of 700 ms each: 1.4 s in all, over the 1 s timeout, while
    // the child itself always answers at once.
    let mut checkpointer = FakeCheckpointer {
        delay: Duration::from_millis(700),
        ..FakeCheckpointer::default()
    };
    let mut session = fake.start(Some(Duration::from_secs(1)));
    session
        .initialize(&ExtendedSequenceNumber::at("5", 0))
        .await
        .unwrap();
    session
        .process_records(&records(), &mut checkpointer)
        .await
        .unwrap();
    session.finish(Duration::from_secs(5)).await;
    assert_eq!(checkpointer.calls, vec!["delivered", "delivered"]);
}
