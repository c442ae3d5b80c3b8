//! One module per subcommand, and the options several share.

pub mod chaos;
pub mod consumers;
pub mod create_stream;
pub mod dashboard;
pub mod demo;
pub mod failure;
pub mod local;
pub mod produce;
pub mod reshard;
pub mod smoke;
pub mod stats;
pub mod worker;

use delivery_app::sim::{KeyStrategy, SimConfig};

/// Errors of a subcommand, printed as one line.
pub type CommandError = Box<dyn std::error::Error + Send + Sync>;

/// The simulation's options (`produce` and `demo`).
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Seed: the same seed and options give the same events and ground truth.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Drivers on the 50x50 grid.
    #[arg(long, default_value_t = 10)]
    pub drivers: usize,
    /// Mean simulated milliseconds between two orders (90 ms is about 11 orders a
    /// second of simulated time).
    #[arg(long, default_value_t = 90.0)]
    pub order_interval_ms: f64,
    /// Simulated milliseconds a driver needs to cross one region.
    #[arg(long, default_value_t = 20)]
    pub region_ms: i64,
    /// Partition key: `order` (order id, even spread) or `region` (pickup region: hot
    /// shards where the popular restaurants are).
    #[arg(long, value_enum, default_value_t = KeyStrategy::Order)]
    pub keys: KeyStrategy,
    /// Bad events to mix in (malformed JSON, unknown types, off-grid regions, negative
    /// prices, events before their order's creation, duplicates); each must end up in
    /// the dead-letter table. Default: 0 for `produce`, 14 (two of each kind) for `demo`.
    #[arg(long)]
    pub bad_events: Option<u64>,
    /// Stop creating orders after this many (in-flight orders still finish).
    #[arg(long)]
    pub orders: Option<u64>,
    /// Also put, once, the records DynamoDB would refuse or the sums could not hold (a
    /// 3,000-byte order id, a 500 KB driver id, 98 assignments with 50 KB driver ids, a
    /// completion that overflows the sums); each must end up in the dead-letter table.
    #[arg(long)]
    pub hostile_events: bool,
}

impl SimArgs {
    /// The simulation configuration for `sim_seconds` of simulated time, with
    /// `bad_events` unless the option says otherwise.
    pub fn config(&self, sim_seconds: f64, bad_events: u64) -> SimConfig {
        SimConfig {
            seed: self.seed,
            drivers: self.drivers,
            order_interval_ms: self.order_interval_ms,
            duration_ms: (sim_seconds * 1000.0) as i64,
            max_orders: self.orders,
            region_ms: self.region_ms,
            keys: self.keys,
            bad_events: self.bad_events.unwrap_or(bad_events),
            hostile_events: self.hostile_events,
        }
    }
}

/// How long a command may take to stop after Ctrl-C or SIGTERM before it gives up on
/// a clean stop and exits anyway: under the 30 s a supervisor (systemd, Kubernetes,
/// ECS) usually grants before SIGKILL, whatever DynamoDB or Kinesis do meanwhile.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
