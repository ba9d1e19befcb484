//! The extension contract: what an extension author implements.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::admissionregistration::v1::MatchCondition;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Resource;
use kube::core::admission::AdmissionRequest;
use serde::de::DeserializeOwned;

use crate::options::{FailurePolicy, Operation, ReinvocationPolicy, Settings, SideEffects};
use crate::patch_text::PatchText;

/// The admission request an extension sees (operation, namespace, user info, dry run...).
pub type Request = AdmissionRequest<Pod>;

/// A pod-mutating admission extension.
///
/// Implementations are registered with [`crate::Manager`]; each gets its own webhook path
/// and its own entry in the MutatingWebhookConfiguration, both derived from [`Extension::name`].
#[async_trait]
pub trait Extension: Send + Sync + 'static {
    /// Stable name (a DNS-1123 label): the webhook path `/<name>` and the webhook `<name>.<fingerprint>.org`.
    fn name(&self) -> &str;

    /// Decide what to do with `pod` on its way into the cluster.
    async fn mutate(
        &self,
        ctx: &Context,
        request: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError>;

    /// Per-extension registration overrides (failure policy, match conditions...).
    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides::default()
    }
}

/// A Pod [`Extension`] that also answers from a small view of the pod, decoded straight from the
/// review: the fields `View` does not name are skipped, not typed, so a review costs a fraction
/// of building a whole k8s-openapi Pod.
///
/// Added with [`crate::ManagerBuilder::view_extension`], it is registered and ordered as any
/// Pod extension, and the server calls [`ViewExtension::mutate_view`]. [`Extension::mutate`]
/// stays the typed path (offline review, callers holding a Pod): it should reach the same
/// decision, for example by turning the Pod into the view and calling `mutate_view`.
#[async_trait]
pub trait ViewExtension: Extension {
    /// What of the pod this extension reads, deserialized from the pod's JSON.
    type View: DeserializeOwned + Send + Sync + 'static;

    /// Decide what to do with the pod seen through `view` (the request carries no objects).
    async fn mutate_view(
        &self,
        ctx: &Context,
        request: &Request,
        view: &Self::View,
    ) -> Result<Mutation, ExtensionError>;

    /// The pod's name, or its generateName, as `view` holds it: logs name the pod by it, since
    /// a review's own `name` is empty for a generated name. `None` (the default): the request's.
    fn pod_name<'v>(&self, view: &'v Self::View) -> Option<&'v str> {
        let _ = view;
        None
    }
}

/// A mutating webhook for objects of any kind `Object` (a StatefulSet, a custom resource...).
///
/// Pods keep their own, faster contract ([`Extension`]); everything else works the same:
/// registered with [`crate::ManagerBuilder::mutator`], served at `/<name>`, one entry of the
/// MutatingWebhookConfiguration whose rule names `Object`'s group, version and plural.
#[async_trait]
pub trait Mutator: Send + Sync + 'static {
    /// The admitted kind, decoded from the review (a review of another kind is refused).
    type Object: Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static;

    /// Stable name (a DNS-1123 label), as [`Extension::name`].
    fn name(&self) -> &str;

    /// Decide what to do with `object` (CREATE and UPDATE; DELETE and CONNECT are admitted).
    async fn mutate(
        &self,
        ctx: &Context,
        request: &AdmissionRequest<Self::Object>,
        object: &Self::Object,
    ) -> Result<Mutation, ExtensionError>;

    /// Per-webhook registration overrides; the Eirini-app object selector applies unless
    /// replaced here (most kinds other than Pods carry no `source_type` label: set one).
    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides::default()
    }
}

/// A validating webhook for objects of any kind: allows or denies, never changes the object.
///
/// Registered with [`crate::ManagerBuilder::validator`] in a ValidatingWebhookConfiguration
/// kept right as the mutating one is (same certificates, server-side apply, drift repair).
#[async_trait]
pub trait Validator: Send + Sync + 'static {
    /// The validated kind.
    type Object: Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static;

    /// Stable name (a DNS-1123 label), as [`Extension::name`]; unique among all webhooks.
    fn name(&self) -> &str;

    /// Allow or deny the request: `request.object` is the object (CREATE, UPDATE),
    /// `request.old_object` the stored one (UPDATE, DELETE when its operation is registered).
    async fn validate(
        &self,
        ctx: &Context,
        request: &AdmissionRequest<Self::Object>,
    ) -> Result<Validation, ExtensionError>;

    /// Per-webhook registration overrides (`reinvocation_policy` does not apply).
    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides::default()
    }
}

/// What a [`Validator`] decided: allowed or denied, with warnings for the client either way.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    denial: Option<(u16, String)>,
    warnings: Vec<String>,
}

impl Validation {
    /// Allow the request.
    pub fn allow() -> Self {
        Self {
            denial: None,
            warnings: Vec::new(),
        }
    }

    /// Deny the request with `message` (status 403).
    pub fn deny(message: impl Into<String>) -> Self {
        Self::deny_with_code(message, 403)
    }

    /// Deny the request with `message` and a specific status code.
    pub fn deny_with_code(message: impl Into<String>, code: u16) -> Self {
        Self {
            denial: Some((code, message.into())),
            warnings: Vec::new(),
        }
    }

    /// Add a warning for the API client.
    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        self.denial.is_none()
    }
}

impl From<Validation> for Mutation {
    fn from(v: Validation) -> Self {
        let verdict = match v.denial {
            None => Verdict::Unchanged,
            Some((code, message)) => Verdict::Deny { message, code },
        };
        Mutation {
            verdict,
            warnings: v.warnings,
        }
    }
}

