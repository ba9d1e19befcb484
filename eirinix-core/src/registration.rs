//! The webhook configurations (mutating, and validating when there are validators): built from
//! settings, written with server-side apply, and kept right by a drift-repair loop. Never
//! deleted and re-created (no window without webhook).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::extension::WebhookOverrides;
use crate::hooks::ResourceRule;
use crate::metrics::Metrics;
use crate::options::{Endpoint, SOURCE_TYPE_LABEL, Settings};

use crate::names::MANAGED_BY_LABEL;

/// The label the apiserver puts on every namespace with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Errors talking to the API server about the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct WebhookSpec {
    /// Extension name.
    pub name: String,
    /// Its overrides.
    pub overrides: WebhookOverrides,
    /// The resource its rule names.
    pub rule: ResourceRule,
}

impl WebhookSpec {
    /// The registration input of a Pod extension.
    pub fn pods(name: impl Into<String>, overrides: WebhookOverrides) -> Self {
        Self {
            name: name.into(),
            overrides,
            rule: ResourceRule::pods(),
        }
    }
}

/// A webhook configuration kind eirinix registers (mutating or validating): what the
/// registrar and drift repair need to read and write its entries.
pub trait Configuration:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// One webhook entry.
    type Entry: Clone + Serialize + Send + Sync;
    /// Whether entries carry a reinvocation policy (defaulted by the apiserver).
    const MUTATING: bool;
    /// The entries (none when the list is absent).
    fn entries(&self) -> &[Self::Entry];
    /// Whether the list of entries is present at all.
    fn has_entries(&self) -> bool;
    /// The entries, for rewriting.
    fn entries_mut(&mut self) -> &mut [Self::Entry];
    /// An entry's name.
    fn entry_name(entry: &Self::Entry) -> &str;
    /// An entry's client configuration.
    fn client_config(entry: &Self::Entry) -> &WebhookClientConfig;
    /// An entry's client configuration, for rewriting.
    fn client_config_mut(entry: &mut Self::Entry) -> &mut WebhookClientConfig;
}

macro_rules! configuration {
    ($config:ty, $entry:ty, $mutating:expr) => {
        impl Configuration for $config {
            type Entry = $entry;
            const MUTATING: bool = $mutating;
            fn entries(&self) -> &[$entry] {
                self.webhooks.as_deref().unwrap_or_default()
            }
            fn has_entries(&self) -> bool {
                self.webhooks.is_some()
            }
            fn entries_mut(&mut self) -> &mut [$entry] {
                self.webhooks.as_deref_mut().unwrap_or_default()
            }
            fn entry_name(entry: &$entry) -> &str {
                &entry.name
            }
            fn client_config(entry: &$entry) -> &WebhookClientConfig {
                &entry.client_config
            }
            fn client_config_mut(entry: &mut $entry) -> &mut WebhookClientConfig {
                &mut entry.client_config
            }
        }
    };
}
configuration!(MutatingWebhookConfiguration, MutatingWebhook, true);
configuration!(ValidatingWebhookConfiguration, ValidatingWebhook, false);

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
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn object_selector(settings: &Settings) -> Option<LabelSelector> {
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
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn namespace_selector(settings: &Settings) -> LabelSelector {
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

/// The entry of `hook` (as a mutating entry; a validating one drops the reinvocation policy).
fn entry(
    settings: &Settings,
    hook: &WebhookSpec,
    ns_selector: &LabelSelector,
    default_selector: Option<&LabelSelector>,
    ca_bundle: &[u8],
    port: u16,
) -> MutatingWebhook {
    let o = &hook.overrides;
    let ops = o.operations.as_ref().unwrap_or(&settings.operations);
    MutatingWebhook {
        name: settings.webhook_name(&hook.name),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(
            settings,
            &crate::names::extension_path(&hook.name),
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
        match_conditions: (!o.match_conditions.is_empty()).then(|| o.match_conditions.clone()),
        namespace_selector: Some(ns_selector.clone()),
        object_selector: o
            .object_selector
            .clone()
            .or_else(|| default_selector.cloned()),
        reinvocation_policy: Some(
            o.reinvocation_policy
                .unwrap_or(settings.reinvocation_policy)
                .as_str()
                .into(),
        ),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![hook.rule.group.clone()]),
            api_versions: Some(vec![hook.rule.version.clone()]),
            operations: Some(ops.iter().map(|op| op.as_str().to_owned()).collect()),
            resources: Some(vec![hook.rule.resource.clone()]),
            scope: Some(hook.rule.scope.clone()),
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
}

fn entries(
    settings: &Settings,
    hooks: &[WebhookSpec],
    ca_bundle: &[u8],
    port: u16,
) -> Vec<MutatingWebhook> {
    let ns_selector = namespace_selector(settings);
    let default_selector = object_selector(settings);
    hooks
        .iter()
        .map(|hook| {
            entry(
                settings,
                hook,
                &ns_selector,
                default_selector.as_ref(),
                ca_bundle,
                port,
            )
        })
        .collect()
}

fn configuration_meta(name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            "eirinix".to_owned(),
        )])),
        ..Default::default()
    }
}

