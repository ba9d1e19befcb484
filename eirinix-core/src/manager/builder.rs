//! [`ManagerBuilder`]: EiriniX's options plus the modern ones, validated into a [`Manager`].

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tokio_util::sync::CancellationToken;

use crate::certs::{CertPolicy, Clock, SystemClock};
use crate::extension::{Context, Extension, Mutator, Validator, ViewExtension};
use crate::hooks::{Hook, MutatorHook, ValidatorHook, ViewHook};
use crate::leader::Election;
use crate::metrics::SharedCollector;
use crate::names::is_dns_label;
use crate::options::{
    CertSource, Endpoint, FailurePolicy, Operation, ReinvocationPolicy, Settings, SideEffects,
};
use crate::reconciler::{Reconciler, run_reconciler};
use crate::watcher::PodWatcher;
use prometheus_client::collector::Collector;

use super::{ConfigError, Manager, PodExtension};

/// An extension packaged with everything it needs in a manager (webhooks, background tasks,
/// metrics), added in one call: `builder.install(extension)?`.
pub trait Install {
    /// Why it cannot be added (its options are unusable).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Add this extension's parts to `builder`.
    fn install(self, builder: ManagerBuilder) -> Result<ManagerBuilder, Self::Error>;
}

pub(super) type Task = Box<dyn FnOnce(Context, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Configures a [`Manager`]: EiriniX's options plus the modern ones, with safe defaults.
pub struct ManagerBuilder {
    settings: Settings,
    extensions: Vec<PodExtension>,
    hooks: Vec<Arc<dyn Hook>>,
    watchers: Vec<Arc<dyn PodWatcher>>,
    tasks: Vec<(String, Task)>,
    clock: Arc<dyn Clock>,
    metric_collectors: Vec<SharedCollector>,
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
            metric_collectors: Vec::new(),
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
    #[cfg(any(test, feature = "internals"))]
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Add a pod-mutating extension.
    pub fn extension(mut self, extension: impl Extension) -> Self {
        self.extensions
            .push(PodExtension::typed(Arc::new(extension)));
        self
    }

    /// Add a pod-mutating extension served from its view of the pod (see [`ViewExtension`]).
    pub fn view_extension(mut self, extension: impl ViewExtension) -> Self {
        let extension = Arc::new(extension);
        self.extensions.push(PodExtension {
            extension: extension.clone(),
            view: Some(Arc::new(ViewHook(extension))),
        });
        self
    }

    /// Add an already shared extension.
    pub fn extension_arc(mut self, extension: Arc<dyn Extension>) -> Self {
        self.extensions.push(PodExtension::typed(extension));
        self
    }

    /// Add a ready-made extension with everything it brings (its webhooks, background tasks
    /// and metrics): the one way every stock extension is added.
    pub fn install<I: Install>(self, extension: I) -> Result<Self, I::Error> {
        extension.install(self)
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
            lock.run_while_leader(cancel, None, move |token| task(ctx.clone(), token))
                .await;
        })
    }

    /// Register an extension's own metrics in the manager's registry (served on `/metrics`).
    pub fn metrics_collector(mut self, collector: impl Collector) -> Self {
        self.metric_collectors
            .push(SharedCollector(std::sync::Arc::new(collector)));
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
        if !is_dns_label(&s.fingerprint) {
            return Err(ConfigError::InvalidFingerprint(s.fingerprint.clone()));
        }
        let mut seen = HashSet::new();
        let named = self
            .extensions
            .iter()
            .map(|e| (e.extension.name(), e.extension.webhook()))
            .chain(self.hooks.iter().map(|h| (h.name(), h.overrides())));
        for (name, overrides) in named {
            if !is_dns_label(name) {
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
            metric_collectors: self.metric_collectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packaged extension that brings one task, or refuses an empty name.
    struct Packaged(&'static str);

    impl Install for Packaged {
        type Error = ConfigError;

        fn install(self, builder: ManagerBuilder) -> Result<ManagerBuilder, ConfigError> {
            if self.0.is_empty() {
                return Err(ConfigError::InvalidName(String::new()));
            }
            Ok(builder.task(self.0, |_, _| async {}))
        }
    }

    #[test]
    fn install_adds_what_an_extension_brings_or_says_why_not() {
        let builder = Manager::builder()
            .install(Packaged("a"))
            .and_then(|b| b.install(Packaged("b")))
            .unwrap();
        let names: Vec<&str> = builder.tasks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(matches!(
            Manager::builder().install(Packaged("")),
            Err(ConfigError::InvalidName(_))
        ));
    }

    /// Admits everything; from a view of nothing when added as a view extension.
    struct Quiet(&'static str);

    #[async_trait::async_trait]
    impl Extension for Quiet {
        fn name(&self) -> &str {
            self.0
        }
        async fn mutate(
            &self,
            _: &Context,
            _: &crate::Request,
            _: &k8s_openapi::api::core::v1::Pod,
        ) -> Result<crate::Mutation, crate::ExtensionError> {
            Ok(crate::Mutation::unchanged())
        }
    }

    #[async_trait::async_trait]
    impl ViewExtension for Quiet {
        type View = serde::de::IgnoredAny;
        async fn mutate_view(
            &self,
            _: &Context,
            _: &crate::Request,
            _: &serde::de::IgnoredAny,
        ) -> Result<crate::Mutation, crate::ExtensionError> {
            Ok(crate::Mutation::unchanged())
        }
    }

    #[test]
    fn a_view_extension_is_registered_in_its_place_among_pod_extensions() {
        let manager = Manager::builder()
            .extension(Quiet("first"))
            .view_extension(Quiet("second"))
            .extension(Quiet("third"))
            .build()
            .unwrap();
        assert_eq!(manager.hook_names(), ["first", "second", "third"]);
        let specs = manager.specs(crate::hooks::HookType::Mutating);
        let rules: Vec<_> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.rule.clone()))
            .collect();
        let pods = crate::hooks::ResourceRule::pods();
        assert_eq!(
            rules,
            [
                ("first", pods.clone()),
                ("second", pods.clone()),
                ("third", pods)
            ]
        );
        let served_from_view: Vec<bool> = manager
            .extensions
            .iter()
            .map(|e| e.view.is_some())
            .collect();
        assert_eq!(served_from_view, [false, true, false]);
    }
}
