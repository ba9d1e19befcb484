//! Prometheus metrics: per-extension review outcomes and latency, certificate expiry, repairs.
//!
//! One [`prometheus_client`] registry per manager. The manager's own counters are plain atomics
//! (no lock on the hot path) registered as one [`Collector`]; each extension registers its own
//! collector with [`crate::ManagerBuilder::metrics_collector`]. `/metrics` is the registry's
//! OpenMetrics text.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`] and [`render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Upper bounds (seconds) of the review latency histogram.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// How one review ended, as counted in `eirinix_reviews_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) enum Outcome {
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
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct ExtensionMetrics {
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
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn count(&self, outcome: Outcome) -> u64 {
        let idx = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[idx].load(Ordering::Relaxed)
    }

    /// Reviews observed so far and the time they took together.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn total(&self) -> (u64, Duration) {
        (
            self.count.load(Ordering::Relaxed),
            Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
        )
    }
}

/// All metrics of one manager: its own counters and the extensions' collectors, in one registry.
pub struct Metrics {
    counters: Arc<Counters>,
    registry: Registry,
}

/// The manager's own counters (the [`Collector`] it registers).
#[derive(Debug)]
struct Counters {
    extensions: Vec<(String, ExtensionMetrics)>,
    bad_requests: AtomicU64,
    cert_expiry: AtomicI64,
    cert_rotations: AtomicU64,
    config_repairs: AtomicU64,
    watch_restarts: AtomicU64,
    connections: Arc<ConnectionStats>,
    client_certs: Option<Arc<crate::tls::ClientCertStats>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("extensions", &self.counters.extensions.len())
            .finish()
    }
}

impl Metrics {
    /// Metrics for the named extensions.
    pub fn new<'a>(extensions: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with(extensions, None, Vec::new())
    }

    /// Metrics for the named extensions, the client certificates' verdicts (when a client CA is
    /// configured) and the extensions' own collectors.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn with<'a>(
        extensions: impl IntoIterator<Item = &'a str>,
        client_certs: Option<Arc<crate::tls::ClientCertStats>>,
        collectors: Vec<SharedCollector>,
    ) -> Self {
        let counters = Arc::new(Counters {
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
            client_certs,
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(counters.clone()));
        for c in collectors {
            registry.register_collector(Box::new(c));
        }
        Self { counters, registry }
    }

    /// The metrics of the extension at `index` (registration order).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn extension(&self, index: usize) -> Option<&ExtensionMetrics> {
        self.counters.extensions.get(index).map(|(_, m)| m)
    }

    /// The metrics of the extension named `name`.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn extension_named(&self, name: &str) -> Option<&ExtensionMetrics> {
        self.counters
            .extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
    }

    /// Count a request rejected before reaching an extension (HTTP 400/413).
    pub fn bad_request(&self) {
        self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Record the serving certificate's expiry (Unix seconds).
    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.counters
            .cert_expiry
            .store(unix_seconds, Ordering::Relaxed);
    }

    /// Count a certificate rotation performed or picked up.
    pub fn cert_rotated(&self) {
        self.counters.cert_rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a webhook configuration repair.
    pub fn config_repaired(&self) {
        self.counters.config_repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a restarted watch.
    pub fn watch_restarted(&self) {
        self.counters.watch_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Connection counters of the webhook (TLS) listener.
    pub fn connections(&self) -> &Arc<ConnectionStats> {
        &self.counters.connections
    }

    /// Configuration repairs so far.
    pub fn config_repairs(&self) -> u64 {
        self.counters.config_repairs.load(Ordering::Relaxed)
    }

    /// Everything registered, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail, and the collectors only fail on a writer error.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Collector for Counters {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let mut reviews = e.encode_descriptor(
            "eirinix_reviews",
            "Admission reviews by extension and outcome.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.extensions {
            for (i, o) in Outcome::ALL.iter().enumerate() {
                let labels = [("extension", name.as_str()), ("outcome", o.as_str())];
                ConstCounter::new(m.outcomes[i].load(Ordering::Relaxed))
                    .encode(reviews.encode_family(&labels)?)?;
            }
        }
        let mut durations = e.encode_descriptor(
            "eirinix_review_duration_seconds",
            "Time to answer one admission review.",
            None,
            MetricType::Histogram,
        )?;
        for (name, m) in &self.extensions {
            let mut buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .zip(&m.buckets)
                .map(|(le, n)| (*le, n.load(Ordering::Relaxed)))
                .collect();
            let count = m.count.load(Ordering::Relaxed);
            let in_buckets: u64 = buckets.iter().map(|(_, n)| n).sum();
            buckets.push((f64::INFINITY, count.saturating_sub(in_buckets)));
            let sum = m.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let labels = [("extension", name.as_str())];
            durations
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.counter(
            "eirinix_bad_requests_total",
            "Requests rejected before reaching an extension.",
            l(&self.bad_requests),
        )?;
        e.gauge(
            "eirinix_certificate_expiry_timestamp_seconds",
            "Expiry of the served certificate (Unix time).",
            self.cert_expiry.load(Ordering::Relaxed),
        )?;
        e.counter(
            "eirinix_certificate_rotations_total",
            "Serving certificates loaded after a rotation.",
            l(&self.cert_rotations),
        )?;
        e.counter(
            "eirinix_webhook_configuration_repairs_total",
            "Webhook configuration drift repairs.",
            l(&self.config_repairs),
        )?;
        e.counter(
            "eirinix_watch_restarts_total",
            "Watches restarted after an error or end.",
            l(&self.watch_restarts),
        )?;
        e.counter(
            "eirinix_connections_accepted_total",
            "Connections accepted on the webhook port (each costs a TLS handshake).",
            self.connections.accepted(),
        )?;
        e.counter(
            "eirinix_tls_handshake_failures_total",
            "TLS handshakes on the webhook port that failed or timed out.",
            self.connections.handshake_failures(),
        )?;
        e.gauge(
            "eirinix_open_connections",
            "Connections open on the webhook port.",
            self.connections.open(),
        )?;
        if let Some(c) = &self.client_certs {
            e.counter_family(
                "eirinix_client_certificates_total",
                "Client certificates presented on the webhook port, by verdict of the client CA.",
                "result",
                [("verified", c.verified()), ("rejected", c.rejected())],
            )?;
        }
        Ok(())
    }
}

/// An extension's collector as the manager keeps it (cloned into each registry it builds).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct SharedCollector(pub(crate) Arc<dyn Collector>);

impl Collector for SharedCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode(encoder)
    }
}

