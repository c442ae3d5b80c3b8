//! Network hosts for `chaos --hosts`: the local AWS in one Linux network namespace,
//! each worker in one of its own, joined by veth pairs. Every address is private to
//! the namespaces the run creates (10.203.0.0/16); nothing is added to the host's own
//! network namespace, not even a veth end.
//!
//! ```text
//!  namespace <prefix>-aws                          namespace <prefix>-w<N>
//!  lo: 10.203.0.1 (Kinesis), 10.203.0.2 (DynamoDB)
//!  w<N>: 10.203.<N>.1/24  <------ veth ------>  eth0: 10.203.<N>.2/24
//!                                               10.203.0.1/32 via 10.203.<N>.1
//!                                               10.203.0.2/32 via 10.203.<N>.1
//! ```
//!
//! Faults change a worker namespace's routes and queues only:
//! - a cut service gets its route through `10.203.<N>.3`, an address nobody has, so its
//!   packets are dropped silently (no ARP answer) as on a real partition, and the
//!   TCP connections open at the time survive to deliver late what they still hold;
//! - a bad link gets a token-bucket filter (`tbf`) on both ends of the veth: a low
//!   rate, packets queued up to a latency bound and dropped beyond it. (The kernel
//!   here has no `netem`; see docs/chaos.md.)
//!
//! The commands are pure functions of the [`Topology`], tested from tables; the
//! [`Network`] guard runs them and removes every namespace on drop.

use std::process::Command;

use kcl::aws::Endpoints;

use crate::scenario::{HostNetwork, NetFault, ScenarioError};

/// Kinesis's address, in the aws namespace.
pub const KINESIS_ADDR: &str = "10.203.0.1";
/// DynamoDB's address, in the aws namespace.
pub const DYNAMODB_ADDR: &str = "10.203.0.2";
/// The most workers a topology holds (one /24 each under 10.203.0.0/16).
pub const MAX_WORKERS: usize = 250;

/// One command to run: `ip` or `tc` and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetCommand {
    /// The arguments, program first.
    pub argv: Vec<String>,
    /// Its failure is expected at times and harmless (removing a queue that is not
    /// there).
    pub may_fail: bool,
}

fn cmd(argv: &str) -> NetCommand {
    NetCommand {
        argv: argv.split_whitespace().map(str::to_string).collect(),
        may_fail: false,
    }
}

fn may_fail(argv: &str) -> NetCommand {
    NetCommand {
        may_fail: true,
        ..cmd(argv)
    }
}

/// The namespaces and addresses of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Every namespace's name starts with `<prefix>-`; unique per run (its pid).
    pub prefix: String,
    /// Worker slots.
    pub workers: usize,
}

impl Topology {
    /// The prefix of the run with process id `pid`.
    pub fn prefix_for(pid: u32) -> String {
        format!("dch{pid}")
    }

    /// The namespace of the local AWS (and the chaos run itself).
    pub fn aws_ns(&self) -> String {
        format!("{}-aws", self.prefix)
    }

    /// The namespace of worker slot `slot` (from 0).
    pub fn worker_ns(&self, slot: usize) -> String {
        format!("{}-w{}", self.prefix, slot + 1)
    }

    /// Every namespace of the run.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.aws_ns())
            .chain((0..self.workers).map(|n| self.worker_ns(n)))
            .collect()
    }

    /// Commands that build the namespaces, links, addresses and routes.
    pub fn setup(&self) -> Vec<NetCommand> {
        let aws = self.aws_ns();
        let mut out = vec![
            cmd(&format!("ip netns add {aws}")),
            cmd(&format!("ip -n {aws} link set lo up")),
            cmd(&format!("ip -n {aws} addr add {KINESIS_ADDR}/32 dev lo")),
            cmd(&format!("ip -n {aws} addr add {DYNAMODB_ADDR}/32 dev lo")),
        ];
        for slot in 0..self.workers {
            let (ns, n) = (self.worker_ns(slot), slot + 1);
            out.extend([
                cmd(&format!("ip netns add {ns}")),
                cmd(&format!("ip -n {ns} link set lo up")),
                cmd(&format!(
                    "ip -n {aws} link add w{n} type veth peer name eth0 netns {ns}"
                )),
                cmd(&format!("ip -n {aws} addr add 10.203.{n}.1/24 dev w{n}")),
                cmd(&format!("ip -n {aws} link set w{n} up")),
                cmd(&format!("ip -n {ns} addr add 10.203.{n}.2/24 dev eth0")),
                cmd(&format!("ip -n {ns} link set eth0 up")),
            ]);
            out.extend(self.routes(slot, true, true));
        }
        out
    }

    /// Commands that check the bad link can be made (the token-bucket queue exists).
    pub fn probe(&self) -> Vec<NetCommand> {
        let ns = self.worker_ns(0);
        vec![
            cmd(&format!(
                "tc -n {ns} qdisc replace dev eth0 root tbf rate 1mbit burst 4kb latency 400ms"
            )),
            cmd(&format!("tc -n {ns} qdisc del dev eth0 root")),
        ]
    }

    /// Commands that route slot `slot`'s traffic to each service through the aws
    /// namespace (`true`) or into the void (`false`).
    fn routes(&self, slot: usize, kinesis: bool, dynamodb: bool) -> Vec<NetCommand> {
        let (ns, n) = (self.worker_ns(slot), slot + 1);
        [(KINESIS_ADDR, kinesis), (DYNAMODB_ADDR, dynamodb)]
            .into_iter()
            .map(|(addr, reachable)| {
                // .3 is nobody: packets for it wait for an ARP answer that never comes.
                let gateway = if reachable { 1 } else { 3 };
                cmd(&format!(
                    "ip -n {ns} route replace {addr}/32 via 10.203.{n}.{gateway} dev eth0"
                ))
            })
            .collect()
    }

    /// Commands that apply `fault` to slot `slot`'s host.
    pub fn fault(&self, slot: usize, fault: &NetFault) -> Vec<NetCommand> {
        match fault {
            NetFault::Partition => self.routes(slot, false, false),
            NetFault::CutDynamoDb => self.routes(slot, true, false),
            NetFault::CutKinesis => self.routes(slot, false, true),
            NetFault::BadLink {
                rate_kbit,
                latency_ms,
                ..
            } => {
                let (aws, ns, n) = (self.aws_ns(), self.worker_ns(slot), slot + 1);
                let tbf = format!("root tbf rate {rate_kbit}kbit burst 4kb latency {latency_ms}ms");
                vec![
                    cmd(&format!("tc -n {ns} qdisc replace dev eth0 {tbf}")),
                    cmd(&format!("tc -n {aws} qdisc replace dev w{n} {tbf}")),
                ]
            }
        }
    }

    /// Commands that undo every fault on slot `slot`'s host.
    pub fn heal(&self, slot: usize) -> Vec<NetCommand> {
        let (aws, ns, n) = (self.aws_ns(), self.worker_ns(slot), slot + 1);
        let mut out = self.routes(slot, true, true);
        out.extend([
            may_fail(&format!("tc -n {ns} qdisc del dev eth0 root")),
            may_fail(&format!("tc -n {aws} qdisc del dev w{n} root")),
        ]);
        out
    }
}

