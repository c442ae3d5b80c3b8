//! Workers on network hosts of their own: how a run launches a worker inside its host
//! and cuts, degrades and heals that host's network. The chaos run's `--hosts` mode
//! implements it with Linux network namespaces (`delivery_app::chaos::hosts`).

use std::time::Duration;

use kcl::aws::Endpoints;
use kcl::leases::LeaseStore;
use tokio::time::Instant;

use super::ScenarioError;

/// A network fault on one worker's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// Cut off from both services: a zombie by network, not by SIGSTOP.
    Partition,
    /// Cut off from DynamoDB only: it still reads, but can neither renew its leases
    /// nor checkpoint nor write statistics.
    CutDynamoDb,
    /// Cut off from Kinesis only: it keeps renewing its leases but reads nothing.
    CutKinesis,
    /// A congested, lossy link both ways for `millis` ms: at most `rate_kbit` kbit/s,
    /// packets queued up to `latency_ms` ms and dropped beyond.
    BadLink {
        /// Link rate, kbit/s.
        rate_kbit: u32,
        /// Longest queueing delay before a packet is dropped, ms.
        latency_ms: u32,
        /// How long the link stays bad, ms.
        millis: u64,
    },
}

/// The network hosts of a run's workers (slots numbered from 0).
pub trait HostNetwork: Send + Sync + std::fmt::Debug {
    /// The command that runs a program inside worker slot `slot`'s host (the program
    /// and its arguments follow). It must exec the program, so that the pid spawned
    /// is the program's and signals reach it.
    fn launch_prefix(&self, slot: usize) -> Vec<String>;

    /// Where the workers reach the services from their hosts.
    fn worker_endpoints(&self) -> Endpoints;

    /// Applies `fault` to slot `slot`'s host.
    fn apply(&self, slot: usize, fault: &NetFault) -> Result<(), ScenarioError>;

    /// Undoes every fault on slot `slot`'s host.
    fn heal(&self, slot: usize) -> Result<(), ScenarioError>;
}

/// Applies `fault` to worker slot `slot` (running as `id`), waits as long as the fault
/// lasts, heals it and describes what happened. A partition or a DynamoDB-only cut
/// lasts until the others own all the worker's leases (at least 1.2× `failover`): it
/// must lose them while it runs. A Kinesis-only cut lasts 1.2× `failover`: the worker
/// keeps its leases and just reads nothing. A bad link lasts its own duration.
pub(super) async fn inject(
    hosts: &dyn HostNetwork,
    slot: usize,
    id: &str,
    fault: &NetFault,
    leases: &dyn LeaseStore,
    failover: Duration,
) -> Result<String, ScenarioError> {
    let started = Instant::now();
    hosts.apply(slot, fault)?;
    match fault {
        NetFault::Partition | NetFault::CutDynamoDb => {
            super::wait_until_taken_over(leases, id, started, failover).await
        }
        NetFault::CutKinesis => tokio::time::sleep(failover.mul_f64(1.2)).await,
        NetFault::BadLink { millis, .. } => {
            tokio::time::sleep(Duration::from_millis(*millis)).await
        }
    }
    hosts.heal(slot)?;
    let lasted = started.elapsed().as_secs_f64();
    Ok(match fault {
        NetFault::Partition => format!(
            "partitioned worker {id}'s host from both services for {lasted:.1}s, past the \
             {:.1}s failover, then healed it: a zombie by network",
            failover.as_secs_f64()
        ),
        NetFault::CutDynamoDb => format!(
            "cut worker {id}'s host off from DynamoDB only for {lasted:.1}s (it still reached \
             Kinesis), then healed it"
        ),
        NetFault::CutKinesis => format!(
            "cut worker {id}'s host off from Kinesis only for {lasted:.1}s (it still reached \
             DynamoDB and kept its leases), then healed it"
        ),
        NetFault::BadLink {
            rate_kbit,
            latency_ms,
            ..
        } => format!(
            "degraded worker {id}'s link for {lasted:.1}s ({rate_kbit} kbit/s, packets queued \
             up to {latency_ms} ms and dropped beyond), then healed it"
        ),
    })
}
