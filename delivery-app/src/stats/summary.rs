//! The statistics themselves, as exact integers: what the consumer stores, what
//! `stats` prints and what the simulator's ground truth holds, in one type so that
//! "do they match" is `==`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::events::{Reason, Region};

/// How many regions the top list holds.
pub const TOP_N: usize = 10;

/// A region and how many orders were picked up there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionCount {
    /// The pickup region.
    pub region: Region,
    /// Orders created with this pickup region.
    pub orders: u64,
}

/// Exact sums and counts. Averages are derived ([`Summary::avg_response_ms`], ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Valid events applied (created + assigned + completed).
    pub events: u64,
    /// Orders created.
    pub orders_created: u64,
    /// Total price of created orders, cents.
    pub created_price_cents: i64,
    /// Orders assigned.
    pub orders_assigned: u64,
    /// Sum over assigned orders of `assigned_at - created_at`, ms.
    pub response_ms_sum: i64,
    /// Orders completed.
    pub orders_completed: u64,
    /// Total price of completed orders, cents.
    pub completed_price_cents: i64,
    /// Sum over completed orders of `completed_at - created_at`, ms.
    pub completion_ms_sum: i64,
    /// The [`TOP_N`] pickup regions by orders created, most first; ties by region.
    pub top_regions: Vec<RegionCount>,
}

impl Summary {
    /// Average response time (created → assigned), ms.
    pub fn avg_response_ms(&self) -> Option<f64> {
        ratio(self.response_ms_sum, self.orders_assigned)
    }

    /// Average completion time (created → completed), ms.
    pub fn avg_completion_ms(&self) -> Option<f64> {
        ratio(self.completion_ms_sum, self.orders_completed)
    }

    /// The names of the fields that differ from `other` (empty when equal).
    pub fn differences(&self, other: &Summary) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |name, same: bool| {
            if !same {
                out.push(name);
            }
        };
        check("events", self.events == other.events);
        check(
            "orders_created",
            self.orders_created == other.orders_created,
        );
        check(
            "created_price_cents",
            self.created_price_cents == other.created_price_cents,
        );
        check(
            "orders_assigned",
            self.orders_assigned == other.orders_assigned,
        );
        check(
            "response_ms_sum",
            self.response_ms_sum == other.response_ms_sum,
        );
        check(
            "orders_completed",
            self.orders_completed == other.orders_completed,
        );
        check(
            "completed_price_cents",
            self.completed_price_cents == other.completed_price_cents,
        );
        check(
            "completion_ms_sum",
            self.completion_ms_sum == other.completion_ms_sum,
        );
        check("top_regions", self.top_regions == other.top_regions);
        out
    }
}

impl Summary {
    /// Adds another summary's sums and counts (not the top list). Each shard's sums
    /// fit in 64 bits (the plan dead-letters what would overflow them), but sums over
    /// shards could still exceed them: they saturate rather than wrap or panic, so an
    /// impossible total shows as the largest number, not as a small wrong one.
    pub fn add(&mut self, o: &Summary) {
        self.events = self.events.saturating_add(o.events);
        self.orders_created = self.orders_created.saturating_add(o.orders_created);
        self.created_price_cents = self
            .created_price_cents
            .saturating_add(o.created_price_cents);
        self.orders_assigned = self.orders_assigned.saturating_add(o.orders_assigned);
        self.response_ms_sum = self.response_ms_sum.saturating_add(o.response_ms_sum);
        self.orders_completed = self.orders_completed.saturating_add(o.orders_completed);
        self.completed_price_cents = self
            .completed_price_cents
            .saturating_add(o.completed_price_cents);
        self.completion_ms_sum = self.completion_ms_sum.saturating_add(o.completion_ms_sum);
    }
}

fn ratio(sum: i64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum as f64 / count as f64)
}

/// Counters as the consumer accumulates them (per shard, then summed): the summary's
/// sums plus every region's count and the dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sums and counts (its `top_regions` is left empty; see [`Totals::summary`]).
    pub sums: Summary,
    /// Orders per pickup region.
    pub regions: BTreeMap<Region, u64>,
    /// Dead letters per reason.
    pub dead_letters: BTreeMap<Reason, u64>,
    /// Orders completed in another shard than the one they were created in (after a
    /// split or merge): evidence that resharding was crossed, not a statistic.
    pub cross_shard_completions: u64,
    /// Exact copies of an already applied event, as an at-least-once producer writes
    /// after a lost answer (the same bytes at another position): skipped. Not part of
    /// the ground truth, which counts each produced event once.
    pub redeliveries_skipped: u64,
}

impl Totals {
    /// Adds another shard's (or delta's) counters.
    pub fn add(&mut self, other: &Totals) {
        self.sums.add(&other.sums);
        for (region, n) in &other.regions {
            *self.regions.entry(*region).or_default() += n;
        }
        for (reason, n) in &other.dead_letters {
            *self.dead_letters.entry(*reason).or_default() += n;
        }
        self.cross_shard_completions += other.cross_shard_completions;
        self.redeliveries_skipped += other.redeliveries_skipped;
    }

