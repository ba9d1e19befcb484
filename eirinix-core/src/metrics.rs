//! Prometheus metrics: per-extension review outcomes and latency, certificate expiry, repairs.
//!
//! Plain atomics rendered in the text exposition format: no registry, no locks on the hot path.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the review latency histogram.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// How one review ended, as counted in `eirinix_reviews_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A patch was returned.
    Patched,
    /// Admitted unchanged.
    Skipped,
    /// Denied by the extension.
    Denied,
    /// The extension failed (denied or admitted per failure policy).
    Errored,
    /// The review or its object was malformed.
    Invalid,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Patched,
        Outcome::Skipped,
        Outcome::Denied,
        Outcome::Errored,
        Outcome::Invalid,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Errored => "errored",
            Outcome::Invalid => "invalid",
        }
    }
}

/// Counters and latency histogram of one extension.
#[derive(Debug, Default)]
pub struct ExtensionMetrics {
    outcomes: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl ExtensionMetrics {
    /// Record one review.
    pub fn observe(&self, outcome: Outcome, elapsed: Duration) {
        let idx = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[idx].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Reviews counted with `outcome` so far.
    pub fn count(&self, outcome: Outcome) -> u64 {
        let idx = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[idx].load(Ordering::Relaxed)
    }

    /// Reviews observed so far and the time they took together.
    pub fn total(&self) -> (u64, Duration) {
        (
            self.count.load(Ordering::Relaxed),
            Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
        )
    }
}

/// All metrics of one manager.
pub struct Metrics {
    extensions: Vec<(String, ExtensionMetrics)>,
    bad_requests: AtomicU64,
    cert_expiry: AtomicI64,
    cert_rotations: AtomicU64,
    config_repairs: AtomicU64,
    watch_restarts: AtomicU64,
    connections: Arc<ConnectionStats>,
    client_certs: Option<Arc<crate::tls::ClientCertStats>>,
    sources: Vec<MetricSource>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("extensions", &self.extensions.len())
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Metrics {
    /// Metrics for the named extensions.
    pub fn new<'a>(extensions: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            extensions: extensions
                .into_iter()
                .map(|n| (n.to_owned(), ExtensionMetrics::default()))
                .collect(),
            bad_requests: AtomicU64::new(0),
            cert_expiry: AtomicI64::new(0),
            cert_rotations: AtomicU64::new(0),
            config_repairs: AtomicU64::new(0),
            watch_restarts: AtomicU64::new(0),
            connections: Arc::default(),
            client_certs: None,
            sources: Vec::new(),
        }
    }

    /// Also render the verdicts on client certificates (when a client CA is configured).
    pub fn with_client_certs(mut self, stats: Arc<crate::tls::ClientCertStats>) -> Self {
        self.client_certs = Some(stats);
        self
    }

    /// Also render these extra sources (extensions' own metrics) on `/metrics`.
    pub fn with_sources(mut self, sources: Vec<MetricSource>) -> Self {
        self.sources = sources;
        self
    }

    /// The metrics of the extension at `index` (registration order).
    pub fn extension(&self, index: usize) -> Option<&ExtensionMetrics> {
        self.extensions.get(index).map(|(_, m)| m)
    }

    /// The metrics of the extension named `name`.
    pub fn extension_named(&self, name: &str) -> Option<&ExtensionMetrics> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
    }

