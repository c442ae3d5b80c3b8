//! Interop: the aggregated records this producer writes decode to the same user records
//! with the official Python implementation, `aws_kinesis_agg`, as with `kcl::kpl`.
//!
//! The decoder is `kcl-rs/tests/fixtures/kpl/deaggregate.py` (one base64 record per line
//! in, one JSON object per line out), run by the Python named in `KPL_PYTHON`, which
//! must have `aws_kinesis_agg` installed. Without `KPL_PYTHON` the test says it is
//! skipped and passes — unless `CI` is set: CI must run it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Rng, config, payload, read_raw, start};
use kcl_local::LocalAwsOptions;
use kcl_local::testing::{base64_decode, base64_encode};
use producer::Producer;
use serde_json::Value;

const PYTHON_ENV: &str = "KPL_PYTHON";

/// The Python to run, or `None` (skip) outside CI.
fn python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return Some(path.into());
    }
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !in_ci,
        "CI is set but {PYTHON_ENV} is not: it must name a python with aws_kinesis_agg installed"
    );
    eprintln!(
        "skipped: set {PYTHON_ENV} to a python with aws_kinesis_agg installed to run this test"
    );
    None
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kcl-rs/tests/fixtures/kpl/deaggregate.py")
}

/// Decodes records with the Python script: one JSON value per record, in order.
fn python_deaggregate(python: &PathBuf, records: &[Vec<u8>]) -> Vec<Value> {
    let mut child = Command::new(python)
        .arg(script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let lines: Vec<String> = records.iter().map(|r| base64_encode(r)).collect();
    // Written from another thread: the script answers line by line, and both pipes
    // would fill up if we wrote everything before reading.
    let writer = std::thread::spawn(move || {
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let out: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    writer.join().unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{python:?} {:?} failed",
        script()
    );
    assert_eq!(out.len(), records.len());
    out
}

/// A user record: partition key, explicit hash key, data.
type User = (String, Option<String>, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_records_deaggregate_identically_in_python() {
    let Some(python) = python() else { return };
    let (aws, kinesis, stream) = start(LocalAwsOptions::from_env(), "interop", 3).await;
    let producer = Producer::new(config(&stream).build().unwrap(), kinesis.clone());

    let mut rng = Rng(0xA66_2E6A7E);
    let mut put: Vec<User> = Vec::new();
    for i in 0..3_000usize {
        let (key, ehk) = match i % 10 {
            0 => (format!("ключ-{}-🚚", i % 13), None),
            1 => (
                format!("ehk-{}", i % 5),
                Some(["0", "007", "340282366920938463463374607431768211455"][i % 3].to_string()),
            ),
            2 => (format!("ehk-{}", i % 7), Some(rng.u128().to_string())),
            3 => (format!("long-{i}-{}", "x".repeat(240)), None),
            _ => (format!("key-{}", i % 40), None),
        };
        let data = match i % 100 {
            // Empty data: identified by its unique key instead.
            7 => Vec::new(),
            // Too large to share an aggregate: a plain record.
            8 => payload(&i.to_string(), 60_000 + i),
            9 => payload(&i.to_string(), 20_000 + i),
            _ => payload(&i.to_string(), 1 + rng.below(600) as usize),
        };
        let key = if data.is_empty() {
            format!("empty-{i}")
        } else {
            key
        };
        let future = match &ehk {
            Some(ehk) => {
                producer
                    .put_with_hash_key(key.clone(), ehk.clone(), data.clone())
                    .await
            }
            None => producer.put(key.clone(), data.clone()).await,
        };
        drop(future.unwrap());
        put.push((key, ehk, data));
    }
    producer.shutdown().await;

    let (_, raw) = read_raw(&kinesis, &stream).await;
    // Plain records with empty data stay here: the script reads one non-empty line per
    // record.
    let (raw, empty): (Vec<_>, Vec<_>) = raw.into_iter().partition(|r| !r.data.is_empty());
    let blobs: Vec<Vec<u8>> = raw.iter().map(|r| r.data.clone()).collect();
    let decoded = python_deaggregate(&python, &blobs);

    let mut read: Vec<User> = empty
        .iter()
        .map(|r| (r.partition_key.clone(), None, Vec::new()))
        .collect();
    let mut aggregates = 0;
    for ((record, blob), python) in raw.iter().zip(&blobs).zip(&decoded) {
        let ours = kcl::kpl::is_aggregated(blob).then(|| kcl::kpl::deaggregate(blob).unwrap());
        assert_eq!(
            python["aggregated"].as_bool(),
            Some(ours.is_some()),
            "{python}"
        );
        let Some(ours) = ours else {
            assert_eq!(python["reason"], "no magic");
            read.push((record.partition_key.clone(), None, blob.clone()));
            continue;
        };
        aggregates += 1;
        let theirs: Vec<User> = python["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["partition_key"].as_str().unwrap().to_string(),
                    r["explicit_hash_key"].as_str().map(str::to_string),
                    base64_decode(r["data"].as_str().unwrap()),
                )
            })
            .collect();
        let ours: Vec<User> = ours
            .into_iter()
            .map(|u| (u.partition_key, u.explicit_hash_key, u.data))
            .collect();
        assert_eq!(
            theirs, ours,
            "Python and kcl::kpl disagree on {}",
            record.sequence_number
        );
        read.extend(theirs);
    }
    assert!(aggregates >= 10, "only {aggregates} aggregates");

    // Every user record exactly once. A plain record does not show its explicit hash
    // key, so compare keys and data, and explicit hash keys where readers see them.
    let mut expected: HashMap<(String, Vec<u8>), Option<String>> = HashMap::new();
    for (key, ehk, data) in &put {
        assert!(
            expected
                .insert((key.clone(), data.clone()), ehk.clone())
                .is_none()
        );
    }
    assert_eq!(read.len(), put.len());
    for (key, ehk, data) in read {
        let put_ehk = expected
            .remove(&(key.clone(), data))
            .unwrap_or_else(|| panic!("unexpected record of {key}"));
        if ehk.is_some() {
            assert_eq!(ehk, put_ehk, "{key}");
        }
    }
    assert!(expected.is_empty());
    let kinesis_records = raw.len() + empty.len();
    eprintln!(
        "{} user records in {kinesis_records} Kinesis records, {aggregates} aggregated, decoded by {python:?}",
        put.len()
    );
    aws.shutdown().await;
}

#[test]
fn base64_round_trips() {
    for len in 0..20 {
        let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(base64_decode(&base64_encode(&data)), data);
    }
    assert_eq!(base64_encode(b"Man"), "TWFu");
    assert_eq!(base64_encode(b"Ma"), "TWE=");
    assert_eq!(base64_encode(b"M"), "TQ==");
}
