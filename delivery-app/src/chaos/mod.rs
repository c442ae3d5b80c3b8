//! The chaos run: the whole application under seeded faults, then proof that every
//! guarantee held.
//!
//! A local AWS runs as a separate process with its state on disk; the simulator
//! produces into it while `workers` worker processes (each writing an audit log)
//! consume. At seeded moments ([`plan`]) workers are killed and restarted, paused past
//! the failover time and resumed as zombies, stopped gracefully and started, shards
//! are split and merged, and the local AWS process is restarted. A task scans the lease
//! table all along. At the end [`check`] proves from the audit logs and the scans that
//! every record was applied exactly once and in shard order, children after parents,
//! and no write was accepted from a worker that had lost the lease; and the statistics
//! must equal the simulator's ground truth exactly.
//!
//! With network hosts ([`hosts`]), the run itself and the local AWS are inside one
//! network namespace and each worker in its own; partitions, half partitions and bad
//! links then come on top.

pub mod check;
pub mod hosts;
pub mod namespaced;
pub mod observe;
pub mod plan;
pub mod relay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kcl::aws::Clients;
use kcl::leases::{DynamoLeaseStore, LeaseStore};
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::scenario::{
    self, LocalAwsProcess, Narrator, ScenarioConfig, ScenarioError, StrictNames,
};
use crate::sim::SimConfig;
use crate::stats::summary::thousands;
use check::{Findings, StoredView};
use plan::{FaultKind, PlanSettings};

/// A chaos run's settings.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// The `delivery-app` executable (workers and the local AWS run it).
    pub exe: PathBuf,
    /// Data, logs and audit logs go here.
    pub dir: PathBuf,
    /// Seed of the faults (the simulation has its own, in `sim`).
    pub seed: u64,
    /// Real seconds of event production.
    pub seconds: f64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// The simulation.
    pub sim: SimConfig,
    /// Worker processes.
    pub workers: usize,
    /// Shards at the start.
    pub shards: usize,
    /// Mean seconds between faults.
    pub mean_gap: f64,
    /// Lease failover time of the workers.
    pub failover: Duration,
    /// How the workers read the stream.
    pub retrieval: crate::worker::Retrieval,
    /// The kinds of fault to inject.
    pub kinds: Vec<FaultKind>,
    /// Keep the stream in memory, in a local AWS process of its own that is never
    /// restarted; an AWS restart then restarts the DynamoDB process only. (The embedded
    /// Kinesis rewrites its whole state on disk at every put, which a long run cannot
    /// afford.)
    pub memory_kinesis: bool,
    /// Run the local AWS strict (`local --strict`): AWS's read, control-plane and write
    /// limits, retention, transaction conflicts, and the documented IAM policies, each
    /// process signing as its command's principal.
    pub strict: bool,
    /// Workers on network hosts of their own: the namespaces, already built, this
    /// process running inside the aws one.
    pub hosts: Option<hosts::Topology>,
}

/// What a chaos run found.
#[derive(Clone, Debug)]
pub struct ChaosReport {
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Events the simulator produced.
    pub events: u64,
    /// Whether the statistics equal the ground truth exactly.
    pub stats_match: bool,
    /// When they differ, how: the differing figures, and the dead letters by reason
    /// stored and expected (the run's folder keeps both in `stats.json`).
    pub differences: Vec<String>,
    /// What the audit checks found.
    pub findings: Findings,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl ChaosReport {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.stats_match && self.findings.violations.is_empty()
    }

