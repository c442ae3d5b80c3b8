//! Load-aware lease assignment: which leases a worker takes, and which it asks for,
//! when leases are weighed by the throughput their owners write on them instead of
//! counted (see [`Balance`]). A pure function of the same snapshot the count-based
//! taker plans from, so every worker below its share computes the same moves for the
//! whole fleet and performs only its own.
//!
//! - A lease's weight is its shard's share of one shard's write capacity (what its
//!   reader must keep up with), from the smoothed load its owner writes on it:
//!   `max(records/s ÷ 1,000, bytes/s ÷ 1 MiB)`,
//!   plus a small floor so idle shards still spread. A lease without load data (new,
//!   never processed) weighs the mean of those with data.
//! - Free and expired leases are taken first, heaviest first, each planned for the
//!   least loaded live worker (so two workers seldom want the same one).
//! - Only when nothing is free: handoffs from the most loaded worker to the least
//!   loaded, one per receiver per cycle (dampening: loads are estimates, and moving
//!   much at once on stale figures makes leases flap), and only when the move lowers
//!   the donor's load by more than `threshold` × the mean load per worker. Within that
//!   band nothing moves, so a steady fleet stays put.

use std::collections::{HashMap, HashSet};

use super::lease::{Lease, LeaseState};
use super::taker::{TakeAction, TakerInput};

/// How workers share leases.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Balance {
    /// Equal lease counts (the default): `ceil(leases / workers)` each.
    Count,
    /// Equal throughput, by the load workers write on the leases, falling back to
    /// counts while no lease has load data. `threshold` is the share of the mean
    /// load per worker a move must gain to be worth a handoff (the Java KCL 3.x
    /// rebalances beyond 10%).
    Load {
        /// At least 0; 0.1 by [`Balance::load`].
        threshold: f64,
    },
}

impl Balance {
    /// Load balancing with a 10% threshold.
    pub fn load() -> Balance {
        Balance::Load { threshold: 0.1 }
    }
}

/// Records/s one shard takes in: the scale a lease's records/s is weighed on.
const RECORDS_SCALE: f64 = 1_000.0;
/// Bytes/s one shard takes in.
const BYTES_SCALE: f64 = 1024.0 * 1024.0;
/// The floor added to every weight, as a share of the mean weight.
const FLOOR: f64 = 0.05;

/// A lease's throughput as a share of one shard's write capacity, if its owner wrote
/// any (0 counts as none: a shard nobody has measured yet looks idle).
pub fn lease_weight(lease: &Lease) -> Option<f64> {
    let load = lease.load.as_ref()?;
    let w = (load.records_per_sec / RECORDS_SCALE).max(load.bytes_per_sec / BYTES_SCALE);
    (w.is_finite() && w > 0.0).then_some(w)
}

