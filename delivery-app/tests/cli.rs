//! The commands a newcomer runs by hand, as processes against one local AWS:
//! `create-stream`, `reshard` (with a clear error for non-adjacent shards), `worker`,
//! `produce` and `stats --truth`. The manual flow runs on `delivery-app local --strict`,
//! each command signed as its principal (`AWS_ACCESS_KEY_ID=delivery-<command>`), so
//! the policies of docs/iam-policy.md, as the binary embeds them, are all it needs.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use delivery_app::principals::Role;
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio::process::Command;

use kcl_local::testing::unique;

const EXE: &str = env!("CARGO_BIN_EXE_delivery-app");

struct Cli {
    common: Vec<String>,
}

impl Cli {
    /// Commands against `endpoints`, for `stream` and `app`.
    fn new(endpoints: &kcl::aws::Endpoints, stream: &str, app: &str) -> Cli {
        Cli::with(endpoints, ["--stream", stream, "--app", app])
    }

    /// Commands against `endpoints`, with these arguments after each.
    fn with<'a>(endpoints: &kcl::aws::Endpoints, args: impl IntoIterator<Item = &'a str>) -> Cli {
        let mut common = vec![
            "--kinesis-endpoint".to_string(),
            endpoints.kinesis.clone().unwrap(),
            "--dynamodb-endpoint".to_string(),
            endpoints.dynamodb.clone().unwrap(),
        ];
        common.extend(args.into_iter().map(str::to_string));
        Cli { common }
    }

    /// Runs `args`, signed as the principal of its command (`args[0]`).
    async fn run(&self, args: &[&str]) -> Output {
        let role = Role::of_command(args[0]);
        self.run_as(role.map(Role::access_key_id), args).await
    }

    /// Runs `args` signed with `key` (`None`: the dummy, unrestricted key).
    async fn run_as(&self, key: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(EXE);
        command
            .args(args)
            .args(&self.common)
            .env("RUST_LOG", "warn")
            .env_remove("AWS_ACCESS_KEY_ID");
        if let Some(key) = key {
            command.env("AWS_ACCESS_KEY_ID", key);
        }
        command.output().await.unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manual_flow_produces_exact_statistics() {
    let stream = unique("cli-stream");
    let app = unique("cli-app");
    let dir = std::env::temp_dir().join(unique("cli-truth"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut aws = common::strict_local_process(EXE, &dir, &stream, &app).await;
    let endpoints = aws.endpoints();
    let cli = Cli::new(&endpoints, &stream, &app);
    let created = cli.ok(&["create-stream", "--shards", "2"]).await;
    assert!(created.contains("2 open shard(s)"), "{created}");

    // Split shard 0 into 2 and 3; 2 (low half of 0) and 1 (upper half) do not touch.
    cli.ok(&["reshard", "split", "0"]).await;
    let refused = cli.run(&["reshard", "merge", "2", "1"]).await;
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("not adjacent"), "{message}");
    let merged = cli.ok(&["reshard", "merge", "3", "1"]).await;
    assert!(merged.contains("merged"), "{merged}");
    let listed = cli.ok(&["reshard", "list"]).await;
    assert!(listed.contains("shardId-000000000004"), "{listed}");

    // The policies are enforced: the producer may not read the statistics.
    let denied = cli
        .run_as(Some(Role::Produce.access_key_id()), &["stats"])
        .await;
    assert!(!denied.status.success());
    let message = String::from_utf8_lossy(&denied.stderr);
    assert!(message.contains("AccessDeniedException"), "{message}");
    assert!(message.contains("user/delivery-produce"), "{message}");

    let mut worker = Command::new(EXE)
        .arg("worker")
        .args(&cli.common)
        .env("AWS_ACCESS_KEY_ID", Role::Worker.access_key_id())
        .args([
            "--worker-id",
            "cli-worker",
            "--failover-ms",
            "3000",
            "--poll-ms",
            "100",
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let truth = dir.join("truth.json");
    let truth_arg = truth.to_str().unwrap();
    let produced = cli
        .ok(&[
            "produce",
            "--sim-seconds",
            "30",
            "--speed",
            "0",
            "--bad-events",
            "7",
            "--keys",
            "region",
            "--truth-file",
            truth_arg,
        ])
        .await;
    assert!(produced.contains("ground truth in"), "{produced}");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli.run(&["stats", "--json", "--truth", truth_arg]).await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if json["ground_truth"]["matches"] == true {
            assert!(out.status.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statistics never matched: {json:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let table = cli
        .ok(&["stats", "--truth", truth_arg, "--dead-letters", "3"])
        .await;
    assert!(table.contains("MATCH"), "{table}");
    assert!(table.contains("Top 10 pickup regions"), "{table}");
    assert!(table.contains("raw ("), "{table}");

    common::stop_gracefully(&mut worker).await;
    aws.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn help_explains_every_command() {
    let out = Command::new(EXE).arg("--help").output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "demo",
        "local",
        "create-stream",
        "produce",
        "worker",
        "reshard",
        "stats",
        "consumers",
    ] {
        assert!(
            help.contains(command),
            "{command} missing from --help:\n{help}"
        );
    }
    let out = Command::new(EXE)
        .args([
            "stats",
            "--kinesis-endpoint",
            "http://127.0.0.1:1",
            "--dynamodb-endpoint",
            "http://127.0.0.1:1",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
}

/// A failed command prints its error chain in words, without the SDK's Debug dumps,
/// and a hint: create the stream, or start the local AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_words_with_a_hint() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let endpoints = aws.endpoints();
    let cli = Cli::with(&endpoints, ["--stream", &unique("missing-stream")]);
    let out = cli.run(&["produce", "--sim-seconds", "1"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    assert!(err.contains("hint: create the stream first"), "{err}");
    for dump in ["ServiceError {", "Response {", "raw:", "\u{1b}["] {
        assert!(!err.contains(dump), "{dump:?} in:\n{err}");
    }

    let unreachable = Cli {
        common: vec![
            "--kinesis-endpoint".into(),
            "http://127.0.0.1:1".into(),
            "--dynamodb-endpoint".into(),
            "http://127.0.0.1:1".into(),
        ],
    };
    let out = unreachable.run(&["worker"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    assert!(
        err.contains("hint: is `delivery-app local` running?"),
        "{err}"
    );
    assert!(!err.contains("DispatchFailure {"), "{err}");
    aws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_listed_and_deregistered() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let endpoints = aws.endpoints();
    let (stream, app) = (unique("cli-fan-stream"), unique("cli-fan-app"));
    let cli = Cli::new(&endpoints, &stream, &app);
    cli.ok(&["create-stream", "--shards", "1"]).await;
    let none = cli.ok(&["consumers", "list"]).await;
    assert!(none.contains("no registered consumer"), "{none}");
    // What a `--retrieval fan-out` worker registers at start.
    let kinesis = aws.clients().await.kinesis;
    let consumer =
        kcl::retrieval::fanout::register_consumer(&kinesis, &stream, &app, Duration::from_secs(30))
            .await
            .unwrap();
    let listed = cli.ok(&["consumers", "list"]).await;
    assert!(
        listed.contains(&consumer.arn) && listed.contains("ACTIVE"),
        "{listed}"
    );
    let gone = cli.ok(&["consumers", "deregister"]).await;
    assert!(gone.contains("deregistered"), "{gone}");
    let none = cli.ok(&["consumers", "list"]).await;
    assert!(none.contains("no registered consumer"), "{none}");
    let again = cli.ok(&["consumers", "deregister"]).await;
    assert!(again.contains("has no consumer named"), "{again}");
    aws.shutdown().await;
}

/// `GET path` from `addr`: the status line and the body.
async fn http_get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// `dashboard` serves its page and a state that follows the stream: the shards, and a
/// split seen between two reads as a decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_the_lineage_and_sees_a_split() {
    use tokio::io::AsyncBufReadExt;
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let endpoints = aws.endpoints();
    let (stream, app) = (unique("cli-dash-stream"), unique("cli-dash-app"));
    let cli = Cli::new(&endpoints, &stream, &app);
    cli.ok(&["create-stream", "--shards", "2"]).await;
    let mut dashboard = Command::new(EXE)
        .args(["dashboard", "--addr", "127.0.0.1:0"])
        .args(&cli.common)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(dashboard.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("dashboard at http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let (status, page) = http_get(&addr, "/").await;
    assert!(status.contains("200"), "{status}");
    assert!(page.contains("<title>delivery-app dashboard</title>"));

    let state = |want: &'static str| {
        let addr = addr.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (_, body) = http_get(&addr, "/api/state").await;
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                let done = match want {
                    "two shards" => json["shards"].as_array().is_some_and(|s| s.len() == 2),
                    _ => json["decisions"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|d| d["text"].as_str() == Some(want))),
                };
                if done {
                    return json;
                }
                assert!(Instant::now() < deadline, "never {want}: {json:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let first = state("two shards").await;
    assert_eq!(first["stream"], stream.as_str());
    assert!(
        first["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["open"] == true && s["parents"].as_array().unwrap().is_empty())
    );
    cli.ok(&["reshard", "split", "0"]).await;
    let after =
        state("split: shardId-000000000000 → shardId-000000000002 + shardId-000000000003").await;
    let closed: Vec<&str> = after["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["open"] == false)
        .map(|s| s["shard_id"].as_str().unwrap())
        .collect();
    assert_eq!(closed, ["shardId-000000000000"]);
    dashboard.kill().await.unwrap();
    aws.shutdown().await;
}
