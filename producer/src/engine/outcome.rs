//! What the producer task does with a PutRecords answer: resolve the records Kinesis
//! accepted, send failed ones back with a backoff, and put again the user records that
//! landed in a shard whose hash key range does not hold them.

use std::sync::Arc;

use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use kinesis_core::backoff::{backoff_cap, full_jitter};
use tokio::task::Id;
use tokio::time::Instant;

use super::{Engine, Held, Written};
use crate::aggregation::KinesisRecord;
use crate::error::PutError;
use crate::record::Pending;
use crate::result::{AttemptError, UserRecordResult, WRONG_SHARD};

/// The code of a record refused for its shard's write limit.
const THROTTLED: &str = "ProvisionedThroughputExceededException";
use crate::shard_map::{Landing, is_current, judge_held, landing};

impl Engine {
    pub(super) fn on_put_done(
        &mut self,
        id: Id,
        result: Result<PutRecordsOutput, (AttemptError, bool)>,
        ended: Instant,
    ) {
        let Some(flight) = self.in_flight.remove(&id) else {
            return;
        };
        for key in &flight.shards {
            if let Some(queue) = self.queues.get_mut(key) {
                queue.in_flight = false;
            }
            let open = match (key, &self.map) {
                (Some(shard), Some(map)) => map.is_open(shard),
                (None, map) => map.is_none(),
                (Some(_), None) => true,
            };
            if !open {
                self.queues.remove_if_idle(key);
            }
        }
        let started = flight.started;
        self.metrics
            .call_seconds
            .record(ended.saturating_duration_since(started).as_secs_f64());
        match &result {
            Ok(_) => self.metrics.calls_succeeded.increment(1),
            Err(_) => self.metrics.calls_failed.increment(1),
        }
        let output = match result {
            Ok(output) if output.records().len() == flight.records.len() => output,
            Ok(output) => {
                let error = AttemptError {
                    code: "MalformedResponse".into(),
                    message: format!(
                        "PutRecords answered {} entries for {} records",
                        output.records().len(),
                        flight.records.len()
                    ),
                };
                for record in flight.records {
                    self.failed(record.members, &error, true, started, ended);
                }
                return;
            }
            Err((error, retry)) => {
                for record in flight.records {
                    self.metrics.error(&error.code);
                    self.failed(record.members, &error, retry, started, ended);
                }
                return;
            }
        };
        for (record, answer) in flight.records.into_iter().zip(output.records()) {
            match (
                answer.error_code(),
                answer.shard_id(),
                answer.sequence_number(),
            ) {
                (None, Some(shard), Some(sequence_number)) => {
                    self.metrics.kinesis_records_put.increment(1);
                    self.landed(record, shard, sequence_number, started, ended);
                }
                (code, ..) => {
                    // Throttling and internal failures: always worth another try.
                    let error = AttemptError {
                        code: code.unwrap_or("MalformedResponse").to_string(),
                        message: answer.error_message().unwrap_or_default().to_string(),
                    };
                    self.metrics.error(&error.code);
                    if error.code == THROTTLED
                        && let Some((shard, _)) = self
                            .map
                            .as_ref()
                            .and_then(|m| m.predict_with_range(record.routing_hash))
                    {
                        self.metrics.throttled(shard);
                    }
                    self.failed(record.members, &error, true, started, ended);
                }
            }
        }
    }

    /// Records a failed attempt; rejects the records or schedules their retry after a
    /// full-jitter backoff. One delay for the whole Kinesis record, so its user records
    /// come back together and are likely aggregated together again.
    fn failed(
        &mut self,
        mut members: Vec<Pending>,
        error: &AttemptError,
        retry: bool,
        started: Instant,
        ended: Instant,
    ) {
        for member in &mut members {
            member.attempt(started, ended, error.clone());
        }
        if !retry {
            for mut member in members {
                let attempts = std::mem::take(&mut member.attempts);
                let rejected = PutError::Rejected {
                    code: error.code.clone(),
                    message: error.message.clone(),
                    attempts,
                };
                self.finish(member, Err(rejected));
            }
            return;
        }
        let failures = members
            .iter()
            .map(|m| m.attempts.iter().filter(|a| !a.is_success()).count())
            .max()
            .unwrap_or(1) as u32;
        let cap = backoff_cap(
            self.config.retry_base_delay,
            self.config.retry_max_delay,
            failures,
        );
        let due = Instant::now() + full_jitter(cap, rand::random::<f64>());
        let (live, dead): (Vec<_>, Vec<_>) = members.into_iter().partition(|m| m.expires_at > due);
        for member in dead {
            self.expire(member);
        }
        if !live.is_empty() {
            self.retry_seq += 1;
            self.retries.insert((due, self.retry_seq), live);
        }
    }