/// Registration settings an extension may override; `None` keeps the manager's default.
#[derive(Clone, Debug, Default)]
pub struct WebhookOverrides {
    /// Failure policy of this extension's webhook.
    pub failure_policy: Option<FailurePolicy>,
    /// Operations this extension's webhook intercepts.
    pub operations: Option<Vec<Operation>>,
    /// Reinvocation policy of this extension's webhook.
    pub reinvocation_policy: Option<ReinvocationPolicy>,
    /// Object selector replacing the manager's (the Eirini-app filter included).
    pub object_selector: Option<LabelSelector>,
    /// CEL conditions evaluated by the apiserver: pods that fail them never reach the webhook.
    pub match_conditions: Vec<MatchCondition>,
    /// Timeout of this extension's webhook, in seconds (1 to 30).
    pub timeout_seconds: Option<i32>,
    /// Side effects of this extension (e.g. `NoneOnDryRun` when it creates Secrets).
    pub side_effects: Option<SideEffects>,
}

/// What the extension decided for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    /// The decision itself.
    pub verdict: Verdict,
    /// Warnings returned to the API client (shown by kubectl).
    pub warnings: Vec<String>,
}

/// The decision part of a [`Mutation`].
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Admit the pod unchanged.
    Unchanged,
    /// Admit the pod with this JSON patch applied (an empty patch means unchanged).
    Patch(json_patch::Patch),
    /// Admit the pod with this patch, written as JSON text (an empty patch means unchanged):
    /// the cheaper form for a patch built on every review.
    PatchText(PatchText),
    /// Reject the pod with this message and HTTP-style status code.
    Deny {
        /// Message shown to the client that created the pod.
        message: String,
        /// Status code (403 by default).
        code: u16,
    },
}

impl Mutation {
    /// Admit the pod unchanged.
    pub fn unchanged() -> Self {
        Self {
            verdict: Verdict::Unchanged,
            warnings: Vec::new(),
        }
    }

    /// Admit the pod with `patch` applied; an empty patch admits it unchanged.
    pub fn patch(patch: json_patch::Patch) -> Self {
        let verdict = if patch.0.is_empty() {
            Verdict::Unchanged
        } else {
            Verdict::Patch(patch)
        };
        Self {
            verdict,
            warnings: Vec::new(),
        }
    }

    /// Admit the pod with `patch` (written as JSON text) applied; an empty patch admits it
    /// unchanged.
    pub fn patch_text(patch: PatchText) -> Self {
        let verdict = if patch.is_empty() {
            Verdict::Unchanged
        } else {
            Verdict::PatchText(patch)
        };
        Self {
            verdict,
            warnings: Vec::new(),
        }
    }

    /// Reject the pod with `message` (status 403).
    pub fn deny(message: impl Into<String>) -> Self {
        Self::deny_with_code(message, 403)
    }

    /// Reject the pod with `message` and a specific status code.
    pub fn deny_with_code(message: impl Into<String>, code: u16) -> Self {
        Self {
            verdict: Verdict::Deny {
                message: message.into(),
                code,
            },
            warnings: Vec::new(),
        }
    }

    /// Add a warning for the API client.
    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// The patch, if this mutation changes the pod (a [`PatchText`] parsed into operations).
    pub fn as_patch(&self) -> Option<Cow<'_, json_patch::Patch>> {
        match &self.verdict {
            Verdict::Patch(p) => Some(Cow::Borrowed(p)),
            // Written by `PatchText` itself, so it parses.
            Verdict::PatchText(p) => p.to_patch().ok().map(Cow::Owned),
            _ => None,
        }
    }
}

/// An extension failure; the extension's failure policy decides whether the pod is denied or admitted.
pub struct ExtensionError {
    message: String,
    code: Option<u16>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ExtensionError {
    /// An error with a message for the API client (a denial carries code 500 under `Fail`).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: None,
            source: None,
        }
    }

    /// The pod itself is at fault (bad VCAP_SERVICES...): a denial under `Fail` carries code 400.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: Some(400),
            ..Self::new(message)
        }
    }

    /// Set the status code of the denial this error causes under `Fail`.
    pub fn with_code(mut self, code: u16) -> Self {
        self.code = Some(code);
        self
    }

    /// The status code of the denial (500 unless set).
    pub fn code(&self) -> u16 {
        self.code.unwrap_or(500)
    }

    /// The message returned to the API client.
    pub fn message(&self) -> String {
        match &self.source {
            Some(source) if self.message.is_empty() => source.to_string(),
            Some(source) => format!("{}: {source}", self.message),
            None => self.message.clone(),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ExtensionError {
    fn from(err: E) -> Self {
        Self {
            message: String::new(),
            code: None,
            source: Some(Box::new(err)),
        }
    }
}

impl fmt::Debug for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// What an extension, watcher or reconciler may use: the API client and the manager settings.
#[derive(Clone)]
pub struct Context {
    client: Option<kube::Client>,
    settings: Arc<Settings>,
}

impl Context {
    /// A context with a client (inside a running manager).
    pub fn new(client: kube::Client, settings: Arc<Settings>) -> Self {
        Self {
            client: Some(client),
            settings,
        }
    }

    /// A context with no cluster (offline review, unit tests).
    pub fn offline(settings: Arc<Settings>) -> Self {
        Self {
            client: None,
            settings,
        }
    }

    /// The Kubernetes client, or an error when running offline.
    pub fn client(&self) -> Result<&kube::Client, ExtensionError> {
        self.client
            .as_ref()
            .ok_or_else(|| ExtensionError::new("no Kubernetes client (offline review)"))
    }

    /// The manager's settings (fingerprint, namespace, ...).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("online", &self.client.is_some())
            .field("settings", &self.settings)
            .finish()
    }
}
