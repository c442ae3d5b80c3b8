//! What `delivery-app stats` prints: the statistics as a table or JSON, and side by
//! side with a ground truth. Apart from [`crate::stats`], which computes the
//! statistics, since it needs the simulation's ground truth too.

use std::fmt::Write;

use serde::Serialize;

use crate::events::Reason;
use crate::sim::GroundTruth;
use crate::stats::store::StoredStats;
use crate::stats::summary::{Summary, money, seconds, thousands};

/// The JSON `stats --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct StatsJson {
    /// The statistics, exact.
    pub summary: Summary,
    /// Average response time, ms.
    pub avg_response_ms: Option<f64>,
    /// Average completion time, ms.
    pub avg_completion_ms: Option<f64>,
    /// Dead letters per reason.
    pub dead_letters: std::collections::BTreeMap<Reason, u64>,
    /// Records accounted for (events + dead letters + skipped redeliveries).
    pub records: u64,
    /// Orders completed in another shard than they were created in.
    pub cross_shard_completions: u64,
    /// Exact copies of applied events (producer retries) skipped. Not compared with the
    /// ground truth.
    pub redeliveries_skipped: u64,
    /// Per shard: id, events, dead letters.
    pub shards: Vec<ShardJson>,
    /// Comparison with a ground truth, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ground_truth: Option<TruthComparison>,
}

/// One shard's share.
#[derive(Clone, Debug, Serialize)]
pub struct ShardJson {
    /// The shard.
    pub shard_id: String,
    /// Valid events applied from it.
    pub events: u64,
    /// Dead letters from it.
    pub dead_letters: u64,
    /// The last record applied, `sequence.sub`.
    pub watermark: Option<String>,
}

/// The statistics against a ground truth.
#[derive(Clone, Debug, Serialize)]
pub struct TruthComparison {
    /// Whether every statistic and the dead-letter counts are equal.
    pub matches: bool,
    /// The fields that differ.
    pub differences: Vec<String>,
    /// The ground truth's statistics.
    pub expected: Summary,
    /// The ground truth's dead letters.
    pub expected_dead_letters: std::collections::BTreeMap<Reason, u64>,
}

/// Compares stored statistics with a ground truth: the summary and the dead letters.
/// The skip counter (redeliveries) is not part of the ground truth.
pub fn compare(stats: &StoredStats, truth: &GroundTruth) -> TruthComparison {
    let mut differences: Vec<String> = stats
        .totals
        .summary()
        .differences(&truth.summary)
        .into_iter()
        .map(str::to_string)
        .collect();
    if stats.totals.dead_letters != truth.dead_letters {
        differences.push("dead_letters".into());
    }
    TruthComparison {
        matches: differences.is_empty(),
        differences,
        expected: truth.summary.clone(),
        expected_dead_letters: truth.dead_letters.clone(),
    }
}

/// The JSON document.
pub fn to_json(stats: &StoredStats, truth: Option<&GroundTruth>) -> StatsJson {
    let summary = stats.totals.summary();
    StatsJson {
        avg_response_ms: summary.avg_response_ms(),
        avg_completion_ms: summary.avg_completion_ms(),
        summary,
        dead_letters: stats.totals.dead_letters.clone(),
        records: stats.totals.records(),
        cross_shard_completions: stats.totals.cross_shard_completions,
        redeliveries_skipped: stats.totals.redeliveries_skipped,
        shards: stats
            .shards
            .iter()
            .map(|s| ShardJson {
                shard_id: s.shard_id.clone(),
                events: s.totals.sums.events,
                dead_letters: s.totals.dead_letter_count(),
                watermark: s.watermark.as_ref().map(ToString::to_string),
            })
            .collect(),
        ground_truth: truth.map(|t| compare(stats, t)),
    }
}

