//! One consumer worker of the statistics application: a kcl-rs worker whose processors
//! are [`StatsProcessor`]s.

use std::sync::Arc;
use std::time::Duration;

use kcl::aws::Clients;
use kcl::config::{InitialPosition, RetrievalMode, WorkerConfig};
use kcl::worker::Worker;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::stats::{Halt, StatsProcessor, StatsStore};

/// Settings of a statistics worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The stream.
    pub stream: String,
    /// The application (lease table and statistics tables prefix).
    pub app: String,
    /// Unique per process; default `worker-<pid>-<random>`.
    pub worker_id: Option<String>,
    /// Lease expiry: a crashed worker's shards are taken over after about this long.
    pub failover: Duration,
    /// Pause between GetRecords calls on a caught-up shard.
    pub poll: Duration,
    /// Record every statistics transaction and checkpoint in this file (see
    /// [`crate::audit`]).
    pub audit_file: Option<std::path::PathBuf>,
    /// Polling or enhanced fan-out.
    pub retrieval: Retrieval,
    /// How workers share leases.
    pub balance: BalanceFlag,
}

/// How workers share leases (`--balance`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BalanceFlag {
    /// Equal lease counts.
    #[default]
    Count,
    /// Equal throughput, by the records/s and bytes/s workers write on the leases
    /// (10% threshold); counts while no lease has load data yet.
    Load,
}

impl BalanceFlag {
    /// The flag's value, as `--balance` takes it.
    pub fn as_arg(self) -> &'static str {
        match self {
            BalanceFlag::Count => "count",
            BalanceFlag::Load => "load",
        }
    }

    /// The kcl-rs setting.
    pub fn balance(self) -> kcl::leases::Balance {
        match self {
            BalanceFlag::Count => kcl::leases::Balance::Count,
            BalanceFlag::Load => kcl::leases::Balance::load(),
        }
    }
}

/// How workers read the stream (`--retrieval`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retrieval {
    /// GetRecords polling.
    #[default]
    Polling,
    /// Enhanced fan-out (SubscribeToShard) through a stream consumer named after the
    /// application.
    FanOut,
}

impl Retrieval {
    /// The flag's value, as `--retrieval` takes it.
    pub fn as_arg(self) -> &'static str {
        match self {
            Retrieval::Polling => "polling",
            Retrieval::FanOut => "fan-out",
        }
    }

    /// The kcl-rs setting.
    pub fn mode(self) -> RetrievalMode {
        match self {
            Retrieval::Polling => RetrievalMode::Polling,
            Retrieval::FanOut => RetrievalMode::fan_out(),
        }
    }
}

/// The `worker` command's own flags, defined once: the command parses them, and what
/// starts worker processes (the scenarios, `chaos`) writes them with
/// [`WorkerFlags::to_args`], so the two cannot drift apart.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct WorkerFlags {
    /// This worker's id, unique among the running workers (default: generated).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Lease failover time: a crashed worker's shards move to the others after about
    /// this long.
    #[arg(long, default_value_t = 10_000)]
    pub failover_ms: u64,
    /// Pause between reads of a shard that is caught up (real Kinesis allows five reads
    /// per second per shard).
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Append a JSON line per statistics transaction and per checkpoint to this file
    /// (what `chaos` checks).
    #[arg(long)]
    pub audit_file: Option<std::path::PathBuf>,
    /// How to read the stream: GetRecords polling, or enhanced fan-out through a stream
    /// consumer named after the application (registered at start if absent).
    #[arg(long, value_enum, default_value_t = Retrieval::Polling)]
    pub retrieval: Retrieval,
    /// How workers share the leases: equal counts, or equal load (records/s and
    /// bytes/s, for skewed keys such as `--keys region`). Give every worker the same.
    #[arg(long, value_enum, default_value_t = BalanceFlag::Count)]
    pub balance: BalanceFlag,
    /// Serve Prometheus metrics (kcl-rs's and the application's) at
    /// `http://ADDR/metrics`, e.g. 127.0.0.1:9101 (port 0: any free port; the address
    /// is printed).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl WorkerFlags {
    /// Flags for a worker with these timings (no id, no audit log).
    pub fn new(failover: Duration, poll: Duration) -> WorkerFlags {
        WorkerFlags {
            worker_id: None,
            failover_ms: failover.as_millis() as u64,
            poll_ms: poll.as_millis() as u64,
            audit_file: None,
            retrieval: Retrieval::Polling,
            balance: BalanceFlag::Count,
            metrics_addr: None,
        }
    }

    /// The flags as command-line arguments, parsed back to the same value.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(id) = &self.worker_id {
            args.extend(["--worker-id".into(), id.into()]);
        }
        args.extend([
            "--failover-ms".into(),
            self.failover_ms.to_string().into(),
            "--poll-ms".into(),
            self.poll_ms.to_string().into(),
        ]);
        if let Some(path) = &self.audit_file {
            args.extend(["--audit-file".into(), path.into()]);
        }
        args.extend(["--retrieval".into(), self.retrieval.as_arg().into()]);
        args.extend(["--balance".into(), self.balance.as_arg().into()]);
        if let Some(addr) = self.metrics_addr {
            args.extend(["--metrics-addr".into(), addr.to_string().into()]);
        }
        args
    }

    /// The worker's settings, for the stream and application `names`.
    pub fn options(&self, names: &crate::connect::NameArgs) -> WorkerOptions {
        WorkerOptions {
            stream: names.stream.clone(),
            app: names.app.clone(),
            worker_id: self.worker_id.clone(),
            failover: Duration::from_millis(self.failover_ms),
            poll: Duration::from_millis(self.poll_ms),
            audit_file: self.audit_file.clone(),
            retrieval: self.retrieval,
            balance: self.balance,
        }
    }
}