    /// The one-line summary.
    pub fn summary(&self, config: &ChaosConfig) -> String {
        let total: usize = self.faults.values().sum();
        let kinds = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let f = &self.findings;
        format!(
            "chaos {}{}{}: seed {}, {:.0}s, {} workers, {total} faults ({kinds}); {} events, \
             statistics {}; {} transactions on {} shards applied once in order, {} \
             parent→child handovers in order; {} writes and checkpoints checked against \
             the leases, {} violations; refused from workers that had lost the lease: {} \
             transactions, {} checkpoints; {:.0}s in all",
            if self.passed() { "PASS" } else { "FAIL" },
            if config.strict { " (strict AWS)" } else { "" },
            if config.hosts.is_some() {
                " (workers on network hosts)"
            } else {
                ""
            },
            config.seed,
            config.seconds,
            config.workers,
            thousands(self.events),
            if self.stats_match {
                "match the ground truth".to_string()
            } else {
                format!(
                    "DIFFER from the ground truth ({})",
                    self.differences.join("; ")
                )
            },
            thousands(f.applied),
            f.shards,
            f.handovers,
            thousands(f.fenced_writes_checked),
            f.violations.len(),
            f.refused_lease_lost,
            f.refused_checkpoints,
            self.elapsed.as_secs_f64(),
        )
    }
}

/// Relays the services' loopback ports to their addresses in the aws namespace (where
/// this process runs) and describes the workers' hosts.
async fn start_hosts(
    topology: &hosts::Topology,
    endpoints: &kcl::aws::Endpoints,
    cancel: CancellationToken,
    say: &Narrator,
) -> Result<Arc<dyn scenario::HostNetwork>, ScenarioError> {
    let port = |url: &Option<String>| -> Result<u16, ScenarioError> {
        let url = url.as_deref().ok_or("no local endpoint")?;
        let port = url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap_or_default();
        Ok(port
            .parse()
            .map_err(|_| format!("no port in the endpoint {url}"))?)
    };
    let (kinesis_port, dynamodb_port) = (port(&endpoints.kinesis)?, port(&endpoints.dynamodb)?);
    for (addr, port) in [
        (hosts::KINESIS_ADDR, kinesis_port),
        (hosts::DYNAMODB_ADDR, dynamodb_port),
    ] {
        relay::start(
            format!("{addr}:{port}").parse()?,
            ([127, 0, 0, 1], port).into(),
            cancel.clone(),
        )
        .await
        .map_err(|e| {
            format!("cannot listen on {addr}:{port} (not inside the aws namespace?): {e}")
        })?;
    }
    let network = hosts::NamespaceHosts {
        topology: topology.clone(),
        kinesis_port,
        dynamodb_port,
    };
    say(&format!(
        "workers on network hosts {}; they reach Kinesis at {}:{kinesis_port} and DynamoDB \
         at {}:{dynamodb_port}",
        (0..topology.workers)
            .map(|n| topology.worker_ns(n))
            .collect::<Vec<_>>()
            .join(", "),
        hosts::KINESIS_ADDR,
        hosts::DYNAMODB_ADDR
    ));
    Ok(Arc::new(network))
}

