//! Drivers: where they are, when they are free, and which one takes an order.
//!
//! Dispatch is decided when the order is created, in creation order: the driver who
//! can reach the pickup first takes it, accepts when free (after a short think), waits
//! for the food if it is not ready, and delivers. The driver is then free at the
//! drop-off. Deciding up front keeps the simulation a pure function of the seed.

use crate::events::{GRID, Region};

use super::rng::SimRng;

/// One driver.
#[derive(Clone, Debug)]
pub struct Driver {
    /// `driver-007`.
    pub id: String,
    /// Where the driver will be when free.
    pub position: Region,
    /// Simulated ms at which the driver is free.
    pub free_at: i64,
}

/// The outcome of dispatching one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trip {
    /// Index of the driver in the fleet.
    pub driver: usize,
    /// When the driver accepted (≥ the creation time).
    pub assigned_at: i64,
    /// Where the driver was when accepting.
    pub driver_position: Region,
    /// Estimated ms from acceptance to pickup.
    pub eta_pickup_ms: i64,
    /// When the food was delivered.
    pub completed_at: i64,
    /// Pickup to drop-off, in regions.
    pub distance: u32,
}

/// The drivers and how fast they move.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// The drivers, by index.
    pub drivers: Vec<Driver>,
    /// Simulated ms to cross one region.
    pub region_ms: i64,
}

impl Fleet {
    /// `count` drivers at random regions, free at time 0.
    pub fn new(count: usize, region_ms: i64, rng: &mut SimRng) -> Fleet {
        let drivers = (0..count)
            .map(|i| Driver {
                id: format!("driver-{:03}", i + 1),
                position: Region {
                    x: rng.between(0, i64::from(GRID) - 1) as u8,
                    y: rng.between(0, i64::from(GRID) - 1) as u8,
                },
                free_at: 0,
            })
            .collect();
        Fleet { drivers, region_ms }
    }

    /// Assigns an order created at `created_at` to the driver who reaches `pickup`
    /// first (ties: the lower index) and plans the trip.
    pub fn dispatch(
        &mut self,
        created_at: i64,
        pickup: Region,
        dropoff: Region,
        rng: &mut SimRng,
    ) -> Trip {
        let reach = |d: &Driver| {
            created_at.max(d.free_at) + i64::from(d.position.distance(&pickup)) * self.region_ms
        };
        let (index, _) = self
            .drivers
            .iter()
            .enumerate()
            .min_by_key(|(i, d)| (reach(d), *i))
            .expect("at least one driver");
        let accept_ms = rng.between(30, 300);
        let prepare_ms = rng.between(100, 600);
        let driver = &mut self.drivers[index];
        let assigned_at = created_at.max(driver.free_at) + accept_ms;
        let eta_pickup_ms = i64::from(driver.position.distance(&pickup)) * self.region_ms;
        let departs = (assigned_at + eta_pickup_ms).max(created_at + prepare_ms);
        let distance = pickup.distance(&dropoff);
        let completed_at = departs + i64::from(distance.max(1)) * self.region_ms;
        let trip = Trip {
            driver: index,
            assigned_at,
            driver_position: driver.position,
            eta_pickup_ms,
            completed_at,
            distance,
        };
        driver.position = dropoff;
        driver.free_at = completed_at;
        trip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: u8, y: u8) -> Region {
        Region { x, y }
    }

    #[test]
    fn the_driver_who_arrives_first_takes_the_order() {
        let mut rng = SimRng::new(1);
        let mut fleet = Fleet::new(2, 10, &mut rng);
        fleet.drivers[0].position = at(0, 0);
        fleet.drivers[1].position = at(10, 10);
        // Driver 0 is nearer but busy for long: driver 1 arrives first.
        fleet.drivers[0].free_at = 1_000;
        let trip = fleet.dispatch(0, at(1, 1), at(2, 2), &mut rng);
        assert_eq!(trip.driver, 1);
        assert!(trip.assigned_at >= 30 && trip.assigned_at <= 300);
        assert!(trip.completed_at > trip.assigned_at + trip.eta_pickup_ms);
        assert_eq!(fleet.drivers[1].position, at(2, 2));
        assert_eq!(fleet.drivers[1].free_at, trip.completed_at);
        // The next order waits for a driver to be free.
        let next = fleet.dispatch(1, at(2, 2), at(2, 3), &mut rng);
        assert!(next.assigned_at >= trip.completed_at.min(1_000));
    }

    #[test]
    fn times_are_ordered() {
        let mut rng = SimRng::new(9);
        let mut fleet = Fleet::new(10, 20, &mut rng);
        let mut t = 0;
        for _ in 0..1_000 {
            t += 90;
            let p = at(rng.between(0, 49) as u8, rng.between(0, 49) as u8);
            let trip = fleet.dispatch(t, p, p, &mut rng);
            assert!(trip.assigned_at > t);
            assert!(trip.completed_at > trip.assigned_at);
        }
    }
}
