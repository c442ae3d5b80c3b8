//! A TCP relay from a service address of the aws namespace to the local AWS on
//! loopback. `delivery-app local` listens on 127.0.0.1 only; the workers on other
//! network hosts reach it through this relay at [`super::hosts::KINESIS_ADDR`] and
//! [`super::hosts::DYNAMODB_ADDR`].
//!
//! Each accepted connection gets its own upstream connection: while the local AWS
//! restarts, a new connection is closed at once (as a refused connect would be), and
//! an open one ends when its upstream ends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long connecting upstream may take (it is on loopback).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Listens on `listen` and relays every connection to `upstream` until `cancel`.
/// Returns the address it listens on (`listen` may have port 0).
pub async fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            // Ends with the run (cancel); an accept error (e.g. out of descriptors)
            // drops that one connection and goes on.
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut client, _)) = accepted else {
                continue;
            };
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream));
                let Ok(Ok(mut server)) = connect.await else {
                    return; // dropping the client closes it
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                }
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_closes_when_upstream_is_down() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 5];
            socket.read_exact(&mut buf).await.unwrap();
            socket
                .write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let cancel = CancellationToken::new();
        let relay = start(
            "127.0.0.1:0".parse().unwrap(),
            upstream_addr,
            cancel.clone(),
        )
        .await
        .unwrap();
        let mut client = TcpStream::connect(relay).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut answer = [0u8; 5];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HELLO");

        // Nobody listens upstream any more: the relay closes the next connection.
        let mut client = TcpStream::connect(relay).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest));
        assert!(matches!(read.await, Ok(Ok(0))), "closed without data");
        cancel.cancel();
    }
}
