//! The MutatingWebhookConfiguration: built from settings, written with server-side apply,
//! and kept right by a drift-repair loop. Never deleted and re-created (no window without webhook).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::ObjectMeta;
use serde_json::Value;

use crate::extension::WebhookOverrides;
use crate::metrics::Metrics;
use crate::options::{Endpoint, SOURCE_TYPE_LABEL, Settings};

/// Label every object eirinix creates carries, for discovery and cleanup.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The label the apiserver puts on every namespace with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Errors talking to the API server about the configuration.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The API server refused or failed a request.
    #[error("webhook configuration {name}: {source}")]
    Api {
        /// Configuration name.
        name: String,
        /// Underlying error.
        #[source]
        source: kube::Error,
    },
}

/// One extension's registration input.
#[derive(Clone, Debug)]
pub struct WebhookSpec {
    /// Extension name.
    pub name: String,
    /// Its overrides.
    pub overrides: WebhookOverrides,
}

fn merge_selectors(a: Option<LabelSelector>, b: Option<&LabelSelector>) -> Option<LabelSelector> {
    match (a, b) {
        (None, None) => None,
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b.clone()),
        (Some(mut a), Some(b)) => {
            if let Some(labels) = &b.match_labels {
                a.match_labels
                    .get_or_insert_with(BTreeMap::new)
                    .extend(labels.clone());
            }
            if let Some(exprs) = &b.match_expressions {
                a.match_expressions
                    .get_or_insert_with(Vec::new)
                    .extend(exprs.clone());
            }
            Some(a)
        }
    }
}

/// The object selector of the manager: the Eirini-app filter merged with the extra selector.
pub fn object_selector(settings: &Settings) -> Option<LabelSelector> {
    let app = settings.filter_eirini_apps.then(|| LabelSelector {
        match_labels: Some(BTreeMap::from([(
            SOURCE_TYPE_LABEL.to_owned(),
            "APP".to_owned(),
        )])),
        match_expressions: None,
    });
    merge_selectors(app, settings.object_selector.as_ref())
}

/// The namespace selector: the watched namespace, minus the excluded ones, plus the extra selector.
pub fn namespace_selector(settings: &Settings) -> LabelSelector {
    let mut exprs = vec![LabelSelectorRequirement {
        key: NAMESPACE_NAME_LABEL.into(),
        operator: "NotIn".into(),
        values: Some(settings.effective_excluded_namespaces()),
    }];
    if let Some(ns) = &settings.namespace {
        exprs.push(LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.into(),
            operator: "In".into(),
            values: Some(vec![ns.clone()]),
        });
    }
    let base = LabelSelector {
        match_labels: None,
        match_expressions: Some(exprs),
    };
    merge_selectors(Some(base), settings.namespace_selector.as_ref()).unwrap_or_default()
}

fn client_config(
    settings: &Settings,
    path: &str,
    port: u16,
    ca_bundle: &[u8],
) -> WebhookClientConfig {
    let ca = (!ca_bundle.is_empty()).then(|| ByteString(ca_bundle.to_vec()));
    match &settings.endpoint {
        Endpoint::Service {
            name,
            namespace,
            port: service_port,
        } => WebhookClientConfig {
            ca_bundle: ca,
            service: Some(ServiceReference {
                name: name.clone(),
                namespace: namespace.clone(),
                path: Some(path.to_owned()),
                port: Some(i32::from(*service_port)),
            }),
            url: None,
        },
        Endpoint::Url { host } => {
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            WebhookClientConfig {
                ca_bundle: ca,
                service: None,
                url: Some(format!("https://{host}:{port}{path}")),
            }
        }
    }
}

/// The desired configuration for `hooks`, with `ca_bundle` (PEM) and the actually bound `port`.
pub fn desired_configuration(
    settings: &Settings,
    hooks: &[WebhookSpec],
    ca_bundle: &[u8],
    port: u16,
) -> MutatingWebhookConfiguration {
    let ns_selector = namespace_selector(settings);
    let default_selector = object_selector(settings);
    let webhooks = hooks
        .iter()
        .map(|hook| {
            let o = &hook.overrides;
            let ops = o.operations.as_ref().unwrap_or(&settings.operations);
            MutatingWebhook {
                name: settings.webhook_name(&hook.name),
                admission_review_versions: vec!["v1".into()],
                client_config: client_config(
                    settings,
                    &crate::server::extension_path(&hook.name),
                    port,
                    ca_bundle,
                ),
                failure_policy: Some(
                    o.failure_policy
                        .unwrap_or(settings.failure_policy)
                        .as_str()
                        .into(),
                ),
                match_policy: Some("Equivalent".into()),
                match_conditions: (!o.match_conditions.is_empty())
                    .then(|| o.match_conditions.clone()),
                namespace_selector: Some(ns_selector.clone()),
                object_selector: o
                    .object_selector
                    .clone()
                    .or_else(|| default_selector.clone()),
                reinvocation_policy: Some(
                    o.reinvocation_policy
                        .unwrap_or(settings.reinvocation_policy)
                        .as_str()
                        .into(),
                ),
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(ops.iter().map(|op| op.as_str().to_owned()).collect()),
                    resources: Some(vec!["pods".into()]),
                    scope: Some("Namespaced".into()),
                }]),
                side_effects: o
                    .side_effects
                    .unwrap_or(settings.side_effects)
                    .as_str()
                    .into(),
                timeout_seconds: Some(
                    o.timeout_seconds
                        .unwrap_or(settings.timeout_seconds)
                        .clamp(1, 30),
                ),
            }
        })
        .collect();
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(settings.configuration_name()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                "eirinix".to_owned(),
            )])),
            ..Default::default()
        },
        webhooks: Some(webhooks),
    }
}

