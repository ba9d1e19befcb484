//! Limits on connections that have not authenticated yet, shared by the proxy and the daemon:
//! a time limit for logging in, a cap on such connections at once, and (proxy) a per-source
//! rate of password attempts. They bound what an unauthenticated caller can make the server
//! (and, through the proxy's TokenReviews, the apiserver) do.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

/// Token buckets of password attempts per source (IPv4 address, IPv6 /64).
#[derive(Debug)]
pub(crate) struct SourceRate {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Sources tracked at most; full buckets are forgotten first.
const MAX_SOURCES: usize = 100_000;

impl SourceRate {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            burst: f64::from(limits.per_source_burst.max(1)),
            per_second: f64::from(limits.per_source_per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn key(peer: SocketAddr) -> IpAddr {
        match peer.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    IpAddr::V6(octets.into())
                }
            },
            v4 => v4,
        }
    }

    /// Take one attempt for `peer`; `false` when its bucket is empty.
    pub(crate) fn try_take(&self, peer: SocketAddr) -> bool {
        self.try_take_at(peer, Instant::now())
    }

    fn try_take_at(&self, peer: SocketAddr, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let level = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second)
                .min(self.burst)
        };
        if buckets.len() >= MAX_SOURCES {
            buckets.retain(|_, b| level(*b) < self.burst);
        }
        let key = Self::key(peer);
        let tokens = match buckets.get(&key) {
            Some(b) => level(*b),
            None if buckets.len() >= MAX_SOURCES => return false,
            None => self.burst,
        };
        if tokens < 1.0 {
            buckets.insert(key, (tokens, now));
            return false;
        }
        buckets.insert(key, (tokens - 1.0, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let rate = SourceRate::new(&Limits {
            per_source_burst: 3,
            per_source_per_minute: 60,
            ..Limits::default()
        });
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let now = Instant::now();
        assert!((0..3).all(|_| rate.try_take_at(a, now)));
        assert!(!rate.try_take_at(a, now), "burst spent");
        assert!(
            rate.try_take_at(b, now),
            "another source has its own bucket"
        );
        // One attempt per second comes back.
        let later = now + Duration::from_millis(1100);
        assert!(rate.try_take_at(a, later));
        assert!(!rate.try_take_at(a, later));
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let one: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let two: SocketAddr = "[2001:db8::ffff:2]:1".parse().unwrap();
        assert_eq!(SourceRate::key(one), SourceRate::key(two));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert_eq!(
            SourceRate::key(mapped),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
