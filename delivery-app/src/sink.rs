//! Putting simulated events on the stream with `producer` (KPL aggregation on), in
//! simulated time scaled by a speed factor.
//!
//! The consumer needs an order's creation before its assignment and completion. Kinesis
//! keeps one shard's records in order, but a record put again (after a throttle, or
//! because it was aggregated into the wrong child of a split) can land after a later
//! one. So an order's next event is put only once the previous one is acknowledged:
//! causal order per order, while different orders stream concurrently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl::checkpoint::ExtendedSequenceNumber;
use producer::{Producer, ProducerConfig, PutError, RecordFuture};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sim::{SimEvent, Simulation};

/// How long a record may wait in the producer for others to share its aggregate.
/// Shorter than the KPL's 100 ms: an order's next event waits for this one's
/// acknowledgement, so this is most of the gap between an order's events on the stream,
/// and the closer they are, the more often one transaction applies them together.
pub const LINGER: Duration = Duration::from_millis(10);

/// Where one user record landed and when it was put.
#[derive(Clone, Debug)]
pub struct PutRecord {
    /// When `put` was called.
    pub put_at: Instant,
    /// The shard.
    pub shard_id: String,
    /// Its position in the shard.
    pub position: ExtendedSequenceNumber,
}

/// Counters of a sink, readable while it runs.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Events handed to the sink.
    pub submitted: AtomicU64,
    /// Events Kinesis accepted.
    pub acknowledged: AtomicU64,
    /// Events the producer gave up on.
    pub failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl SinkCounters {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .expect("not poisoned")
            .get_or_insert(error);
    }

    /// The first error, if any record failed.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().expect("not poisoned").clone()
    }
}

/// A record was not written; the ground truth no longer describes the stream.
#[derive(Debug, thiserror::Error)]
#[error("{failed} event(s) were not written to the stream; first error: {first}")]
pub struct SinkError {
    /// How many.
    pub failed: u64,
    /// The first error.
    pub first: String,
}

/// Puts events with per-order ordering. Build with [`EventSink::new`].
pub struct EventSink {
    producer: Producer,
    chains: HashMap<String, watch::Receiver<bool>>,
    counters: Arc<SinkCounters>,
    positions: Option<Arc<Mutex<Vec<PutRecord>>>>,
}

impl EventSink {
    /// A sink writing to `stream` through `kinesis`, aggregating as the KPL does.
    /// With `track_positions`, every acknowledged record's position is kept (for
    /// latency measurements).
    pub fn new(
        kinesis: aws_sdk_kinesis::Client,
        stream: &str,
        track_positions: bool,
    ) -> Result<EventSink, producer::ConfigError> {
        Self::with_rate_limit(kinesis, stream, track_positions, None)
    }

    /// [`EventSink::new`] with the producer's per-shard rate limit (percent of AWS's
    /// per-shard write limits, [`ProducerConfig::rate_limit`]) instead of its default;
    /// `None` keeps the default.
    pub fn with_rate_limit(
        kinesis: aws_sdk_kinesis::Client,
        stream: &str,
        track_positions: bool,
        rate_limit: Option<u32>,
    ) -> Result<EventSink, producer::ConfigError> {
        let mut config = ProducerConfig::builder(stream).record_max_buffered_time(LINGER);
        if let Some(rate_limit) = rate_limit {
            config = config.rate_limit(rate_limit);
        }
        let config = config.build()?;
        Ok(EventSink {
            producer: Producer::new(config, kinesis),
            chains: HashMap::new(),
            counters: Arc::new(SinkCounters::default()),
            positions: track_positions.then(|| Arc::new(Mutex::new(Vec::new()))),
        })
    }

    /// The counters.
    pub fn counters(&self) -> Arc<SinkCounters> {
        Arc::clone(&self.counters)
    }

    /// The positions recorded so far (with `track_positions`); drains them.
    pub fn take_positions(&self) -> Vec<PutRecord> {
        self.positions
            .as_ref()
            .map(|p| std::mem::take(&mut *p.lock().expect("not poisoned")))
            .unwrap_or_default()
    }

    /// A handle to the recorded positions, to drain from another task.
    pub fn positions(&self) -> Option<Arc<Mutex<Vec<PutRecord>>>> {
        self.positions.clone()
    }