/// The human-readable table; with a ground truth, one column each and a verdict.
pub fn to_table(stats: &StoredStats, truth: Option<&GroundTruth>) -> String {
    let s = stats.totals.summary();
    let mut out = String::new();
    let rows: Vec<(&str, String, Option<String>)> = {
        let t = truth.map(|t| &t.summary);
        let both = |f: &dyn Fn(&Summary) -> String| (f(&s), t.map(f));
        let row = |name, (a, b)| (name, a, b);
        vec![
            row("events applied", both(&|x| thousands(x.events))),
            row("orders created", both(&|x| thousands(x.orders_created))),
            row(
                "total price of created orders",
                both(&|x| money(x.created_price_cents)),
            ),
            row("orders assigned", both(&|x| thousands(x.orders_assigned))),
            row(
                "average response time (created → assigned)",
                both(&|x| seconds(x.avg_response_ms())),
            ),
            row("orders completed", both(&|x| thousands(x.orders_completed))),
            row(
                "total price of completed orders",
                both(&|x| money(x.completed_price_cents)),
            ),
            row(
                "average completion time (created → completed)",
                both(&|x| seconds(x.avg_completion_ms())),
            ),
            (
                "dead letters",
                thousands(stats.totals.dead_letter_count()),
                truth.map(|t| thousands(t.dead_letter_count())),
            ),
        ]
    };
    let header = if truth.is_some() {
        format!("{:<48} {:>18} {:>18}\n", "", "statistics", "ground truth")
    } else {
        String::new()
    };
    out.push_str(&header);
    for (name, mine, theirs) in &rows {
        match theirs {
            Some(t) => {
                let mark = if mine == t { "" } else { "  <- differs" };
                let _ = writeln!(out, "{name:<48} {mine:>18} {t:>18}{mark}");
            }
            None => {
                let _ = writeln!(out, "{name:<48} {mine:>18}");
            }
        }
    }
    let _ = writeln!(out, "\nTop 10 pickup regions by orders created:");
    let expected = truth.map(|t| &t.summary.top_regions);
    for i in 0..s.top_regions.len().max(expected.map_or(0, Vec::len)) {
        let cell = |list: &Vec<crate::stats::summary::RegionCount>| {
            list.get(i)
                .map(|c| format!("{:<9} {:>7}", c.region.to_string(), thousands(c.orders)))
                .unwrap_or_default()
        };
        let mine = cell(&s.top_regions);
        match expected {
            Some(e) => {
                let theirs = cell(e);
                let mark = if mine == theirs { "" } else { "  <- differs" };
                let _ = writeln!(out, "  {:>2}. {mine:<17}    {theirs:<17}{mark}", i + 1);
            }
            None => {
                let _ = writeln!(out, "  {:>2}. {mine}", i + 1);
            }
        }
    }
    if !stats.totals.dead_letters.is_empty() {
        let parts: Vec<String> = stats
            .totals
            .dead_letters
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let _ = writeln!(out, "\nDead letters by reason: {}", parts.join(", "));
    }
    let mut skipped = String::new();
    if stats.totals.redeliveries_skipped > 0 {
        let _ = write!(
            skipped,
            "; {} redelivered copies of applied events skipped",
            thousands(stats.totals.redeliveries_skipped)
        );
    }
    let _ = writeln!(
        out,
        "\n{} shard(s) applied records; {} order(s) completed in another shard than created{skipped}",
        stats.shards.len(),
        thousands(stats.totals.cross_shard_completions),
    );
    if let Some(truth) = truth {
        let comparison = compare(stats, truth);
        if comparison.matches {
            let _ = writeln!(
                out,
                "\nMATCH: the statistics equal the ground truth exactly (sums to the cent and the \
                 millisecond, the same top 10, the same dead letters)."
            );
        } else {
            let _ = writeln!(
                out,
                "\nMISMATCH in: {} ({} of {} records accounted for)",
                comparison.differences.join(", "),
                thousands(stats.totals.records()),
                thousands(truth.records)
            );
        }
    }
    out
}

/// One line for live progress: counts, money and the top 3.
pub fn live_line(stats: &StoredStats) -> String {
    let s = stats.totals.summary();
    let top: Vec<String> = s
        .top_regions
        .iter()
        .take(3)
        .map(|c| format!("{} {}", c.region, c.orders))
        .collect();
    format!(
        "applied {} events ({} dead letters): orders {} created / {} assigned / {} completed, \
         revenue {}, avg response {}, avg completion {}, top {}",
        thousands(s.events),
        stats.totals.dead_letter_count(),
        thousands(s.orders_created),
        thousands(s.orders_assigned),
        thousands(s.orders_completed),
        money(s.completed_price_cents),
        seconds(s.avg_response_ms()),
        seconds(s.avg_completion_ms()),
        top.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimConfig;
    use crate::stats::summary::Totals;

    #[test]
    fn redeliveries_are_shown_but_not_compared_with_the_truth() {
        let mut totals = Totals::default();
        totals.sums.events = 3;
        totals.sums.orders_created = 1;
        totals.dead_letters.insert(Reason::DuplicateEvent, 1);
        totals.redeliveries_skipped = 2;
        let stats = StoredStats {
            shards: Vec::new(),
            totals: totals.clone(),
        };
        let truth = GroundTruth {
            config: SimConfig::default(),
            records: 4,
            summary: totals.summary(),
            dead_letters: totals.dead_letters.clone(),
        };
        assert!(compare(&stats, &truth).matches);
        let json = to_json(&stats, Some(&truth));
        assert_eq!(json.redeliveries_skipped, 2);
        assert_eq!(json.records, 6);
        let text = serde_json::to_string(&json).unwrap();
        assert!(text.contains(r#""redeliveries_skipped":2"#), "{text}");
        let table = to_table(&stats, Some(&truth));
        assert!(
            table.contains("2 redelivered copies of applied events skipped"),
            "{table}"
        );
        assert!(table.contains("MATCH"), "{table}");
    }
}
