//! The manager's background loops: readiness (a real handshake to itself), the client CA check,
//! keeping each webhook configuration right, and the CA promotion gate.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::health::Check;
use crate::options::Settings;
use crate::registration::{Configuration, Registrar};
use crate::rotation::Published;

/// Why the `handshake` check fails.
pub(super) const HANDSHAKE_FAILING: &str = "TLS handshake to self not confirmed";

/// A staged CA may sign once every webhook of the configuration trusts it (a read-only GET).
pub(super) fn promotion_gate(
    client: kube::Client,
    settings: &Settings,
    validating: bool,
) -> crate::rotation::PromotionGate {
    let mutating_registrar =
        Registrar::<MutatingWebhookConfiguration>::new(client.clone(), &settings.field_manager);
    let validating_registrar =
        Registrar::<ValidatingWebhookConfiguration>::new(client, &settings.field_manager);
    let names = (
        settings.configuration_name(),
        settings.validating_configuration_name(),
    );
    Arc::new(move |ca_pem: String| {
        let (mutating_registrar, validating_registrar, names) = (
            mutating_registrar.clone(),
            validating_registrar.clone(),
            names.clone(),
        );
        Box::pin(async move {
            let needle = ca_pem.trim();
            let mutating = trusts(&mutating_registrar, &names.0, needle).await;
            if !validating {
                return mutating == Some(true);
            }
            let validating = trusts(&validating_registrar, &names.1, needle).await;
            // Every configuration with entries must trust it, and at least one must exist.
            !matches!(
                (mutating, validating),
                (Some(false), _) | (_, Some(false)) | (None, None)
            )
        })
    })
}

/// Whether every entry of configuration `name` carries the CA `needle`: `None` when the
/// configuration has no entries (or is absent, or cannot be read).
pub(super) async fn trusts<C: Configuration>(
    registrar: &Registrar<C>,
    name: &str,
    needle: &str,
) -> Option<bool> {
    match registrar.get(name).await {
        Ok(Some(cfg)) => {
            let hooks = cfg.entries();
            (!hooks.is_empty()).then(|| {
                hooks.iter().all(|w| {
                    C::client_config(w)
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| String::from_utf8_lossy(&b.0).contains(needle))
                })
            })
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the webhook configuration to confirm a new CA");
            Some(false)
        }
    }
}

/// Check that the client CA can verify someone now and, when given the apiserver's client
/// certificate (file `cert`), that it verifies that one.
pub(super) fn client_ca_check(
    ca: &crate::tls::ClientCa,
    cert: Option<&std::path::Path>,
) -> Result<(), crate::tls::ClientCaError> {
    let now = rustls::pki_types::UnixTime::now();
    ca.check_validity(i64::try_from(now.as_secs()).unwrap_or(i64::MAX))?;
    if let Some(path) = cert {
        let pem =
            std::fs::read_to_string(path).map_err(|source| crate::tls::ClientCaError::Read {
                path: path.to_owned(),
                source,
            })?;
        ca.verify_client_pem(&pem, &path.display().to_string(), now)?;
    }
    Ok(())
}

