use super::*;

fn topology() -> Topology {
    Topology {
        prefix: Topology::prefix_for(77),
        workers: 2,
    }
}

fn lines(commands: &[NetCommand]) -> Vec<String> {
    commands.iter().map(|c| c.argv.join(" ")).collect()
}

#[test]
fn names_carry_the_run_prefix() {
    let t = topology();
    assert_eq!(t.namespaces(), ["dch77-aws", "dch77-w1", "dch77-w2"]);
    let listed = "dch77-w2 (id: 3)\ndch770-aws (id: 5)\nother\ndch77-aws\n";
    let names = parse_netns_list(listed);
    assert_eq!(names, ["dch77-w2", "dch770-aws", "other", "dch77-aws"]);
    // Another run whose pid starts with the same digits is not ours.
    assert_eq!(of_prefix(&names, "dch77"), ["dch77-w2", "dch77-aws"]);
}

#[test]
fn setup_stays_inside_the_run_namespaces() {
    let setup = lines(&topology().setup());
    // Every command names one of the run's namespaces: nothing touches the host's.
    for line in &setup {
        assert!(
            line.starts_with("ip netns add dch77-") || line.starts_with("ip -n dch77-"),
            "{line}"
        );
    }
    for expected in [
        "ip -n dch77-aws addr add 10.203.0.1/32 dev lo",
        "ip -n dch77-aws addr add 10.203.0.2/32 dev lo",
        "ip -n dch77-aws link add w2 type veth peer name eth0 netns dch77-w2",
        "ip -n dch77-w2 addr add 10.203.2.2/24 dev eth0",
        "ip -n dch77-w1 route replace 10.203.0.1/32 via 10.203.1.1 dev eth0",
        "ip -n dch77-w1 route replace 10.203.0.2/32 via 10.203.1.1 dev eth0",
    ] {
        assert!(
            setup.iter().any(|l| l == expected),
            "{expected}: {setup:#?}"
        );
    }
}

#[test]
fn faults_reroute_or_shape_one_worker_and_heal_undoes_them() {
    let t = topology();
    let cut = |addr: &str, gw: u8| {
        format!("ip -n dch77-w2 route replace {addr}/32 via 10.203.2.{gw} dev eth0")
    };
    let table: Vec<(NetFault, Vec<String>)> = vec![
        (
            NetFault::Partition,
            vec![cut(KINESIS_ADDR, 3), cut(DYNAMODB_ADDR, 3)],
        ),
        (
            NetFault::CutDynamoDb,
            vec![cut(KINESIS_ADDR, 1), cut(DYNAMODB_ADDR, 3)],
        ),
        (
            NetFault::CutKinesis,
            vec![cut(KINESIS_ADDR, 3), cut(DYNAMODB_ADDR, 1)],
        ),
        (
            NetFault::BadLink {
                rate_kbit: 100,
                latency_ms: 900,
                millis: 5_000,
            },
            vec![
                "tc -n dch77-w2 qdisc replace dev eth0 root tbf rate 100kbit burst 4kb latency 900ms"
                    .into(),
                "tc -n dch77-aws qdisc replace dev w2 root tbf rate 100kbit burst 4kb latency 900ms"
                    .into(),
            ],
        ),
    ];
    for (fault, expected) in table {
        assert_eq!(lines(&t.fault(1, &fault)), expected, "{fault:?}");
    }
    let heal = t.heal(1);
    assert_eq!(
        lines(&heal),
        [
            cut(KINESIS_ADDR, 1),
            cut(DYNAMODB_ADDR, 1),
            "tc -n dch77-w2 qdisc del dev eth0 root".into(),
            "tc -n dch77-aws qdisc del dev w2 root".into(),
        ]
    );
    // Removing a queue that is not there fails harmlessly; a route must not fail.
    assert_eq!(
        heal.iter().map(|c| c.may_fail).collect::<Vec<_>>(),
        [false, false, true, true]
    );
}

#[test]
fn workers_run_inside_their_namespace_and_reach_the_service_addresses() {
    let hosts = NamespaceHosts {
        topology: topology(),
        kinesis_port: 4567,
        dynamodb_port: 8000,
    };
    assert_eq!(hosts.launch_prefix(0), ["ip", "netns", "exec", "dch77-w1"]);
    let endpoints = hosts.worker_endpoints();
    assert_eq!(endpoints.kinesis.as_deref(), Some("http://10.203.0.1:4567"));
    assert_eq!(
        endpoints.dynamodb.as_deref(),
        Some("http://10.203.0.2:8000")
    );
}
