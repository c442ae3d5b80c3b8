//! `chaos --hosts`'s network namespaces for real: built, faulted, healed, and removed
//! by the guard, also over the leftovers of a crashed run. Needs root (CI runs as
//! root); without it the test says so and does nothing.

use std::process::Command;
use std::time::Duration;

use kcl_local::testing::wait_for;

use delivery_app::chaos::hosts::{NetCommand, Network, Topology, parse_netns_list, run};
use delivery_app::scenario::{HostNetwork, NetFault};

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ours(prefix: &str) -> Vec<String> {
    let start = format!("{prefix}-");
    parse_netns_list(&ip("netns list"))
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .collect()
}

#[tokio::test]
async fn namespaces_are_built_faulted_healed_and_removed_even_over_leftovers() {
    if !is_root() {
        eprintln!("not root: network namespaces cannot be created; nothing tested");
        return;
    }
    let topology = Topology {
        prefix: format!("dct{}", std::process::id()),
        workers: 2,
    };
    // A crashed run with the same prefix left one of its namespaces behind.
    run(&NetCommand {
        argv: ["ip", "netns", "add", &topology.worker_ns(1)]
            .map(str::to_string)
            .to_vec(),
        may_fail: false,
    })
    .expect("leftover created");

    let network = Network::create(topology.clone()).expect("namespaces built");
    let mut names = ours(&topology.prefix);
    names.sort();
    assert_eq!(names, topology.namespaces());

    let hosts = delivery_app::chaos::hosts::NamespaceHosts {
        topology: topology.clone(),
        kinesis_port: 4567,
        dynamodb_port: 8000,
    };
    let w2 = topology.worker_ns(1);
    let routes = || ip(&format!("-n {w2} route show"));
    assert!(
        routes().contains("10.203.0.2 via 10.203.2.1"),
        "{}",
        routes()
    );
    hosts.apply(1, &NetFault::CutDynamoDb).unwrap();
    assert!(
        routes().contains("10.203.0.2 via 10.203.2.3"),
        "{}",
        routes()
    );
    assert!(
        routes().contains("10.203.0.1 via 10.203.2.1"),
        "{}",
        routes()
    );
    hosts
        .apply(
            1,
            &NetFault::BadLink {
                rate_kbit: 100,
                latency_ms: 500,
                millis: 1,
            },
        )
        .unwrap();
    let qdisc = || {
        let out = Command::new("tc")
            .args(["-n", &w2, "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(qdisc().contains("tbf"), "{}", qdisc());
    hosts.heal(1).unwrap();
    assert!(
        routes().contains("10.203.0.2 via 10.203.2.1"),
        "{}",
        routes()
    );
    assert!(!qdisc().contains("tbf"), "{}", qdisc());
    // Healing a healthy host is harmless.
    hosts.heal(1).unwrap();

    // A program launched into a worker's host is exec'd by `ip netns exec`: the pid
    // spawned is the program's, inside that namespace, so signals reach it.
    let prefix = hosts.launch_prefix(1);
    let mut child = tokio::process::Command::new(&prefix[0])
        .args(&prefix[1..])
        .args(["sleep", "60"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_for(
        "the launched program to replace ip",
        Duration::from_secs(10),
        || async {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "sleep").then_some(())
        },
    )
    .await;
    assert_eq!(ip(&format!("netns identify {pid}")).trim(), w2);
    // SAFETY: kill(2) on the child spawned above, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("killed in time")
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    drop(network);
    assert_eq!(ours(&topology.prefix), Vec::<String>::new());
}
