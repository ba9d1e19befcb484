//! The manager: builds settings, then wires the server, certificates, registration and
//! watchers together. Each piece lives in its own module and can be used alone; here
//! [`Manager::start`] runs them in order, the builder, errors and background loops live in
//! files of their own.

mod builder;
mod error;
mod start;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::certs::{Clock, SubjectNames};
use crate::extension::{Context, Extension};
use crate::health::{Check, Health};
use crate::hooks::{Hook, HookType};
use crate::metrics::{Metrics, SharedCollector};
use crate::options::{CertSource, Endpoint, Settings};
use crate::publish::Publisher;
use crate::registration::{
    Registrar, WebhookSpec, desired_configuration, desired_validating_configuration,
};
use crate::rotation::{FileSource, Published, Rotator, SecretStore};
use crate::server::Server;
use crate::tls::CertResolver;
use crate::watcher::PodWatcher;

use builder::Task;
pub use builder::{Install, ManagerBuilder};
pub use error::{ConfigError, ManagerError};
use start::{Registering, Served};
use tasks::client_ca_loop;

/// A Pod extension as the manager holds it: registered through `extension`, served through
/// `view` when it has one (a [`crate::ViewExtension`]), else through `extension`.
#[derive(Clone)]
pub(crate) struct PodExtension {
    pub(crate) extension: Arc<dyn Extension>,
    pub(crate) view: Option<Arc<dyn Hook>>,
}

impl PodExtension {
    /// An extension served from a typed Pod.
    pub(crate) fn typed(extension: Arc<dyn Extension>) -> Self {
        Self {
            extension,
            view: None,
        }
    }
}

/// A configured set of extensions, watchers and reconcilers, ready to run against a cluster.
pub struct Manager {
    settings: Arc<Settings>,
    extensions: Vec<PodExtension>,
    hooks: Vec<Arc<dyn Hook>>,
    watchers: Vec<Arc<dyn PodWatcher>>,
    tasks: Vec<(String, Task)>,
    clock: Arc<dyn Clock>,
    metric_collectors: Vec<SharedCollector>,
}

/// A manager did not become ready in time ([`RunningManager::wait_ready`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("not ready after {timeout:?}: {reasons}")]
pub struct NotReady {
    /// How long was waited.
    pub timeout: Duration,
    /// What readiness still lacked (as `/readyz` reports it).
    pub reasons: String,
}

/// A running manager: its address, state and a way to stop it.
///
/// Dropping it without [`RunningManager::shutdown`] leaves the server and background tasks
/// running on the runtime until it shuts down (they are not tied to this handle); call
/// `shutdown` (graceful) or [`RunningManager::abort`] (at once) to stop them.
pub struct RunningManager {
    addr: SocketAddr,
    cancel: CancellationToken,
    health: Arc<Health>,
    /// The `shutdown` readiness check: fails first thing at shutdown.
    stopping: Arc<Check>,
    metrics: Arc<Metrics>,
    published: watch::Receiver<Option<Published>>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    shutdown_timeout: Duration,
    drain_period: Duration,
}

impl Manager {
    /// Start configuring a manager.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// The resolved settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Registration input of the mutating webhooks (Pod extensions first) or the validating ones.
    fn specs(&self, kind: HookType) -> Vec<WebhookSpec> {
        let pods = self
            .extensions
            .iter()
            .filter(|_| kind == HookType::Mutating)
            .map(|e| WebhookSpec::pods(e.extension.name(), e.extension.webhook()));
        let others = self
            .hooks
            .iter()
            .filter(|h| h.hook_type() == kind)
            .map(|h| WebhookSpec {
                name: h.name().to_owned(),
                overrides: h.overrides(),
                rule: h.rule(),
            });
        pods.chain(others).collect()
    }

    /// Whether any validator was added (a ValidatingWebhookConfiguration is then registered).
    fn has_validators(&self) -> bool {
        self.hooks
            .iter()
            .any(|h| h.hook_type() == HookType::Validating)
    }

