//! The city: a 50×50 grid of regions whose restaurants are unevenly popular, and the
//! prices people pay.
//!
//! Popularity is a few hotspots (town centres) with a Gaussian fall-off, times a
//! per-region factor (how many restaurants happen to be there), so neighbouring
//! regions differ and the top-10 pickup regions is a meaningful, stable answer.

use crate::events::{GRID, Region};

use super::rng::SimRng;

/// Pickup popularity over the grid, and sampling from it.
#[derive(Clone, Debug)]
pub struct City {
    /// Cumulative weights, region index `x * GRID + y`.
    cumulative: Vec<f64>,
}

const REGIONS: usize = GRID as usize * GRID as usize;
const HOTSPOTS: usize = 6;

impl City {
    /// A city drawn from `rng`.
    pub fn new(rng: &mut SimRng) -> City {
        let centres: Vec<(f64, f64, f64, f64)> = (0..HOTSPOTS)
            .map(|_| {
                let x = rng.unit() * f64::from(GRID);
                let y = rng.unit() * f64::from(GRID);
                let amplitude = 1.0 + 9.0 * rng.unit();
                let sigma = 1.5 + 3.5 * rng.unit();
                (x, y, amplitude, sigma)
            })
            .collect();
        let mut cumulative = Vec::with_capacity(REGIONS);
        let mut total = 0.0;
        for index in 0..REGIONS {
            let (x, y) = (
                (index / GRID as usize) as f64,
                (index % GRID as usize) as f64,
            );
            let heat: f64 = centres
                .iter()
                .map(|(cx, cy, a, s)| {
                    let d2 = (x - cx).powi(2) + (y - cy).powi(2);
                    a * (-d2 / (2.0 * s * s)).exp()
                })
                .sum();
            let restaurants = rng.normal().exp();
            total += (0.02 + heat) * restaurants;
            cumulative.push(total);
        }
        City { cumulative }
    }

    /// A pickup region, by popularity.
    pub fn pickup(&self, rng: &mut SimRng) -> Region {
        let total = *self.cumulative.last().expect("regions");
        let target = rng.unit() * total;
        let index = self
            .cumulative
            .partition_point(|c| *c <= target)
            .min(REGIONS - 1);
        Region {
            x: (index / GRID as usize) as u8,
            y: (index % GRID as usize) as u8,
        }
    }

    /// A drop-off region within five regions of the pickup (people order nearby).
    pub fn dropoff(&self, pickup: Region, rng: &mut SimRng) -> Region {
        let shift = |v: u8, rng: &mut SimRng| {
            (i64::from(v) + rng.between(-5, 5)).clamp(0, i64::from(GRID) - 1) as u8
        };
        Region {
            x: shift(pickup.x, rng),
            y: shift(pickup.y, rng),
        }
    }
}

/// A basket price in cents: log-normal around €24 (most orders €12–€50, a long tail of
/// office orders), at least €4.50 and at most €300.
pub fn price_cents(rng: &mut SimRng) -> i64 {
    let euros = 24.0 * (0.45 * rng.normal()).exp();
    ((euros * 100.0).round() as i64).clamp(450, 30_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popularity_is_skewed() {
        let mut rng = SimRng::new(7);
        let city = City::new(&mut rng);
        let mut counts = vec![0u32; REGIONS];
        for _ in 0..100_000 {
            let r = city.pickup(&mut rng);
            assert!(r.x < GRID && r.y < GRID);
            counts[r.x as usize * GRID as usize + r.y as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        // Uniform would give 10/2500 = 0.4% to the top 10.
        assert!(top10 > 2_000, "top-10 share {top10}/100000");
        assert!(counts[9] > counts[200] * 2);
    }

    #[test]
    fn prices_and_dropoffs_are_plausible() {
        let mut rng = SimRng::new(3);
        let city = City::new(&mut rng);
        let prices: Vec<i64> = (0..10_000).map(|_| price_cents(&mut rng)).collect();
        assert!(prices.iter().all(|p| (450..=30_000).contains(p)));
        let mean = prices.iter().sum::<i64>() / prices.len() as i64;
        assert!((2_200..3_000).contains(&mean), "{mean}");
        for _ in 0..1000 {
            let p = city.pickup(&mut rng);
            let d = city.dropoff(p, &mut rng);
            assert!(p.distance(&d) <= 10);
        }
    }
}
