//! The manager: builds settings, then wires the server, certificates, registration and
//! watchers together. Each piece lives in its own module and can be used alone.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admission::ExtensionHandler;
use crate::certs::{CertPolicy, Clock, SubjectNames, SystemClock};
use crate::extension::{Context, Extension, Mutator, Validator, is_valid_name};
use crate::hooks::{Hook, HookType, MutatorHook, ValidatorHook};
use crate::leader::{Election, run_while_leader};
pub use crate::metrics::MetricSource;
use crate::metrics::Metrics;
use crate::options::{
    CertSource, Endpoint, FailurePolicy, Operation, ReinvocationPolicy, Settings, SideEffects,
};
use crate::reconciler::{Reconciler, run_reconciler};
use crate::registration::{
    Configuration, Registrar, RegistrationError, WebhookSpec, desired_configuration,
    desired_validating_configuration,
};
use crate::rotation::{FileSource, Published, RotationError, Rotator, SecretStore};
use crate::server::{AppState, BindError, Health, ServeOptions, Server};
use crate::tls::CertResolver;
use crate::watcher::{PodWatcher, run_pod_watcher};

/// Invalid manager configuration, reported by [`ManagerBuilder::build`] before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An extension name is not a DNS-1123 label.
    #[error(
        "extension name {0:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)"
    )]
    InvalidName(String),
    /// Two extensions share a name (and so a path).
    #[error("two extensions are named {0:?}")]
    DuplicateName(String),
    /// Nothing to run.
    #[error("no extension, watcher or reconciler was added")]
    Empty,
    /// The fingerprint cannot prefix Kubernetes names.
    #[error("fingerprint {0:?} is not a DNS-1123 label")]
    InvalidFingerprint(String),
    /// Timeout outside what the apiserver accepts.
    #[error("timeoutSeconds must be between 1 and 30, got {0}")]
    InvalidTimeout(i32),
    /// URL mode without a host, or service mode without a name/namespace.
    #[error("webhook endpoint: {0}")]
    InvalidEndpoint(String),
    /// Certificate policy out of range.
    #[error("certificate policy: {0}")]
    InvalidCertPolicy(String),
    /// An apiserver client certificate to check, but no client CA to check it against.
    #[error(
        "the apiserver's client certificate is checked against the client CA: set the client CA file too"
    )]
    ClientCertWithoutCa,
}

/// A failure while starting or running the manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// A listening socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Certificates could not be set up.
    #[error("certificates: {0}")]
    Certificates(#[from] RotationError),
    /// The configuration could not be written.
    #[error("registration: {0}")]
    Registration(#[from] RegistrationError),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA for verifying client certificates could not be loaded.
    #[error("client certificate verification: {0}")]
    ClientCa(#[from] crate::tls::ClientCaError),
    /// Webhook token verification could not be set up.
    #[error("webhook token authentication: {0}")]
    TokenAuth(#[from] crate::token_auth::TokenAuthError),
    /// URL mode registration ahead of the server (split mode) with port 0: that port is only
    /// picked when the server starts, so there is no URL to register.
    #[error(
        "cannot register a URL with port 0: port 0 picks a free port when the server starts, so the server's port is not known yet; give the port the server will listen on (--port)"
    )]
    NoPortToRegister,
}

type Task = Box<dyn FnOnce(Context, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Configures a [`Manager`]: EiriniX's options plus the modern ones, with safe defaults.
pub struct ManagerBuilder {
    settings: Settings,
    extensions: Vec<Arc<dyn Extension>>,
    hooks: Vec<Arc<dyn Hook>>,
    watchers: Vec<Arc<dyn PodWatcher>>,
    tasks: Vec<(String, Task)>,
    clock: Arc<dyn Clock>,
    metric_sources: Vec<MetricSource>,
}

impl Default for ManagerBuilder {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            extensions: Vec::new(),
            hooks: Vec::new(),
            watchers: Vec::new(),
            tasks: Vec::new(),
            clock: Arc::new(SystemClock),
            metric_sources: Vec::new(),
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.settings.$name = value;
            self
        }
    };
}

