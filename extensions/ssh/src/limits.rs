//! Limits on connections that have not authenticated yet, shared by the proxy and the daemon:
//! a time limit for logging in and a cap on such connections at once (the [`Gate`] the shared
//! listener admits connections through), and the proxy's per-source rate of password attempts
//! (counted in `proxy::rate`). They bound what an unauthenticated caller can make the server
//! (and, through the proxy's TokenReviews, the apiserver) do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::Disconnect;
use russh::server::{self, Handler};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Limits on connections before they authenticate.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time from accept to a successful login; then the connection is closed.
    pub auth_timeout: Duration,
    /// Connections that have not logged in yet, at once; further ones are closed at accept.
    pub max_unauthenticated: usize,
    /// Password attempts per connection (proxy: each one is a TokenReview); later attempts are
    /// refused without a review.
    pub max_auth_attempts: u32,
    /// Password attempts a source address may make in a burst (proxy; IPv6 per /64).
    pub per_source_burst: u32,
    /// Password attempts per minute a source address regains, up to the burst (proxy).
    pub per_source_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(30),
            max_unauthenticated: 64,
            max_auth_attempts: 3,
            per_source_burst: 10,
            per_source_per_minute: 30,
        }
    }
}

/// The slots of not-yet-authenticated connections.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    auth_timeout: Duration,
    waiting: Arc<AtomicU64>,
}

/// What a connection holds until it logs in: its slot, and the signal that ends its deadline.
#[derive(Debug)]
pub(crate) struct Pending {
    slot: Option<OwnedSemaphorePermit>,
    signal: Option<oneshot::Sender<()>>,
    waiting: Arc<AtomicU64>,
}

impl Pending {
    /// The connection logged in: its slot is free for another, its deadline is lifted.
    pub(crate) fn authenticated(&mut self) {
        self.release();
        if let Some(tx) = self.signal.take() {
            let _ = tx.send(());
        }
    }

    fn release(&mut self) {
        if self.slot.take().is_some() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.release();
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The session ran to its end (or failed).
    Finished(Result<(), String>),
    /// It did not log in within the time limit and was closed.
    TimedOut,
}

impl Gate {
    /// Slots for `limits`; `waiting` counts the connections holding one (a gauge).
    pub(crate) fn new(limits: &Limits, waiting: Arc<AtomicU64>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_unauthenticated.max(1))),
            auth_timeout: limits.auth_timeout,
            waiting,
        }
    }

    /// A slot for a new connection, or `None` when all are taken (close it at once). The
    /// receiver fires when the connection logs in.
    pub(crate) fn admit(&self) -> Option<(Pending, oneshot::Receiver<()>)> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        Some((
            Pending {
                slot: Some(slot),
                signal: Some(tx),
                waiting: self.waiting.clone(),
            },
            rx,
        ))
    }

    /// Run an SSH connection whose handler holds the [`Pending`] of `logged_in`; it is closed
    /// when it has not logged in within the time limit.
    pub(crate) async fn serve<H>(
        &self,
        config: Arc<server::Config>,
        socket: TcpStream,
        handler: H,
        logged_in: oneshot::Receiver<()>,
    ) -> Ended
    where
        H: Handler + Send + 'static,
        H::Error: std::fmt::Display,
    {
        let deadline = tokio::time::Instant::now() + self.auth_timeout;
        // The session runs in a task of its own (russh): the socket can be cut from here.
        let kill = CancellationToken::new();
        let socket = Killable {
            inner: socket,
            killed: Box::pin(kill.clone().cancelled_owned()),
        };
        // The version exchange (a client that sends nothing waits here): dropping this future
        // closes the socket.
        let running = tokio::select! {
            r = server::run_stream(config, socket, handler) => match r {
                Ok(running) => running,
                Err(e) => return Ended::Finished(Err(e.to_string())),
            },
            _ = tokio::time::sleep_until(deadline) => return Ended::TimedOut,
        };
        let handle = running.handle();
        tokio::pin!(running);
        tokio::select! {
            r = &mut running => return Ended::Finished(r.map_err(|e| e.to_string())),
            // Logged in, or the handler is gone (session ending): no more deadline.
            _ = logged_in => {}
            _ = tokio::time::sleep_until(deadline) => {
                // Say why, give the session a moment to send it, then cut the connection
                // (a peer in the middle of a key exchange never gets to the message).
                let grace = Duration::from_secs(1);
                let _ = tokio::time::timeout(
                    grace,
                    handle.disconnect(Disconnect::ByApplication, "authentication timed out".into(), String::new()),
                )
                .await;
                if tokio::time::timeout(grace, &mut running).await.is_err() {
                    kill.cancel();
                    let _ = running.await;
                }
                return Ended::TimedOut;
            }
        }
        Ended::Finished(running.await.map_err(|e| e.to_string()))
    }
}

/// A socket that fails every read and write once `killed` fires (ends a session task).
struct Killable {
    inner: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Killable {
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection closed: no login within the time limit",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Killable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