/// Whether every field set in `desired` has the same value in `live` (fields set only in live are ignored).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| dv.is_null() || l.get(k).is_some_and(|lv| is_subset(dv, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        _ => desired == live,
    }
}

/// Whether `live` differs from `desired` in any field eirinix sets.
pub fn drifted(
    desired: &MutatingWebhookConfiguration,
    live: &MutatingWebhookConfiguration,
) -> bool {
    let d = serde_json::to_value(&desired.webhooks).unwrap_or(Value::Null);
    let l = serde_json::to_value(&live.webhooks).unwrap_or(Value::Null);
    !is_subset(&d, &l)
}

/// `host` and `port` of an `https://host:port/path` webhook URL (IPv6 hosts without brackets).
pub fn url_authority(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':')?)
    } else {
        authority.rsplit_once(':')?
    };
    Some((host.to_owned(), port.parse().ok()?))
}

/// URL mode: when `live` differs from `desired` only in where its webhook URLs point, and they
/// all point at one other `host:port` (another replica registered itself), that address.
pub fn other_replica(
    desired: &MutatingWebhookConfiguration,
    live: &MutatingWebhookConfiguration,
) -> Option<(String, u16)> {
    let (want, have) = (desired.webhooks.as_ref()?, live.webhooks.as_ref()?);
    if want.len() != have.len() || want.is_empty() {
        return None;
    }
    let mut other = None;
    let mut pointed = desired.clone();
    for (w, h) in pointed.webhooks.iter_mut().flatten().zip(have) {
        let (Some(mine), Some(theirs)) = (&w.client_config.url, &h.client_config.url) else {
            return None;
        };
        let (mine_at, theirs_at) = (url_authority(mine)?, url_authority(theirs)?);
        // Same path on another address; every webhook on the same one.
        let path = |u: &str| u.splitn(4, '/').nth(3).map(str::to_owned);
        if mine_at == theirs_at || path(mine) != path(theirs) {
            return None;
        }
        if other.get_or_insert_with(|| theirs_at.clone()) != &theirs_at {
            return None;
        }
        w.client_config.url = Some(theirs.clone());
    }
    (!drifted(&pointed, live)).then_some(other).flatten()
}

/// Writes and repairs the configuration with server-side apply under one field manager.
#[derive(Clone)]
pub struct Registrar {
    api: Api<MutatingWebhookConfiguration>,
    field_manager: String,
    metrics: Option<Arc<Metrics>>,
}

impl Registrar {
    /// A registrar applying as `field_manager`.
    pub fn new(client: kube::Client, field_manager: impl Into<String>) -> Self {
        Self {
            api: Api::all(client),
            field_manager: field_manager.into(),
            metrics: None,
        }
    }

    /// Count repairs in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn err(name: &str, source: kube::Error) -> RegistrationError {
        RegistrationError::Api {
            name: name.to_owned(),
            source,
        }
    }

    /// Apply `desired` (create or update in place, taking ownership of our fields).
    pub async fn apply(
        &self,
        desired: &MutatingWebhookConfiguration,
    ) -> Result<(), RegistrationError> {
        let name = desired.metadata.name.clone().unwrap_or_default();
        let params = PatchParams::apply(&self.field_manager).force();
        self.api
            .patch(&name, &params, &Patch::Apply(desired))
            .await
            .map_err(|e| Self::err(&name, e))?;
        Ok(())
    }

    /// Compare the live configuration with `desired` and re-apply if it is missing or drifted; true if repaired.
    pub async fn repair(
        &self,
        desired: &MutatingWebhookConfiguration,
    ) -> Result<bool, RegistrationError> {
        self.repair_unless(desired, |_| async { false }).await
    }

    /// As [`Registrar::repair`], but a drifted configuration for which `keep` answers true is
    /// left alone (URL mode: it points at another replica that is serving).
    pub async fn repair_unless<F, Fut>(
        &self,
        desired: &MutatingWebhookConfiguration,
        keep: F,
    ) -> Result<bool, RegistrationError>
    where
        F: FnOnce(MutatingWebhookConfiguration) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let name = desired.metadata.name.clone().unwrap_or_default();
        let live = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| Self::err(&name, e))?;
        let reason = match live {
            None => Some("missing"),
            Some(live) if drifted(desired, &live) => (!keep(live).await).then_some("drifted"),
            Some(_) => None,
        };
        let Some(reason) = reason else {
            return Ok(false);
        };
        self.apply(desired).await?;
        tracing::warn!(configuration = %name, reason, "webhook configuration repaired");
        if let Some(m) = &self.metrics {
            m.config_repaired();
        }
        Ok(true)
    }

    /// The live configuration, if any.
    pub async fn get(
        &self,
        name: &str,
    ) -> Result<Option<MutatingWebhookConfiguration>, RegistrationError> {
        self.api.get_opt(name).await.map_err(|e| Self::err(name, e))
    }

    /// Delete the configuration; absent is fine (`false`).
    pub async fn delete(&self, name: &str) -> Result<bool, RegistrationError> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(Self::err(name, e)),
        }
    }
}