/// Readiness of the client CA: the checks of [`client_ca_check`] every minute and at every
/// validity boundary of the certificates involved (the file of the apiserver's certificate is
/// read anew each time, so a renewed one is picked up).
pub(super) async fn client_ca_loop(
    ca: crate::tls::ClientCa,
    cert: Option<PathBuf>,
    check: Arc<Check>,
    cancel: CancellationToken,
) {
    loop {
        let problem = client_ca_check(&ca, cert.as_deref()).err();
        let failing = problem.is_some();
        if let Some(p) = &problem {
            tracing::error!(problem = %p, "the client CA cannot verify the apiserver: not ready");
        }
        match &problem {
            Some(p) => check.fail(p.to_string()),
            None => check.pass(),
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let pem = cert
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let next = ca
            .boundaries(pem.as_deref())
            .into_iter()
            .filter(|b| *b > now)
            .min()
            .map_or(Duration::from_secs(60), |b| {
                Duration::from_secs(u64::try_from(b - now).unwrap_or(60))
            });
        // While failing, look again soon: a renewed certificate file is picked up quickly.
        let longest = if failing {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(60)
        };
        tokio::select! {
            _ = tokio::time::sleep(next.clamp(Duration::from_secs(1), longest)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Readiness: `check` (a real TLS handshake to ourselves) with the CA bundle the apiserver is
/// given, again after every certificate change, every 10 s while it passes and every 500 ms
/// while it fails. If the certificate source stops, the timer alone drives the checks.
pub(super) async fn readiness_loop<C, F>(
    mut published: watch::Receiver<Option<Published>>,
    handshake: Arc<Check>,
    cancel: CancellationToken,
    mut check: C,
) where
    C: FnMut(String) -> F,
    F: Future<Output = bool>,
{
    let mut source_alive = true;
    loop {
        let ca = published.borrow().as_ref().map(|p| p.ca_bundle.clone());
        let ok = match ca {
            Some(ca) if !ca.is_empty() => check(ca).await,
            // Certificates from files without a CA: the loaded certificate is all we can check.
            Some(_) => true,
            None => false,
        };
        handshake.set(ok, HANDSHAKE_FAILING);
        let wait = if ok {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = published.changed(), if source_alive => {
                if changed.is_err() {
                    if cancel.is_cancelled() {
                        return;
                    }
                    source_alive = false;
                    tracing::error!("the certificate task stopped; certificates are no longer renewed");
                }
            }
            _ = cancel.cancelled() => return,
        }
    }
}

/// Builds the desired configuration for a CA bundle.
pub(super) type DesiredFor<C> = Box<dyn Fn(&str) -> C + Send + Sync>;

/// What a registration loop shares with the manager; [`LoopBase::run`] keeps one webhook
/// configuration right: a new CA is applied, drift is repaired.
#[derive(Clone)]
pub(super) struct LoopBase {
    pub(super) published: watch::Receiver<Option<Published>>,
    pub(super) interval: Duration,
    pub(super) url_mode: bool,
    pub(super) cancel: CancellationToken,
}

impl LoopBase {
    pub(super) async fn run<C: Configuration>(
        mut self,
        desired_for: DesiredFor<C>,
        registrar: Registrar<C>,
        check: Arc<Check>,
    ) {
        // The caBundle applied last: a new one is an update, anything else found wrong is drift.
        let mut applied_ca = self
            .published
            .borrow()
            .as_ref()
            .map(|p| p.ca_bundle.clone())
            .unwrap_or_default();
        loop {
            let ca = self
                .published
                .borrow()
                .as_ref()
                .map(|p| p.ca_bundle.clone())
                .unwrap_or_default();
            let desired = desired_for(&ca);
            let result = if ca != applied_ca {
                registrar.apply(&desired).await.map(|()| {
                    tracing::info!(
                        certificates = pem_count(&ca),
                        "caBundle updated in the webhook configuration"
                    );
                })
            } else if self.url_mode {
                // Another replica that registered its own URL and is serving keeps it: replicas
                // do not take the configuration from each other, only from a dead one.
                let (want, probe_ca) = (&desired, ca.clone());
                registrar
                    .repair_unless(&desired, |live| async move {
                        let Some((host, port)) = crate::registration::other_replica(want, &live)
                        else {
                            return false;
                        };
                        replica_serving(&host, port, &probe_ca).await
                    })
                    .await
                    .map(|_| ())
            } else {
                registrar.repair(&desired).await.map(|_| ())
            };
            match result {
                Ok(()) => {
                    applied_ca = ca;
                    check.pass();
                }
                Err(e) => {
                    check.fail(format!("not confirmed to carry the current CA: {e}"));
                    tracing::warn!(error = %e, "webhook configuration check failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                changed = self.published.changed() => {
                    if changed.is_err() {
                        // The certificate source stopped: only the timer drives repairs now.
                        tokio::select! {
                            _ = tokio::time::sleep(self.interval) => {}
                            _ = self.cancel.cancelled() => return,
                        }
                    }
                }
                _ = self.cancel.cancelled() => return,
            }
        }
    }
}

/// How long another replica may take to complete a TLS handshake before it counts as dead.
const REPLICA_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a server at `host:port` completes a TLS handshake with a certificate from `ca`.
pub(super) async fn replica_serving(host: &str, port: u16, ca: &str) -> bool {
    let addr = match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.next(),
        Err(_) => None,
    };
    let Some(addr) = addr else {
        return false;
    };
    match crate::server::handshake(addr, host, ca, REPLICA_PROBE_TIMEOUT).await {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(replica = %addr, error = %e, "the registered replica does not answer; taking over the webhook configuration");
            false
        }
    }
}

pub(super) fn pem_count(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate task that is gone must not make the readiness loop spin: it keeps
    /// checking on its timer (500 ms while failing), no faster.
    #[tokio::test(start_paused = true)]
    async fn readiness_waits_when_the_certificate_task_is_gone() {
        let (tx, rx) = watch::channel(Some(Published {
            ca_bundle: "CA".into(),
            serving_chain: "CHAIN".into(),
        }));
        drop(tx);
        let cancel = CancellationToken::new();
        let checks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let check = {
            let (checks, cancel) = (checks.clone(), cancel.clone());
            move |_ca: String| {
                let mut c = checks.lock().unwrap();
                c.push(tokio::time::Instant::now());
                if c.len() == 5 {
                    cancel.cancel();
                }
                async { false }
            }
        };
        let health = crate::health::Health::new();
        let handshake = health.check("handshake", HANDSHAKE_FAILING);
        tokio::time::timeout(
            Duration::from_secs(3600),
            readiness_loop(rx, handshake, cancel, check),
        )
        .await
        .expect("the loop stops when cancelled");
        let checks = checks.lock().unwrap();
        assert_eq!(checks.len(), 5);
        // The first check, one more at once on noticing the source is gone, then the timer.
        for pair in checks[1..].windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(500),
                "checks {:?} apart",
                pair[1] - pair[0]
            );
        }
        assert!(health.readiness().is_err());
    }
}