/// The load plan, or `None` when no counted lease has load data (then the caller
/// balances counts).
pub(super) fn plan_by_load(
    input: &TakerInput,
    counted: &[&Lease],
    threshold: f64,
) -> Option<Vec<TakeAction>> {
    let known: Vec<f64> = counted.iter().filter_map(|l| lease_weight(l)).collect();
    if known.is_empty() {
        return None;
    }
    let mean_weight = known.iter().sum::<f64>() / known.len() as f64;
    let weight = |l: &Lease| lease_weight(l).unwrap_or(mean_weight) + FLOOR * mean_weight;
    let expired = |l: &Lease| input.expired.contains(&l.key);

    let mut load: HashMap<&str, f64> = HashMap::new();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for worker in input
        .live_workers
        .iter()
        .map(String::as_str)
        .chain([input.me])
    {
        load.entry(worker).or_insert(0.0);
        count.entry(worker).or_insert(0);
    }
    for lease in counted.iter().filter(|l| !expired(l)) {
        if let Some(owner) = &lease.owner {
            *load.entry(owner).or_insert(0.0) += weight(lease);
            *count.entry(owner).or_insert(0) += 1;
        }
    }
    let max = input.max_leases_per_worker;
    let room = |worker: &str, count: &HashMap<&str, usize>| has_room(count, worker, max);

    let mut available: Vec<&Lease> = counted
        .iter()
        .copied()
        .filter(|l| l.owner.is_none() || expired(l))
        .collect();
    available.sort_by(|a, b| {
        weight(b)
            .total_cmp(&weight(a))
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut plan = Vec::new();
    if !available.is_empty() {
        for lease in available {
            let taker = if input.absorb {
                room(input.me, &count).then_some(input.me)
            } else {
                lightest(&load, &count, max)
            };
            let Some(taker) = taker else { break };
            *load.get_mut(taker).expect("a live worker") += weight(lease);
            *count.get_mut(taker).expect("a live worker") += 1;
            if taker == input.me {
                plan.push(TakeAction::Take {
                    key: lease.key.clone(),
                    counter: lease.counter,
                    previous_owner: lease.owner.clone(),
                });
            }
        }
        return Some(plan);
    }

    // Handoffs, only of leases being processed by their live owner right now.
    let mean = load.values().sum::<f64>() / load.len() as f64;
    let mut donor_leases: HashMap<&str, Vec<&Lease>> = HashMap::new();
    for lease in counted.iter().copied().filter(|l| !expired(l)) {
        if let LeaseState::Held { owner } = lease.state() {
            donor_leases.entry(owner).or_default().push(lease);
        }
    }
    let mut receivers: Vec<&str> = load.keys().copied().collect();
    receivers.sort_by(|a, b| load[a].total_cmp(&load[b]).then_with(|| a.cmp(b)));
    let mut moved: HashSet<&str> = HashSet::new();
    for receiver in receivers {
        if !room(receiver, &count) {
            continue;
        }
        let Some(donor) = load
            .iter()
            .filter(|&(&d, _)| d != receiver && donor_leases.get(d).is_some_and(|l| !l.is_empty()))
            .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(&d, _)| d)
        else {
            continue;
        };
        let (wd, wr) = (load[donor], load[receiver]);
        // The lease that evens the pair best, if it gains enough.
        let best = donor_leases[donor]
            .iter()
            .copied()
            .filter(|l| !moved.contains(l.key.as_str()))
            .map(|l| (l, wd - (wd - weight(l)).max(wr + weight(l))))
            .filter(|&(_, gain)| gain > threshold * mean)
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.key.cmp(&a.0.key)));
        let Some((lease, _)) = best else { continue };
        moved.insert(lease.key.as_str());
        *load.get_mut(donor).expect("a donor") -= weight(lease);
        *load.get_mut(receiver).expect("a receiver") += weight(lease);
        *count.get_mut(donor).expect("a donor") -= 1;
        *count.get_mut(receiver).expect("a receiver") += 1;
        if let Some(leases) = donor_leases.get_mut(donor) {
            leases.retain(|l| l.key != lease.key);
        }
        if receiver == input.me {
            plan.push(TakeAction::RequestHandoff {
                key: lease.key.clone(),
                counter: lease.counter,
                from: donor.to_string(),
            });
        }
    }
    Some(plan)
}

/// Whether `worker` may hold one more lease.
fn has_room(count: &HashMap<&str, usize>, worker: &str, max: Option<usize>) -> bool {
    max.is_none_or(|max| count[worker] < max)
}

