//! The small HTTP endpoints of a delivery-app process (`--metrics-addr`, the
//! dashboard): bound on the address asked for, served until cancelled.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Binds `addr` and serves `router` on it until `cancel`, in the background. Returns
/// the address bound (port 0 picks one). `what` names the endpoint in errors.
pub async fn serve(
    what: &str,
    addr: SocketAddr,
    router: axum::Router,
    cancel: CancellationToken,
) -> Result<SocketAddr, String> {
    let bind_error = |e: std::io::Error| format!("cannot serve {what} on {addr}: {e}");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let what = what.to_string();
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "{what} stopped");
        }
    });
    Ok(bound)
}
