//! The proxy's counters: the accept loop's, and those of the logins (reviews, grants,
//! refusals, rate limiting), exposed as a Prometheus [`Collector`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eirinix_core::deps::prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use eirinix_core::metrics::Encode as _;

use crate::listener::ConnectionCounters;

/// Counters of the proxy (a [`Collector`]: render them with [`eirinix_core::metrics::render`]).
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// What the accept loop counts (connections, refusals at accept, login timeouts).
    pub(super) listener: Arc<ConnectionCounters>,
    pub(super) token_reviews: AtomicU64,
    pub(super) access_reviews: AtomicU64,
    pub(super) granted: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) too_many_attempts: AtomicU64,
}

impl ProxyMetrics {
    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.listener.accepted.load(Ordering::Relaxed)
    }
    /// Connections closed at accept: too many were not logged in yet.
    pub fn refused_connections(&self) -> u64 {
        self.listener.refused.load(Ordering::Relaxed)
    }
    /// Connections closed because they did not log in in time.
    pub fn auth_timeouts(&self) -> u64 {
        self.listener.auth_timeouts.load(Ordering::Relaxed)
    }
    /// Connections not logged in at the moment.
    pub fn unauthenticated(&self) -> u64 {
        self.listener.unauthenticated.load(Ordering::Relaxed)
    }
    /// TokenReviews sent to the apiserver.
    pub fn token_reviews(&self) -> u64 {
        self.token_reviews.load(Ordering::Relaxed)
    }
    /// SubjectAccessReviews sent to the apiserver.
    pub fn access_reviews(&self) -> u64 {
        self.access_reviews.load(Ordering::Relaxed)
    }
    /// Logins granted.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }
    /// Logins refused (any reason).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Password attempts refused without review: the source's rate was exceeded.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
    /// Password attempts refused without review: too many on one connection.
    pub fn too_many_attempts(&self) -> u64 {
        self.too_many_attempts.load(Ordering::Relaxed)
    }

    /// Count one more of `counter`.
    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Exposes the counters (Prometheus names `eirinix_ssh_proxy_*`) to a metrics registry.
impl Collector for ProxyMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, value) in [
            (
                "eirinix_ssh_proxy_connections_total",
                "Connections accepted by the ssh proxy.",
                self.connections(),
            ),
            (
                "eirinix_ssh_proxy_refused_connections_total",
                "Connections closed at accept: too many had not logged in yet.",
                self.refused_connections(),
            ),
            (
                "eirinix_ssh_proxy_auth_timeouts_total",
                "Connections closed because they did not log in in time.",
                self.auth_timeouts(),
            ),
        ] {
            e.counter(name, help, value)?;
        }
        e.gauge(
            "eirinix_ssh_proxy_unauthenticated_connections",
            "Connections not logged in at the moment.",
            i64::try_from(self.unauthenticated()).unwrap_or(i64::MAX),
        )?;
        for (name, help, value) in [
            (
                "eirinix_ssh_proxy_token_reviews_total",
                "TokenReviews sent to the apiserver.",
                self.token_reviews(),
            ),
            (
                "eirinix_ssh_proxy_access_reviews_total",
                "SubjectAccessReviews sent to the apiserver.",
                self.access_reviews(),
            ),
            (
                "eirinix_ssh_proxy_logins_granted_total",
                "Logins granted.",
                self.granted(),
            ),
            (
                "eirinix_ssh_proxy_logins_refused_total",
                "Logins refused, whatever the reason.",
                self.refused(),
            ),
            (
                "eirinix_ssh_proxy_rate_limited_total",
                "Password attempts refused without review: the source address exceeded its rate.",
                self.rate_limited(),
            ),
            (
                "eirinix_ssh_proxy_too_many_attempts_total",
                "Password attempts refused without review: too many on one connection.",
                self.too_many_attempts(),
            ),
        ] {
            e.counter(name, help, value)?;
        }
        Ok(())
    }
}