/// The least loaded worker with room for a lease (ties: smallest id).
fn lightest<'a>(
    load: &HashMap<&'a str, f64>,
    count: &HashMap<&'a str, usize>,
    max: Option<usize>,
) -> Option<&'a str> {
    load.iter()
        .filter(|&(w, _)| has_room(count, w, max))
        .min_by(|a, b| a.1.total_cmp(b.1).then_with(|| a.0.cmp(b.0)))
        .map(|(&w, _)| w)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::checkpoint::ExtendedSequenceNumber;

    const THRESHOLD: f64 = 0.1;
    use crate::leases::ShardLoad;
    use crate::leases::taker::plan_takes;

    /// A lease of `key` held by `owner` whose shard takes `weight` × 1,000 records/s.
    fn lease(key: &str, owner: Option<&str>, weight: Option<f64>) -> Lease {
        let mut lease = Lease::new(key, ExtendedSequenceNumber::at("100", 0));
        lease.counter = 5;
        lease.owner = owner.map(str::to_string);
        lease.load = weight.map(|w| ShardLoad {
            records_per_sec: w * 1_000.0,
            bytes_per_sec: w * 100_000.0,
            millis_behind_latest: 0,
        });
        lease
    }

    fn plan(me: &str, leases: &[Lease], live: &[&str], expired: &[&str]) -> Vec<TakeAction> {
        let live: Vec<String> = live.iter().map(|w| w.to_string()).collect();
        let expired: HashSet<String> = expired.iter().map(|k| k.to_string()).collect();
        plan_takes(&TakerInput {
            me,
            leases,
            expired: &expired,
            live_workers: &live,
            max_leases_per_worker: None,
            seed: 7,
            absorb: false,
            balance: Balance::load(),
        })
    }

    fn keys(plan: &[TakeAction]) -> Vec<String> {
        plan.iter()
            .map(|a| match a {
                TakeAction::Take { key, .. } => format!("take {key}"),
                TakeAction::RequestHandoff { key, from, .. } => format!("ask {from} for {key}"),
            })
            .collect()
    }

    #[test]
    fn weights_are_shares_of_a_shards_write_capacity() {
        assert_eq!(lease_weight(&lease("a", None, None)), None);
        assert_eq!(lease_weight(&lease("a", None, Some(0.0))), None);
        assert_eq!(lease_weight(&lease("a", None, Some(0.5))), Some(0.5));
        // Bytes weigh in when they are the tighter limit: 1 MiB/s of 10 KB records.
        let mut big = lease("b", None, None);
        big.load = Some(ShardLoad {
            records_per_sec: 100.0,
            bytes_per_sec: 1024.0 * 1024.0,
            millis_behind_latest: 0,
        });
        assert_eq!(lease_weight(&big), Some(1.0));
    }

    #[test]
    fn plans_from_a_table() {
        struct Case {
            name: &'static str,
            me: &'static str,
            leases: Vec<Lease>,
            live: Vec<&'static str>,
            expired: Vec<&'static str>,
            want: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "equal counts but one hot lease: the cold worker asks for a cold lease",
                me: "w2",
                leases: vec![
                    lease("s0", Some("w1"), Some(0.8)),
                    lease("s1", Some("w1"), Some(0.1)),
                    lease("s2", Some("w2"), Some(0.1)),
                    lease("s3", Some("w2"), Some(0.1)),
                ],
                live: vec!["w1", "w2"],
                expired: vec![],
                // w1 0.9 vs w2 0.2: moving s1 (0.1) gives 0.8/0.3; moving s0 gives
                // 0.1/1.0, worse. s1 it is.
                want: vec!["ask w1 for s1"],
            },
            Case {
                name: "within the threshold nothing moves",
                me: "w2",
                leases: vec![
                    lease("s0", Some("w1"), Some(0.50)),
                    lease("s1", Some("w2"), Some(0.46)),
                ],
                live: vec!["w1", "w2"],
                expired: vec![],
                want: vec![],
            },
            Case {
                name: "one hot lease alone: moving it would not help",
                me: "w2",
                leases: vec![
                    lease("s0", Some("w1"), Some(0.9)),
                    lease("s1", Some("w2"), Some(0.1)),
                    lease("s2", Some("w2"), Some(0.1)),
                ],
                live: vec!["w1", "w2"],
                expired: vec![],
                want: vec![],
            },
            Case {
                name: "free leases go heaviest first to the least loaded, shared out",
                me: "w2",
                leases: vec![
                    lease("s0", None, Some(0.9)),
                    lease("s1", None, Some(0.5)),
                    lease("s2", None, Some(0.4)),
                    lease("s3", None, Some(0.1)),
                ],
                live: vec!["w1", "w2"],
                expired: vec![],
                // w1 gets s0 (0.9); w2 s1 (0.5), then s2 (0.4 → 0.9); w1 s3.
                want: vec!["take s1", "take s2"],
            },
            Case {
                name: "expired leases are taken before any handoff",
                me: "w2",
                leases: vec![
                    lease("s0", Some("w1"), Some(0.9)),
                    lease("s1", Some("w1"), Some(0.9)),
                    lease("s2", Some("gone"), Some(0.1)),
                ],
                live: vec!["w1", "w2"],
                expired: vec!["s2"],
                want: vec!["take s2"],
            },
            Case {
                name: "a lease without data weighs the mean of those with data",
                me: "w2",
                leases: vec![
                    lease("s0", Some("w1"), Some(0.5)),
                    lease("s1", Some("w1"), None),
                    lease("s3", Some("w2"), Some(0.1)),
                ],
                live: vec!["w1", "w2"],
                expired: vec![],
                // s1 weighs 0.3 (+ floor): w1 0.83, w2 0.115. Moving s1 leaves
                // 0.515/0.43; moving s0 would leave 0.315/0.63.
                want: vec!["ask w1 for s1"],
            },
        ];
        for case in cases {
            let got = keys(&plan(case.me, &case.leases, &case.live, &case.expired));
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn no_load_data_falls_back_to_counts() {
        let leases = vec![
            lease("s0", Some("w1"), None),
            lease("s1", Some("w1"), None),
            lease("s2", Some("w1"), None),
            lease("s3", Some("w1"), None),
        ];
        let got = keys(&plan("w2", &leases, &["w1", "w2"], &[]));
        assert_eq!(got, ["ask w1 for s0", "ask w1 for s1"]);
    }

    /// One fleet: true weights per lease, owners, workers.
    struct Fleet {
        weights: BTreeMap<String, f64>,
        owners: BTreeMap<String, Option<String>>,
        workers: Vec<String>,
    }

    impl Fleet {
        fn leases(&self) -> Vec<Lease> {
            self.weights
                .iter()
                .map(|(k, w)| lease(k, self.owners[k].as_deref(), Some(*w)))
                .collect()
        }

        fn loads(&self) -> BTreeMap<&str, f64> {
            let mut loads: BTreeMap<&str, f64> =
                self.workers.iter().map(|w| (w.as_str(), 0.0)).collect();
            for (k, owner) in &self.owners {
                if let Some(o) = owner {
                    *loads.get_mut(o.as_str()).unwrap() += self.weights[k];
                }
            }
            loads
        }

        /// One taking cycle: every worker plans from the same snapshot, writes land in
        /// a random order, a write to a lease someone already wrote this cycle fails.
        /// Returns the leases that changed owner (takes and handoffs).
        fn cycle(&mut self, rng: &mut StdRng, expired: &HashSet<String>) -> usize {
            let leases = self.leases();
            let mut order = self.workers.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let mut written = HashSet::new();
            let mut moves = 0;
            for me in &order {
                let plan = plan_takes(&TakerInput {
                    me,
                    leases: &leases,
                    expired,
                    live_workers: &self.workers,
                    max_leases_per_worker: None,
                    seed: rng.random(),
                    absorb: false,
                    balance: Balance::load(),
                });
                for action in plan {
                    let key = action.key().to_string();
                    if !written.insert(key.clone()) {
                        continue;
                    }
                    moves += 1;
                    self.owners.insert(key, Some(me.clone()));
                }
            }
            moves
        }
    }

    /// Runs cycles until one moves nothing (at most 12), then checks that no single
    /// move would still even the fleet out and that five more cycles move nothing
    /// (steady state). Returns `Some(busiest ≤ 1.2 × mean)` when no shard alone outweighs the mean.
    fn settle(
        fleet: &mut Fleet,
        rng: &mut StdRng,
        what: &str,
        expired: &HashSet<String>,
    ) -> Option<bool> {
        let mut cycles = 0;
        while fleet.cycle(rng, expired) > 0 {
            cycles += 1;
            assert!(cycles <= 12, "{what}: not settled after 12 cycles");
        }
        let loads = fleet.loads();
        let mean = loads.values().sum::<f64>() / loads.len() as f64;
        // No single move from the busiest worker to the least loaded would even them
        // out by more than the threshold: what the planner aims for, checked here on
        // its weights (each lease's plus the floor).
        let floor = FLOOR * fleet.weights.values().sum::<f64>() / fleet.weights.len() as f64;
        let mut planned: BTreeMap<&str, f64> = loads.keys().map(|w| (*w, 0.0)).collect();
        for (key, owner) in &fleet.owners {
            *planned.get_mut(owner.as_deref().unwrap()).unwrap() += fleet.weights[key] + floor;
        }
        let planned_mean = planned.values().sum::<f64>() / planned.len() as f64;
        let (busiest, &high) = planned.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        let low = planned.values().copied().fold(f64::MAX, f64::min);
        for (key, owner) in &fleet.owners {
            if owner.as_deref() == Some(*busiest) {
                let w = fleet.weights[key] + floor;
                let gain = high - (high - w).max(low + w);
                assert!(
                    gain <= THRESHOLD * planned_mean + 1e-9,
                    "{what}: moving {key} ({w:.3}) off {busiest} would gain {gain:.3}: {planned:?}"
                );
            }
        }
        let top = loads.values().copied().fold(0.0, f64::max);
        let within = top <= 1.2 * mean;
        let heaviest = fleet.weights.values().copied().fold(0.0, f64::max);
        for _ in 0..5 {
            assert_eq!(
                fleet.cycle(rng, &HashSet::new()),
                0,
                "{what}: moves in steady state"
            );
        }
        (heaviest <= mean).then_some(within)
    }

    #[test]
    fn skewed_fleets_converge_and_stay_put_over_many_seeds() {
        let (mut judged, mut within) = (0, 0);
        let mut tally = |outcome: Option<bool>| {
            if let Some(ok) = outcome {
                judged += 1;
                within += usize::from(ok);
            }
        };
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let shards = rng.random_range(6..=24);
            // Skewed: a few hot shards (pickup regions), a long tail.
            let weights: BTreeMap<String, f64> = (0..shards)
                .map(|i| {
                    let hot = 1.0 / f64::from(i + 1).powf(rng.random_range(0.5..1.5));
                    (format!("s{i:02}"), hot * rng.random_range(0.5..1.0))
                })
                .collect();
            let owners = weights.keys().map(|k| (k.clone(), None)).collect();
            let workers: Vec<String> = (0..rng.random_range(2..=5))
                .map(|i| format!("w{i}"))
                .collect();
            let mut fleet = Fleet {
                weights,
                owners,
                workers,
            };
            let none = HashSet::new();
            tally(settle(
                &mut fleet,
                &mut rng,
                &format!("seed {seed}: start"),
                &none,
            ));
            // A worker joins.
            fleet.workers.push("joiner".into());
            tally(settle(
                &mut fleet,
                &mut rng,
                &format!("seed {seed}: join"),
                &none,
            ));
            // A worker leaves: its leases expire and are taken.
            let gone = fleet.workers.remove(0);
            let expired: HashSet<String> = fleet
                .owners
                .iter()
                .filter(|(_, o)| o.as_deref() == Some(gone.as_str()))
                .map(|(k, _)| k.clone())
                .collect();
            fleet.cycle(&mut rng, &expired);
            for owner in fleet.owners.values_mut() {
                if owner.as_deref() == Some(gone.as_str()) {
                    *owner = None;
                }
            }
            tally(settle(
                &mut fleet,
                &mut rng,
                &format!("seed {seed}: leave"),
                &none,
            ));
        }
        // Where no shard alone outweighs a worker's share, the busiest worker is within
        // 1.2× the mean in nearly every settled fleet.
        assert!(judged > 100, "{judged}");
        assert!(
            within * 100 >= judged * 95,
            "{within} of {judged} within 1.2× the mean"
        );
    }
}
