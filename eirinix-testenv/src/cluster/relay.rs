//! A TCP relay from listeners inside the node's network namespace to a port on the host's
//! loopback: how kubelet, kube-proxy and pods (through the `kubernetes` Service) reach the
//! apiserver, which listens on 127.0.0.1 only. Traffic stays on loopback and inside the node.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Accepts on `listeners` forever, piping each connection to `127.0.0.1:<target>`.
pub(crate) async fn serve(listeners: Vec<std::net::TcpListener>, target: u16) {
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                tasks.spawn(accept_loop(l, target));
            }
            Err(e) => tracing::warn!(error = %e, "relay listener unusable"),
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(listener: TcpListener, target: u16) {
    loop {
        match listener.accept().await {
            Ok((inbound, peer)) => {
                tokio::spawn(pipe(inbound, peer, target));
            }
            Err(e) => {
                tracing::debug!(error = %e, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn pipe(mut inbound: TcpStream, peer: SocketAddr, target: u16) {
    let _ = inbound.set_nodelay(true);
    let mut outbound = match TcpStream::connect(("127.0.0.1", target)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "relay target unreachable");
            return;
        }
    };
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