impl ManagerBuilder {
    /// Operator fingerprint (default `eirini-x`): prefixes configuration, Secret and webhook names.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.settings.fingerprint = fingerprint.into();
        self
    }

    /// Mutate and watch only pods in `namespace` (default: all namespaces).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let ns: String = namespace.into();
        self.settings.namespace = (!ns.is_empty()).then_some(ns);
        self
    }

    /// URL mode: the apiserver dials `https://host:port/<extension>` (host is also a certificate SAN).
    pub fn url_mode(mut self, host: impl Into<String>) -> Self {
        self.settings.endpoint = Endpoint::Url { host: host.into() };
        self
    }

    /// Service mode: the apiserver dials Service `name` in `namespace` on `service_port`.
    pub fn service(
        mut self,
        name: impl Into<String>,
        namespace: impl Into<String>,
        service_port: u16,
    ) -> Self {
        let namespace = namespace.into();
        self.settings.webhook_namespace = namespace.clone();
        self.settings.endpoint = Endpoint::Service {
            name: name.into(),
            namespace,
            port: service_port,
        };
        self
    }

    /// Namespace of the certificate Secret (set by [`Self::service`] in service mode).
    pub fn webhook_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.webhook_namespace = namespace.into();
        self
    }

    /// Serve certificates from files (cert-manager) instead of the self-managed Secret.
    pub fn cert_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Self {
        self.settings.cert_source = CertSource::Files {
            cert: cert.into(),
            key: key.into(),
            ca,
        };
        self
    }

    /// Require a client certificate signed by a CA in the PEM file `ca` on the webhook port
    /// (the apiserver presents one when its admission kubeconfig says so); read at start.
    pub fn client_ca_file(mut self, ca: impl Into<PathBuf>) -> Self {
        self.settings.client_ca = Some(ca.into());
        self
    }

    /// The apiserver's admission client certificate (PEM, public part) in file `cert`: checked
    /// against the [`Self::client_ca_file`] at start (refused if it does not verify) and while
    /// running (not ready once it no longer does, e.g. expired). The only way the webhook can
    /// know its client CA is right before the apiserver calls; needs `client_ca_file`.
    pub fn apiserver_client_cert_file(mut self, cert: impl Into<PathBuf>) -> Self {
        self.settings.apiserver_client_cert = Some(cert.into());
        self
    }

    /// Extra object selector, merged with the Eirini-app filter.
    pub fn object_selector(mut self, selector: LabelSelector) -> Self {
        self.settings.object_selector = Some(selector);
        self
    }

    /// Extra namespace selector, merged with the namespace restriction and the exclusions.
    pub fn namespace_selector(mut self, selector: LabelSelector) -> Self {
        self.settings.namespace_selector = Some(selector);
        self
    }

    /// Namespaces whose pods never reach the webhook (default: kube-system and the webhook's own).
    pub fn excluded_namespaces<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        namespaces: I,
    ) -> Self {
        self.settings.excluded_namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// Field manager used for server-side apply (default `eirinix`).
    pub fn field_manager(mut self, manager: impl Into<String>) -> Self {
        self.settings.field_manager = manager.into();
        self
    }

    setter!(
        /// Address to bind (default 0.0.0.0).
        bind_address: IpAddr);
    setter!(
        /// Port to listen on (default 2999; 0 picks a free port, registered as bound).
        port: u16);
    setter!(
        /// Default failure policy (default Fail).
        failure_policy: FailurePolicy);
    setter!(
        /// Only pods labelled `cloudfoundry.org/source_type=APP` reach the webhook (default on).
        filter_eirini_apps: bool);
    setter!(
        /// Write and repair the MutatingWebhookConfiguration (default on; off for split mode).
        register_webhook: bool);
    setter!(
        /// Validity and renewal points of self-managed certificates.
        cert_policy: CertPolicy);
    setter!(
        /// Webhook timeout in seconds (default 10).
        timeout_seconds: i32);
    setter!(
        /// Reinvocation policy (default Never).
        reinvocation_policy: ReinvocationPolicy);
    setter!(
        /// Declared side effects (default None).
        side_effects: SideEffects);
    setter!(
        /// Intercepted operations (default CREATE).
        operations: Vec<Operation>);
    setter!(
        /// Drift-repair interval of the configuration (default 30 s).
        repair_interval: Duration);
    setter!(
        /// Certificate check interval (default 60 s; renewals due earlier happen earlier).
        cert_check_interval: Duration);
    setter!(
        /// Largest request body (default 4 MiB; 413 above).
        body_limit: usize);
    setter!(
        /// Time allowed to read and answer one request (default 15 s; raised to the largest
        /// webhook timeout when that is longer).
        request_timeout: Duration);
    setter!(
        /// Serve HTTP/2 too (default off).
        http2: bool);
    setter!(
        /// Concurrent connections at most (default 1024).
        max_connections: usize);
    setter!(
        /// Time allowed for in-flight reviews at shutdown (default 30 s).
        shutdown_timeout: Duration);
    setter!(
        /// At shutdown, keep serving this long, not ready and closing each HTTP/1.1 connection
        /// after its next response, so clients move to other replicas without a failed call
        /// (default 0).
        drain_period: Duration);
    setter!(
        /// Plain-HTTP port for health, readiness and metrics (default none).
        admin_port: Option<u16>);
    setter!(
        /// Require and verify a webhook-bound ServiceAccount token on every review (KEP-6060;
        /// default off).
        webhook_token_auth: bool);

    /// Replace all settings at once (CLIs that parse their own options).
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Use `clock` for certificate decisions (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Add a pod-mutating extension.
    pub fn extension(mut self, extension: impl Extension) -> Self {
        self.extensions.push(Arc::new(extension));
        self
    }

    /// Add an already shared extension.
    pub fn extension_arc(mut self, extension: Arc<dyn Extension>) -> Self {
        self.extensions.push(extension);
        self
    }

    /// Add a mutating webhook for any kind (a StatefulSet, a custom resource...).
    pub fn mutator(mut self, mutator: impl Mutator) -> Self {
        self.hooks.push(Arc::new(MutatorHook(Arc::new(mutator))));
        self
    }

    /// Add a validating webhook for any kind, registered in the ValidatingWebhookConfiguration.
    pub fn validator(mut self, validator: impl Validator) -> Self {
        self.hooks
            .push(Arc::new(ValidatorHook(Arc::new(validator))));
        self
    }

    /// Add a pod watcher.
    pub fn watcher(mut self, watcher: impl PodWatcher) -> Self {
        self.watchers.push(Arc::new(watcher));
        self
    }

    /// Add a reconciler running on a kube-runtime Controller, in every replica (see
    /// [`Self::leader_reconciler`] for work that must run once per cluster).
    pub fn reconciler<R: Reconciler>(mut self, reconciler: R) -> Self {
        let r = Arc::new(reconciler);
        let name = r.name().to_owned();
        self.tasks.push((
            name,
            Box::new(move |ctx, cancel| Box::pin(run_reconciler(r, ctx, cancel))),
        ));
        self
    }

    /// Add a reconciler that runs only in the replica holding the Lease of `election`: for
    /// work that must happen once per cluster (several replicas would act on every object).
    pub fn leader_reconciler<R: Reconciler>(self, reconciler: R, election: Election) -> Self {
        let r = Arc::new(reconciler);
        let name = r.name().to_owned();
        self.leader_task(name, election, move |ctx, token| {
            run_reconciler(r.clone(), ctx, token)
        })
    }

    /// Add a background task that runs only in the replica holding the Lease of `election`.
    /// It starts whenever this replica becomes leader, and its token is cancelled when the
    /// lease is lost or handed over, or the manager stops (the lease is then released).
    pub fn leader_task<F, Fut>(self, name: impl Into<String>, election: Election, task: F) -> Self
    where
        F: Fn(Context, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let task = Arc::new(task);
        self.task(name.clone(), move |ctx: Context, cancel| async move {
            let client = match ctx.client() {
                Ok(client) => client.clone(),
                Err(e) => {
                    tracing::error!(task = %name, error = %e, "leader task cannot start");
                    return;
                }
            };
            let lock = election.lock(client, &ctx.settings().webhook_namespace);
            run_while_leader(lock, cancel, None, move |token| task(ctx.clone(), token)).await;
        })
    }

    /// Append an extension's own metrics (Prometheus text) to the manager's `/metrics`.
    pub fn metrics_source(mut self, source: MetricSource) -> Self {
        self.metric_sources.push(source);
        self
    }

    /// Add any background task that runs with the manager and stops when it stops.
    pub fn task<F, Fut>(mut self, name: impl Into<String>, task: F) -> Self
    where
        F: FnOnce(Context, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push((
            name.into(),
            Box::new(move |ctx, cancel| Box::pin(task(ctx, cancel))),
        ));
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Manager, ConfigError> {
        let s = &self.settings;
        if !is_valid_name(&s.fingerprint) {
            return Err(ConfigError::InvalidFingerprint(s.fingerprint.clone()));
        }
        let mut seen = HashSet::new();
        let named = self
            .extensions
            .iter()
            .map(|e| (e.name(), e.webhook()))
            .chain(self.hooks.iter().map(|h| (h.name(), h.overrides())));
        for (name, overrides) in named {
            if !is_valid_name(name) {
                return Err(ConfigError::InvalidName(name.to_owned()));
            }
            if !seen.insert(name.to_owned()) {
                return Err(ConfigError::DuplicateName(name.to_owned()));
            }
            if let Some(t) = overrides.timeout_seconds
                && !(1..=30).contains(&t)
            {
                return Err(ConfigError::InvalidTimeout(t));
            }
        }
        if self.extensions.is_empty()
            && self.hooks.is_empty()
            && self.watchers.is_empty()
            && self.tasks.is_empty()
        {
            return Err(ConfigError::Empty);
        }
        if !(1..=30).contains(&s.timeout_seconds) {
            return Err(ConfigError::InvalidTimeout(s.timeout_seconds));
        }
        match &s.endpoint {
            Endpoint::Url { host } if host.is_empty() => {
                return Err(ConfigError::InvalidEndpoint("URL mode needs a host".into()));
            }
            Endpoint::Service {
                name,
                namespace,
                port,
            } if name.is_empty() || namespace.is_empty() || *port == 0 => {
                return Err(ConfigError::InvalidEndpoint(
                    "service mode needs a service name, a namespace and a port".into(),
                ));
            }
            _ => {}
        }
        s.cert_policy
            .validate()
            .map_err(|e| ConfigError::InvalidCertPolicy(e.to_string()))?;
        if s.apiserver_client_cert.is_some() && s.client_ca.is_none() {
            return Err(ConfigError::ClientCertWithoutCa);
        }
        Ok(Manager {
            settings: Arc::new(self.settings),
            extensions: self.extensions,
            hooks: self.hooks,
            watchers: self.watchers,
            tasks: self.tasks,
            clock: self.clock,
            metric_sources: self.metric_sources,
        })
    }
}

/// A configured set of extensions, watchers and reconcilers, ready to run against a cluster.
pub struct Manager {
    settings: Arc<Settings>,
    extensions: Vec<Arc<dyn Extension>>,
    hooks: Vec<Arc<dyn Hook>>,
    watchers: Vec<Arc<dyn PodWatcher>>,
    tasks: Vec<(String, Task)>,
    clock: Arc<dyn Clock>,
    metric_sources: Vec<MetricSource>,
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
            .map(|e| WebhookSpec::pods(e.name(), e.webhook()));
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
            .map(|e| e.name().to_owned())
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
    pub fn subject_names(&self) -> SubjectNames {
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
        let names = self.hook_names();
        let metrics = Arc::new(Metrics::new(names.iter().map(String::as_str)));
        let health = Arc::new(Health::new(false));
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
                    Arc::new(CertResolver::new()),
                    metrics,
                    health,
                    true,
                )
                .with_previously_trusted(trusted);
                rotator.tick().await?.ca_bundle_pem_at(self.clock.now())
            }
            CertSource::Files { cert, key, ca } => {
                let source = FileSource::new(
                    cert.clone(),
                    key.clone(),
                    ca.clone(),
                    Arc::new(CertResolver::new()),
                    metrics,
                    health,
                );
                source.tick()?;
                let ca = source
                    .subscribe()
                    .borrow()
                    .as_ref()
                    .map(|p| p.ca_bundle.clone());
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

    /// The body of [`Self::start`]: every task it spawns goes into `spawned` first.
    async fn launch(
        self,
        client: kube::Client,
        spawned: &mut Spawned,
    ) -> Result<RunningManager, ManagerError> {
        crate::tls::install_default_provider();
        let settings = self.settings.clone();
        // Before any side effect: a client CA that cannot verify anyone (unreadable, expired),
        // or not the apiserver's certificate we were given, is a configuration error.
        let client_ca = settings
            .client_ca
            .as_deref()
            .map(crate::tls::ClientCa::from_file)
            .transpose()?;
        if let Some(ca) = &client_ca {
            client_ca_check(ca, settings.apiserver_client_cert.as_deref())?;
        }
        let server = Server::bind(SocketAddr::new(settings.bind_address, settings.port)).await?;
        let addr = server.local_addr();
        let cancel = spawned.cancel.clone();
        let token_verifier = if settings.webhook_token_auth {
            let audiences = self
                .hook_names()
                .iter()
                .map(|name| {
                    let path = crate::server::extension_path(name);
                    let aud = crate::token_auth::audience(&settings, &path, addr.port());
                    (path, aud)
                })
                .collect();
            let verifier = crate::token_auth::TokenVerifier::discover(
                client.clone(),
                settings.configuration_name(),
                audiences,
            )
            .await?;
            Some(Arc::new(verifier))
        } else {
            None
        };
        let mut sources = self.metric_sources.clone();
        if let Some(v) = &token_verifier {
            let v = v.clone();
            sources.push(Arc::new(move || v.render()));
        }
        let names = self.hook_names();
        let mut metrics = Metrics::new(names.iter().map(String::as_str)).with_sources(sources);
        if let Some(ca) = &client_ca {
            metrics = metrics.with_client_certs(ca.stats().clone());
        }
        let metrics = Arc::new(metrics);
        let health = Arc::new(Health::new(settings.register_webhook));
        if let Some(ca) = &client_ca {
            spawned.push(tokio::spawn(client_ca_loop(
                ca.clone(),
                settings.apiserver_client_cert.clone(),
                health.clone(),
                cancel.clone(),
            )));
        }
        let resolver = Arc::new(CertResolver::new());
        let ctx = Context::new(client.clone(), settings.clone());

        // Certificates first: nothing is served or registered without them.
        let published = match &settings.cert_source {
            CertSource::Secret => {
                let rotator = Arc::new(
                    Rotator::new(
                        self.secret_store(&client),
                        self.subject_names(),
                        settings.cert_policy.clone(),
                        self.clock.clone(),
                        resolver.clone(),
                        metrics.clone(),
                        health.clone(),
                        true,
                    )
                    .with_promotion_gate(promotion_gate(
                        client.clone(),
                        &settings,
                        self.has_validators(),
                    ))
                    .restore_deleted_secret(!settings.register_webhook),
                );
                rotator.tick().await?;
                let rx = rotator.subscribe();
                spawned.push(tokio::spawn(
                    rotator.run(settings.cert_check_interval, cancel.clone()),
                ));
                rx
            }
            CertSource::Files { cert, key, ca } => {
                let source = Arc::new(FileSource::new(
                    cert.clone(),
                    key.clone(),
                    ca.clone(),
                    resolver.clone(),
                    metrics.clone(),
                    health.clone(),
                ));
                source.tick()?;
                let rx = source.subscribe();
                spawned.push(tokio::spawn(source.run(
                    settings.cert_check_interval.min(Duration::from_secs(10)),
                    cancel.clone(),
                )));
                rx
            }
        };

        // The server. Each extension answers before the apiserver gives up on its webhook (the
        // timeout registered for it), so the apiserver gets the failure-policy answer.
        let registered_timeout = |o: &crate::extension::WebhookOverrides| {
            let secs = o
                .timeout_seconds
                .unwrap_or(settings.timeout_seconds)
                .clamp(1, 30);
            Duration::from_secs(u64::try_from(secs).unwrap_or(10))
        };
        let policy = |o: &crate::extension::WebhookOverrides| {
            o.failure_policy.unwrap_or(settings.failure_policy)
        };
        let budget = |o: &crate::extension::WebhookOverrides| {
            crate::admission::answer_budget(registered_timeout(o))
        };
        let pods = self.extensions.iter().enumerate().map(|(i, e)| {
            let o = e.webhook();
            ExtensionHandler::new(e.clone(), policy(&o), budget(&o), i)
        });
        let others = self.hooks.iter().enumerate().map(|(i, h)| {
            let o = h.overrides();
            let index = self.extensions.len() + i;
            ExtensionHandler::for_hook(h.clone(), policy(&o), budget(&o), index)
        });
        let handlers = pods.chain(others).collect();
        // The HTTP request timeout never cuts a review the apiserver still waits for.
        let request_timeout = self
            .extensions
            .iter()
            .map(|e| e.webhook())
            .chain(self.hooks.iter().map(|h| h.overrides()))
            .map(|o| registered_timeout(&o))
            .fold(settings.request_timeout, Duration::max);
        let state = Arc::new(AppState {
            handlers,
            ctx: ctx.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        });
        let tls = crate::tls::server_config_with_client_ca(
            resolver.clone(),
            settings.http2,
            client_ca.as_ref(),
        )?;
        let serve_opts = ServeOptions {
            max_connections: settings.max_connections,
            handshake_timeout: settings.request_timeout,
            http2: settings.http2,
            shutdown_timeout: settings.shutdown_timeout,
            drain: settings.drain_period,
            stats: metrics.connections().clone(),
        };
        let mut router = crate::server::router(state.clone(), settings.body_limit, request_timeout);
        if let Some(verifier) = token_verifier {
            router = router.layer(axum::middleware::from_fn(move |req, next| {
                crate::token_auth::require_token(verifier.clone(), req, next)
            }));
        }
        spawned.server = Some(tokio::spawn(server.serve_tls(
            tls,
            router,
            serve_opts.clone(),
            cancel.clone(),
        )));
        if let Some(port) = settings.admin_port {
            let admin = Server::bind(SocketAddr::new(settings.bind_address, port)).await?;
            spawned.push(tokio::spawn(admin.serve_plain(
                crate::server::admin_router(state),
                ServeOptions {
                    stats: Default::default(),
                    // Probes and scrapes need no drain: the admin port stops at once.
                    drain: Duration::ZERO,
                    ..serve_opts
                },
                cancel.clone(),
            )));
        }

        // Readiness: a real handshake to ourselves with the CA the apiserver is given.
        let self_addr = SocketAddr::new(
            match settings.bind_address {
                IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                a => a,
            },
            addr.port(),
        );
        let names = self.subject_names();
        let server_name = names
            .dns
            .first()
            .cloned()
            .or_else(|| names.ips.first().map(ToString::to_string))
            .unwrap_or_else(|| "localhost".into());
        spawned.push(tokio::spawn(readiness_loop(
            published.clone(),
            health.clone(),
            cancel.clone(),
            move |ca: String| {
                let server_name = server_name.clone();
                async move {
                    match crate::server::self_handshake(self_addr, &server_name, &ca).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "readiness self-check failed");
                            false
                        }
                    }
                }
            },
        )));

        // Registration and drift repair.
        if settings.register_webhook {
            let registered_port = addr.port();
            let initial = published
                .borrow()
                .as_ref()
                .map(|p| p.ca_bundle.clone())
                .unwrap_or_default();
            let base = LoopBase {
                published: published.clone(),
                health: health.clone(),
                interval: settings.repair_interval,
                url_mode: matches!(settings.endpoint, Endpoint::Url { .. }),
                cancel: cancel.clone(),
            };
            let specs = self.specs(HookType::Mutating);
            let desired_for: DesiredFor<MutatingWebhookConfiguration> = {
                let settings = settings.clone();
                Box::new(move |ca: &str| {
                    desired_configuration(&settings, &specs, ca.as_bytes(), registered_port)
                })
            };
            let registrar = Registrar::new(client.clone(), &settings.field_manager)
                .with_metrics(metrics.clone());
            registrar.apply(&desired_for(&initial)).await?;
            health.set_configuration_ok(true);
            spawned.push(tokio::spawn(base.clone().run(desired_for, registrar)));
            if self.has_validators() {
                health.set_validating_configuration_ok(false);
                let specs = self.specs(HookType::Validating);
                let desired_for: DesiredFor<ValidatingWebhookConfiguration> = {
                    let settings = settings.clone();
                    Box::new(move |ca: &str| {
                        let ca = ca.as_bytes();
                        desired_validating_configuration(&settings, &specs, ca, registered_port)
                    })
                };
                let registrar = Registrar::new(client.clone(), &settings.field_manager)
                    .with_metrics(metrics.clone());
                registrar.apply(&desired_for(&initial)).await?;
                health.set_validating_configuration_ok(true);
                spawned.push(tokio::spawn(base.run(desired_for, registrar)));
            }
            tracing::info!(configuration = %settings.configuration_name(), "webhook configuration applied");
        }

        for w in self.watchers {
            spawned.push(tokio::spawn(run_pod_watcher(
                w,
                ctx.clone(),
                metrics.clone(),
                cancel.clone(),
            )));
        }
        for (name, task) in self.tasks {
            tracing::debug!(task = %name, "starting background task");
            spawned.push(tokio::spawn(task(ctx.clone(), cancel.clone())));
        }

        // Nothing fails from here on: the tasks are the running manager's now.
        let (server, background) = spawned.hand_over();
        Ok(RunningManager {
            addr,
            cancel,
            health,
            metrics,
            published,
            server,
            background,
            shutdown_timeout: settings.shutdown_timeout,
            drain_period: settings.drain_period,
        })
    }
}

