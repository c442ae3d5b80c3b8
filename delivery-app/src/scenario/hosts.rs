//! Workers on network hosts of their own: how a run launches a worker inside its host
//! and cuts, degrades and heals that host's network. The chaos run's `--hosts` mode
//! implements it with Linux network namespaces (`delivery_app::chaos::hosts`).

use kcl::aws::Endpoints;

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