/// The names in `ip netns list` output (`name` or `name (id: N)` per line).
pub fn parse_netns_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The namespaces among `names` that belong to the run with `prefix`.
pub fn of_prefix(names: &[String], prefix: &str) -> Vec<String> {
    let start = format!("{prefix}-");
    names
        .iter()
        .filter(|n| n.starts_with(&start))
        .cloned()
        .collect()
}

/// Runs `command`; an error with its stderr when it fails and may not.
pub fn run(command: &NetCommand) -> Result<(), ScenarioError> {
    let (program, args) = command.argv.split_first().ok_or("empty command")?;
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() || command.may_fail {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            command.argv.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into())
    }
}

fn run_all(commands: &[NetCommand]) -> Result<(), ScenarioError> {
    commands.iter().try_for_each(run)
}

/// Removes every namespace of `prefix`, killing what still runs in them first (a
/// namespace outlives its name while a process is inside). Returns the names removed.
pub fn remove_prefix(prefix: &str) -> Vec<String> {
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let doomed = of_prefix(&parse_netns_list(&listed), prefix);
    for ns in &doomed {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2); these processes run inside the run's own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = run(&may_fail(&format!("ip netns del {ns}")));
    }
    doomed
}

/// The run's namespaces, removed when dropped (and by [`Network::cleanup`]).
#[derive(Debug)]
pub struct Network {
    /// What was built.
    pub topology: Topology,
    removed: bool,
}

impl Network {
    /// Removes leftovers of an earlier run with the same prefix (a crashed run whose
    /// pid came back), then builds the topology and checks a bad link can be made.
    /// An error says what failed (not root, no iproute2, no namespaces, no `tbf`).
    pub fn create(topology: Topology) -> Result<Network, ScenarioError> {
        if topology.workers == 0 || topology.workers > MAX_WORKERS {
            return Err(format!("--hosts takes 1 to {MAX_WORKERS} workers").into());
        }
        let leftovers = remove_prefix(&topology.prefix);
        if !leftovers.is_empty() {
            tracing::warn!(?leftovers, "removed namespaces left by an earlier run");
        }
        let network = Network {
            topology,
            removed: false,
        };
        // On an error the guard removes what was built so far.
        run_all(&network.topology.setup())?;
        run_all(&network.topology.probe())
            .map_err(|e| format!("cannot shape a link with tc tbf: {e}"))?;
        Ok(network)
    }

    /// Removes every namespace of the run (and kills what runs inside).
    pub fn cleanup(&mut self) {
        if !self.removed {
            remove_prefix(&self.topology.prefix);
            self.removed = true;
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// [`HostNetwork`] over a [`Topology`] built by a [`Network`] (possibly in another
/// process: the chaos run itself runs inside the aws namespace).
#[derive(Debug)]
pub struct NamespaceHosts {
    /// The namespaces.
    pub topology: Topology,
    /// Kinesis's port at [`KINESIS_ADDR`].
    pub kinesis_port: u16,
    /// DynamoDB's port at [`DYNAMODB_ADDR`].
    pub dynamodb_port: u16,
}

impl HostNetwork for NamespaceHosts {
    fn launch_prefix(&self, slot: usize) -> Vec<String> {
        // `ip netns exec` execs the program: the pid spawned is the worker's.
        ["ip", "netns", "exec", &self.topology.worker_ns(slot)]
            .map(str::to_string)
            .to_vec()
    }

    fn worker_endpoints(&self) -> Endpoints {
        Endpoints::local(
            format!("http://{KINESIS_ADDR}:{}", self.kinesis_port),
            format!("http://{DYNAMODB_ADDR}:{}", self.dynamodb_port),
        )
    }

    fn apply(&self, slot: usize, fault: &NetFault) -> Result<(), ScenarioError> {
        run_all(&self.topology.fault(slot, fault))
    }

    fn heal(&self, slot: usize) -> Result<(), ScenarioError> {
        run_all(&self.topology.heal(slot))
    }
}

#[cfg(test)]
mod tests;
