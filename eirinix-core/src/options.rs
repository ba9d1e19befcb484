//! Manager settings: the EiriniX options plus what a modern webhook needs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::certs::CertPolicy;

/// The label every Eirini app pod carries; `APP` for app instances, `STG` for staging.
pub const SOURCE_TYPE_LABEL: &str = "cloudfoundry.org/source_type";

/// What the apiserver does when the webhook cannot be reached or errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Reject the pod (safe default for extensions whose injection is required).
    #[default]
    Fail,
    /// Admit the pod unmutated.
    Ignore,
}

impl FailurePolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "Fail",
            Self::Ignore => "Ignore",
        }
    }
}

/// Admission operations a webhook can intercept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Pod creation.
    Create,
    /// Pod update.
    Update,
}

impl Operation {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
        }
    }
}

/// Whether the apiserver calls the webhook again after later mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReinvocationPolicy {
    /// Call once.
    #[default]
    Never,
    /// Call again if another webhook changed the pod afterwards (extensions must be idempotent).
    IfNeeded,
}

impl ReinvocationPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "Never",
            Self::IfNeeded => "IfNeeded",
        }
    }
}

/// Side effects declared to the apiserver (dry-run requests are only sent to webhooks without).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SideEffects {
    /// The webhook has no side effects.
    #[default]
    None,
    /// The webhook skips its side effects when `dryRun` is set.
    NoneOnDryRun,
}

impl SideEffects {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::NoneOnDryRun => "NoneOnDryRun",
        }
    }
}

/// How the apiserver reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Through a Service (in-cluster deployment).
    Service {
        /// Service name.
        name: String,
        /// Service namespace.
        namespace: String,
        /// Service port registered in the configuration: must equal the chart's Service port.
        port: u16,
    },
    /// Directly at `https://host:port` (out-of-cluster, tests).
    Url {
        /// Host name or IP the apiserver dials; also a certificate SAN.
        host: String,
    },
}

/// Where serving certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Self-managed CA + serving cert in the `<fingerprint>-setupcertificate` Secret, rotated automatically.
    Secret,
    /// PEM files managed by someone else (cert-manager), reloaded when they change.
    Files {
        /// Serving certificate chain.
        cert: PathBuf,
        /// Serving private key.
        key: PathBuf,
        /// CA bundle registered as `caBundle` (when registering).
        ca: Option<PathBuf>,
    },
}

