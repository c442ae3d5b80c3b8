//! When a taking cycle lists the whole lease table: a decision as a pure function of
//! what the last listing showed and what the worker table shows now.

use std::time::Instant;

use super::coordinator::LeaseConfig;

/// What the last listing of the whole lease table showed, to decide when the next one
/// is needed.
#[derive(Default)]
pub(super) struct LastScan {
    pub(super) at: Option<Instant>,
    pub(super) live_workers: Vec<String>,
    pub(super) leases: usize,
}

/// Whether a taking cycle must list the whole lease table, the one expensive read (on
/// a 1,000-lease table, tens of read units): only when something may have changed that
/// this worker must act on. Its own leases need no listing: their renewals see a
/// handoff request or a new owner.
pub(super) fn scan_due(
    last: &LastScan,
    live: &[String],
    held: usize,
    expiry_due: bool,
    config: &LeaseConfig,
    now: Instant,
) -> bool {
    let Some(at) = last.at else { return true };
    if now >= at + config.lease_scan_interval() || last.live_workers != live {
        // Periodically, and at once when a worker joined or left (a graceful leaver
        // releases its leases before it removes its record).
        return true;
    }
    let share = last.leases / live.len().max(1);
    let share = config.max_leases_per_worker.map_or(share, |m| share.min(m));
    // Balancing: keep looking until this worker holds its share. And a lease observed
    // held by another worker may have expired since.
    held < share || expiry_due
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_lease_table_is_listed_only_when_something_may_have_changed() {
        let config = LeaseConfig::new("w1"); // failover 10 s: listed every 2.5 s at least
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let live = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let last = LastScan {
            at: Some(t0),
            live_workers: live(&["w1", "w2"]),
            leases: 10,
        };
        let never = LastScan::default();
        // (last scan, live workers, held, an expiry due, elapsed) → due
        let cases = [
            (&never, live(&["w1"]), 0, false, ms(0), true),
            (&last, live(&["w1", "w2"]), 5, false, ms(500), false),
            (&last, live(&["w1", "w2"]), 5, false, ms(2_499), false),
            (&last, live(&["w1", "w2"]), 5, false, ms(2_500), true),
            (&last, live(&["w1", "w2", "w3"]), 5, false, ms(500), true),
            (&last, live(&["w1"]), 5, false, ms(500), true),
            (&last, live(&["w1", "w2"]), 4, false, ms(500), true),
            (&last, live(&["w1", "w2"]), 6, false, ms(500), false),
            (&last, live(&["w1", "w2"]), 5, true, ms(500), true),
        ];
        for (i, (last, live, held, expiry, elapsed, due)) in cases.into_iter().enumerate() {
            assert_eq!(
                scan_due(last, &live, held, expiry, &config, t0 + elapsed),
                due,
                "case {i}"
            );
        }
        let mut capped = config.clone();
        capped.max_leases_per_worker = Some(3);
        assert!(!scan_due(
            &last,
            &live(&["w1", "w2"]),
            3,
            false,
            &capped,
            t0 + ms(500)
        ));
    }
}
