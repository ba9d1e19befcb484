//! The one place new certificate material goes, as controller-runtime's certwatcher feeds its
//! server: a source (the Secret [`Rotator`](crate::rotation::Rotator), the
//! [`FileSource`](crate::rotation::FileSource)) hands it over; the TLS resolver, the
//! `certificate` readiness check and the certificate metrics follow it, and so does every
//! subscriber of the published PEMs (the readiness handshake, the registration loops).

use std::sync::Arc;

use tokio::sync::watch;

use crate::certs::CertError;
use crate::health::{Check, Health};
use crate::metrics::Metrics;
use crate::tls::CertResolver;

/// What the rest of the manager needs to know about the current certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// PEM CA bundle for the webhook configuration's `caBundle`.
    pub ca_bundle: String,
    /// PEM of the served chain (leaf first).
    pub serving_chain: String,
}

/// Serves and announces certificates: one per manager, shared by its certificate source.
pub struct Publisher {
    tx: watch::Sender<Option<Published>>,
    serving: Option<Serving>,
}

/// What follows the published material when something is served.
struct Serving {
    resolver: Arc<CertResolver>,
    loaded: Arc<Check>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// A publisher serving through `resolver`; registers the `certificate` readiness check in
    /// `health`, failing until the first certificate is published.
    pub fn new(resolver: Arc<CertResolver>, health: &Health, metrics: Arc<Metrics>) -> Self {
        let (tx, _) = watch::channel(None);
        Self {
            tx,
            serving: Some(Serving {
                resolver,
                loaded: health.check("certificate", "no serving certificate loaded"),
                metrics,
            }),
        }
    }

    /// A publisher that only checks and announces the material: for a one-shot registration,
    /// where nothing is served.
    pub fn announce_only() -> Self {
        let (tx, _) = watch::channel(None);
        Self { tx, serving: None }
    }

    /// Updates whenever the served certificates change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Published>> {
        self.tx.subscribe()
    }

    /// Serve `published.serving_chain` with `key_pem` from the next handshake on and announce
    /// it, unless exactly that is served already; `Ok(true)` when something changed.
    /// `not_after` (Unix seconds) feeds the expiry metric.
    pub fn publish(
        &self,
        published: Published,
        key_pem: &str,
        not_after: Option<i64>,
    ) -> Result<bool, CertError> {
        if self.tx.borrow().as_ref() == Some(&published) {
            return Ok(false);
        }
        let key = crate::certs::certified_key(&published.serving_chain, key_pem)?;
        if let Some(s) = &self.serving {
            s.resolver.set(key);
            s.loaded.pass();
            if let Some(t) = not_after {
                s.metrics.set_cert_expiry(t);
            }
            s.metrics.cert_rotated();
        }
        self.tx.send_replace(Some(published));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_publish_reaches_the_resolver_readiness_metrics_and_subscribers() {
        crate::tls::install_default_provider();
        let bundle = crate::certs::test_bundle();
        let resolver = Arc::new(CertResolver::new());
        let health = Health::new();
        let metrics = Arc::new(Metrics::new(["x"]));
        let publisher = Publisher::new(resolver.clone(), &health, metrics.clone());
        let mut rx = publisher.subscribe();
        assert!(
            health.readiness().is_err(),
            "not ready before a certificate"
        );
        let published = Published {
            ca_bundle: bundle.ca_bundle_pem(),
            serving_chain: bundle.serving_chain_pem(),
        };
        let changed = publisher
            .publish(published.clone(), &bundle.serving.key_pem, Some(42))
            .unwrap();
        assert!(changed);
        assert!(resolver.is_loaded());
        assert_eq!(health.readiness(), Ok(()));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_ref(), Some(&published));
        let text = metrics.render();
        assert!(
            text.contains("eirinix_certificate_expiry_timestamp_seconds 42")
                && text.contains("eirinix_certificate_rotations_total 1"),
            "{text}"
        );
        // The same material again: nothing to do, nobody woken.
        assert!(
            !publisher
                .publish(published, &bundle.serving.key_pem, Some(42))
                .unwrap()
        );
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn announce_only_checks_the_material_and_tells_subscribers() {
        crate::tls::install_default_provider();
        let bundle = crate::certs::test_bundle();
        let publisher = Publisher::announce_only();
        let mut rx = publisher.subscribe();
        let published = Published {
            ca_bundle: bundle.ca_bundle_pem(),
            serving_chain: bundle.serving_chain_pem(),
        };
        assert!(
            publisher
                .publish(published.clone(), "not a key", None)
                .is_err(),
            "a chain without a usable key is refused"
        );
        assert!(!rx.has_changed().unwrap());
        assert!(
            publisher
                .publish(published.clone(), &bundle.serving.key_pem, None)
                .unwrap()
        );
        assert_eq!(rx.borrow_and_update().as_ref(), Some(&published));
    }
}