/// A staged CA may sign once every webhook of the configuration trusts it (a read-only GET).
fn promotion_gate(
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
async fn trusts<C: Configuration>(
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

/// Check that the client CA can verify someone now and, when given the apiserver's client
/// certificate (file `cert`), that it verifies that one.
fn client_ca_check(
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
async fn client_ca_loop(
    ca: crate::tls::ClientCa,
    cert: Option<PathBuf>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    loop {
        let problem = client_ca_check(&ca, cert.as_deref()).err();
        let failing = problem.is_some();
        if let Some(p) = &problem {
            tracing::error!(problem = %p, "the client CA cannot verify the apiserver: not ready");
        }
        health.set_client_ca_problem(problem.map(|p| p.to_string()));
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
async fn readiness_loop<C, F>(
    mut published: watch::Receiver<Option<Published>>,
    health: Arc<Health>,
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
        health.set_handshake_ok(ok);
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
type DesiredFor<C> = Box<dyn Fn(&str) -> C + Send + Sync>;

/// What a registration loop shares with the manager; [`LoopBase::run`] keeps one webhook
/// configuration right: a new CA is applied, drift is repaired.
#[derive(Clone)]
struct LoopBase {
    published: watch::Receiver<Option<Published>>,
    health: Arc<Health>,
    interval: Duration,
    url_mode: bool,
    cancel: CancellationToken,
}

impl LoopBase {
    fn set_ok<C: Configuration>(&self, ok: bool) {
        if C::MUTATING {
            self.health.set_configuration_ok(ok);
        } else {
            self.health.set_validating_configuration_ok(ok);
        }
    }

    async fn run<C: Configuration>(mut self, desired_for: DesiredFor<C>, registrar: Registrar<C>) {
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
                    self.set_ok::<C>(true);
                }
                Err(e) => {
                    self.set_ok::<C>(false);
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
async fn replica_serving(host: &str, port: u16, ca: &str) -> bool {
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

fn pem_count(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

impl RunningManager {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Readiness state.
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
        self.health.set_shutting_down();
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
        let health = Arc::new(Health::new(false));
        tokio::time::timeout(
            Duration::from_secs(3600),
            readiness_loop(rx, health.clone(), cancel, check),
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
