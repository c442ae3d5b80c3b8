//! A worker that only coordinates leases (no record processing), for multi-process
//! tests and benchmarks of the lease layer. Prints one JSON line per lease event on
//! stdout. SIGTERM: graceful shutdown (release every lease). SIGKILL: a crash.
//!
//! Usage: `kcl-lease-worker <dynamodb-endpoint-url> <lease-table> <worker-id> <failover-ms>`
//! (an empty endpoint URL means real AWS).
//!
//! With `KCL_LOCAL_ACCESS_KEY_ID` set, its requests to local endpoints are signed with
//! that key (the IAM principal a strict local AWS binds to it).

use std::sync::Arc;
use std::time::Duration;

use kcl::aws::{Clients, Endpoints};
use kcl::internals::{LeaseConfig, LeaseCoordinator, LeaseEvent};
use kcl::internals::{LeaseHandle, LeasePhase};
use kcl::leases::dynamo::DynamoLeaseStore;
use tokio_util::sync::CancellationToken;

fn emit(event: &str, lease: &str, detail: &str) {
    println!("{{\"event\":\"{event}\",\"lease\":\"{lease}\",\"detail\":\"{detail}\"}}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, table, worker_id, failover_ms] = args.as_slice() else {
        eprintln!(
            "usage: kcl-lease-worker <dynamodb-endpoint-url> <lease-table> <worker-id> <failover-ms>"
        );
        return std::process::ExitCode::from(2);
    };
    let Ok(failover_ms) = failover_ms.parse::<u64>() else {
        eprintln!("failover-ms must be a whole number of milliseconds, got {failover_ms:?}");
        return std::process::ExitCode::from(2);
    };
    let endpoints = Endpoints {
        dynamodb: (!endpoint.is_empty()).then(|| endpoint.clone()),
        ..Endpoints::default()
    };
    let clients = Clients::connect_from_env(&endpoints).await;
    let store = Arc::new(DynamoLeaseStore::new(clients.dynamodb, table.clone()));
    let mut config = LeaseConfig::new(worker_id.clone());
    config.failover_time = Duration::from_millis(failover_ms);
    let (coordinator, mut events) = LeaseCoordinator::new(store, config);
    let cancel = CancellationToken::new();

    let run = tokio::spawn({
        let coordinator = Arc::clone(&coordinator);
        let cancel = cancel.clone();
        async move { coordinator.run(cancel).await }
    });
    tokio::spawn(async move {
        while let Some(LeaseEvent::Acquired { handle, .. }) = events.recv().await {
            emit("acquired", handle.key(), "");
            tokio::spawn(follow(handle));
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    cancel.cancel();
    match run.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("lease coordinator failed: {e}");
            return std::process::ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("lease coordinator panicked: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if let Err(e) = coordinator.release_all().await {
        eprintln!("release failed: {e}");
        return std::process::ExitCode::FAILURE;
    }
    emit("stopped", "", "");
    std::process::ExitCode::SUCCESS
}

/// With no processor, a handoff request is answered at once.
async fn follow(handle: Arc<LeaseHandle>) {
    let mut phase = handle.watch_phase();
    loop {
        let current = phase.borrow_and_update().clone();
        match current {
            LeasePhase::HandingOff { to } => {
                let result = handle.hand_over().await;
                emit(
                    "handed_over",
                    handle.key(),
                    &format!("{to} {}", result.is_ok()),
                );
            }
            LeasePhase::Lost(reason) => {
                emit("lost", handle.key(), &format!("{reason:?}"));
                return;
            }
            _ => {}
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
}