/// The desired configuration for `hooks`, with `ca_bundle` (PEM) and the actually bound `port`.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn desired_configuration(
    settings: &Settings,
    hooks: &[WebhookSpec],
    ca_bundle: &[u8],
    port: u16,
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: configuration_meta(settings.configuration_name()),
        webhooks: Some(entries(settings, hooks, ca_bundle, port)),
    }
}

/// The desired ValidatingWebhookConfiguration for the validators `hooks` (the same selectors
/// and certificates as the mutating one).
pub(crate) fn desired_validating_configuration(
    settings: &Settings,
    hooks: &[WebhookSpec],
    ca_bundle: &[u8],
    port: u16,
) -> ValidatingWebhookConfiguration {
    let webhooks = entries(settings, hooks, ca_bundle, port)
        .into_iter()
        .map(|m| ValidatingWebhook {
            name: m.name,
            admission_review_versions: m.admission_review_versions,
            client_config: m.client_config,
            failure_policy: m.failure_policy,
            match_policy: m.match_policy,
            match_conditions: m.match_conditions,
            namespace_selector: m.namespace_selector,
            object_selector: m.object_selector,
            rules: m.rules,
            side_effects: m.side_effects,
            timeout_seconds: m.timeout_seconds,
        })
        .collect();
    ValidatingWebhookConfiguration {
        metadata: configuration_meta(settings.validating_configuration_name()),
        webhooks: Some(webhooks),
    }
}

/// Fill in what the apiserver defaults in a stored webhook entry (admissionregistration/v1
/// `SetDefaults_MutatingWebhook`, `SetDefaults_ValidatingWebhook`, `SetDefaults_Rule`,
/// `SetDefaults_ServiceReference`), so an entry as eirinix writes it and as the apiserver
/// returns it compare equal. Only mutating entries have a reinvocation policy.
fn with_defaults(entry: &mut Value, mutating: bool) {
    let Some(e) = entry.as_object_mut() else {
        return;
    };
    let unset = |e: &serde_json::Map<String, Value>, k: &str| e.get(k).is_none_or(Value::is_null);
    for (key, default) in [
        ("failurePolicy", json!("Fail")),
        ("matchPolicy", json!("Equivalent")),
        ("namespaceSelector", json!({})),
        ("objectSelector", json!({})),
        ("timeoutSeconds", json!(10)),
        ("reinvocationPolicy", json!("Never")),
    ] {
        if key == "reinvocationPolicy" && !mutating {
            continue;
        }
        if unset(e, key) {
            e.insert(key.to_owned(), default);
        }
    }
    if let Some(rules) = e.get_mut("rules").and_then(Value::as_array_mut) {
        for rule in rules.iter_mut().filter_map(Value::as_object_mut) {
            if unset(rule, "scope") {
                rule.insert("scope".to_owned(), json!("*"));
            }
        }
    }
    if let Some(service) = e
        .get_mut("clientConfig")
        .and_then(|c| c.get_mut("service"))
        .and_then(Value::as_object_mut)
        && unset(service, "port")
    {
        service.insert("port".to_owned(), json!(443));
    }
}

/// `v` without nulls, empty objects and empty arrays (the apiserver omits them when it stores an
/// object; an empty selector and no selector select the same); `None` if nothing is left.
fn prune(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .into_iter()
                // Positions matter in a list: an element that prunes to nothing stays, as `{}`.
                .map(|v| prune(v).unwrap_or_else(|| json!({})))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other),
    }
}

/// A webhook entry in the form two equivalent entries share: apiserver defaults filled in,
/// empty values dropped.
fn canonical<C: Configuration>(entry: &C::Entry) -> Value {
    let mut v = serde_json::to_value(entry).unwrap_or(Value::Null);
    with_defaults(&mut v, C::MUTATING);
    prune(v).unwrap_or(Value::Null)
}

