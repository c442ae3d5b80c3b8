//! Expiry as each worker sees it: a lease (or a worker heartbeat) is expired when its
//! counter has not changed for `failover_time` since *this* worker saw it change.
//! Clocks of different machines are never compared; only the local monotonic clock is.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::lease::Lease;
use super::store::WorkerHeartbeat;

#[derive(Clone, Copy, Debug)]
struct Seen {
    counter: u64,
    changed_at: Instant,
}

/// Tracks when leases' counters and workers' heartbeats last changed, as this worker
/// saw them: what decides that a lease or a worker has expired.
#[derive(Debug)]
pub struct ExpiryTracker {
    failover_time: Duration,
    leases: HashMap<String, Seen>,
    workers: HashMap<String, Seen>,
}

impl ExpiryTracker {
    /// A tracker judging expiry after `failover_time` without a counter change.
    pub fn new(failover_time: Duration) -> ExpiryTracker {
        ExpiryTracker {
            failover_time,
            leases: HashMap::new(),
            workers: HashMap::new(),
        }
    }

    /// Records a fresh listing of the lease table taken at `now`. A lease seen for the
    /// first time counts as changed now when it has an owner (we cannot know when it
    /// was last renewed, so we give its owner a full failover time), and as long
    /// expired when it has none. Leases no longer listed are forgotten.
    pub fn observe_leases(&mut self, leases: &[Lease], now: Instant) {
        let never = now.checked_sub(self.failover_time).unwrap_or(now);
        let mut next = HashMap::with_capacity(leases.len());
        for lease in leases {
            let seen = match self.leases.get(&lease.key) {
                Some(seen) if seen.counter == lease.counter => *seen,
                Some(_) => Seen {
                    counter: lease.counter,
                    changed_at: now,
                },
                None => Seen {
                    counter: lease.counter,
                    changed_at: if lease.owner.is_some() { now } else { never },
                },
            };
            next.insert(lease.key.clone(), seen);
        }
        self.leases = next;
    }

    /// Records a fresh listing of worker heartbeats taken at `now`.
    pub fn observe_workers(&mut self, workers: &[WorkerHeartbeat], now: Instant) {
        let mut next = HashMap::with_capacity(workers.len());
        for worker in workers {
            let seen = match self.workers.get(&worker.worker_id) {
                Some(seen) if seen.counter == worker.heartbeat => *seen,
                _ => Seen {
                    counter: worker.heartbeat,
                    changed_at: now,
                },
            };
            next.insert(worker.worker_id.clone(), seen);
        }
        self.workers = next;
    }

    /// Notes that this worker itself just changed a lease's counter (no need to wait
    /// for the next listing to know it is fresh).
    pub fn note_write(&mut self, key: &str, counter: u64, now: Instant) {
        self.leases.insert(
            key.to_string(),
            Seen {
                counter,
                changed_at: now,
            },
        );
    }

    /// Keys of leases whose counter has not changed for the failover time.
    pub fn expired_leases(&self, now: Instant) -> HashSet<String> {
        self.leases
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.changed_at) >= self.failover_time)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Workers whose heartbeat changed within the failover time.
    pub fn live_workers(&self, now: Instant) -> Vec<String> {
        let mut live: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.changed_at) < self.failover_time)
            .map(|(id, _)| id.clone())
            .collect();
        live.sort();
        live
    }

    /// Workers whose heartbeat has not changed for the failover time, with the
    /// heartbeat last seen: the condition of their eviction.
    pub fn dead_workers(&self, now: Instant) -> Vec<(String, u64)> {
        let mut dead: Vec<(String, u64)> = self
            .workers
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.changed_at) >= self.failover_time)
            .map(|(id, seen)| (id.clone(), seen.counter))
            .collect();
        dead.sort();
        dead
    }

    /// Every worker of the last snapshot of the group (less those forgotten since),
    /// sorted: the members as this worker knows them.
    pub fn workers(&self) -> Vec<String> {
        let mut workers: Vec<String> = self.workers.keys().cloned().collect();
        workers.sort();
        workers
    }

    /// Forgets a worker (evicted by this worker).
    pub fn forget_worker(&mut self, worker_id: &str) {
        self.workers.remove(worker_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ExtendedSequenceNumber;

    #[test]
    fn a_lease_expires_a_failover_time_after_its_counter_last_changed() {
        let mut lease = Lease::new("shardId-0", ExtendedSequenceNumber::shard_end());
        lease.owner = Some("w1".into());
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut tracker = ExpiryTracker::new(s(10));
        tracker.observe_leases(std::slice::from_ref(&lease), t0);
        assert!(tracker.expired_leases(t0 + s(9)).is_empty());
        assert!(tracker.expired_leases(t0 + s(10)).contains("shardId-0"));
        // A renewal seen in a later listing starts the clock again.
        lease.counter += 1;
        tracker.observe_leases(std::slice::from_ref(&lease), t0 + s(9));
        assert!(tracker.expired_leases(t0 + s(18)).is_empty());
        assert!(tracker.expired_leases(t0 + s(19)).contains("shardId-0"));
    }

    #[test]
    fn a_worker_is_dead_a_failover_time_after_its_heartbeat_last_changed() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let beat = |id: &str, heartbeat| WorkerHeartbeat {
            worker_id: id.into(),
            heartbeat,
            leases: None,
        };
        let mut tracker = ExpiryTracker::new(s(10));
        tracker.observe_workers(&[beat("a", 1), beat("b", 1)], t0);
        tracker.observe_workers(&[beat("a", 2), beat("b", 1)], t0 + s(5));
        assert_eq!(tracker.live_workers(t0 + s(9)), ["a", "b"]);
        assert!(tracker.dead_workers(t0 + s(9)).is_empty());
        assert_eq!(tracker.live_workers(t0 + s(10)), ["a"]);
        assert_eq!(tracker.dead_workers(t0 + s(10)), [("b".to_string(), 1)]);
        assert_eq!(tracker.workers(), ["a", "b"]);
        tracker.forget_worker("b");
        assert_eq!(tracker.workers(), ["a"]);
        assert!(
            tracker
                .dead_workers(t0 + s(20))
                .iter()
                .all(|(id, _)| id != "b")
        );
    }
}
