//! `delivery-app chaos`: the application under seeded faults, then proof that every
//! guarantee held (see `delivery_app::chaos`). Prints one summary line; exits non-zero
//! when a check fails.

use std::sync::Arc;
use std::time::Duration;

use delivery_app::chaos::hosts::Topology;
use delivery_app::chaos::namespaced::{self, Ended};
use delivery_app::chaos::plan::FaultKind;
use delivery_app::chaos::{self, ChaosConfig};
use delivery_app::scenario::Narrator;

use super::{CommandError, SimArgs};
use delivery_app::worker::Retrieval;

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Seed of the faults: the same seed gives the same faults in the same order.
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
    /// Real seconds of event production; the faults fall in the first 90% of it.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Simulated seconds per real second (10: about 330 events a second).
    #[arg(long, default_value_t = 10.0)]
    speed: f64,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Shards at the start (splits and merges keep between half and twice this many).
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Mean seconds between two faults.
    #[arg(long, default_value_t = 4.0)]
    fault_every: f64,
    /// Lease failover time of the workers, ms.
    #[arg(long, default_value_t = 3_000)]
    failover_ms: u64,
    /// How the workers read the stream: GetRecords polling, or enhanced fan-out.
    #[arg(long, value_enum, default_value_t = Retrieval::Polling)]
    retrieval: Retrieval,
    /// Folder for the local AWS's data, the logs and the audit logs (emptied first;
    /// default: a new temporary folder).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// The kinds of fault to inject, comma-separated (default: kill, zombie, graceful,
    /// split, merge, aws-restart; with --hosts also partition, half-partition,
    /// bad-link).
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<FaultKind>>,
    /// Each worker on a network host of its own and the local AWS on another (Linux
    /// network namespaces joined by veth pairs; needs root and iproute2): adds network
    /// partitions, half partitions and bad links to the faults.
    #[arg(long)]
    hosts: bool,
    /// Internal: this process runs inside the aws namespace of the run whose
    /// namespaces start with this prefix (`--hosts` starts it so).
    #[arg(long, hide = true, requires = "hosts")]
    inside_hosts: Option<String>,
    /// Keep the stream in memory in a local AWS process of its own, never restarted
    /// (an AWS restart then restarts DynamoDB only). For long runs: the embedded
    /// Kinesis's persistence rewrites its whole state at every put.
    #[arg(long)]
    memory_kinesis: bool,
    /// Run the local AWS in strict mode (`local --strict`): AWS's read, control-plane
    /// and write limits and its other refusals, as real AWS would, and the IAM policies
    /// of docs/iam-policy.md: workers sign as `delivery-worker`, the producer as
    /// `delivery-produce`, splits and merges as `delivery-reshard`.
    #[arg(long)]
    strict: bool,
    /// Print each fault as it happens.
    #[arg(long)]
    verbose: bool,
}

pub async fn run(args: ChaosArgs) -> Result<(), CommandError> {
    let faults = match &args.faults {
        Some(faults) => faults.clone(),
        None if args.hosts => FaultKind::ALL.to_vec(),
        None => FaultKind::PROCESS.to_vec(),
    };
    if let Some(kind) = faults.iter().find(|k| k.needs_hosts() && !args.hosts) {
        return Err(format!("the fault kind {kind} needs --hosts").into());
    }
    if args.workers < 2 {
        return Err("--workers must be at least 2 (faults stop one at a time)".into());
    }
    if args.shards < 1 || args.seconds <= 0.0 || args.speed <= 0.0 || args.fault_every <= 0.0 {
        return Err("--shards, --seconds, --speed and --fault-every must be positive".into());
    }
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("delivery-chaos-{}", std::process::id()))
    });
    if args.hosts && args.inside_hosts.is_none() {
        return run_on_hosts(&args).await;
    }
    let config = ChaosConfig {
        exe: std::env::current_exe()?,
        dir: dir.clone(),
        seed: args.fault_seed,
        seconds: args.seconds,
        speed: args.speed,
        sim: args.sim.config(args.seconds * args.speed, 14),
        workers: args.workers,
        shards: args.shards,
        mean_gap: args.fault_every,
        failover: Duration::from_millis(args.failover_ms),
        retrieval: args.retrieval,
        kinds: faults,
        memory_kinesis: args.memory_kinesis,
        strict: args.strict,
        hosts: args.inside_hosts.clone().map(|prefix| Topology {
            prefix,
            workers: args.workers,
        }),
    };
    let verbose = args.verbose;
    let say: Narrator = Arc::new(move |line: &str| {
        if verbose {
            println!("{line}");
        }
    });
    let report = chaos::run(&config, say).await?;
    for violation in report.findings.violations.iter().take(20) {
        println!("violation: {violation}");
    }
    println!("{}", report.summary(&config));
    println!("logs and audit logs in {}", dir.display());
    if report.passed() {
        Ok(())
    } else {
        Err("the chaos run found a broken guarantee".into())
    }
}

/// Builds the run's network namespaces and runs this same command inside the aws one
/// (with `--inside-hosts`); the namespaces are removed at the end in every case.
async fn run_on_hosts(args: &ChaosArgs) -> Result<(), CommandError> {
    let topology = Topology {
        prefix: Topology::prefix_for(std::process::id()),
        workers: args.workers,
    };
    let mut inner: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    inner.extend(["--inside-hosts".into(), topology.prefix.clone().into()]);
    let prefix = topology.prefix.clone();
    match namespaced::run(topology, &std::env::current_exe()?, inner).await? {
        Ended::Exited(status) if status.success() => Ok(()),
        Ended::Exited(status) => Err(format!(
            "the chaos run inside the network namespaces failed ({status}); namespaces \
             {prefix}-* removed"
        )
        .into()),
        Ended::Interrupted(signal) => Err(format!(
            "interrupted by {signal}; the run was stopped and namespaces {prefix}-* removed"
        )
        .into()),
    }
}
