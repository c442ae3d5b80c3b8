//! When a taking cycle lists the whole lease table: a decision as a pure function of
//! what the last listing showed and what the worker sees of the group now.

use std::time::Instant;

use super::coordinator::LeaseConfig;

/// What the last listing of the whole lease table showed, to decide when the next one
/// is needed.
#[derive(Default)]
pub(super) struct LastScan {
    pub(super) at: Option<Instant>,
    /// The group's members as seen before the listing: one that leaves after it is
    /// noticed at the next cycle.
    pub(super) members: Vec<String>,
    pub(super) leases: usize,
    pub(super) lease_generation: u64,
}

/// What the worker sees now: the group (from its last heartbeat, or for the leader its
/// last read of the group) and its own leases.
pub(super) struct Seen<'a> {
    pub(super) at: Instant,
    /// Members of the group (a dead worker stays one until it is evicted).
    pub(super) members: &'a [String],
    /// How many workers have a live heartbeat.
    pub(super) live: usize,
    pub(super) lease_generation: u64,
    pub(super) held: usize,
    /// The most leases another live member said it held at its last heartbeat.
    pub(super) busiest: u64,
    pub(super) leader: bool,
}

/// Whether a taking cycle must list the whole lease table, the one expensive read (on
/// a 1,000-lease table, tens of read units): only when there may be something this
/// worker must act on.
///
/// - Leases were created or deleted (the group's lease generation moved).
/// - A worker left or was evicted: its leases are free (released) or orphaned (owned by
///   a worker that is no longer a member), and shares grew.
/// - This worker holds fewer than its share (`leases / live workers`, rounded down):
///   it is new, or others are over their share.
/// - This worker holds fewer than the target (the share rounded up) and another holds
///   at least two more than it, as the heartbeats say: a handoff would even them out.
///   After a departure the leader takes every lease left behind, so the others are
///   often at their rounded-down share while it is above the target.
/// - This worker holds fewer than the target, once per failover time: a lease whose
///   owner stopped renewing it but is still a member is taken by a worker below
///   target, and with more workers than leases the rounded-down share is 0.
/// - The leader, in addition, every `lease_scan_interval`: the slow path for a lease
///   whose owner heartbeats but stopped renewing that lease; expiry is judged across
///   two such listings.
/// - With [`Balance::Load`](crate::leases::Balance), every worker once per failover
///   time: loads change without any of the above (a Scan per worker per 10 s by
///   default).
///
/// A worker that joined needs no listing by the others: it asks for handoffs itself.
/// Own leases need no listing: their renewals see a handoff request or a new owner.
pub(super) fn scan_due(last: &LastScan, seen: &Seen, config: &LeaseConfig) -> bool {
    let Some(at) = last.at else { return true };
    if seen.lease_generation != last.lease_generation {
        return true;
    }
    if last.members.iter().any(|w| !seen.members.contains(w)) {
        return true;
    }
    if seen.leader && seen.at >= at + config.lease_scan_interval() {
        return true;
    }
    // Balancing by load needs the loads the owners write at renewal: every worker
    // looks once per failover time, whatever the counts say.
    if matches!(config.balance, crate::leases::Balance::Load { .. })
        && seen.at >= at + config.failover_time
    {
        return true;
    }
    let cap = |n: usize| config.max_leases_per_worker.map_or(n, |m| n.min(m));
    let live = seen.live.max(1);
    if seen.held < cap(last.leases / live) {
        return true;
    }
    if seen.held >= cap(last.leases.div_ceil(live)) {
        return false;
    }
    // Below the target: at once when a handoff would even things out; otherwise once
    // per failover time, so that a lease whose owner stopped renewing it without
    // leaving the group (it gave its leases up when its heartbeats failed, then
    // recovered) is seen expired and taken, even with more workers than leases.
    seen.busiest >= seen.held as u64 + 2 || seen.at >= at + config.failover_time
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_lease_table_is_listed_only_when_something_may_have_changed() {
        let config = LeaseConfig::new("w1"); // failover 10 s: the leader lists every 60 s
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let live = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let last = LastScan {
            at: Some(t0),
            members: live(&["w1", "w2"]),
            leases: 10,
            lease_generation: 3,
        };
        let never = LastScan::default();
        let eight = LastScan {
            at: Some(t0),
            members: live(&["w1", "w2", "w3"]),
            leases: 8,
            lease_generation: 3,
        };
        let three = LastScan {
            at: Some(t0),
            members: live(&["w1", "w2", "w3", "w4"]),
            leases: 3,
            lease_generation: 3,
        };
        // (last, live, generation, held, busiest other, leader, elapsed) → due
        let (w12, w123, w1234) = (
            live(&["w1", "w2"]),
            live(&["w1", "w2", "w3"]),
            live(&["w1", "w2", "w3", "w4"]),
        );
        let cases = [
            (&never, live(&["w1"]), 0, 0, 0, false, s(0), true),
            // Nothing changed.
            (&last, w12.clone(), 3, 5, 5, false, s(1), false),
            (&last, w12.clone(), 3, 5, 5, false, s(300), false),
            (&last, w12.clone(), 3, 5, 5, true, s(59), false),
            // The leader's slow path.
            (&last, w12.clone(), 3, 5, 5, true, s(60), true),
            // Leases created or deleted.
            (&last, w12.clone(), 4, 5, 5, false, s(1), true),
            // A worker joined: the newcomer asks, the others need not look.
            (&last, w123.clone(), 3, 5, 5, false, s(1), false),
            (&last, w123.clone(), 3, 5, 5, true, s(1), false),
            // A worker left or was evicted.
            (&last, live(&["w1"]), 3, 5, 5, false, s(1), true),
            (&last, live(&["w1", "w3"]), 3, 5, 5, false, s(1), true),
            // Below its share.
            (&last, w12.clone(), 3, 4, 6, false, s(1), true),
            (&last, w12.clone(), 3, 6, 4, false, s(1), false),
            // 8 leases on 3 workers: 3/3/2 is even; 4/2/2 (the leader absorbed a
            // departed worker's leases) is not, and only the heartbeats show it.
            (&eight, w123.clone(), 3, 2, 3, false, s(1), false),
            (&eight, w123.clone(), 3, 2, 4, false, s(1), true),
            (&eight, w123.clone(), 3, 3, 5, false, s(1), false),
            (&eight, w123.clone(), 3, 1, 3, false, s(1), true),
            // Below the target, nobody to ask: a look once per failover time (10 s).
            (&eight, w123.clone(), 3, 2, 3, false, s(10), true),
            (&eight, w123.clone(), 3, 3, 3, false, s(10), false),
            // 3 leases on 4 workers: the share is 0, the target 1.
            (&three, w1234.clone(), 3, 0, 1, false, s(9), false),
            (&three, w1234.clone(), 3, 0, 1, false, s(10), true),
            (&three, w1234.clone(), 3, 1, 1, false, s(10), false),
        ];
        for (i, (last, live, generation, held, busiest, leader, elapsed, due)) in
            cases.into_iter().enumerate()
        {
            let seen = Seen {
                at: t0 + elapsed,
                members: &live,
                live: live.len(),
                lease_generation: generation,
                held,
                busiest,
                leader,
            };
            assert_eq!(scan_due(last, &seen, &config), due, "case {i}");
        }
        let mut capped = config.clone();
        capped.max_leases_per_worker = Some(3);
        let seen = Seen {
            at: t0 + s(1),
            members: &live(&["w1", "w2"]),
            live: 2,
            lease_generation: 3,
            held: 3,
            busiest: 7,
            leader: false,
        };
        assert!(!scan_due(&last, &seen, &capped));
        // Balancing by load: every worker, at its share or not, once per failover time.
        let mut by_load = config.clone();
        by_load.balance = crate::leases::Balance::load();
        for (elapsed, due) in [(s(1), false), (s(9), false), (s(10), true)] {
            let seen = Seen {
                at: t0 + elapsed,
                members: &w12,
                live: 2,
                lease_generation: 3,
                held: 5,
                busiest: 5,
                leader: false,
            };
            assert_eq!(scan_due(&last, &seen, &by_load), due, "{elapsed:?}");
        }
    }
}