    /// Count a request rejected before reaching an extension (HTTP 400/413).
    pub fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Record the serving certificate's expiry (Unix seconds).
    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.store(unix_seconds, Ordering::Relaxed);
    }

    /// Count a certificate rotation performed or picked up.
    pub fn cert_rotated(&self) {
        self.cert_rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a webhook configuration repair.
    pub fn config_repaired(&self) {
        self.config_repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a restarted watch.
    pub fn watch_restarted(&self) {
        self.watch_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Connection counters of the webhook (TLS) listener.
    pub fn connections(&self) -> &Arc<ConnectionStats> {
        &self.connections
    }

    /// Configuration repairs so far.
    pub fn config_repairs(&self) -> u64 {
        self.config_repairs.load(Ordering::Relaxed)
    }

    /// Render in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP eirinix_reviews_total Admission reviews by extension and outcome.\n# TYPE eirinix_reviews_total counter\n");
        for (name, m) in &self.extensions {
            for (i, o) in Outcome::ALL.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "eirinix_reviews_total{{extension=\"{name}\",outcome=\"{}\"}} {}",
                    o.as_str(),
                    m.outcomes[i].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP eirinix_review_duration_seconds Time to answer one admission review.\n# TYPE eirinix_review_duration_seconds histogram\n");
        for (name, m) in &self.extensions {
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "eirinix_review_duration_seconds_bucket{{extension=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = m.count.load(Ordering::Relaxed);
            let sum = m.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "eirinix_review_duration_seconds_bucket{{extension=\"{name}\",le=\"+Inf\"}} {count}\neirinix_review_duration_seconds_sum{{extension=\"{name}\"}} {sum}\neirinix_review_duration_seconds_count{{extension=\"{name}\"}} {count}"
            );
        }
        let scalars = [
            (
                "eirinix_bad_requests_total",
                "counter",
                "Requests rejected before reaching an extension.",
                self.bad_requests.load(Ordering::Relaxed) as i64,
            ),
            (
                "eirinix_certificate_expiry_timestamp_seconds",
                "gauge",
                "Expiry of the served certificate (Unix time).",
                self.cert_expiry.load(Ordering::Relaxed),
            ),
            (
                "eirinix_certificate_rotations_total",
                "counter",
                "Serving certificates loaded after a rotation.",
                self.cert_rotations.load(Ordering::Relaxed) as i64,
            ),
            (
                "eirinix_webhook_configuration_repairs_total",
                "counter",
                "Webhook configuration drift repairs.",
                self.config_repairs.load(Ordering::Relaxed) as i64,
            ),
            (
                "eirinix_watch_restarts_total",
                "counter",
                "Watches restarted after an error or end.",
                self.watch_restarts.load(Ordering::Relaxed) as i64,
            ),
            (
                "eirinix_connections_accepted_total",
                "counter",
                "Connections accepted on the webhook port (each costs a TLS handshake).",
                self.connections.accepted() as i64,
            ),
            (
                "eirinix_tls_handshake_failures_total",
                "counter",
                "TLS handshakes on the webhook port that failed or timed out.",
                self.connections.handshake_failures() as i64,
            ),
            (
                "eirinix_open_connections",
                "gauge",
                "Connections open on the webhook port.",
                self.connections.open(),
            ),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if let Some(c) = &self.client_certs {
            let _ = writeln!(
                out,
                "# HELP eirinix_client_certificates_total Client certificates presented on the webhook port, by verdict of the client CA.\n# TYPE eirinix_client_certificates_total counter\neirinix_client_certificates_total{{result=\"verified\"}} {}\neirinix_client_certificates_total{{result=\"rejected\"}} {}",
                c.verified(),
                c.rejected()
            );
        }
        // The extensions' own metrics.
        for source in &self.sources {
            let text = source();
            out.push_str(&text);
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::new(["persi"]);
        let e = m.extension(0).unwrap();
        e.observe(Outcome::Patched, Duration::from_micros(80));
        e.observe(Outcome::Patched, Duration::from_millis(3));
        e.observe(Outcome::Denied, Duration::from_secs(10));
        m.set_cert_expiry(1_900_000_000);
        let text = m.render();
        assert!(text.contains("eirinix_reviews_total{extension=\"persi\",outcome=\"patched\"} 2"));
        assert!(text.contains("eirinix_reviews_total{extension=\"persi\",outcome=\"denied\"} 1"));
        assert!(text.contains(
            "eirinix_review_duration_seconds_bucket{extension=\"persi\",le=\"0.0001\"} 1"
        ));
        assert!(text.contains(
            "eirinix_review_duration_seconds_bucket{extension=\"persi\",le=\"0.005\"} 2"
        ));
        assert!(
            text.contains(
                "eirinix_review_duration_seconds_bucket{extension=\"persi\",le=\"+Inf\"} 3"
            )
        );
        assert!(text.contains("eirinix_certificate_expiry_timestamp_seconds 1900000000"));
        assert_eq!(e.count(Outcome::Patched), 2);
    }

    #[test]
    fn the_extensions_own_metrics_are_rendered_too() {
        let m = Metrics::new(["persi"]).with_sources(vec![
            std::sync::Arc::new(|| "ext_a_total 3".to_owned()),
            std::sync::Arc::new(|| "ext_b_total 4\n".to_owned()),
        ]);
        let text = m.render();
        assert!(text.ends_with("ext_a_total 3\next_b_total 4\n"), "{text}");
    }
}

/// A source of extra metric lines (Prometheus text), called at each scrape of `/metrics`.
pub type MetricSource = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

/// Connection counters of one listener: how often clients connect tells whether they reuse
/// connections (every new one costs a TLS handshake).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accepted: AtomicU64,
    handshake_failures: AtomicU64,
    open: AtomicI64,
}

impl ConnectionStats {
    /// A connection was accepted (and is open until [`Self::closed`]).
    pub(crate) fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }
    /// An accepted connection ended.
    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
    /// A TLS handshake failed or timed out.
    pub(crate) fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// TLS handshakes that failed or timed out.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }
    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }
}
