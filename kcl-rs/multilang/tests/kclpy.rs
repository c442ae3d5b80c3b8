//! The official Python client, `amazon_kclpy` 3.2.0, runs its own sample
//! (`samples/sample_kclpy_app.py`, unchanged) under `kcl-multilang` against the
//! embedded local AWS. The package is fetched from PyPI by `.ci/kclpy` (never
//! installed: its setup downloads the Java daemon's jars) unless `KCLPY_SRC` names an
//! unpacked copy already. Needs `python3` (and `python`, the sample's interpreter line).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use kcl::aws::Clients;
use kcl::checkpoint::{ExtendedSequenceNumber, compare_sequence_numbers};
use kcl::leases::{DynamoLeaseStore, Lease, LeaseStore};
use kcl_local::testing::{unique, wait_for};
use kcl_local::{LocalAws, LocalAwsOptions};

const WAIT: Duration = Duration::from_secs(180);

/// The unpacked amazon_kclpy source: `KCLPY_SRC`, or what `.ci/kclpy` prepares.
fn kclpy_src() -> PathBuf {
    if let Some(dir) = std::env::var_os("KCLPY_SRC") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/kclpy");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run .ci/kclpy");
    assert!(
        out.status.success(),
        ".ci/kclpy failed (it needs network access to PyPI)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A folder holding the sample app, byte for byte, and its properties changed only in
/// stream, application, endpoints and region.
fn sample_folder(aws: &LocalAws, stream: &str, application: &str) -> PathBuf {
    let src = kclpy_src();
    let dir = std::env::temp_dir().join(unique("kclpy-sample"));
    std::fs::create_dir_all(&dir).unwrap();
    let app = src.join("samples/sample_kclpy_app.py");
    std::fs::copy(&app, dir.join("sample_kclpy_app.py")).unwrap();
    assert_eq!(
        std::fs::read(&app).unwrap(),
        std::fs::read(dir.join("sample_kclpy_app.py")).unwrap()
    );
    let region = kcl::aws::LOCAL_REGION;
    let endpoints = aws.endpoints();
    let original = std::fs::read_to_string(src.join("samples/sample.properties")).unwrap();
    let mut properties = String::new();
    for line in original.lines() {
        let key = line.split(['=', ' ']).next().unwrap_or("");
        properties.push_str(&match key {
            "streamArn" => {
                format!("streamArn = arn:aws:kinesis:{region}:000000000000:stream/{stream}")
            }
            "streamName" => format!("streamName = {stream}"),
            "applicationName" => format!("applicationName = {application}"),
            "regionName" => format!("regionName = {region}"),
            _ => line.to_string(),
        });
        properties.push('\n');
    }
    properties.push_str(&format!(
        "kinesisEndpoint = {}\ndynamoDBEndpoint = {}\n",
        endpoints.kinesis.unwrap(),
        endpoints.dynamodb.unwrap()
    ));
    std::fs::write(dir.join("sample.properties"), properties).unwrap();
    dir
}

/// `PATH`, with a `python` that is `python3` in front when there is no `python`: the
/// sample's first line is `#!/usr/bin/env python`.
fn path_with_python(folder: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let has_python = Command::new("python")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_python {
        return path;
    }
    let bin = folder.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let python3 = std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|p| p.is_file())
        .expect("python3 on PATH");
    let _ = std::os::unix::fs::symlink(python3, bin.join("python"));
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).unwrap()
}

