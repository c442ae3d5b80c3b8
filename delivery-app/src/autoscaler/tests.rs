use super::*;

const Q: u128 = u128::MAX / 4;

fn view(id: &str, quarter: u128, records_per_sec: Option<f64>) -> ShardView {
    ShardView {
        shard_id: id.into(),
        range: (
            quarter * Q,
            if quarter == 3 {
                u128::MAX
            } else {
                (quarter + 1) * Q - 1
            },
        ),
        load: records_per_sec.map(|r| ShardLoad {
            records_per_sec: r,
            bytes_per_sec: r * 400.0,
            millis_behind_latest: 0,
        }),
    }
}

/// Four adjacent quarters with the given record rates.
fn quarters(rates: [Option<f64>; 4]) -> Vec<ShardView> {
    let open: Vec<_> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| view(&format!("s{i}"), i as u128, *r))
        .collect();
    assert_eq!(
        adjacent_pairs(&open).count(),
        3,
        "test shards must be adjacent"
    );
    open
}

fn config() -> ScalerConfig {
    ScalerConfig {
        split_share: 0.8,
        merge_share: 0.1,
        sustain: Duration::from_secs(10),
        cooldown: Duration::from_secs(30),
        min_shards: 2,
        max_shards: 5,
        interval: Duration::from_secs(1),
    }
}

/// Observes the same shards every second for `seconds` and returns the actions with
/// the second they happened at.
fn run(
    scaler: &mut Scaler,
    open: &[ShardView],
    start: Instant,
    seconds: u64,
) -> Vec<(u64, Action)> {
    (0..=seconds)
        .filter_map(|s| {
            scaler
                .observe(open, start + Duration::from_secs(s))
                .map(|a| (s, a))
        })
        .collect()
}

#[test]
fn decisions_from_a_table() {
    let split = |id: &str| Action::Split {
        shard_id: id.into(),
    };
    let merge = |low: &str, high: &str| Action::Merge {
        low: low.into(),
        high: high.into(),
    };
    type Case = (&'static str, [Option<f64>; 4], u64, Vec<(u64, Action)>);
    let cases: Vec<Case> = vec![
        ("steady load: nothing", [Some(300.0); 4], 60, vec![]),
        (
            "a hot shard splits after sustain, then cooldown",
            [Some(900.0), Some(300.0), Some(300.0), Some(300.0)],
            35,
            vec![(10, split("s0"))],
        ),
        (
            "the hottest of two hot shards first",
            [Some(900.0), Some(950.0), Some(300.0), Some(300.0)],
            20,
            vec![(10, split("s1"))],
        ),
        (
            "cold neighbours merge, the coldest pair first",
            [Some(300.0), Some(50.0), Some(20.0), Some(10.0)],
            20,
            vec![(10, merge("s2", "s3"))],
        ),
        (
            "unknown load is neither hot nor cold",
            [None, None, None, None],
            30,
            vec![],
        ),
        (
            "a split comes before a merge",
            [Some(900.0), Some(300.0), Some(10.0), Some(10.0)],
            15,
            vec![(10, split("s0"))],
        ),
        (
            "again after the cooldown",
            [Some(900.0), Some(300.0), Some(300.0), Some(300.0)],
            50,
            vec![(10, split("s0")), (40, split("s0"))],
        ),
    ];
    for (name, rates, seconds, expected) in cases {
        let mut scaler = Scaler::new(config());
        let got = run(&mut scaler, &quarters(rates), Instant::now(), seconds);
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn bounds_on_the_shard_count() {
    let mut at_max = config();
    at_max.max_shards = 4;
    let mut scaler = Scaler::new(at_max);
    let hot = quarters([Some(900.0); 4]);
    assert!(run(&mut scaler, &hot, Instant::now(), 30).is_empty());

    let mut at_min = config();
    at_min.min_shards = 4;
    let mut scaler = Scaler::new(at_min);
    let cold = quarters([Some(1.0); 4]);
    assert!(run(&mut scaler, &cold, Instant::now(), 30).is_empty());
}

#[test]
fn a_blip_does_not_count() {
    let mut scaler = Scaler::new(config());
    let start = Instant::now();
    let hot = quarters([Some(900.0), Some(300.0), Some(300.0), Some(300.0)]);
    let calm = quarters([Some(300.0); 4]);
    for s in 0..9 {
        assert_eq!(scaler.observe(&hot, start + Duration::from_secs(s)), None);
    }
    assert_eq!(scaler.observe(&calm, start + Duration::from_secs(9)), None);
    // Hot again: the clock starts over.
    for s in 10..19 {
        assert_eq!(scaler.observe(&hot, start + Duration::from_secs(s)), None);
    }
    assert!(
        scaler
            .observe(&hot, start + Duration::from_secs(20))
            .is_some()
    );
}

#[test]
fn bytes_count_as_much_as_records() {
    let load = ShardLoad {
        records_per_sec: 10.0,
        bytes_per_sec: 900_000.0,
        millis_behind_latest: 0,
    };
    assert!(utilisation(&load) > 0.8);
}

#[test]
fn manual_choices() {
    let open = quarters([Some(100.0), Some(700.0), Some(5.0), Some(6.0)]);
    assert_eq!(hottest(&open).unwrap().shard_id, "s1");
    let (a, b) = coldest_pair(&open).unwrap();
    assert_eq!((a.shard_id.as_str(), b.shard_id.as_str()), ("s2", "s3"));
    // Without loads: the widest shard.
    let mut unknown = quarters([None; 4]);
    unknown[3].range.0 -= 1_000;
    unknown[2].range.1 -= 1_000;
    assert_eq!(hottest(&unknown).unwrap().shard_id, "s3");
    // Not adjacent: nothing to merge.
    let apart = vec![view("a", 0, None), view("b", 2, None)];
    assert!(coldest_pair(&apart).is_none());
}
