//! The steps of [`Manager::start`], in the order it runs them: the client CA check, the
//! webhook-token verifier, metrics, certificates, the server (and admin port), the readiness
//! check, registration with drift repair, and the watchers and background tasks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use tokio::sync::watch;

use super::tasks::{DesiredFor, LoopBase, client_ca_check, promotion_gate, readiness_loop};
use super::{Manager, ManagerError, Spawned};
use crate::admission::ExtensionHandler;
use crate::extension::{Context, WebhookOverrides};
use crate::health::{Check, Health};
use crate::hooks::HookType;
use crate::metrics::{Metrics, SharedCollector};
use crate::options::{CertSource, Endpoint};
use crate::publish::Publisher;
use crate::registration::{Registrar, desired_configuration, desired_validating_configuration};
use crate::rotation::{FileSource, Published, Rotator};
use crate::server::{AppState, ServeOptions, Server};
use crate::tls::{CertResolver, ClientCa};
use crate::token_auth::TokenVerifier;
use crate::watcher::run_pod_watcher;

/// What the webhook server step needs from the steps before it.
pub(super) struct Served {
    pub(super) ctx: Context,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    pub(super) resolver: Arc<CertResolver>,
    pub(super) client_ca: Option<ClientCa>,
    pub(super) token_verifier: Option<Arc<TokenVerifier>>,
}

/// What the registration step needs from the steps before it.
pub(super) struct Registering<'a> {
    pub(super) port: u16,
    pub(super) published: &'a watch::Receiver<Option<Published>>,
    pub(super) checks: ConfigurationChecks,
    pub(super) metrics: &'a Arc<Metrics>,
}

/// The readiness checks of the webhook configurations a manager keeps, registered before
/// anything is served and failing until each configuration is applied.
pub(super) struct ConfigurationChecks {
    mutating: Arc<Check>,
    /// With validators only.
    validating: Option<Arc<Check>>,
}

impl Manager {
    /// Register the checks of the configurations [`Manager::register_and_repair`] keeps.
    pub(super) fn configuration_checks(&self, health: &Health) -> ConfigurationChecks {
        const NOT_YET: &str = "not applied yet";
        ConfigurationChecks {
            mutating: health.check("mutating-configuration", NOT_YET),
            validating: self
                .has_validators()
                .then(|| health.check("validating-configuration", NOT_YET)),
        }
    }

    /// Before any side effect: a client CA that cannot verify anyone (unreadable, expired), or
    /// not the apiserver's certificate we were given, is a configuration error.
    pub(super) fn client_ca(&self) -> Result<Option<ClientCa>, ManagerError> {
        let settings = &self.settings;
        let client_ca = settings
            .client_ca
            .as_deref()
            .map(ClientCa::from_file)
            .transpose()?;
        if let Some(ca) = &client_ca {
            client_ca_check(ca, settings.apiserver_client_cert.as_deref())?;
        }
        Ok(client_ca)
    }

    /// The verifier of webhook-bound ServiceAccount tokens (KEP-6060), when enabled: one
    /// audience per webhook path on `port`.
    pub(super) async fn token_verifier(
        &self,
        client: &kube::Client,
        port: u16,
    ) -> Result<Option<Arc<TokenVerifier>>, ManagerError> {
        let settings = &self.settings;
        if !settings.webhook_token_auth {
            return Ok(None);
        }
        let audiences = self
            .hook_names()
            .iter()
            .map(|name| {
                let path = crate::names::extension_path(name);
                let aud = crate::token_auth::audience(settings, &path, port);
                (path, aud)
            })
            .collect();
        let verifier =
            TokenVerifier::discover(client.clone(), settings.configuration_name(), audiences)
                .await?;
        Ok(Some(Arc::new(verifier)))
    }