/// A running `kcl-multilang`, its log (its stderr, children's stderr included) in a file.
struct Daemon {
    process: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(folder: &Path, name: &str) -> Daemon {
        let log = folder.join(format!("{name}.log"));
        let process = Command::new(env!("CARGO_BIN_EXE_kcl-multilang"))
            .arg("--properties-file")
            .arg(folder.join("sample.properties"))
            .env("PATH", path_with_python(folder))
            .env("PYTHONPATH", kclpy_src())
            // Each of the sample's log writes reaches the daemon as it happens.
            .env("PYTHONUNBUFFERED", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { process, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // By pid only: this daemon, nothing else.
        assert_eq!(unsafe { libc::kill(self.process.id() as i32, signal) }, 0);
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = wait_for("the daemon to exit after SIGTERM", WAIT, || {
            let status = self.process.try_wait().unwrap();
            async move { status }
        })
        .await;
        assert!(
            status.success(),
            "daemon exited with {status}:\n{}",
            self.log()
        );
    }

    async fn kill(mut self) {
        self.signal(libc::SIGKILL);
        wait_for("the daemon to die", WAIT, || {
            let status = self.process.try_wait().unwrap();
            async move { status }
        })
        .await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Partition keys of the records the sample logged ("Record (Partition Key: k, ...").
fn logged_keys(log: &str) -> HashSet<String> {
    log.split("Partition Key: ")
        .skip(1)
        .filter_map(|rest| rest.split(',').next())
        .map(str::to_string)
        .collect()
}

/// Puts records with keys `{prefix}-{i}`; returns key → (shard, sequence number).
async fn put(
    clients: &Clients,
    stream: &str,
    prefix: &str,
    n: usize,
) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        let r = clients
            .kinesis
            .put_record()
            .stream_name(stream)
            .partition_key(&key)
            .data(Blob::new(format!("payload {key}")))
            .send()
            .await
            .unwrap();
        out.insert(
            key,
            (r.shard_id().to_string(), r.sequence_number().to_string()),
        );
    }
    out
}

async fn wait_logged(what: &str, logs: &[&Daemon], keys: impl IntoIterator<Item = &String>) {
    let keys: Vec<String> = keys.into_iter().cloned().collect();
    wait_for(what, WAIT, || {
        let seen: HashSet<String> = logs.iter().flat_map(|d| logged_keys(&d.log())).collect();
        let missing = keys.iter().filter(|k| !seen.contains(*k)).count();
        async move { (missing == 0).then_some(()) }
    })
    .await;
}

async fn leases(clients: &Clients, application: &str) -> Vec<Lease> {
    DynamoLeaseStore::new(clients.dynamodb.clone(), application)
        .list_leases()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sample_logs_every_record_checkpoints_and_resumes_after_a_restart() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let stream = unique("kclpy");
    let application = unique("kclpyApp");
    kcl::stream::create_stream(&clients.kinesis, &stream, 2, WAIT)
        .await
        .unwrap();
    let folder = sample_folder(&aws, &stream, &application);

    let before = put(&clients, &stream, "before", 10).await;
    let first = Daemon::start(&folder, "first");
    wait_logged("the records put before the start", &[&first], before.keys()).await;
    let during = put(&clients, &stream, "during", 10).await;
    wait_logged("the records put during the run", &[&first], during.keys()).await;
    first.stop().await;

    // shutdownRequested made the sample checkpoint everything it had: the lease of each
    // shard holds its last record.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (shard, seq) in before.values().chain(during.values()) {
        let entry = last.entry(shard.clone()).or_insert_with(|| seq.clone());
        if compare_sequence_numbers(seq, entry).is_gt() {
            *entry = seq.clone();
        }
    }
    let table = leases(&clients, &application).await;
    for (shard, seq) in &last {
        let lease = table
            .iter()
            .find(|l| &l.key == shard)
            .expect("a lease per shard");
        assert_eq!(
            lease.checkpoint,
            ExtendedSequenceNumber::at(seq.clone(), 0),
            "{shard}"
        );
        assert_eq!(lease.owner, None, "released on shutdown");
    }

    let second = Daemon::start(&folder, "second");
    let after = put(&clients, &stream, "after", 5).await;
    wait_logged(
        "the records put after the restart",
        &[&second],
        after.keys(),
    )
    .await;
    let again: Vec<String> = logged_keys(&second.log())
        .into_iter()
        .filter(|k| !k.starts_with("after-"))
        .collect();
    assert!(again.is_empty(), "resumed before its checkpoint: {again:?}");
    second.stop().await;
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&folder);
}

