//! The live dashboard (`delivery-app dashboard`, `demo --dashboard`): one web page,
//! embedded in the binary, that polls `/api/state` every second. The state is read by
//! one background task (not per browser), from ListShards, the lease table, the group
//! item and the statistics tables:
//!
//! - the shard lineage (parents → children, open and closed, hash ranges), each shard
//!   with its owner, checkpoint, lag and records/s (the load workers write on leases);
//! - the workers and their leases, and every lease that moved between two reads;
//! - the statistics as `stats --json` gives them, and the orders per pickup region
//!   for the 50×50 heatmap;
//! - recent decisions: splits and merges seen in the lineage, lease moves, and what
//!   the caller reports (`demo` passes its scenario's steps).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl::leases::{DynamoLeaseStore, Lease, LeaseStore};
use kcl::stream::ShardInfo;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::report::{StatsJson, to_json};
use crate::stats::StatsStore;

mod state;

pub use state::{Decision, ShardView, Snapshot, WorkerView, lease_moves, lineage_changes};

/// The page.
const PAGE: &str = include_str!("page.html");
/// How often the state is read.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Decisions kept.
const DECISIONS: usize = 50;

/// Where the dashboard reads, and what it last read.
pub struct Dashboard {
    kinesis: aws_sdk_kinesis::Client,
    leases: DynamoLeaseStore,
    stats: StatsStore,
    stream: String,
    app: String,
    latest: Mutex<Arc<Snapshot>>,
    decisions: Mutex<VecDeque<Decision>>,
}

impl Dashboard {
    /// A dashboard of stream `stream` and application `app`.
    pub fn new(clients: &kcl::aws::Clients, stream: &str, app: &str) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            kinesis: clients.kinesis.clone(),
            leases: DynamoLeaseStore::new(clients.dynamodb.clone(), app),
            stats: StatsStore::new(clients.dynamodb.clone(), app),
            stream: stream.to_string(),
            app: app.to_string(),
            latest: Mutex::new(Arc::new(Snapshot::empty(stream, app))),
            decisions: Mutex::new(VecDeque::new()),
        })
    }

    /// Records a decision made elsewhere (a scenario step, the auto-scaler).
    pub fn note(&self, text: impl Into<String>) {
        let mut decisions = self.decisions.lock().unwrap();
        decisions.push_front(Decision {
            at_ms: now_ms(),
            text: text.into(),
        });
        decisions.truncate(DECISIONS);
    }

    /// The state as last read.
    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.latest.lock().unwrap())
    }

    /// Reads everything once. A failed read keeps the previous figures and says why.
    async fn refresh(&self, previous: &Snapshot) -> Snapshot {
        let shards = kcl::stream::list_shards(&self.kinesis, &self.stream).await;
        let leases = self.leases.scan_leases().await;
        let members = self.leases.membership().await;
        let stats = self.stats.read().await;
        let mut errors = Vec::new();
        let shards: Vec<ShardInfo> = shards.unwrap_or_else(|e| {
            errors.push(format!("ListShards: {e}"));
            Vec::new()
        });
        let leases: Vec<Lease> = leases.unwrap_or_else(|e| {
            errors.push(format!("lease table: {e}"));
            Vec::new()
        });
        let members: Vec<String> = match members {
            Ok(m) => m.workers.into_iter().map(|w| w.worker_id).collect(),
            Err(e) => {
                errors.push(format!("workers: {e}"));
                Vec::new()
            }
        };
        let (stats, heatmap): (Option<StatsJson>, Vec<(u8, u8, u64)>) = match stats {
            Ok(stored) => (
                Some(to_json(&stored, None)),
                stored
                    .totals
                    .regions
                    .iter()
                    .map(|(r, n)| (r.x, r.y, *n))
                    .collect(),
            ),
            // Before the first worker wrote, the tables may not exist yet.
            Err(e) => {
                errors.push(format!("statistics: {e}"));
                (previous.stats.clone(), previous.heatmap.clone())
            }
        };
        let mut snapshot = state::snapshot(&self.stream, &self.app, &shards, &leases, &members);
        snapshot.stats = stats;
        snapshot.heatmap = heatmap;
        snapshot.error = (!errors.is_empty()).then(|| errors.join("; "));
        if !previous.shards.is_empty() {
            for text in lineage_changes(&previous.shards, &snapshot.shards)
                .into_iter()
                .chain(lease_moves(&previous.shards, &snapshot.shards))
            {
                self.note(text);
            }
        }
        snapshot.decisions = self.decisions.lock().unwrap().iter().cloned().collect();
        snapshot
    }

    /// Reads the state every [`REFRESH`] until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut every = tokio::time::interval(REFRESH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let previous = self.latest();
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                next = self.refresh(&previous) => next,
            };
            *self.latest.lock().unwrap() = Arc::new(next);
        }
    }
}

/// Serves the page and `/api/state` on `addr` until `cancel`, reading the state in the
/// background. Returns the address bound (port 0 picks one).
pub async fn serve(
    dashboard: Arc<Dashboard>,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<SocketAddr, String> {
    let state = Arc::clone(&dashboard);
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async { ([("content-type", "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/api/state",
            axum::routing::get(move || {
                let state = Arc::clone(&state);
                async move {
                    let body = serde_json::to_string(&*state.latest())
                        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                    (
                        [
                            ("content-type", "application/json"),
                            ("cache-control", "no-store"),
                        ],
                        body,
                    )
                }
            }),
        );
    let bound = crate::http::serve("the dashboard", addr, app, cancel.clone()).await?;
    tokio::spawn(Arc::clone(&dashboard).run(cancel));
    Ok(bound)
}
