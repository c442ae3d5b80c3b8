//! The food-delivery simulation: orders appear at popular pickup regions, drivers
//! accept and deliver them, and every step is an event on the stream. Deterministic
//! from a seed; it also keeps the ground truth — the exact statistics the events it
//! produced imply — so a consumer's result can be checked to the cent.
//!
//! ```
//! use delivery_app::sim::{SimConfig, Simulation};
//!
//! let config = SimConfig { duration_ms: 2_000, ..SimConfig::default() };
//! let events: Vec<_> = Simulation::new(config.clone()).collect();
//! let again: Vec<_> = Simulation::new(config).collect();
//! assert_eq!(events, again); // same seed, same events
//! assert!(events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms)); // in time order
//! ```
//!
//! Simulated time runs from [`EPOCH_MS`] (2024-01-01T00:00:00Z). How fast it is
//! replayed in real time is the producer's business (`produce --speed`).

mod city;
mod fleet;
mod inject;
mod rng;
mod wire;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

pub use city::{City, price_cents};
pub use fleet::{Driver, Fleet, Trip};
pub use rng::SimRng;

use crate::events::{Reason, Region};
use crate::stats::summary::{Summary, Totals};

/// Simulated time zero: 2024-01-01T00:00:00Z, in ms since the Unix epoch.
pub const EPOCH_MS: i64 = 1_704_067_200_000;

/// Which partition key events carry. Every event of one order has the same key either
/// way, so an order's events stay in one shard's lineage, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KeyStrategy {
    /// The order id: spreads evenly over the shards.
    #[default]
    Order,
    /// The pickup region (`region-12-40`): popular regions make hot shards.
    Region,
}

/// Simulation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of drivers.
    pub drivers: usize,
    /// Mean simulated ms between two orders (arrivals are a Poisson process).
    pub order_interval_ms: f64,
    /// Orders are created during this many simulated ms; those in flight then finish.
    pub duration_ms: i64,
    /// Stop creating orders after this many, if sooner.
    pub max_orders: Option<u64>,
    /// Simulated ms a driver needs to cross one region.
    pub region_ms: i64,
    /// The partition key of the events.
    pub keys: KeyStrategy,
    /// Bad events to mix in (malformed JSON, unknown types, off-grid regions, negative
    /// prices, events before their order's creation, duplicates), spread over the run.
    pub bad_events: u64,
    /// Also put, once at 30% of the orders, the records DynamoDB would refuse or the
    /// sums could not hold (see `inject::hostile_events`): 100 oversized ids and an
    /// order whose completion overflows the sums.
    #[serde(default)]
    pub hostile_events: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            drivers: 10,
            order_interval_ms: 90.0,
            duration_ms: 60_000,
            max_orders: None,
            region_ms: 20,
            keys: KeyStrategy::Order,
            bad_events: 0,
            hostile_events: false,
        }
    }
}

impl SimConfig {
    /// Orders the run is expected to create.
    pub fn expected_orders(&self) -> u64 {
        let by_time = (self.duration_ms as f64 / self.order_interval_ms).round() as u64;
        self.max_orders.map_or(by_time, |max| max.min(by_time))
    }
}

/// What an event is, for the producer's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `order_created`.
    Created,
    /// `order_assigned`.
    Assigned,
    /// `order_completed`.
    Completed,
    /// An injected bad event, and the reason the consumer should give.
    Bad(Reason),
}

/// One event to put on the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimEvent {
    /// Simulated ms since [`EPOCH_MS`] at which it happens.
    pub at_ms: i64,
    /// The order it refers to: later events of an order must be put only after earlier
    /// ones are acknowledged (see `sink`).
    pub order_id: String,
    /// Its partition key.
    pub partition_key: String,
    /// The JSON.
    pub data: Vec<u8>,
    /// What it is.
    pub kind: EventKind,
}

/// The exact statistics the produced events imply, and how many bad events were mixed in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// The simulation's settings.
    pub config: SimConfig,
    /// User records produced (valid and bad).
    pub records: u64,
    /// The statistics of the valid events.
    pub summary: Summary,
    /// Bad events per reason the consumer should give.
    pub dead_letters: BTreeMap<Reason, u64>,
}