/// `(shard, pid)` of every child the daemon started, in order.
fn started_children(log: &str) -> Vec<(String, i32)> {
    log.lines()
        .filter(|l| l.contains("started child process"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split(&format!("{name}="))
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string)
            };
            Some((field("shard")?, field("child_pid")?.parse().ok()?))
        })
        .collect()
}

/// Whether a process runs (and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) != Some("Z"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_share_shards_through_a_split_a_daemon_crash_and_a_child_crash() {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let clients = aws.clients().await;
    let stream = unique("kclpy2");
    let application = unique("kclpy2App");
    kcl::stream::create_stream(&clients.kinesis, &stream, 3, WAIT)
        .await
        .unwrap();
    let folder = sample_folder(&aws, &stream, &application);

    let a = Daemon::start(&folder, "a");
    let b = Daemon::start(&folder, "b");
    let first = put(&clients, &stream, "first", 15).await;
    wait_logged(
        "the first records (by either daemon)",
        &[&a, &b],
        first.keys(),
    )
    .await;
    wait_for("both daemons to hold shards", WAIT, || async {
        let owners: HashSet<String> = leases(&clients, &application)
            .await
            .into_iter()
            .filter_map(|l| l.owner)
            .collect();
        (owners.len() == 2).then_some(())
    })
    .await;

    // A split: 4 open shards; the parent is read to its end, then the children.
    kcl::stream::split_shard(
        &clients.kinesis,
        &stream,
        "shardId-000000000000",
        None,
        WAIT,
    )
    .await
    .unwrap();
    let second = put(&clients, &stream, "second", 40).await;
    let children: HashSet<&String> = second.values().map(|(shard, _)| shard).collect();
    assert!(
        children.len() >= 3,
        "records reach the new shards: {children:?}"
    );
    wait_logged("the records put after the split", &[&a, &b], second.keys()).await;
    wait_for(
        "the parent shard checkpointed at SHARD_END",
        WAIT,
        || async {
            leases(&clients, &application)
                .await
                .into_iter()
                .find(|l| l.key == "shardId-000000000000" && l.checkpoint.is_shard_end())
        },
    )
    .await;

    // SIGKILL one daemon: its leases expire and the other takes its shards.
    let a_children = started_children(&a.log());
    a.kill().await;
    // Its children see their stdin close and exit.
    wait_for("the crashed daemon's children to exit", WAIT, || {
        let running = a_children.iter().filter(|(_, pid)| alive(*pid)).count();
        async move { (running == 0).then_some(()) }
    })
    .await;
    let third = put(&clients, &stream, "third", 30).await;
    wait_logged(
        "the records put after the crash, all by the survivor",
        &[&b],
        third.keys(),
    )
    .await;

    // Kill one child of the survivor: the shard is given up and restarted with a new
    // child, which gets the records again from the last checkpoint.
    let (shard, pid) = started_children(&b.log())
        .into_iter()
        .rev()
        .find(|(shard, pid)| shard != "shardId-000000000000" && alive(*pid))
        .expect("a running child of the survivor");
    let children_before = started_children(&b.log()).len();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let mut fourth = BTreeMap::new();
    let mut round = 0;
    while !fourth.values().any(|(s, _): &(String, String)| *s == shard) {
        fourth.extend(put(&clients, &stream, &format!("fourth{round}"), 10).await);
        round += 1;
        assert!(round < 20, "no record reached {shard}");
    }
    wait_logged(
        "the records put after the child crash",
        &[&b],
        fourth.keys(),
    )
    .await;
    wait_for("a new child for the shard", WAIT, || {
        let restarted = started_children(&b.log())
            .iter()
            .skip(children_before)
            .any(|(s, p)| *s == shard && *p != pid);
        async move { restarted.then_some(()) }
    })
    .await;
    let children = started_children(&b.log());
    b.stop().await;
    for (shard, pid) in children {
        assert!(
            !alive(pid),
            "the child {pid} of {shard} outlived its daemon"
        );
    }
    aws.shutdown().await;
    let _ = std::fs::remove_dir_all(&folder);
}
