use super::*;
use crate::events::Region;
use crate::stats::plan::{Assignment, Creation};

fn at(n: u64) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::at(format!("{n:05}"), 0)
}

fn state(assigned: bool, completed: bool, applied: &[u64]) -> OrderState {
    OrderState {
        created_at: 10,
        price_cents: 500,
        created_shard: "s".into(),
        assigned,
        completed,
        applied: applied.to_vec(),
    }
}

fn write(id: &str, expect: Expect, events: &str, digests: &[u64]) -> OrderWrite {
    OrderWrite {
        order_id: id.into(),
        expect,
        created: events.contains('c').then_some(Creation {
            created_at: 10,
            price_cents: 500,
            pickup: Region { x: 1, y: 2 },
            dropoff: Region { x: 3, y: 4 },
        }),
        assigned: events.contains('a').then(|| Assignment {
            assigned_at: 20,
            driver_id: "d".into(),
        }),
        completed_at: events.contains('d').then_some(30),
        digests: digests.to_vec(),
    }
}

/// Settles and commits one transaction: its writes.
fn transact(
    held: &mut HeldOrders,
    planned: Vec<OrderWrite>,
    after: &[(&str, OrderState)],
    resume: u64,
) -> Vec<OrderWrite> {
    let after = after
        .iter()
        .map(|(id, s)| (id.to_string(), Some(s.clone())))
        .collect();
    let (writes, settled) = held.settle(planned, &after, |_| Some(at(resume)));
    held.commit(settled);
    writes
}

const PRESENT: Expect = Expect::Present {
    assigned: false,
    completed: false,
};

#[test]
fn an_order_is_written_once_when_it_completes() {
    let mut held = HeldOrders::default();
    let created = write("o", Expect::Absent, "c", &[1]);
    assert!(
        transact(
            &mut held,
            vec![created],
            &[("o", state(false, false, &[1]))],
            4
        )
        .is_empty()
    );
    let assigned = write("o", PRESENT, "a", &[2]);
    assert!(
        transact(
            &mut held,
            vec![assigned],
            &[("o", state(true, false, &[1, 2]))],
            9
        )
        .is_empty()
    );
    assert_eq!(held.state("o"), Some(&state(true, false, &[1, 2])));
    // A rejection that only checked the order writes nothing either.
    let check = write(
        "o",
        Expect::Present {
            assigned: true,
            completed: false,
        },
        "",
        &[],
    );
    assert!(
        transact(
            &mut held,
            vec![check],
            &[("o", state(true, false, &[1, 2]))],
            11
        )
        .is_empty()
    );
    let completed = write(
        "o",
        Expect::Present {
            assigned: true,
            completed: false,
        },
        "d",
        &[3],
    );
    let writes = transact(
        &mut held,
        vec![completed],
        &[("o", state(true, true, &[1, 2, 3]))],
        12,
    );
    assert_eq!(writes, [write("o", Expect::Absent, "cad", &[1, 2, 3])]);
    assert!(held.is_empty());
}

#[test]
fn what_is_not_a_held_creation_is_written_as_planned() {
    let mut held = HeldOrders::default();
    let planned = vec![
        // Created and completed in one transaction.
        write("both", Expect::Absent, "cd", &[1, 2]),
        // An order read from the table.
        write("stored", PRESENT, "a", &[3]),
        // A check on an order the table does not have (a dead letter depended on it).
        write("none", Expect::Absent, "", &[]),
    ];
    let after = [
        ("both", state(false, true, &[1, 2])),
        ("stored", state(true, false, &[0, 3])),
    ];
    assert_eq!(transact(&mut held, planned.clone(), &after, 1), planned);
    assert!(held.is_empty());
}

#[test]
fn nothing_changes_until_the_transaction_commits() {
    let held = HeldOrders::default();
    let after = HashMap::from([("o".to_string(), Some(state(false, false, &[1])))]);
    let (writes, _uncommitted) =
        held.settle(vec![write("o", Expect::Absent, "c", &[1])], &after, |_| {
            None
        });
    assert!(writes.is_empty());
    assert!(held.state("o").is_none());
}

#[test]
fn the_replay_start_is_the_oldest_held_orders() {
    let mut held = HeldOrders::default();
    assert_eq!(held.resume_after(), None);
    for (id, resume) in [("a", 7), ("b", 3), ("c", 5)] {
        transact(
            &mut held,
            vec![write(id, Expect::Absent, "c", &[1])],
            &[(id, state(false, false, &[1]))],
            resume,
        );
    }
    assert_eq!(held.resume_after(), Some(Some(&at(3))));
    // An order first seen at the shard's start holds it there.
    let after = HashMap::from([("d".to_string(), Some(state(false, false, &[1])))]);
    let (_, settled) = held.settle(vec![write("d", Expect::Absent, "c", &[1])], &after, |_| {
        None
    });
    held.commit(settled);
    assert_eq!(held.resume_after(), Some(None));
}

#[test]
fn the_oldest_are_taken_to_be_written_and_can_be_put_back() {
    let mut held = HeldOrders::default();
    for (n, id) in ["a", "b", "c"].iter().enumerate() {
        held.tick(n as u64 * 10);
        transact(
            &mut held,
            vec![write(id, Expect::Absent, "c", &[1])],
            &[(id, state(false, false, &[1]))],
            n as u64,
        );
    }
    // Ticks later do not make an order younger.
    held.tick(100);
    let taken = held.take_where(10, 5);
    let ids: Vec<&str> = taken.iter().map(|h| h.write.order_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(held.len(), 1);
    held.put_back(taken);
    assert_eq!(held.len(), 3);
    assert_eq!(held.resume_after(), Some(Some(&at(0))));
    assert_eq!(held.take_where(u64::MAX, 1)[0].write.order_id, "a");
}

#[test]
fn orders_held_at_once_are_taken_by_id() {
    let mut held = HeldOrders::default();
    held.tick(5);
    let ids = ["o7", "o1", "o30", "o4", "o12"];
    for id in ids {
        transact(
            &mut held,
            vec![write(id, Expect::Absent, "c", &[1])],
            &[(id, state(false, false, &[1]))],
            1,
        );
    }
    let taken: Vec<String> = held
        .take_where(5, 3)
        .into_iter()
        .map(|h| h.write.order_id)
        .collect();
    assert_eq!(taken, ["o1", "o12", "o30"]);
}