    /// All dead letters.
    pub fn dead_letter_count(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// Records accounted for: valid events, dead letters and skipped redeliveries (every
    /// record the consumers were given; kcl-rs leaves out aggregates stored in the wrong
    /// shard before that).
    pub fn records(&self) -> u64 {
        self.sums.events + self.dead_letter_count() + self.redeliveries_skipped
    }

    /// The summary with its top list computed from the region counts.
    pub fn summary(&self) -> Summary {
        Summary {
            top_regions: top_regions(&self.regions, TOP_N),
            ..self.sums.clone()
        }
    }
}

/// The `n` regions with the most orders, most first, ties broken by region (x, then y)
/// so that the list is one exact answer. Linear in the number of regions plus
/// `n log n`: no sort of all regions.
///
/// ```
/// use std::collections::BTreeMap;
/// use delivery_app::events::Region;
/// use delivery_app::stats::summary::top_regions;
///
/// let r = |x, y| Region { x, y };
/// let counts = BTreeMap::from([(r(1, 1), 5), (r(0, 3), 9), (r(0, 2), 5), (r(7, 7), 0)]);
/// let top: Vec<_> = top_regions(&counts, 2).iter().map(|c| (c.region, c.orders)).collect();
/// assert_eq!(top, vec![(r(0, 3), 9), (r(0, 2), 5)]);
/// ```
pub fn top_regions(counts: &BTreeMap<Region, u64>, n: usize) -> Vec<RegionCount> {
    let mut all: Vec<RegionCount> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(region, orders)| RegionCount {
            region: *region,
            orders: *orders,
        })
        .collect();
    let order = |a: &RegionCount, b: &RegionCount| {
        b.orders
            .cmp(&a.orders)
            .then_with(|| a.region.cmp(&b.region))
    };
    if all.len() > n && n > 0 {
        all.select_nth_unstable_by(n - 1, order);
        all.truncate(n);
    }
    all.sort_by(order);
    all.truncate(n);
    all
}

/// Region counts from a hash map (the simulator's).
pub fn regions_from(map: &HashMap<Region, u64>) -> BTreeMap<Region, u64> {
    map.iter().map(|(r, n)| (*r, *n)).collect()
}

/// Cents as `€1,234.56` (negative values with a leading minus).
///
/// ```
/// assert_eq!(delivery_app::stats::summary::money(123456789), "€1,234,567.89");
/// assert_eq!(delivery_app::stats::summary::money(-5), "-€0.05");
/// ```
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}€{}.{:02}", thousands(abs / 100), abs % 100)
}

/// An integer with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An exact average of ms as seconds with three decimals (`1.234 s`), or `-`.
pub fn seconds(avg_ms: Option<f64>) -> String {
    match avg_ms {
        Some(ms) => format!("{:.3} s", ms / 1000.0),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: u8, y: u8) -> Region {
        Region { x, y }
    }

    #[test]
    fn top_regions_from_tables() {
        type Counts = Vec<(Region, u64)>;
        let cases: Vec<(Counts, usize, Counts)> = vec![
            (vec![], 10, vec![]),
            (vec![(r(1, 1), 0)], 10, vec![]),
            (
                vec![(r(1, 1), 3), (r(0, 0), 3), (r(2, 2), 4)],
                10,
                vec![(r(2, 2), 4), (r(0, 0), 3), (r(1, 1), 3)],
            ),
            (
                vec![(r(1, 1), 3), (r(0, 0), 3), (r(2, 2), 4)],
                2,
                vec![(r(2, 2), 4), (r(0, 0), 3)],
            ),
            (vec![(r(1, 1), 3)], 0, vec![]),
        ];
        for (counts, n, expected) in cases {
            let counts: BTreeMap<_, _> = counts.into_iter().collect();
            let got: Vec<_> = top_regions(&counts, n)
                .into_iter()
                .map(|c| (c.region, c.orders))
                .collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn top_regions_matches_a_full_sort_on_many_regions() {
        let mut counts = BTreeMap::new();
        let mut seed = 7u64;
        for x in 0..50 {
            for y in 0..50 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                counts.insert(r(x, y), (seed >> 60) + (x as u64 % 3));
            }
        }
        let mut all: Vec<_> = counts.iter().filter(|(_, n)| **n > 0).collect();
        all.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let expected: Vec<_> = all.iter().take(10).map(|(r, n)| (**r, **n)).collect();
        let got: Vec<_> = top_regions(&counts, 10)
            .into_iter()
            .map(|c| (c.region, c.orders))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn totals_add_and_summarise() {
        let mut a = Totals::default();
        a.sums.events = 3;
        a.sums.orders_created = 1;
        a.regions.insert(r(1, 2), 1);
        a.dead_letters.insert(Reason::NegativePrice, 1);
        a.redeliveries_skipped = 1;
        let mut total = Totals::default();
        total.add(&a);
        total.add(&a);
        assert_eq!(total.sums.events, 6);
        assert_eq!(total.regions[&r(1, 2)], 2);
        assert_eq!(total.dead_letter_count(), 2);
        assert_eq!(total.redeliveries_skipped, 2);
        assert_eq!(total.records(), 10);
        assert_eq!(total.summary().top_regions[0].orders, 2);
        assert!(total.summary().differences(&total.summary()).is_empty());
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(money(0), "€0.00");
        assert_eq!(money(100_000), "€1,000.00");
        assert_eq!(seconds(Some(1234.0)), "1.234 s");
        assert_eq!(seconds(None), "-");
    }
}