impl GroundTruth {
    /// All bad events.
    pub fn dead_letter_count(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

/// How an emitted event changes the ground truth.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    Created {
        price_cents: i64,
        pickup: Region,
    },
    Assigned {
        response_ms: i64,
    },
    Completed {
        completion_ms: i64,
        price_cents: i64,
    },
    Bad(Reason),
}

#[derive(Debug)]
struct Scheduled {
    at: i64,
    seq: u64,
    event: SimEvent,
    effect: Effect,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The simulation, as an iterator of events in simulated-time order.
pub struct Simulation {
    config: SimConfig,
    rng: SimRng,
    city: City,
    fleet: Fleet,
    next_arrival: Option<i64>,
    orders: u64,
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    events: u64,
    now_ms: i64,
    truth: Totals,
    records: u64,
    injected: u64,
    inject_every: u64,
}

impl Simulation {
    /// A simulation at time zero.
    pub fn new(config: SimConfig) -> Simulation {
        let mut rng = SimRng::new(config.seed);
        let city = City::new(&mut rng);
        let fleet = Fleet::new(config.drivers.max(1), config.region_ms.max(1), &mut rng);
        let inject_every = (config.expected_orders() / (config.bad_events + 1)).max(1);
        let first = (config.duration_ms > 0 && config.max_orders != Some(0)).then_some(0);
        Simulation {
            config,
            rng,
            city,
            fleet,
            next_arrival: first,
            orders: 0,
            scheduled: BinaryHeap::new(),
            seq: 0,
            events: 0,
            now_ms: 0,
            truth: Totals::default(),
            records: 0,
            injected: 0,
            inject_every,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Simulated time of the last event returned.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// How far the run is, 0 to 1, by simulated time or order count.
    pub fn progress(&self) -> f64 {
        if self.next_arrival.is_none() {
            return 1.0;
        }
        let by_time = self.now_ms as f64 / self.config.duration_ms.max(1) as f64;
        let by_count = self
            .config
            .max_orders
            .map_or(0.0, |max| self.orders as f64 / max.max(1) as f64);
        by_time.max(by_count).min(1.0)
    }

    /// The ground truth of the events returned so far.
    pub fn truth(&self) -> GroundTruth {
        GroundTruth {
            config: self.config.clone(),
            records: self.records,
            summary: self.truth.summary(),
            dead_letters: self.truth.dead_letters.clone(),
        }
    }

    fn schedule(&mut self, at: i64, event: SimEvent, effect: Effect) {
        self.seq += 1;
        self.scheduled.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
            effect,
        }));
    }

    fn next_event_id(&mut self) -> String {
        self.events += 1;
        format!("evt-{}-{:09}", self.config.seed, self.events)
    }

