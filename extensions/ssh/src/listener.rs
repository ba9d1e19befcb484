//! The TCP side of an SSH server, shared by the in-pod daemon and the proxy: bind a port, tell
//! its address, and accept connections until cancelled, each one admitted through a [`Gate`]
//! (a cap on connections not logged in yet, a time limit to log in) and served in its own task.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use russh::server::{self, Handler};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, SshError};
use crate::limits::{Ended, Gate, Limits, Pending};

/// What the accept loop counts (the proxy renders them; the daemon keeps them unread).
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    /// Connections accepted.
    pub(crate) accepted: AtomicU64,
    /// Connections closed at accept: too many were not logged in yet.
    pub(crate) refused: AtomicU64,
    /// Connections closed because they did not log in in time.
    pub(crate) auth_timeouts: AtomicU64,
    /// Connections not logged in at the moment (a gauge the [`Gate`] keeps).
    pub(crate) unauthenticated: Arc<AtomicU64>,
}

impl ConnectionCounters {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bound TCP port of an SSH server, not yet serving.
#[derive(Debug)]
pub(crate) struct Listener {
    tcp: TcpListener,
}

impl Listener {
    /// Bind `addr`.
    pub(crate) async fn bind(addr: SocketAddr) -> Result<Self> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| SshError::io(format!("cannot listen on {addr}"), e))?;
        Ok(Self { tcp })
    }

    /// Bind `port` on all addresses: `[::]`, falling back to `0.0.0.0` where IPv6 is off.
    pub(crate) async fn bind_all(port: u16) -> Result<Self> {
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        match TcpListener::bind(v6).await {
            Ok(tcp) => Ok(Self { tcp }),
            Err(_) => Self::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await,
        }
    }

    /// The address bound.
    pub(crate) fn local_addr(&self) -> Result<SocketAddr> {
        self.tcp
            .local_addr()
            .map_err(|e| SshError::io("local address", e))
    }

    /// Accept connections until `cancel`, then close the open ones. Each admitted connection
    /// gets the handler that `handler` makes from its peer and its [`Pending`] slot (the handler
    /// calls [`Pending::authenticated`] on login); one beyond [`Limits::max_unauthenticated`] is
    /// closed at once, one that does not log in within [`Limits::auth_timeout`] is cut.
    pub(crate) async fn serve<H>(
        self,
        config: Arc<server::Config>,
        limits: &Limits,
        counters: Arc<ConnectionCounters>,
        cancel: CancellationToken,
        mut handler: impl FnMut(SocketAddr, Pending) -> H,
    ) -> Result<()>
    where
        H: Handler + Send + 'static,
        H::Error: std::fmt::Display,
    {
        let gate = Gate::new(limits, counters.unauthenticated.clone());
        let max = limits.max_unauthenticated;
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = self.tcp.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            ConnectionCounters::inc(&counters.accepted);
            let Some((pending, logged_in)) = gate.admit() else {
                ConnectionCounters::inc(&counters.refused);
                tracing::warn!(%peer, limit = max, "too many connections not logged in; connection closed");
                drop(socket);
                continue;
            };
            let handler = handler(peer, pending);
            let config = config.clone();
            let gate = gate.clone();
            let counters = counters.clone();
            connections.spawn(async move {
                match gate.serve(config, socket, handler, logged_in).await {
                    Ended::Finished(Ok(())) => {}
                    Ended::Finished(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "ssh connection ended with an error")
                    }
                    Ended::TimedOut => {
                        ConnectionCounters::inc(&counters.auth_timeouts);
                        tracing::info!(%peer, "connection closed: no login within the time limit");
                    }
                }
            });
        }
        connections.shutdown().await;
        Ok(())
    }
}