    /// Every webhook name, in handler (and metrics) order: Pod extensions, then the others.
    fn hook_names(&self) -> Vec<String> {
        self.extensions
            .iter()
            .map(|e| e.extension.name().to_owned())
            .chain(self.hooks.iter().map(|h| h.name().to_owned()))
            .collect()
    }

    /// The configuration this manager registers, for `ca_bundle` and `port` (charts compare against it).
    pub fn webhook_configuration(
        &self,
        ca_bundle: &[u8],
        port: u16,
    ) -> MutatingWebhookConfiguration {
        desired_configuration(
            &self.settings,
            &self.specs(HookType::Mutating),
            ca_bundle,
            port,
        )
    }

    /// The ValidatingWebhookConfiguration this manager registers when it has validators.
    pub fn validating_webhook_configuration(
        &self,
        ca_bundle: &[u8],
        port: u16,
    ) -> Option<ValidatingWebhookConfiguration> {
        self.has_validators().then(|| {
            desired_validating_configuration(
                &self.settings,
                &self.specs(HookType::Validating),
                ca_bundle,
                port,
            )
        })
    }

    /// Names the serving certificate must cover.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn subject_names(&self) -> SubjectNames {
        match &self.settings.endpoint {
            Endpoint::Service {
                name, namespace, ..
            } => SubjectNames::for_service(name, namespace),
            Endpoint::Url { host } => SubjectNames::for_host(host),
        }
    }

    fn secret_store(&self, client: &kube::Client) -> SecretStore {
        SecretStore::new(
            client.clone(),
            &self.settings.webhook_namespace,
            &self.settings.secret_name(),
        )
    }

    /// The port [`Self::register`] writes into the configuration: the server's port, which URL
    /// mode needs known (not 0) ahead of the server; service mode registers the Service's port.
    pub fn registration_port(&self) -> Result<u16, ManagerError> {
        match &self.settings.endpoint {
            Endpoint::Url { .. } if self.settings.port == 0 => Err(ManagerError::NoPortToRegister),
            Endpoint::Url { .. } => Ok(self.settings.port),
            Endpoint::Service { port, .. } => Ok(*port),
        }
    }

    /// One-shot registration (split mode): certificates and configuration, then return.
    pub async fn register(&self, client: kube::Client) -> Result<(), ManagerError> {
        let registered_port = self.registration_port()?;
        // Nothing is served here: the material is only checked and handed to the registration.
        let publisher = Arc::new(Publisher::announce_only());
        let ca_bundle = match &self.settings.cert_source {
            CertSource::Secret => {
                // What the apiserver trusts now: replicas may still serve chains of these CAs
                // if the Secret has to be made anew (deleted while they run).
                let trusted = Registrar::<MutatingWebhookConfiguration>::new(
                    client.clone(),
                    &self.settings.field_manager,
                )
                .get(&self.settings.configuration_name())
                .await?
                .and_then(|c| c.webhooks)
                .and_then(|w| w.into_iter().next())
                .and_then(|w| w.client_config.ca_bundle)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
                let rotator = Rotator::new(
                    self.secret_store(&client),
                    self.subject_names(),
                    self.settings.cert_policy.clone(),
                    self.clock.clone(),
                    publisher,
                    true,
                )
                .with_previously_trusted(trusted)
                // A staged CA is promoted by the serving replicas once the configuration this
                // call writes has trusted it for the promote delay, never here: promoted here,
                // it would sign before the new caBundle is even written.
                .with_promotion_gate(tasks::promotion_gate(
                    client.clone(),
                    &self.settings,
                    self.has_validators(),
                ));
                rotator.tick().await?.ca_bundle_pem_at(self.clock.now())
            }
            CertSource::Files { cert, key, ca } => {
                let rx = publisher.subscribe();
                let source = FileSource::new(cert.clone(), key.clone(), ca.clone(), publisher);
                source.tick()?;
                let ca = rx.borrow().as_ref().map(|p| p.ca_bundle.clone());
                ca.unwrap_or_default()
            }
        };
        let desired = self.webhook_configuration(ca_bundle.as_bytes(), registered_port);
        Registrar::new(client.clone(), &self.settings.field_manager)
            .apply(&desired)
            .await?;
        if let Some(validating) =
            self.validating_webhook_configuration(ca_bundle.as_bytes(), registered_port)
        {
            Registrar::new(client, &self.settings.field_manager)
                .apply(&validating)
                .await?;
        }
        tracing::info!(configuration = %self.settings.configuration_name(), "webhook configuration registered");
        Ok(())
    }

    /// Delete the webhook configurations only (the first step of an uninstall, while replicas
    /// still serve; the validating one when this manager has validators); `true` when there
    /// was one.
    pub async fn remove_configuration(&self, client: kube::Client) -> Result<bool, ManagerError> {
        let mutating = Registrar::<MutatingWebhookConfiguration>::new(
            client.clone(),
            &self.settings.field_manager,
        )
        .delete(&self.settings.configuration_name())
        .await?;
        // Only a manager with validators touches ValidatingWebhookConfigurations: one without
        // needs (and, installed by the chart, has) no rights on them.
        let validating = self.has_validators()
            && Registrar::<ValidatingWebhookConfiguration>::new(
                client,
                &self.settings.field_manager,
            )
            .delete(&self.settings.validating_configuration_name())
            .await?;
        Ok(mutating || validating)
    }

    /// Delete the certificate Secret (when certificates are self-managed); `true` when there
    /// was one. Do it once no replica runs: a running one re-creates a missing Secret.
    pub async fn remove_certificate_secret(
        &self,
        client: kube::Client,
    ) -> Result<bool, ManagerError> {
        if self.settings.cert_source != CertSource::Secret {
            return Ok(false);
        }
        Ok(self.secret_store(&client).delete().await?)
    }

    /// Remove the configuration and the certificate Secret (uninstall).
    pub async fn unregister(&self, client: kube::Client) -> Result<(), ManagerError> {
        self.remove_configuration(client.clone()).await?;
        if self.settings.cert_source == CertSource::Secret {
            self.secret_store(&client).delete().await?;
        }
        tracing::info!(configuration = %self.settings.configuration_name(), "webhook configuration and certificate secret removed");
        Ok(())
    }

    /// Run until SIGTERM or SIGINT, then shut down gracefully.
    pub async fn run(self, client: kube::Client) -> Result<(), ManagerError> {
        self.run_until(client, shutdown_signal()).await
    }

    /// Run until `shutdown` completes, then shut down gracefully.
    pub async fn run_until(
        self,
        client: kube::Client,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ManagerError> {
        let running = self.start(client).await?;
        tracing::info!(addr = %running.local_addr(), "eirinix manager running");
        shutdown.await;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    }

    /// Start everything in the background and return a handle (tests use port 0 and short lifetimes).
    ///
    /// If starting fails, whatever was already started (server, certificate tasks) is stopped
    /// before the error is returned: the port is free again and no task keeps running.
    pub async fn start(self, client: kube::Client) -> Result<RunningManager, ManagerError> {
        let mut spawned = Spawned::default();
        match self.launch(client, &mut spawned).await {
            Ok(running) => Ok(running),
            Err(e) => {
                spawned.stop().await;
                Err(e)
            }
        }
    }

    /// The body of [`Self::start`], one named step after another (see `start.rs`); every task
    /// a step spawns goes into `spawned` first.
    async fn launch(
        self,
        client: kube::Client,
        spawned: &mut Spawned,
    ) -> Result<RunningManager, ManagerError> {
        crate::tls::install_default_provider();
        let settings = self.settings.clone();
        let client_ca = self.client_ca()?;
        let server = Server::bind(SocketAddr::new(settings.bind_address, settings.port)).await?;
        let addr = server.local_addr();
        let token_verifier = self.token_verifier(&client, addr.port()).await?;
        let metrics = self.metrics(token_verifier.as_ref(), client_ca.as_ref());
        // Readiness: every owner registers its check before anything is served.
        let health = Arc::new(Health::new());
        let stopping = health.passing("shutdown");
        let handshake = health.check("handshake", tasks::HANDSHAKE_FAILING);
        let configuration_checks = settings
            .register_webhook
            .then(|| self.configuration_checks(&health));
        if let Some(ca) = &client_ca {
            spawned.push(tokio::spawn(client_ca_loop(
                ca.clone(),
                settings.apiserver_client_cert.clone(),
                health.passing("client-ca"),
                spawned.cancel.clone(),
            )));
        }
        let resolver = Arc::new(CertResolver::new());
        let ctx = Context::new(client.clone(), settings.clone());
        // Certificates first: nothing is served or registered without them.
        let published = self
            .certificates(&client, &resolver, &metrics, &health, spawned)
            .await?;
        let served = Served {
            ctx: ctx.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            resolver,
            client_ca,
            token_verifier,
        };
        self.serve(server, served, spawned).await?;
        self.check_readiness(addr, &published, handshake, spawned);
        if let Some(checks) = configuration_checks {
            let step = Registering {
                port: addr.port(),
                published: &published,
                checks,
                metrics: &metrics,
            };
            self.register_and_repair(&client, step, spawned).await?;
        }
        self.run_background(&ctx, &metrics, spawned);

        // Nothing fails from here on: the tasks are the running manager's now.
        let (server, background) = spawned.hand_over();
        Ok(RunningManager {
            addr,
            cancel: spawned.cancel.clone(),
            health,
            stopping,
            metrics,
            published,
            server,
            background,
            shutdown_timeout: settings.shutdown_timeout,
            drain_period: settings.drain_period,
        })
    }
}

