//! Certificates at run time: the shared Secret (create-if-absent, compare-and-swap updates),
//! the rotation loop driven by the wall clock, and the file source for cert-manager.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::ObjectMeta;
use tokio_util::sync::CancellationToken;

use crate::certs::{CertBundle, CertError, CertPolicy, Clock, FileCerts, Renewal, SubjectNames};
pub use crate::publish::Published;
use crate::publish::Publisher;

/// Errors of the certificate runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// The API server refused or failed a request on the Secret.
    #[error("certificate secret {namespace}/{name}: {source}")]
    Api {
        /// Secret namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Underlying error.
        #[source]
        source: kube::Error,
    },
    /// Certificate material was invalid or could not be made.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// Read-only mode and the Secret does not exist yet.
    #[error("certificate secret does not exist (run `register` first)")]
    SecretMissing,
    /// Another writer kept winning; retried later.
    #[error("certificate secret kept changing under us; will retry")]
    Contended,
}

/// The certificate Secret `<fingerprint>-setupcertificate`, shared by all replicas.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

fn secret_data(bundle: &CertBundle) -> BTreeMap<String, ByteString> {
    bundle
        .to_secret_data()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v)))
        .collect()
}

fn bundle_from(secret: &Secret) -> Result<CertBundle, CertError> {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    CertBundle::from_secret_data(&data)
}