    /// Kinesis accepted `record` into `shard`. Its user records are judged against the
    /// shard map (see [`landing`]) together: a consumer that filters by hash key range
    /// (the Java KCL) drops a whole aggregate when one of its user records is outside
    /// the shard's range. When the map does not agree with where Kinesis routed the
    /// record, a refresh is requested.
    fn landed(
        &mut self,
        record: KinesisRecord,
        shard: &str,
        sequence_number: &str,
        started: Instant,
        ended: Instant,
    ) {
        let map = self.map.as_ref();
        let current = is_current(map, shard, record.routing_hash);
        let verdict = landing(
            map,
            shard,
            record.routing_hash,
            record.members.iter().map(|m| m.hash_key),
        );
        let written = Written {
            aggregated: record.aggregated,
            // The map's own id when it lists the shard: shared, not copied.
            shard: map
                .and_then(|m| m.id(shard))
                .map_or_else(|| Arc::from(shard), Arc::clone),
            sequence_number: Arc::from(sequence_number),
            started,
            ended,
        };
        let ticket = (!current).then(|| self.want_refresh());
        match verdict {
            Landing::InRange => self.succeed(record.members.into_iter().enumerate(), &written),
            Landing::OutOfRange => self.wrong_shard(record.members, &written),
            Landing::Unknown => self.held.push(Held {
                hash_keys: record.members.iter().map(|m| m.hash_key).collect(),
                members: record.members.into_iter().enumerate().collect(),
                written,
                ticket: ticket.unwrap_or(self.refresh.wanted),
            }),
        }
    }

    /// Resolves user records of a Kinesis record as written; each comes with its index
    /// in the Kinesis record.
    pub(super) fn succeed(
        &mut self,
        members: impl IntoIterator<Item = (usize, Pending)>,
        written: &Written,
    ) {
        for (index, mut member) in members {
            let result = UserRecordResult {
                shard_id: Arc::clone(&written.shard),
                sequence_number: Arc::clone(&written.sequence_number),
                sub_sequence_number: written.aggregated.then_some(index as u64),
                attempts: member.succeeded(written.started, written.ended),
            };
            self.finish(member, Ok(result));
        }
    }

    /// The Kinesis record is in the stream, but in a shard whose range does not hold
    /// some of its user records' hash keys: a consumer that filters by range would drop
    /// all of them there. Put them all again, routed by the current map (the KPL does
    /// the same).
    fn wrong_shard(&mut self, members: impl IntoIterator<Item = Pending>, written: &Written) {
        let now = Instant::now();
        let error = AttemptError {
            code: WRONG_SHARD.to_string(),
            message: format!(
                "written to shard {}, whose hash key range does not hold every hash key of the Kinesis record; putting it again",
                written.shard
            ),
        };
        for mut member in members {
            member.attempt(written.started, written.ended, error.clone());
            if member.expires_at <= now {
                self.expire(member);
            } else {
                member.deadline = now;
                self.route(member, now);
            }
        }
    }

    /// Decides the held records that a refresh now covers (see [`judge_held`]); those
    /// whose shard the new map does not list wait for the next one.
    pub(super) fn release_held(&mut self) {
        let served = self.refresh.served;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.ticket <= served);
        self.held = waiting;
        for mut held in ready {
            let verdict = match &self.map {
                Some(map) => judge_held(map, &held.written.shard, &held.hash_keys),
                None => Landing::Unknown,
            };
            match verdict {
                Landing::InRange => self.succeed(held.members, &held.written),
                Landing::OutOfRange => {
                    let members = held.members.into_iter().map(|(_, m)| m);
                    self.wrong_shard(members, &held.written);
                }
                Landing::Unknown => {
                    tracing::warn!(shard = %held.written.shard, "Kinesis wrote to a shard ListShards does not list yet; asking again");
                    held.ticket = self.want_refresh();
                    self.held.push(held);
                }
            }
        }
    }
}
