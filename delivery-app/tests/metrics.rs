//! `worker --metrics-addr` serves Prometheus text that tells the truth: scraped from two
//! worker processes during a run, the records processed per shard add up to what the
//! statistics applied and to what was put, each shard's lag reaches zero, the lease
//! counts change when a worker is killed, and a shard's gauges follow its lease to a
//! worker that joins.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use delivery_app::principals::Role;
use kcl_local::testing::unique;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const EXE: &str = env!("CARGO_BIN_EXE_delivery-app");

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses Prometheus text exposition (no escapes in the label values used here).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        samples.push((name.to_string(), labels, value.parse().expect("a number")));
    }
    samples
}

/// `GET /metrics` from `addr`, parsed.
async fn scrape(addr: &str) -> Vec<Sample> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    parse(body)
}

/// The sum of `name` over the samples whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// A worker process and the address its metrics are served at, read from its stderr
/// (which is drained from then on, so the pipe never fills).
async fn start_worker(common: &[String], id: &str) -> (Child, String) {
    let mut child = Command::new(EXE)
        .arg("worker")
        .args(common)
        .args([
            "--worker-id",
            id,
            "--failover-ms",
            "3000",
            "--poll-ms",
            "100",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("AWS_ACCESS_KEY_ID", Role::Worker.access_key_id())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("metrics at http://") {
                return url.trim_end_matches("/metrics").to_string();
            }
        }
        panic!("worker {id} exited without serving metrics");
    })
    .await
    .expect("the worker prints its metrics address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Scrapes `addr` until `done` holds (returning that scrape), failing with `what`
/// after a minute.
async fn scrape_until(
    addrs: &[&str],
    what: &str,
    mut done: impl FnMut(&[Vec<Sample>]) -> bool,
) -> Vec<Vec<Sample>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = Vec::new();
        for addr in addrs {
            all.push(scrape(addr).await);
        }
        if done(&all) {
            return all;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_match_what_was_put_and_follow_a_kill() {
    let stream = unique("metrics-stream");
    let app = unique("metrics-app");
    let dir = std::env::temp_dir().join(unique("metrics"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut aws = common::strict_local_process(EXE, &dir, &stream, &app).await;
    let endpoints = aws.endpoints();
    let common: Vec<String> = [
        "--kinesis-endpoint",
        endpoints.kinesis.as_deref().unwrap(),
        "--dynamodb-endpoint",
        endpoints.dynamodb.as_deref().unwrap(),
        "--stream",
        &stream,
        "--app",
        &app,
    ]
    .map(str::to_string)
    .to_vec();
    let run = |role: Role, args: &[&str]| {
        let mut command = Command::new(EXE);
        command
            .args(args)
            .args(&common)
            .env("AWS_ACCESS_KEY_ID", role.access_key_id())
            .env("RUST_LOG", "warn");
        command
    };
    let created = run(Role::CreateStream, &["create-stream", "--shards", "2"])
        .output()
        .await
        .unwrap();
    assert!(created.status.success(), "{created:?}");

    let (mut w1, a1) = start_worker(&common, "m1").await;
    let (mut w2, a2) = start_worker(&common, "m2").await;
    let leases = |s: &[Sample], worker: &str| sum(s, "kcl_current_leases", &[("worker", worker)]);
    scrape_until(&[&a1, &a2], "one lease each", |all| {
        leases(&all[0], "m1") == 1.0 && leases(&all[1], "m2") == 1.0
    })
    .await;

    let truth = dir.join("truth.json");
    let produced = run(
        Role::Produce,
        &[
            "produce",
            "--sim-seconds",
            "20",
            "--speed",
            "0",
            "--bad-events",
            "3",
            "--truth-file",
            truth.to_str().unwrap(),
        ],
    )
    .output()
    .await
    .unwrap();
    assert!(produced.status.success(), "{produced:?}");
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
    let put = truth["records"].as_f64().unwrap();
    assert!(put > 100.0, "{truth}");

    let processed = |all: &[Vec<Sample>]| -> f64 {
        all.iter()
            .map(|s| sum(s, "kcl_records_processed_total", &[]))
            .sum()
    };
    // What the statistics took: applied events, dead letters and skipped copies. A
    // batch is counted as handed over when `process_records` is called, and as taken
    // when its transactions commit: equal once the processors are idle.
    let taken = |samples: &[Sample]| {
        sum(samples, "delivery_events_applied_total", &[])
            + sum(samples, "delivery_dead_letters_total", &[])
            + sum(samples, "delivery_redeliveries_skipped_total", &[])
    };
    let all = scrape_until(&[&a1, &a2], "every record processed and caught up", |all| {
        let lags: Vec<f64> = all
            .iter()
            .flatten()
            .filter(|(n, ..)| n == "kcl_millis_behind_latest")
            .map(|(.., v)| *v)
            .collect();
        // The checkpoint follows the batch's transactions (and stays behind orders
        // still open): it is awaited too, not assumed written with the statistics.
        processed(all) == put
            && all.iter().all(|s| {
                sum(s, "kcl_records_processed_total", &[]) == taken(s)
                    && sum(s, "kcl_checkpoints_total", &[("result", "success")]) > 0.0
            })
            && lags.len() == 2
            && lags.iter().all(|l| *l == 0.0)
    })
    .await;
    // Per shard, what kcl-rs handed to the processor is what the statistics took.
    for (samples, worker) in all.iter().zip(["m1", "m2"]) {
        let shards: Vec<String> = samples
            .iter()
            .filter(|(n, ..)| n == "kcl_records_processed_total")
            .map(|(_, l, _)| l["shard"].clone())
            .collect();
        assert_eq!(shards.len(), 1, "{worker}: {shards:?}");
        let shard = shards[0].as_str();
        let given = sum(samples, "kcl_records_processed_total", &[("shard", shard)]);
        let taken = sum(
            samples,
            "delivery_events_applied_total",
            &[("shard", shard)],
        ) + sum(samples, "delivery_dead_letters_total", &[("shard", shard)])
            + sum(
                samples,
                "delivery_redeliveries_skipped_total",
                &[("shard", shard)],
            );
        assert_eq!(given, taken, "{worker} on {shard}");
        assert!(given > 0.0, "{worker} on {shard}");
        assert!(
            sum(
                samples,
                "kcl_retrieval_calls_total",
                &[
                    ("shard", shard),
                    ("operation", "GetRecords"),
                    ("result", "success")
                ]
            ) > 0.0
        );
    }
    let dead: f64 = all
        .iter()
        .map(|s| sum(s, "delivery_dead_letters_total", &[]))
        .sum();
    assert_eq!(dead, 3.0);

    // A worker killed: the other takes its lease, and says so.
    let taken_before = sum(&all[0], "kcl_leases_taken_total", &[("worker", "m1")]);
    let pid = w2.id().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    w2.wait().await.unwrap();
    scrape_until(&[&a1], "the survivor holding both leases", |all| {
        leases(&all[0], "m1") == 2.0
            && sum(&all[0], "kcl_leases_taken_total", &[("worker", "m1")]) == taken_before + 1.0
    })
    .await;

    // A worker joins and takes one of them: the shard's gauges leave the worker that
    // stopped reading it (its exporter drops gauges left unset for three failover
    // times), so no stale lag stays beside the new reader's.
    let (mut w3, a3) = start_worker(&common, "m3").await;
    let shards_of = |samples: &[Sample], name: &str| -> Vec<String> {
        samples
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, l, _)| l["shard"].clone())
            .collect()
    };
    let all = scrape_until(&[&a1, &a3], "one lease each, one lag gauge each", |all| {
        let (lags1, lags3) = (
            shards_of(&all[0], "kcl_millis_behind_latest"),
            shards_of(&all[1], "kcl_millis_behind_latest"),
        );
        leases(&all[0], "m1") == 1.0
            && leases(&all[1], "m3") == 1.0
            && lags1.len() == 1
            && lags3.len() == 1
            && lags1 != lags3
    })
    .await;
    let moved = &shards_of(&all[1], "kcl_millis_behind_latest")[0];
    assert!(
        !shards_of(&all[0], "delivery_watermark_lag_seconds").contains(moved),
        "m1 still shows the watermark lag of {moved}"
    );
    // Counters stay: what m1 processed of the shard before is still its own.
    assert!(shards_of(&all[0], "kcl_records_processed_total").contains(moved));

    common::stop_gracefully(&mut w3).await;
    common::stop_gracefully(&mut w1).await;
    aws.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