impl SecretStore {
    /// The store for Secret `name` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// A stream yielding whenever the Secret changes (or is deleted), from a metadata-only
    /// watch of this one name: replicas act on another replica's write at once instead of at
    /// their next check. Needs `list`/`watch` on the Secret; without them it only logs.
    pub fn changes(&self) -> futures::stream::BoxStream<'static, ()> {
        use futures::StreamExt as _;
        use kube::runtime::WatchStreamExt as _;
        use kube::runtime::watcher::{self, Event};
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let what = format!("{}/{}", self.namespace, self.name);
        let mut warned = false;
        let api: Api<kube::core::PartialObjectMeta<Secret>> =
            Api::namespaced(self.api.clone().into_client(), &self.namespace);
        watcher::watcher(api, config)
            .default_backoff()
            .filter_map(move |event| {
                let out = match event {
                    Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => Some(()),
                    Ok(Event::Init | Event::InitApply(_)) => None,
                    Err(e) => {
                        if !warned {
                            warned = true;
                            tracing::warn!(secret = %what, error = %e,
                                "cannot watch the certificate secret; changes by other replicas are seen at the next check");
                        }
                        None
                    }
                };
                futures::future::ready(out)
            })
            .boxed()
    }

    fn err(&self, source: kube::Error) -> RotationError {
        RotationError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Read the Secret: `None` if absent; the bundle (or why it is unusable) and its resourceVersion.
    pub async fn load(
        &self,
    ) -> Result<Option<(Result<CertBundle, CertError>, String)>, RotationError> {
        let secret = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?;
        Ok(secret.map(|s| {
            let rv = s.metadata.resource_version.clone().unwrap_or_default();
            (bundle_from(&s), rv)
        }))
    }

    /// Create the Secret with `bundle` unless it exists; when another replica won, return its bundle.
    pub async fn create_if_absent(
        &self,
        bundle: &CertBundle,
    ) -> Result<(CertBundle, String), RotationError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    crate::names::MANAGED_BY_LABEL.to_owned(),
                    "eirinix".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(secret_data(bundle)),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(secret = %self.name, "created certificate secret");
                Ok((
                    bundle.clone(),
                    created.metadata.resource_version.unwrap_or_default(),
                ))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(secret = %self.name, "certificate secret already exists; using it");
                match self.load().await? {
                    Some((Ok(b), rv)) => Ok((b, rv)),
                    Some((Err(e), _)) => Err(e.into()),
                    None => Err(RotationError::Contended),
                }
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Replace the Secret's data if it is still at `resource_version`; `None` on conflict.
    pub async fn replace(
        &self,
        bundle: &CertBundle,
        resource_version: &str,
    ) -> Result<Option<String>, RotationError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: Some(resource_version.to_owned()),
                labels: Some(BTreeMap::from([(
                    crate::names::MANAGED_BY_LABEL.to_owned(),
                    "eirinix".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(secret_data(bundle)),
            ..Default::default()
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
        {
            Ok(s) => Ok(Some(s.metadata.resource_version.unwrap_or_default())),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Delete the Secret; absent is fine (`false`).
    pub async fn delete(&self) -> Result<bool, RotationError> {
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// Says whether the registered configuration already trusts a CA (its PEM): a staged CA is
/// promoted (starts signing) only then, or new apiserver connections would fail.
pub type PromotionGate =
    Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// Keeps the served certificate valid: loads or creates the shared Secret, renews by the wall clock,
/// and swaps new certificates into the running server.
pub struct Rotator {
    store: SecretStore,
    names: SubjectNames,
    policy: CertPolicy,
    clock: Arc<dyn Clock>,
    publisher: Arc<Publisher>,
    may_write: bool,
    gate: Option<PromotionGate>,
    /// The bundle served last: restores a deleted Secret in split mode.
    last: std::sync::Mutex<Option<CertBundle>>,
    /// Split mode: restore a deleted Secret from `last` instead of making a new CA.
    restore_deleted: bool,
    /// CAs the configuration trusts already: kept as the previous CA of a fresh bundle.
    previously_trusted: Option<String>,
    /// Split mode: the staged CA the gate confirmed, and when this replica first saw that.
    trusted_since: std::sync::Mutex<Option<(String, time::OffsetDateTime)>>,
}

impl Rotator {
    /// A rotator publishing through `publisher`; `may_write` false only reads the Secret (a
    /// server in split mode without write rights).
    pub fn new(
        store: SecretStore,
        names: SubjectNames,
        policy: CertPolicy,
        clock: Arc<dyn Clock>,
        publisher: Arc<Publisher>,
        may_write: bool,
    ) -> Self {
        Self {
            store,
            names,
            policy,
            clock,
            publisher,
            may_write,
            gate: None,
            last: std::sync::Mutex::new(None),
            restore_deleted: false,
            previously_trusted: None,
            trusted_since: std::sync::Mutex::new(None),
        }
    }

    /// Split mode: restore a deleted Secret from the certificates this replica serves (a new
    /// CA would be trusted only after the next `register`). Otherwise (the default, a server
    /// that registers) a deleted Secret is replaced by a new CA, which is how a suspected key
    /// compromise is answered.
    pub fn restore_deleted_secret(mut self, restore: bool) -> Self {
        self.restore_deleted = restore;
        self
    }

    /// When this rotator has to create the Secret from scratch, keep `ca_bundle_pem` (what the
    /// configuration trusts now, e.g. read by `register`) as the previous CA, so replicas still
    /// serving a chain of those CAs stay trusted until they load the new one (dropped after the
    /// policy's previous-CA retention, like any previous CA).
    pub fn with_previously_trusted(mut self, ca_bundle_pem: Option<String>) -> Self {
        self.previously_trusted = ca_bundle_pem.filter(|p| !p.trim().is_empty());
        self
    }

    /// Promote a staged CA only when `gate` confirms the configuration trusts it (split mode:
    /// the CA reaches `caBundle` when `register` runs; until then the current CA keeps signing),
    /// and has done so for the policy's promote delay: the delay counts from then, not from
    /// staging, so every apiserver has read the new `caBundle` before the CA signs.
    pub fn with_promotion_gate(mut self, gate: PromotionGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// One pass: load (or create), renew what is due, serve the result. Returns the bundle served.
    pub async fn tick(&self) -> Result<CertBundle, RotationError> {
        for _ in 0..8 {
            let (bundle, rv) = match self.store.load().await? {
                Some((Ok(b), rv)) => (b, rv),
                Some((Err(e), rv)) if self.may_write => {
                    tracing::error!(error = %e, "certificate secret is unusable; replacing it with new certificates");
                    let fresh = CertBundle::generate(&self.names, &self.policy, self.clock.now())?;
                    match self.store.replace(&fresh, &rv).await? {
                        Some(rv) => (fresh, rv),
                        None => continue,
                    }
                }
                Some((Err(e), _)) => return Err(e.into()),
                None if self.may_write => {
                    // Split mode: a fresh CA would be trusted only after the next `register`, so
                    // a deleted Secret is restored from what this replica serves.
                    let restored = if self.restore_deleted {
                        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
                    } else {
                        None
                    };
                    let initial = match restored {
                        Some(served) => {
                            tracing::warn!(
                                "the certificate secret is gone; restoring it from the certificates this replica serves"
                            );
                            served
                        }
                        None => {
                            let now = self.clock.now();
                            let mut fresh = CertBundle::generate(&self.names, &self.policy, now)?;
                            if let Some(trusted) = &self.previously_trusted {
                                fresh.previous_ca_pem = Some(trusted.clone());
                                fresh.previous_ca_retired_at = Some(now);
                            }
                            fresh
                        }
                    };
                    self.store.create_if_absent(&initial).await?
                }
                None => return Err(RotationError::SecretMissing),
            };
            let mut action = bundle.plan(&self.names, &self.policy, self.clock.now());
            if let (Renewal::PromoteNextCa, Some(gate), Some(next)) =
                (&action, &self.gate, &bundle.next_ca)
            {
                let now = self.clock.now();
                let expired = bundle.ca.not_after <= now;
                let trusted = expired || gate(next.cert_pem.clone()).await;
                let settled = expired
                    || trusted
                        && self.trusted_for(&next.cert_pem, now) >= self.policy.ca_promote_delay;
                if !trusted {
                    *self.trusted_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::warn!(
                        "a new CA is staged but the webhook configuration does not trust it yet \
                         (run `eirinix register`); the current CA keeps signing"
                    );
                }
                if !settled {
                    // Everything else (serving renewals) goes on under the current CA.
                    let waiting = CertPolicy {
                        ca_promote_delay: Duration::from_secs(u64::from(u32::MAX)),
                        ..self.policy.clone()
                    };
                    action = bundle.plan(&self.names, &waiting, self.clock.now());
                }
            }
            if matches!(action, Renewal::None) || !self.may_write {
                self.serve(&bundle)?;
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(bundle.clone());
                return Ok(bundle);
            }
            tracing::info!(?action, "renewing certificates");
            let next = bundle.apply(&action, &self.names, &self.policy, self.clock.now())?;
            if self.store.replace(&next, &rv).await?.is_none() {
                tracing::debug!("certificate secret changed concurrently; re-reading");
            }
            // Loop: re-read so every replica converges on what the Secret holds.
        }
        Err(RotationError::Contended)
    }

    /// How long this replica has seen the configuration trust the staged CA `pem` (zero the
    /// first time: the time starts now).
    fn trusted_for(&self, pem: &str, now: time::OffsetDateTime) -> Duration {
        let mut since = self.trusted_since.lock().unwrap_or_else(|p| p.into_inner());
        match since.as_ref() {
            Some((seen, at)) if seen == pem => Duration::try_from(now - *at).unwrap_or_default(),
            _ => {
                *since = Some((pem.to_owned(), now));
                Duration::ZERO
            }
        }
    }

    fn serve(&self, bundle: &CertBundle) -> Result<(), RotationError> {
        let published = Published {
            ca_bundle: bundle.ca_bundle_pem_at(self.clock.now()),
            serving_chain: bundle.serving_chain_pem(),
        };
        let not_after = bundle.serving.not_after;
        if self.publisher.publish(
            published,
            &bundle.serving.key_pem,
            Some(not_after.unix_timestamp()),
        )? {
            tracing::info!(%not_after, "serving certificate loaded");
        }
        Ok(())
    }

    /// Run until cancelled: tick at least every `interval`, earlier when a renewal is due or
    /// when the Secret changes (another replica renewed, or somebody deleted it).
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        use futures::StreamExt as _;
        let mut changes = self.store.changes();
        let mut watching = true;
        loop {
            let wait = match self.tick().await {
                Ok(bundle) => {
                    let due = bundle.next_action_at(&self.policy) - self.clock.now();
                    let due = Duration::try_from(due).unwrap_or(Duration::ZERO);
                    due.clamp(Duration::from_millis(200), interval)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate check failed; retrying");
                    interval.min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = changes.next(), if watching => {
                    if changed.is_none() {
                        watching = false;
                        continue;
                    }
                    // Coalesce a burst (our own write echoes back too) into one check.
                    tokio::time::sleep(CHANGE_SETTLE).await;
                    while let Some(Some(())) = changes.next().now_or_never() {}
                }
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// Wait after a Secret change before checking, so a burst of changes costs one read.
const CHANGE_SETTLE: Duration = Duration::from_millis(50);

/// Serves certificates from PEM files (cert-manager), reloading them when they change.
pub struct FileSource {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    publisher: Arc<Publisher>,
}

impl FileSource {
    /// A file source for `cert`, `key` and the optional `ca` bundle, publishing through
    /// `publisher`.
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
        publisher: Arc<Publisher>,
    ) -> Self {
        Self {
            cert,
            key,
            ca,
            publisher,
        }
    }

    /// Load the files and serve them if they changed.
    pub fn tick(&self) -> Result<(), RotationError> {
        let files = FileCerts::load(&self.cert, &self.key, self.ca.as_deref())?;
        let published = Published {
            ca_bundle: files.ca_pem.clone().unwrap_or_default(),
            serving_chain: files.cert_chain_pem.clone(),
        };
        let not_after = files.leaf_not_after().ok().map(|t| t.unix_timestamp());
        if self
            .publisher
            .publish(published, &files.key_pem, not_after)?
        {
            tracing::info!(cert = %self.cert.display(), "serving certificate loaded from file");
        }
        Ok(())
    }

    /// Poll the files every `interval` until cancelled.
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.tick() {
                tracing::warn!(error = %e, "reloading certificate files failed; keeping the current certificate");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::metrics::Metrics;
    use crate::tls::CertResolver;

    /// cert-manager mode: files are served through the publisher when they change, and only then.
    #[test]
    fn file_certificates_are_published_when_they_change() {
        crate::tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("ca.crt"),
        );
        let write = |bundle: &CertBundle| {
            std::fs::write(&cert, bundle.serving_chain_pem()).unwrap();
            std::fs::write(&key, &bundle.serving.key_pem).unwrap();
            std::fs::write(&ca, bundle.ca_bundle_pem()).unwrap();
        };
        let (first, second) = (crate::certs::test_bundle(), crate::certs::test_bundle());
        write(&first);
        let resolver = Arc::new(CertResolver::new());
        let health = Health::new();
        let publisher = Arc::new(Publisher::new(
            resolver.clone(),
            &health,
            Arc::new(Metrics::new(["x"])),
        ));
        let mut rx = publisher.subscribe();
        let source = FileSource::new(cert.clone(), key.clone(), Some(ca.clone()), publisher);
        source.tick().unwrap();
        assert!(resolver.is_loaded());
        assert_eq!(health.readiness(), Ok(()));
        assert_eq!(
            rx.borrow_and_update().as_ref().map(|p| p.ca_bundle.clone()),
            Some(first.ca_bundle_pem())
        );
        source.tick().unwrap();
        assert!(
            !rx.has_changed().unwrap(),
            "unchanged files publish nothing"
        );
        write(&second);
        source.tick().unwrap();
        assert_eq!(
            rx.borrow_and_update()
                .as_ref()
                .map(|p| p.serving_chain.clone()),
            Some(second.serving_chain_pem())
        );
    }
}
