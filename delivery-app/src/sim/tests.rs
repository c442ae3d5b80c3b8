use std::collections::HashMap;

use kcl::checkpoint::ExtendedSequenceNumber;

use super::*;
use crate::events::parse;
use crate::stats::plan::{OrderState, ParsedRecord, plan_chunk, referenced_orders};

/// Applies events as one consumer would, with the planner, and returns the totals.
fn consume(events: &[SimEvent]) -> Totals {
    let records: Vec<ParsedRecord> = events
        .iter()
        .enumerate()
        .map(|(i, e)| ParsedRecord {
            position: ExtendedSequenceNumber::at((1000 + i).to_string(), 0),
            partition_key: e.partition_key.clone(),
            raw: e.data.clone(),
            parsed: parse(&e.data),
        })
        .collect();
    let mut states: HashMap<String, Option<OrderState>> = referenced_orders(&records)
        .into_iter()
        .map(|id| (id, None))
        .collect();
    let mut totals = Totals::default();
    let mut rest = &records[..];
    while !rest.is_empty() {
        let chunk = plan_chunk("shard-0", rest, &states);
        totals.add(&chunk.delta);
        states.extend(chunk.after);
        rest = &rest[chunk.records..];
    }
    totals
}

#[test]
fn the_ground_truth_is_what_a_consumer_computes() {
    for keys in [KeyStrategy::Order, KeyStrategy::Region] {
        let config = SimConfig {
            duration_ms: 30_000,
            keys,
            bad_events: 21,
            ..SimConfig::default()
        };
        let mut sim = Simulation::new(config);
        let events: Vec<SimEvent> = sim.by_ref().collect();
        let truth = sim.truth();
        assert_eq!(truth.records, events.len() as u64);
        let consumed = consume(&events);
        assert_eq!(consumed.summary(), truth.summary, "{keys:?}");
        assert_eq!(consumed.dead_letters, truth.dead_letters, "{keys:?}");
        assert_eq!(truth.dead_letter_count(), 21);
        assert!(Reason::SIMULATED.iter().all(|r| truth.dead_letters[r] == 3));
        assert_eq!(truth.summary.top_regions.len(), 10);
        assert!(truth.summary.orders_created > 250);
        assert_eq!(truth.summary.orders_created, truth.summary.orders_completed);
    }
}

#[test]
fn the_injected_duplicate_is_another_event_and_a_redelivery_is_not() {
    let config = SimConfig {
        duration_ms: 30_000,
        bad_events: 21,
        ..SimConfig::default()
    };
    let events: Vec<SimEvent> = Simulation::new(config.clone()).collect();
    // Deterministic: the same seed gives the same bytes.
    assert_eq!(events, Simulation::new(config).collect::<Vec<_>>());
    let duplicates: Vec<&SimEvent> = events
        .iter()
        .filter(|e| e.kind == EventKind::Bad(Reason::DuplicateEvent))
        .collect();
    assert_eq!(duplicates.len(), 3);
    for dup in &duplicates {
        let original = events
            .iter()
            .find(|e| e.kind == EventKind::Created && e.order_id == dup.order_id)
            .expect("the duplicated order was created");
        assert_ne!(
            dup.data, original.data,
            "a semantic duplicate has other bytes"
        );
        assert_eq!(parse(&dup.data), parse(&original.data));
        let id = |data: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(data).unwrap()["event_id"].clone()
        };
        assert_ne!(id(&dup.data), id(&original.data));
    }
    // The consumer dead-letters the injected duplicates, and skips a producer's exact
    // copy of any event: the ground truth still holds.
    let mut with_copies = events.clone();
    let copies: Vec<SimEvent> = events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::Bad(_)))
        .step_by(50)
        .cloned()
        .collect();
    with_copies.extend(copies.iter().cloned());
    let consumed = consume(&with_copies);
    let plain = consume(&events);
    assert_eq!(consumed.summary(), plain.summary());
    assert_eq!(consumed.dead_letters, plain.dead_letters);
    assert_eq!(consumed.dead_letters[&Reason::DuplicateEvent], 3);
    assert_eq!(consumed.redeliveries_skipped, copies.len() as u64);
    assert_eq!(plain.redeliveries_skipped, 0);
}

#[test]
fn every_order_keeps_one_partition_key_and_its_order() {
    let config = SimConfig {
        duration_ms: 10_000,
        keys: KeyStrategy::Region,
        ..SimConfig::default()
    };
    let mut keys: HashMap<String, (String, Vec<EventKind>)> = HashMap::new();
    for e in Simulation::new(config) {
        let entry = keys
            .entry(e.order_id.clone())
            .or_insert((e.partition_key.clone(), Vec::new()));
        assert_eq!(entry.0, e.partition_key);
        assert!(e.partition_key.starts_with("region-"));
        entry.1.push(e.kind);
    }
    for (_, kinds) in keys.values() {
        assert_eq!(
            kinds,
            &[
                EventKind::Created,
                EventKind::Assigned,
                EventKind::Completed
            ]
        );
    }
}

#[test]
fn events_are_about_368_bytes_and_orders_arrive_at_the_rate() {
    let config = SimConfig {
        duration_ms: 90_000,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(config);
    let events: Vec<SimEvent> = sim.by_ref().collect();
    let mean = events.iter().map(|e| e.data.len()).sum::<usize>() / events.len();
    assert!((340..=400).contains(&mean), "mean event size {mean}");
    let orders = sim.truth().summary.orders_created;
    // 90 s at one order per 90 ms: about 1,000.
    assert!((900..=1_100).contains(&orders), "{orders}");
    // Drivers keep up: average completion well under a second of simulated time.
    let avg = sim.truth().summary.avg_completion_ms().unwrap();
    assert!(avg < 2_000.0, "{avg}");
}

#[test]
fn max_orders_and_different_seeds() {
    let config = SimConfig {
        max_orders: Some(50),
        ..SimConfig::default()
    };
    let a: Vec<_> = Simulation::new(config.clone()).collect();
    assert_eq!(a.len(), 150);
    let b: Vec<_> = Simulation::new(SimConfig { seed: 7, ..config }).collect();
    assert_ne!(a, b);
}