/// The top-level fields in which two canonical entries differ.
fn differing_fields(want: &Value, have: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (w, h) = (
        want.as_object().unwrap_or(&empty),
        have.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = w.keys().chain(h.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| w.get(*k) != h.get(*k))
        .cloned()
        .collect()
}

/// Entries written by eirinix whose stored form differs from [`canonical`] only through
/// defaults this version does not know (a newer apiserver): per entry name, the canonical form
/// written and the one stored, learned from the apiserver's answer to eirinix's own write.
type Learned = std::collections::HashMap<String, (Value, Value)>;

/// How each webhook entry of `desired` differs in `live`: `"<name>: missing"` or
/// `"<name>: <field>, <field>"`. Entries of other names in `live` are not eirinix's and ignored.
fn differences_with<C: Configuration>(desired: &C, live: &C, learned: &Learned) -> Vec<String> {
    let have = live.entries();
    let mut out = Vec::new();
    for want in desired.entries() {
        let name = C::entry_name(want);
        let Some(entry) = have.iter().find(|h| C::entry_name(h) == name) else {
            out.push(format!("{name}: missing"));
            continue;
        };
        let (w, h) = (canonical::<C>(want), canonical::<C>(entry));
        if w == h || learned.get(name) == Some(&(w.clone(), h.clone())) {
            continue;
        }
        out.push(format!("{name}: {}", differing_fields(&w, &h).join(", ")));
    }
    out
}

/// How the webhook entries eirinix owns (those named in `desired`) differ in `live`, entry by
/// entry and field by field (every field counts, including ones eirinix leaves unset, such as
/// `matchConditions` or an `objectSelector` added by someone else); empty when they match.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn differences<C: Configuration>(desired: &C, live: &C) -> Vec<String> {
    differences_with(desired, live, &Learned::new())
}

/// Whether any webhook entry of `desired` is missing from `live` or differs from it in any
/// field once the apiserver's defaults are taken into account.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn drifted<C: Configuration>(desired: &C, live: &C) -> bool {
    !differences(desired, live).is_empty()
}

/// `host` and `port` of an `https://host:port/path` webhook URL (IPv6 hosts without brackets).
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn url_authority(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let (host, port) = crate::names::split_host_port(rest.split('/').next()?)?;
    Some((host.to_owned(), port))
}

/// URL mode: when `live` differs from `desired` only in where its webhook URLs point, and they
/// all point at one other `host:port` (another replica registered itself), that address.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn other_replica<C: Configuration>(desired: &C, live: &C) -> Option<(String, u16)> {
    let (want, have) = (desired.entries(), live.entries());
    if want.len() != have.len() || want.is_empty() {
        return None;
    }
    let mut other = None;
    let mut pointed = desired.clone();
    for (w, h) in pointed.entries_mut().iter_mut().zip(have) {
        let w = C::client_config_mut(w);
        let (Some(mine), Some(theirs)) = (&w.url, &C::client_config(h).url) else {
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
        w.url = Some(theirs.clone());
    }
    (!drifted(&pointed, live)).then_some(other).flatten()
}

/// A JSON patch turning the webhook entries of `live` named in `want` into the wanted ones and
/// adding those it lacks. It carries `live`'s resourceVersion, so the apiserver refuses it
/// (409) if the configuration changed since it was read; `test`s pin the positions.
fn owned_entries_patch<C: Configuration>(want: &[C::Entry], live: &C) -> json_patch::Patch {
    let have = live.entries();
    let mut ops = vec![json!({
        "op": "replace",
        "path": "/metadata/resourceVersion",
        "value": live.meta().resource_version,
    })];
    if !live.has_entries() {
        ops.push(json!({"op": "add", "path": "/webhooks", "value": []}));
    }
    for (i, entry) in have.iter().enumerate() {
        let name = C::entry_name(entry);
        if let Some(w) = want.iter().find(|w| C::entry_name(w) == name) {
            ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
            ops.push(json!({"op": "replace", "path": format!("/webhooks/{i}"), "value": w}));
        }
    }
    for w in want
        .iter()
        .filter(|w| !have.iter().any(|h| C::entry_name(h) == C::entry_name(w)))
    {
        ops.push(json!({"op": "add", "path": "/webhooks/-", "value": w}));
    }
    serde_json::from_value(Value::Array(ops)).unwrap_or_else(|_| json_patch::Patch(Vec::new()))
}

/// Writes and repairs the configuration with server-side apply under one field manager, and
/// replaces the entries it owns wholesale when apply alone cannot restore them (server-side
/// apply keeps fields other managers added, such as a `matchCondition`).
#[derive(Clone)]
pub(crate) struct Registrar<C: Configuration = MutatingWebhookConfiguration> {
    api: Api<C>,
    field_manager: String,
    metrics: Option<Arc<Metrics>>,
    learned: Arc<std::sync::Mutex<Learned>>,
}