/// Runs the chaos run to its end and checks it.
pub async fn run(config: &ChaosConfig, say: Narrator) -> Result<ChaosReport, ScenarioError> {
    let started = std::time::Instant::now();
    let (logs, audit_dir) = (config.dir.join("logs"), config.dir.join("audit"));
    for dir in [&logs, &audit_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    let data = config.dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let (stream, app) = ("chaos-orders".to_string(), "chaos-stats".to_string());
    // Strict: the documented policies are enforced for each principal on these names.
    let strict = config.strict.then(|| StrictNames {
        stream: stream.clone(),
        app: app.clone(),
    });
    let aws = LocalAwsProcess::start(
        &config.exe,
        Some(&data),
        &logs.join("local-aws.log"),
        strict.clone(),
    )
    .await?;
    let mut endpoints = aws.endpoints();
    let mut kinesis = None;
    if config.memory_kinesis {
        let process =
            LocalAwsProcess::start(&config.exe, None, &logs.join("local-kinesis.log"), strict)
                .await?;
        endpoints.kinesis = process.endpoints().kinesis;
        kinesis = Some(process);
    }
    say(&format!(
        "local AWS processes: Kinesis {} ({}), DynamoDB {} (state in {})",
        endpoints.kinesis.as_deref().unwrap_or_default(),
        if config.memory_kinesis {
            "in memory, never restarted"
        } else {
            "state on disk too"
        },
        endpoints.dynamodb.as_deref().unwrap_or_default(),
        data.display()
    ));
    let aws = Arc::new(tokio::sync::Mutex::new(aws));

    let steps = plan::plan(&PlanSettings {
        seed: config.seed,
        seconds: config.seconds,
        mean_gap: config.mean_gap,
        workers: config.workers,
        shards: config.shards,
        max_shards: config.shards * 2,
        min_shards: config.shards.div_ceil(2).max(1),
        kinds: config.kinds.clone(),
    });
    let mut faults: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for (_, step) in &steps {
        if let Some(kind) = FaultKind::of(step) {
            *faults.entry(kind).or_default() += 1;
        }
    }
    say(&format!(
        "{} faults planned (seed {}): {}",
        faults.values().sum::<usize>(),
        config.seed,
        faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let clients = Clients::connect(&endpoints).await;
    let leases: Arc<dyn LeaseStore> =
        Arc::new(DynamoLeaseStore::new(clients.dynamodb.clone(), &app));
    let observing = CancellationToken::new();
    let observer = tokio::spawn(observe::observe_leases(
        Arc::clone(&leases),
        Duration::from_millis(100),
        observing.clone(),
    ));
    let scenario = ScenarioConfig {
        exe: config.exe.clone(),
        endpoints,
        stream: stream.clone(),
        app,
        shards: config.shards as i32,
        workers: config.workers,
        failover: config.failover,
        poll: Duration::from_millis(100),
        retrieval: config.retrieval,
        balance: Default::default(),
        sim: config.sim.clone(),
        speed: Some(config.speed),
        steps,
        autoscale: None,
        live_every: None,
        log_dir: Some(logs.clone()),
        settle_timeout: Duration::from_secs(180),
        track_latency: false,
        workers_after_production: false,
        audit_dir: Some(audit_dir.clone()),
        local_aws: Some(Arc::clone(&aws)),
        as_principals: config.strict,
        metrics_base: None,
        producer_rate_limit: None,
    };
    let relays = CancellationToken::new();
    let network = match &config.hosts {
        Some(topology) => {
            Some(start_hosts(topology, &scenario.endpoints, relays.clone(), &say).await?)
        }
        None => None,
    };
    let outcome = scenario::run_with_hosts(scenario, network, Arc::clone(&say)).await;
    relays.cancel();
    observing.cancel();
    let observations = observer.await?;
    let result = match outcome {
        Ok(report) => {
            let shards = kcl::stream::list_shards(&clients.kinesis, &stream).await?;
            let mut audits = BTreeMap::new();
            for entry in std::fs::read_dir(&audit_dir)? {
                let path = entry?.path();
                let worker = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                audits.insert(worker, audit::read(&path)?);
            }
            let totals = &report.stats.totals;
            let stored = StoredView {
                watermarks: report
                    .stats
                    .shards
                    .iter()
                    .filter_map(|s| Some((s.shard_id.clone(), s.watermark.as_ref()?.to_string())))
                    .collect(),
                records: totals.records(),
            };
            let findings = check::check(&audits, &observations, &shards, &stored);
            let json = crate::report::to_json(&report.stats, Some(&report.truth));
            std::fs::write(
                config.dir.join("stats.json"),
                serde_json::to_string_pretty(&json)?,
            )?;
            let differences = report
                .comparison
                .differences
                .iter()
                .map(|field| match field.as_str() {
                    "dead_letters" => format!(
                        "dead letters {:?}, expected {:?}",
                        report.stats.totals.dead_letters, report.truth.dead_letters
                    ),
                    other => other.to_string(),
                })
                .collect();
            Ok(ChaosReport {
                faults,
                events: report.truth.records,
                stats_match: report.comparison.matches,
                differences,
                findings,
                elapsed: started.elapsed(),
            })
        }
        Err(e) => Err(e),
    };
    aws.lock().await.stop().await;
    if let Some(mut kinesis) = kinesis {
        kinesis.stop().await;
    }
    result
}