    /// Puts one event; waits while the producer's buffer is full.
    pub async fn send(&mut self, event: SimEvent) {
        let previous = self
            .chains
            .get(&event.order_id)
            .filter(|acked| !*acked.borrow())
            .cloned();
        let (acked, ack_rx) = watch::channel(false);
        self.chains.insert(event.order_id, ack_rx);
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::clone(&self.counters);
        let positions = self.positions.clone();
        let (key, data) = (event.partition_key, event.data);
        match previous {
            None => {
                let put_at = Instant::now();
                let put = self.producer.put(key, data).await;
                tokio::spawn(settle(put, put_at, acked, counters, positions));
            }
            Some(mut previous) => {
                let producer = self.producer.clone();
                tokio::spawn(async move {
                    // A failed predecessor drops its sender: go on, the run has failed.
                    let _ = previous.wait_for(|done| *done).await;
                    let put_at = Instant::now();
                    let put = producer.put(key, data).await;
                    settle(put, put_at, acked, counters, positions).await;
                });
            }
        }
        if self.chains.len() > 50_000 {
            self.chains.retain(|_, acked| !*acked.borrow());
        }
    }

    /// Waits until every event sent is acknowledged or failed, then stops the
    /// producer. Fails if any event was not written.
    pub async fn finish(self) -> Result<(), SinkError> {
        loop {
            self.producer.flush().await;
            let c = &self.counters;
            let done = c.acknowledged.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
            if done >= c.submitted.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.producer.shutdown().await;
        match self.counters.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            failed => Err(SinkError {
                failed,
                first: self.counters.first_error().unwrap_or_default(),
            }),
        }
    }
}

async fn settle(
    put: Result<RecordFuture, PutError>,
    put_at: Instant,
    acked: watch::Sender<bool>,
    counters: Arc<SinkCounters>,
    positions: Option<Arc<Mutex<Vec<PutRecord>>>>,
) {
    let result = match put {
        Ok(future) => future.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(written) => {
            if let Some(positions) = positions {
                positions.lock().expect("not poisoned").push(PutRecord {
                    put_at,
                    shard_id: written.shard_id.to_string(),
                    position: ExtendedSequenceNumber::at(
                        &*written.sequence_number,
                        written.sub_sequence_number.unwrap_or(0),
                    ),
                });
            }
            counters.acknowledged.fetch_add(1, Ordering::Relaxed);
            let _ = acked.send(true);
        }
        Err(e) => counters.fail(e.to_string()),
    }
}

/// How far a replay is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// 0 to 1, by simulated time (or order count).
    pub fraction: f64,
    /// Simulated ms reached.
    pub sim_ms: i64,
    /// Events handed to the sink.
    pub submitted: u64,
    /// Whether every event has been handed over.
    pub done: bool,
}

/// Replays `sim` into `sink`: each event at its simulated time divided by `speed`
/// (`None`: as fast as the producer takes them), publishing progress, until the
/// simulation ends or `cancel`.
pub async fn replay(
    sim: &mut Simulation,
    sink: &mut EventSink,
    speed: Option<f64>,
    progress: &watch::Sender<Progress>,
    cancel: &CancellationToken,
) {
    let start = Instant::now();
    let mut last_report = start;
    let mut submitted = 0u64;
    while let Some(event) = sim.next() {
        if cancel.is_cancelled() {
            break;
        }
        if let Some(speed) = speed.filter(|s| *s > 0.0) {
            let due = start + Duration::from_secs_f64(event.at_ms as f64 / 1000.0 / speed);
            if due > Instant::now() + Duration::from_millis(2) {
                tokio::time::sleep_until(due).await;
            }
        }
        sink.send(event).await;
        submitted += 1;
        if last_report.elapsed() >= Duration::from_millis(100) {
            last_report = Instant::now();
            progress.send_replace(Progress {
                fraction: sim.progress(),
                sim_ms: sim.now_ms(),
                submitted,
                done: false,
            });
        }
    }
    progress.send_replace(Progress {
        fraction: 1.0,
        sim_ms: sim.now_ms(),
        submitted,
        done: true,
    });
}