/// Attempts at replacing the owned entries when someone else writes the configuration meanwhile.
const REPLACE_ATTEMPTS: usize = 3;

impl<C: Configuration> Registrar<C> {
    /// A registrar applying as `field_manager`.
    pub fn new(client: kube::Client, field_manager: impl Into<String>) -> Self {
        Self {
            api: Api::all(client),
            field_manager: field_manager.into(),
            metrics: None,
            learned: Arc::default(),
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

    fn differences(&self, desired: &C, live: &C) -> Vec<String> {
        let learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        differences_with(desired, live, &learned)
    }

    /// Apply `desired` (create or update in place, taking ownership of our fields); if the
    /// result still differs in the entries eirinix owns (fields of other managers that apply
    /// leaves in place), replace those entries as a whole.
    pub async fn apply(&self, desired: &C) -> Result<(), RegistrationError> {
        let name = desired.meta().name.clone().unwrap_or_default();
        let params = PatchParams::apply(&self.field_manager).force();
        let live = self
            .api
            .patch(&name, &params, &Patch::Apply(desired))
            .await
            .map_err(|e| Self::err(&name, e))?;
        if !self.differences(desired, &live).is_empty() {
            self.replace_owned(desired, live).await?;
        }
        Ok(())
    }

    /// Replace the entries of `live` named in `desired` by the desired ones (others' entries
    /// stay where they are) with one JSON patch (the `patch` verb, which a register Job has),
    /// guarded by `live`'s resourceVersion; re-read and retry on conflict.
    async fn replace_owned(&self, desired: &C, mut live: C) -> Result<(), RegistrationError> {
        let name = desired.meta().name.clone().unwrap_or_default();
        let want = desired.entries();
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..Default::default()
        };
        for attempt in 1..=REPLACE_ATTEMPTS {
            let patch = owned_entries_patch(want, &live);
            match self
                .api
                .patch(&name, &params, &Patch::<()>::Json(patch))
                .await
            {
                Ok(stored) => {
                    self.learn(desired, &stored);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < REPLACE_ATTEMPTS => {
                    live = self.api.get(&name).await.map_err(|e| Self::err(&name, e))?;
                    if self.differences(desired, &live).is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(Self::err(&name, e)),
            }
        }
        Ok(())
    }

    /// After eirinix's own write of the owned entries: an entry stored differently from what
    /// was written differs only by apiserver defaults this version does not know. Remember it,
    /// so it is not mistaken for drift and rewritten at every check.
    fn learn(&self, desired: &C, stored: &C) {
        let have = stored.entries();
        let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        for want in desired.entries() {
            let name = C::entry_name(want);
            let Some(entry) = have.iter().find(|h| C::entry_name(h) == name) else {
                continue;
            };
            let (w, h) = (canonical::<C>(want), canonical::<C>(entry));
            if w != h {
                tracing::warn!(
                    webhook = %name,
                    fields = %differing_fields(&w, &h).join(", "),
                    "the apiserver stores this webhook entry with values eirinix did not write; taken as defaults of this apiserver"
                );
                learned.insert(name.to_owned(), (w, h));
            }
        }
    }

    /// Compare the live configuration with `desired` and re-apply if it is missing or drifted; true if repaired.
    pub async fn repair(&self, desired: &C) -> Result<bool, RegistrationError> {
        self.repair_unless(desired, |_| async { false }).await
    }

    /// As [`Registrar::repair`], but a drifted configuration for which `keep` answers true is
    /// left alone (URL mode: it points at another replica that is serving).
    pub async fn repair_unless<F, Fut>(
        &self,
        desired: &C,
        keep: F,
    ) -> Result<bool, RegistrationError>
    where
        F: FnOnce(C) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let name = desired.meta().name.clone().unwrap_or_default();
        let live = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| Self::err(&name, e))?;
        let (reason, differences) = match live {
            None => ("missing", Vec::new()),
            Some(live) => {
                let differences = self.differences(desired, &live);
                if differences.is_empty() || keep(live).await {
                    return Ok(false);
                }
                ("drifted", differences)
            }
        };
        self.apply(desired).await?;
        tracing::warn!(configuration = %name, reason, ?differences, "webhook configuration repaired");
        if let Some(m) = &self.metrics {
            m.config_repaired();
        }
        Ok(true)
    }

    /// The live configuration, if any.
    pub async fn get(&self, name: &str) -> Result<Option<C>, RegistrationError> {
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