    /// The metrics: one family per webhook, the extensions' own collectors, the token verifier's
    /// and the client certificates' counts.
    pub(super) fn metrics(
        &self,
        token_verifier: Option<&Arc<TokenVerifier>>,
        client_ca: Option<&ClientCa>,
    ) -> Arc<Metrics> {
        let mut collectors = self.metric_collectors.clone();
        if let Some(v) = token_verifier {
            collectors.push(SharedCollector(v.clone()));
        }
        let names = self.hook_names();
        Arc::new(Metrics::with(
            names.iter().map(String::as_str),
            client_ca.map(|ca| ca.stats().clone()),
            collectors,
        ))
    }

    /// The certificates, loaded or made before anything is served, and the task that renews
    /// (Secret) or reloads (files) them; what it publishes drives readiness and registration.
    pub(super) async fn certificates(
        &self,
        client: &kube::Client,
        resolver: &Arc<CertResolver>,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
        spawned: &mut Spawned,
    ) -> Result<watch::Receiver<Option<Published>>, ManagerError> {
        let settings = &self.settings;
        let cancel = spawned.cancel.clone();
        // One place the material goes; the resolver, readiness and metrics follow it.
        let publisher = Arc::new(Publisher::new(resolver.clone(), health, metrics.clone()));
        let rx = publisher.subscribe();
        match &settings.cert_source {
            CertSource::Secret => {
                let rotator = Arc::new(
                    Rotator::new(
                        self.secret_store(client),
                        self.subject_names(),
                        settings.cert_policy.clone(),
                        self.clock.clone(),
                        publisher,
                        true,
                    )
                    .with_promotion_gate(promotion_gate(
                        client.clone(),
                        settings,
                        self.has_validators(),
                    ))
                    .restore_deleted_secret(!settings.register_webhook),
                );
                rotator.tick().await?;
                spawned.push(tokio::spawn(
                    rotator.run(settings.cert_check_interval, cancel),
                ));
            }
            CertSource::Files { cert, key, ca } => {
                let source = Arc::new(FileSource::new(
                    cert.clone(),
                    key.clone(),
                    ca.clone(),
                    publisher,
                ));
                source.tick()?;
                spawned.push(tokio::spawn(source.run(
                    settings.cert_check_interval.min(Duration::from_secs(10)),
                    cancel,
                )));
            }
        }
        Ok(rx)
    }

    /// One handler per webhook (Pod extensions first, the order of the metrics), and the HTTP
    /// request timeout. Each webhook answers before the apiserver gives up on it (the timeout
    /// registered for it), so the apiserver gets the failure-policy answer; the request timeout
    /// never cuts a review the apiserver still waits for.
    fn handlers(&self) -> (Vec<ExtensionHandler>, Duration) {
        let settings = &self.settings;
        let registered_timeout = |o: &WebhookOverrides| {
            let secs = o
                .timeout_seconds
                .unwrap_or(settings.timeout_seconds)
                .clamp(1, 30);
            Duration::from_secs(u64::try_from(secs).unwrap_or(10))
        };
        let policy = |o: &WebhookOverrides| o.failure_policy.unwrap_or(settings.failure_policy);
        let budget = |o: &WebhookOverrides| crate::admission::answer_budget(registered_timeout(o));
        let pods = self.extensions.iter().enumerate().map(|(i, e)| {
            let o = e.extension.webhook();
            match &e.view {
                Some(view) => ExtensionHandler::for_hook(view.clone(), policy(&o), budget(&o), i),
                None => ExtensionHandler::new(e.extension.clone(), policy(&o), budget(&o), i),
            }
        });
        let others = self.hooks.iter().enumerate().map(|(i, h)| {
            let o = h.overrides();
            let index = self.extensions.len() + i;
            ExtensionHandler::for_hook(h.clone(), policy(&o), budget(&o), index)
        });
        let handlers = pods.chain(others).collect();
        let request_timeout = self
            .extensions
            .iter()
            .map(|e| e.extension.webhook())
            .chain(self.hooks.iter().map(|h| h.overrides()))
            .map(|o| registered_timeout(&o))
            .fold(settings.request_timeout, Duration::max);
        (handlers, request_timeout)
    }