/// What [`Manager::start`] has spawned: stopped if starting fails, aborted if the start is
/// dropped half-way, handed to the [`RunningManager`] once it succeeds.
struct Spawned {
    cancel: CancellationToken,
    server: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for Spawned {
    fn default() -> Self {
        Self {
            cancel: CancellationToken::new(),
            server: None,
            tasks: Vec::new(),
        }
    }
}

impl Spawned {
    fn push(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Cancel and abort everything, and wait until it is gone (sockets closed).
    async fn stop(&mut self) {
        self.cancel.cancel();
        for task in self.server.take().into_iter().chain(self.tasks.drain(..)) {
            task.abort();
            let _ = task.await;
        }
    }

    /// The server and background tasks, no longer stopped by this guard.
    fn hand_over(&mut self) -> (JoinHandle<()>, Vec<JoinHandle<()>>) {
        let server = self.server.take().unwrap_or_else(|| tokio::spawn(async {}));
        (server, std::mem::take(&mut self.tasks))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.server.is_some() || !self.tasks.is_empty() {
            self.cancel.cancel();
            for task in self.server.iter().chain(&self.tasks) {
                task.abort();
            }
        }
    }
}

impl RunningManager {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The readiness checks; an extension registers its own here ([`Health::check`]) to keep
    /// the replica out of the Service while a dependency of its own is missing.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The currently served certificates (CA bundle and chain).
    pub fn published(&self) -> Option<Published> {
        self.published.borrow().clone()
    }

    /// Wait until ready (certificates, self handshake, configuration), up to `timeout`; the
    /// error says what was still missing (it works with `?` into `anyhow`).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), NotReady> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.health.readiness() {
                Ok(()) => return Ok(()),
                Err(reasons) if tokio::time::Instant::now() >= deadline => {
                    return Err(NotReady { timeout, reasons });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Report not ready, keep serving for the drain period (closing each connection after its
    /// next response), stop accepting, finish in-flight reviews, then give background tasks
    /// (watchers draining, leaders releasing their Lease) up to the shutdown timeout before
    /// aborting them.
    pub async fn shutdown(self) {
        self.stopping.fail("shutting down");
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now()
            + self.drain_period
            + self.shutdown_timeout
            + Duration::from_secs(1);
        if tokio::time::timeout_at(deadline, self.server)
            .await
            .is_err()
        {
            tracing::warn!("server did not stop in time");
        }
        for mut task in self.background {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("a background task did not stop in time; aborting it");
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Stop abruptly, as a killed process would (tests of failure policies).
    pub fn abort(self) {
        self.cancel.cancel();
        self.server.abort();
        for task in self.background {
            task.abort();
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