/// Resolved manager settings, shared with extensions through [`crate::Context`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// Operator fingerprint: prefixes the configuration, Secret and webhook names.
    pub fingerprint: String,
    /// Namespace whose pods are mutated and watched; `None` means all.
    pub namespace: Option<String>,
    /// Address the server binds to.
    pub bind_address: IpAddr,
    /// Port the server listens on (0 picks a free one).
    pub port: u16,
    /// How the apiserver reaches the webhook.
    pub endpoint: Endpoint,
    /// Namespace of the certificate Secret (and the Service in service mode).
    pub webhook_namespace: String,
    /// Default failure policy of every extension.
    pub failure_policy: FailurePolicy,
    /// Only pods labelled `cloudfoundry.org/source_type=APP` reach the webhook.
    pub filter_eirini_apps: bool,
    /// Write the MutatingWebhookConfiguration (and repair drift).
    pub register_webhook: bool,
    /// Where certificates come from.
    pub cert_source: CertSource,
    /// Validity and renewal points of self-managed certificates.
    pub cert_policy: CertPolicy,
    /// Default webhook timeout in seconds.
    pub timeout_seconds: i32,
    /// Default reinvocation policy.
    pub reinvocation_policy: ReinvocationPolicy,
    /// Side effects declared for every webhook.
    pub side_effects: SideEffects,
    /// Default operations intercepted.
    pub operations: Vec<Operation>,
    /// Namespaces never sent to the webhook.
    pub excluded_namespaces: Vec<String>,
    /// Extra object selector, merged with the Eirini-app filter.
    pub object_selector: Option<LabelSelector>,
    /// Extra namespace selector, merged with the namespace restriction and exclusions.
    pub namespace_selector: Option<LabelSelector>,
    /// How often the configuration is compared with the desired one and repaired.
    pub repair_interval: Duration,
    /// How often certificates are checked against the wall clock and the Secret.
    pub cert_check_interval: Duration,
    /// Largest accepted request body (413 above).
    pub body_limit: usize,
    /// Time allowed to read and answer a request (raised to the largest webhook timeout).
    pub request_timeout: Duration,
    /// Serve HTTP/2 too (off by default: Rapid Reset).
    pub http2: bool,
    /// Concurrent connections accepted at most.
    pub max_connections: usize,
    /// Time allowed for in-flight reviews at shutdown.
    pub shutdown_timeout: Duration,
    /// At shutdown, how long to keep serving (not ready, every HTTP/1.1 response with
    /// `Connection: close`) while the Service's endpoints drop this replica and clients move
    /// their connections elsewhere. Default 0; the `eirinix` binary and chart use 5 s.
    pub drain_period: Duration,
    /// Field manager of server-side apply.
    pub field_manager: String,
    /// Also serve `/healthz`, `/readyz` and `/metrics` over plain HTTP on this port.
    pub admin_port: Option<u16>,
    /// Require a webhook-bound ServiceAccount token on every review (KEP-6060, alpha in
    /// Kubernetes 1.37; see SECURITY.md: apiservers that do not send one are refused). Default off.
    pub webhook_token_auth: bool,
    /// PEM CA bundle file: when set, every client of the webhook port must present a
    /// certificate chaining to it (the apiserver's, from its admission kubeconfig). Default: none.
    pub client_ca: Option<PathBuf>,
    /// PEM file with the apiserver's admission client certificate (public part, the one its
    /// admission kubeconfig names; intermediates after it): checked against `client_ca` at
    /// start (refused if it does not verify) and while running (not ready once it no longer
    /// does). Needs `client_ca`. Default: none (a wrong CA then shows only in the metrics).
    pub apiserver_client_cert: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            fingerprint: "eirini-x".into(),
            namespace: None,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 2999,
            endpoint: Endpoint::Url {
                host: "127.0.0.1".into(),
            },
            webhook_namespace: "default".into(),
            failure_policy: FailurePolicy::Fail,
            filter_eirini_apps: true,
            register_webhook: true,
            cert_source: CertSource::Secret,
            cert_policy: CertPolicy::default(),
            timeout_seconds: 10,
            reinvocation_policy: ReinvocationPolicy::Never,
            side_effects: SideEffects::None,
            operations: vec![Operation::Create],
            excluded_namespaces: Vec::new(),
            object_selector: None,
            namespace_selector: None,
            repair_interval: Duration::from_secs(30),
            cert_check_interval: Duration::from_secs(60),
            body_limit: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(15),
            http2: false,
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(30),
            drain_period: Duration::ZERO,
            field_manager: "eirinix".into(),
            admin_port: None,
            webhook_token_auth: false,
            client_ca: None,
            apiserver_client_cert: None,
        }
    }
}

impl Settings {
    /// Name of the MutatingWebhookConfiguration.
    pub fn configuration_name(&self) -> String {
        format!("{}-mutating-hook", self.fingerprint)
    }

    /// Name of the ValidatingWebhookConfiguration (registered when there are validators).
    pub fn validating_configuration_name(&self) -> String {
        format!("{}-validating-hook", self.fingerprint)
    }

    /// Name of the certificate Secret.
    pub fn secret_name(&self) -> String {
        format!("{}-setupcertificate", self.fingerprint)
    }

    /// Name of the webhook entry of extension `extension`.
    pub fn webhook_name(&self, extension: &str) -> String {
        format!("{extension}.{}.org", self.fingerprint)
    }

    /// Namespaces excluded in effect: the configured ones, or kube-system and the webhook's own.
    pub fn effective_excluded_namespaces(&self) -> Vec<String> {
        let mut out = self.excluded_namespaces.clone();
        if out.is_empty() {
            out.push("kube-system".into());
            out.push(self.webhook_namespace.clone());
        }
        out.sort();
        out.dedup();
        out
    }
}