    /// Serve the webhooks (and health, readiness, metrics) over TLS on `server`, and on the
    /// plain admin port when there is one.
    pub(super) async fn serve(
        &self,
        server: Server,
        served: Served,
        spawned: &mut Spawned,
    ) -> Result<(), ManagerError> {
        let settings = &self.settings;
        let cancel = spawned.cancel.clone();
        let (handlers, request_timeout) = self.handlers();
        let state = Arc::new(AppState {
            handlers,
            ctx: served.ctx,
            metrics: served.metrics.clone(),
            health: served.health,
        });
        let tls = crate::tls::server_config_with_client_ca(
            served.resolver,
            settings.http2,
            served.client_ca.as_ref(),
        )?;
        let serve_opts = ServeOptions {
            max_connections: settings.max_connections,
            handshake_timeout: settings.request_timeout,
            http2: settings.http2,
            shutdown_timeout: settings.shutdown_timeout,
            drain: settings.drain_period,
            stats: served.metrics.connections().clone(),
        };
        let mut router = crate::server::router(state.clone(), settings.body_limit, request_timeout);
        if let Some(verifier) = served.token_verifier {
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
                cancel,
            )));
        }
        Ok(())
    }

    /// Readiness: a real handshake to ourselves at `addr` with the CA the apiserver is given.
    pub(super) fn check_readiness(
        &self,
        addr: SocketAddr,
        published: &watch::Receiver<Option<Published>>,
        handshake: Arc<Check>,
        spawned: &mut Spawned,
    ) {
        let self_addr = SocketAddr::new(
            match self.settings.bind_address {
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
            handshake,
            spawned.cancel.clone(),
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
    }

    /// Apply the webhook configurations (the validating one when there are validators), then
    /// keep them right: a new CA is applied, drift is repaired.
    pub(super) async fn register_and_repair(
        &self,
        client: &kube::Client,
        step: Registering<'_>,
        spawned: &mut Spawned,
    ) -> Result<(), ManagerError> {
        let settings = &self.settings;
        let port = step.port;
        let initial = step
            .published
            .borrow()
            .as_ref()
            .map(|p| p.ca_bundle.clone())
            .unwrap_or_default();
        let base = LoopBase {
            published: step.published.clone(),
            interval: settings.repair_interval,
            url_mode: matches!(settings.endpoint, Endpoint::Url { .. }),
            cancel: spawned.cancel.clone(),
        };
        let specs = self.specs(HookType::Mutating);
        let desired_for: DesiredFor<MutatingWebhookConfiguration> = {
            let settings = settings.clone();
            Box::new(move |ca: &str| desired_configuration(&settings, &specs, ca.as_bytes(), port))
        };
        let registrar = Registrar::new(client.clone(), &settings.field_manager)
            .with_metrics(step.metrics.clone());
        registrar.apply(&desired_for(&initial)).await?;
        let ConfigurationChecks {
            mutating,
            validating,
        } = step.checks;
        mutating.pass();
        spawned.push(tokio::spawn(base.clone().run(
            desired_for,
            registrar,
            mutating,
        )));
        if let Some(check) = validating {
            let specs = self.specs(HookType::Validating);
            let desired_for: DesiredFor<ValidatingWebhookConfiguration> = {
                let settings = settings.clone();
                Box::new(move |ca: &str| {
                    desired_validating_configuration(&settings, &specs, ca.as_bytes(), port)
                })
            };
            let registrar = Registrar::new(client.clone(), &settings.field_manager)
                .with_metrics(step.metrics.clone());
            registrar.apply(&desired_for(&initial)).await?;
            check.pass();
            spawned.push(tokio::spawn(base.run(desired_for, registrar, check)));
        }
        tracing::info!(configuration = %settings.configuration_name(), "webhook configuration applied");
        Ok(())
    }

    /// The pod watchers and the background tasks (reconcilers, leader tasks).
    pub(super) fn run_background(
        self,
        ctx: &Context,
        metrics: &Arc<Metrics>,
        spawned: &mut Spawned,
    ) {
        let cancel = spawned.cancel.clone();
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
    }
}