    fn envelope<'a>(&mut self, order_id: &'a str) -> wire::Envelope<'a> {
        wire::Envelope {
            event_id: self.next_event_id(),
            order_id,
            trace_id: self.rng.hex128(),
            pick: self.rng.next_u64(),
        }
    }

    fn partition_key(&self, order_id: &str, pickup: Region) -> String {
        match self.config.keys {
            KeyStrategy::Order => order_id.to_string(),
            KeyStrategy::Region => format!("region-{}-{}", pickup.x, pickup.y),
        }
    }

    /// Creates the order arriving at `t`, plans its trip and schedules its events.
    fn arrive(&mut self, t: i64) {
        self.orders += 1;
        let order_id = format!("o{}-{:07}", self.config.seed, self.orders);
        let pickup = self.city.pickup(&mut self.rng);
        let dropoff = self.city.dropoff(pickup, &mut self.rng);
        let price = price_cents(&mut self.rng);
        let trip = self.fleet.dispatch(t, pickup, dropoff, &mut self.rng);
        let driver_id = self.fleet.drivers[trip.driver].id.clone();
        let key = self.partition_key(&order_id, pickup);
        let created_at = EPOCH_MS + t;
        let event = |at: i64, data: Vec<u8>, kind| SimEvent {
            at_ms: at,
            order_id: order_id.clone(),
            partition_key: key.clone(),
            data,
            kind,
        };
        let env = self.envelope(&order_id);
        let created_json = wire::created(&env, created_at, pickup, dropoff, price);
        let env = self.envelope(&order_id);
        let assigned_json = wire::assigned(
            &env,
            &driver_id,
            EPOCH_MS + trip.assigned_at,
            trip.driver_position,
            trip.eta_pickup_ms,
        );
        let env = self.envelope(&order_id);
        let completed_json = wire::completed(
            &env,
            EPOCH_MS + trip.completed_at,
            &driver_id,
            dropoff,
            trip.distance,
        );
        let order = inject::Order {
            order_id: order_id.clone(),
            partition_key: key.clone(),
            created_at,
            created_ms: t,
            completed_ms: trip.completed_at,
            created_json: created_json.clone(),
            pickup,
        };
        self.schedule(
            t,
            event(t, created_json, EventKind::Created),
            Effect::Created {
                price_cents: price,
                pickup,
            },
        );
        self.schedule(
            trip.assigned_at,
            event(trip.assigned_at, assigned_json, EventKind::Assigned),
            Effect::Assigned {
                response_ms: trip.assigned_at - t,
            },
        );
        self.schedule(
            trip.completed_at,
            event(trip.completed_at, completed_json, EventKind::Completed),
            Effect::Completed {
                completion_ms: trip.completed_at - t,
                price_cents: price,
            },
        );
        let next = t + (self.rng.exponential(self.config.order_interval_ms).round() as i64).max(1);
        let more = next < self.config.duration_ms
            && self.config.max_orders.is_none_or(|max| self.orders < max);
        self.next_arrival = more.then_some(next);
        if self.config.hostile_events
            && self.orders == (self.config.expected_orders() * 3 / 10).max(1)
        {
            let ancient = format!("ancient{}-{:07}", self.config.seed, self.orders);
            let rng = &mut self.rng;
            let (seed, events) = (self.config.seed, &mut self.events);
            let hostile = inject::hostile_events(&order, &ancient, || {
                *events += 1;
                (
                    format!("evt-{seed}-{events:09}"),
                    rng.hex128(),
                    rng.next_u64(),
                )
            });
            for (event, effect) in hostile {
                self.schedule(event.at_ms, event, effect);
            }
        }
        // Bad events spread over the run; whatever is left goes in with the last order.
        while self.injected < self.config.bad_events
            && (self.orders.is_multiple_of(self.inject_every) || self.next_arrival.is_none())
        {
            self.inject(&order);
            if self.next_arrival.is_some() {
                break;
            }
        }
    }

    fn inject(&mut self, order: &inject::Order) {
        let n = self.injected;
        self.injected += 1;
        let fresh_id = format!("bad{}-{:05}", self.config.seed, n);
        let fresh_key = match self.config.keys {
            KeyStrategy::Order => fresh_id.clone(),
            KeyStrategy::Region => format!(
                "region-{}-{}",
                self.rng.between(0, 49),
                self.rng.between(0, 49)
            ),
        };
        let env = self.envelope(&fresh_id);
        let bad = inject::bad_event(n, order, &fresh_id, &fresh_key, &env, &mut self.rng);
        self.schedule(bad.at_ms, bad.clone(), Effect::Bad(bad_reason(&bad)));
    }
}

fn bad_reason(event: &SimEvent) -> Reason {
    match event.kind {
        EventKind::Bad(reason) => reason,
        _ => unreachable!("injected events are bad"),
    }
}

impl Iterator for Simulation {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        loop {
            if let Some(t) = self.next_arrival
                && self.scheduled.peek().is_none_or(|Reverse(top)| t <= top.at)
            {
                self.arrive(t);
                continue;
            }
            let Reverse(next) = self.scheduled.pop()?;
            self.now_ms = next.at;
            self.records += 1;
            let sums = &mut self.truth.sums;
            match next.effect {
                Effect::Created {
                    price_cents,
                    pickup,
                } => {
                    sums.events += 1;
                    sums.orders_created += 1;
                    sums.created_price_cents += price_cents;
                    *self.truth.regions.entry(pickup).or_default() += 1;
                }
                Effect::Assigned { response_ms } => {
                    sums.events += 1;
                    sums.orders_assigned += 1;
                    sums.response_ms_sum += response_ms;
                }
                Effect::Completed {
                    completion_ms,
                    price_cents,
                } => {
                    sums.events += 1;
                    sums.orders_completed += 1;
                    sums.completed_price_cents += price_cents;
                    sums.completion_ms_sum += completion_ms;
                }
                Effect::Bad(reason) => *self.truth.dead_letters.entry(reason).or_default() += 1,
            }
            return Some(next.event);
        }
    }
}

#[cfg(test)]
mod tests;
