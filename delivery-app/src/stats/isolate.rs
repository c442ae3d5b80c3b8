//! What to do when DynamoDB refuses a statistics transaction as invalid (a
//! `ValidationException`) although the plan kept every limit it knows: find the record
//! that explains it by bisecting the chunk, dead-letter that record alone, and stop the
//! worker when no record explains it.
//!
//! A refused transaction wrote nothing, so any smaller chunk can be tried next. Halving
//! the records a plan may take after each refusal finds a single culprit in at most
//! `log2(n) + 1` refusals; the limit stays until the culprit is dead-lettered, so the
//! halves already known to be good are applied on the way. A refusal of a chunk of one
//! record that is already a dead letter cannot be the record's data (a dead letter is
//! capped to fit): the refusal is about the tables or the request, which no record
//! explains.

/// The next step after a refused transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Plan again taking at most this many records.
    Bisect {
        /// The new limit on records per chunk.
        max_records: usize,
    },
    /// The chunk's only record is the culprit: make it a dead letter and plan again
    /// without a limit.
    DeadLetterFirst,
    /// No record explains the refusal: stop the worker.
    Stop,
}

/// Decides the step after a refusal of a chunk of `records` records (at least one),
/// whose first record is already a dead letter when `first_is_dead_letter`.
///
/// ```
/// use delivery_app::stats::isolate::{AfterRefusal, after_refusal};
/// assert_eq!(after_refusal(40, false), AfterRefusal::Bisect { max_records: 20 });
/// assert_eq!(after_refusal(1, false), AfterRefusal::DeadLetterFirst);
/// assert_eq!(after_refusal(1, true), AfterRefusal::Stop);
/// ```
pub fn after_refusal(records: usize, first_is_dead_letter: bool) -> AfterRefusal {
    match records {
        0 | 1 if first_is_dead_letter => AfterRefusal::Stop,
        0 | 1 => AfterRefusal::DeadLetterFirst,
        n => AfterRefusal::Bisect { max_records: n / 2 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_from_a_table() {
        let cases = [
            (100, false, AfterRefusal::Bisect { max_records: 50 }),
            (3, false, AfterRefusal::Bisect { max_records: 1 }),
            (2, true, AfterRefusal::Bisect { max_records: 1 }),
            (1, false, AfterRefusal::DeadLetterFirst),
            (1, true, AfterRefusal::Stop),
        ];
        for (records, dead, expected) in cases {
            assert_eq!(after_refusal(records, dead), expected, "{records} {dead}");
        }
    }

    /// Simulates the processor's loop over `n` records of which `bad` are refused by
    /// "DynamoDB": every culprit, and nothing else, ends as a dead letter, and the
    /// refusals stay within log2(n) + 1 per culprit.
    #[test]
    fn bisection_isolates_exactly_the_refused_records() {
        for n in 1..40usize {
            for bad in [
                vec![0],
                vec![n - 1],
                vec![n / 2],
                vec![0, n - 1],
                vec![n / 3, n / 2],
            ] {
                let mut dead = vec![false; n];
                let mut next = 0;
                let mut limit = usize::MAX;
                let mut refusals = 0;
                while next < n {
                    let take = (n - next).min(limit);
                    let refused = (next..next + take).any(|i| bad.contains(&i) && !dead[i]);
                    if !refused {
                        next += take;
                        continue;
                    }
                    refusals += 1;
                    match after_refusal(take, dead[next]) {
                        AfterRefusal::Bisect { max_records } => limit = max_records,
                        AfterRefusal::DeadLetterFirst => {
                            dead[next] = true;
                            limit = usize::MAX;
                        }
                        AfterRefusal::Stop => panic!("stopped on {n} {bad:?}"),
                    }
                }
                let expected: Vec<bool> = (0..n).map(|i| bad.contains(&i)).collect();
                assert_eq!(dead, expected, "{n} {bad:?}");
                let per_culprit = (usize::BITS - n.leading_zeros()) as usize + 1;
                assert!(
                    refusals <= 2 * per_culprit,
                    "{refusals} refusals for {n} {bad:?}"
                );
            }
        }
    }
}