/// How long a stopping worker may take to checkpoint and release its leases.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// Errors of a worker.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a worker until `cancel`, then shuts it down gracefully (processors
/// checkpoint, leases are released for the others to take at once). Returns an error
/// naming the table, the call and what is wrong when DynamoDB fails in a way retrying
/// cannot fix (access denied, a missing table, a refusal no record explains): the
/// worker then stops on its own, gracefully, instead of retrying for ever.
pub async fn run_worker(
    clients: &Clients,
    options: &WorkerOptions,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    let store = Arc::new(StatsStore::new(clients.dynamodb.clone(), &options.app));
    store.ensure_tables().await?;
    let audit = match &options.audit_file {
        Some(path) => Some(Arc::new(AuditLog::open(path).map_err(|e| {
            format!("cannot open the audit log {}: {e}", path.display())
        })?)),
        None => None,
    };
    let mut builder = WorkerConfig::builder(&options.stream, &options.app)
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(options.failover)
        .idle_time_between_reads(options.poll)
        .retrieval_mode(options.retrieval.mode())
        .balance(options.balance.balance())
        // An idle shard's processor still writes the orders it has held too long, so
        // its checkpoint moves on (see `stats::hold`).
        .call_process_records_even_for_empty(true);
    if let Some(id) = &options.worker_id {
        builder = builder.worker_id(id.clone());
    }
    let config = builder.build()?;
    tracing::info!(worker = %config.worker_id(), stream = %options.stream, app = %options.app, "statistics worker starting");
    // A child token: a processor's fatal error stops this worker, not the caller's
    // other tasks; the caller's cancellation still reaches every processor.
    let halt = Halt::new(cancel.child_token());
    let worker = Worker::new(
        config,
        clients,
        StatsProcessor::factory(store, audit, halt.clone()),
    );
    let stopping = halt.token().clone();
    tokio::select! {
        result = worker.run(halt.token().clone()) => result?,
        // A clean stop waits on DynamoDB (checkpoints, lease release) and, for a shard
        // whose last batch was left unfinished, never ends (see
        // `StatsProcessor::shard_ended`): past `STOP_GRACE` the worker is dropped; its
        // leases expire and their next owners replay what was not checkpointed.
        _ = async {
            stopping.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        } => {
            if halt.error().is_none() {
                return Err(format!(
                    "the worker did not stop cleanly within {} s; its leases expire after \
                     the failover time",
                    STOP_GRACE.as_secs()
                )
                .into());
            }
        }
    }
    match halt.error() {
        Some(error) => Err(format!("the statistics worker stopped: {error}").into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::connect::NameArgs;

    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        names: NameArgs,
        #[command(flatten)]
        flags: WorkerFlags,
    }

    #[test]
    fn worker_flags_written_are_the_flags_parsed() {
        let mut all = WorkerFlags::new(Duration::from_millis(3_000), Duration::from_millis(50));
        all.worker_id = Some("worker-7".into());
        all.audit_file = Some("/tmp/audit dir/worker-7.jsonl".into());
        all.retrieval = Retrieval::FanOut;
        all.balance = BalanceFlag::Load;
        all.metrics_addr = Some("127.0.0.1:9101".parse().unwrap());
        let names = NameArgs {
            stream: "Orders".into(),
            app: "OrdersApp".into(),
        };
        for flags in [
            WorkerFlags::new(Duration::from_secs(10), Duration::from_millis(200)),
            all,
        ] {
            let mut argv: Vec<std::ffi::OsString> = vec!["worker".into()];
            argv.extend(names.to_args());
            argv.extend(flags.to_args());
            let parsed = Probe::try_parse_from(argv).unwrap();
            assert_eq!(parsed.flags, flags);
            assert_eq!(
                (parsed.names.stream, parsed.names.app),
                (names.stream.clone(), names.app.clone())
            );
        }
    }
}