/// One collector alone in the OpenMetrics text format: for an extension's own `/metrics` port
/// and for tests.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Shorthands for a [`Collector`]'s `encode`: constant counters and gauges, alone or as a
/// family with one label (`use eirinix_core::metrics::Encode` and call them on the encoder).
pub trait Encode {
    /// The descriptor of one metric without a unit (what the shorthands build on).
    fn descriptor<'s>(
        &'s mut self,
        name: &'s str,
        help: &str,
        metric_type: MetricType,
    ) -> Result<MetricEncoder<'s>, std::fmt::Error>;

    /// Encode one counter named `name` (its exposed name, ending in `_total`).
    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let base = name.strip_suffix("_total").unwrap_or(name);
        ConstCounter::new(value).encode(self.descriptor(base, help, MetricType::Counter)?)
    }

    /// Encode one gauge.
    fn gauge(&mut self, name: &str, help: &str, value: i64) -> std::fmt::Result {
        ConstGauge::new(value).encode(self.descriptor(name, help, MetricType::Gauge)?)
    }

    /// Encode a counter with one label: a series per `(label value, count)`.
    fn counter_family<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> std::fmt::Result {
        let base = name.strip_suffix("_total").unwrap_or(name);
        let counts = series.into_iter().map(|(v, c)| (v, ConstCounter::new(c)));
        labelled(
            self.descriptor(base, help, MetricType::Counter)?,
            label,
            counts,
        )
    }

    /// Encode a gauge with one label: a series per `(label value, value)`.
    fn gauge_family<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'v str, i64)>,
    ) -> std::fmt::Result {
        let values = series.into_iter().map(|(v, g)| (v, ConstGauge::new(g)));
        labelled(
            self.descriptor(name, help, MetricType::Gauge)?,
            label,
            values,
        )
    }
}

/// One series per `(label value, metric)` of a family whose descriptor is written.
fn labelled<'v, M: EncodeMetric>(
    mut family: MetricEncoder<'_>,
    label: &str,
    series: impl IntoIterator<Item = (&'v str, M)>,
) -> std::fmt::Result {
    for (value, metric) in series {
        metric.encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Encode for DescriptorEncoder<'_> {
    fn descriptor<'s>(
        &'s mut self,
        name: &'s str,
        help: &str,
        metric_type: MetricType,
    ) -> Result<MetricEncoder<'s>, std::fmt::Error> {
        self.encode_descriptor(name, help, None, metric_type)
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
            "eirinix_review_duration_seconds_bucket{le=\"0.0001\",extension=\"persi\"} 1"
        ));
        assert!(text.contains(
            "eirinix_review_duration_seconds_bucket{le=\"0.005\",extension=\"persi\"} 2"
        ));
        assert!(
            text.contains(
                "eirinix_review_duration_seconds_bucket{le=\"+Inf\",extension=\"persi\"} 3"
            )
        );
        assert!(text.contains("eirinix_certificate_expiry_timestamp_seconds 1900000000"));
        assert_eq!(e.count(Outcome::Patched), 2);
    }

    #[derive(Debug)]
    struct Ext(u64);

    impl Collector for Ext {
        fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
            e.counter("ext_a_total", "A.", self.0)?;
            e.gauge_family("ext_b", "B.", "sink", [("relp", 4), ("tcp", -1)])
        }
    }

    #[test]
    fn the_extensions_own_metrics_are_rendered_too() {
        let ext = SharedCollector(Arc::new(Ext(3)));
        let m = Metrics::with(["persi"], None, vec![ext]);
        let text = m.render();
        for line in [
            "# TYPE ext_a counter",
            "ext_a_total 3",
            "ext_b{sink=\"relp\"} 4",
            "ext_b{sink=\"tcp\"} -1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(render(Ext(5)).lines().nth(2), Some("ext_a_total 5"));
    }
}

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
