//! eirinix beyond Pods: two webhooks for other kinds, each a few lines.
//!
//! - [`MemoryLimitRequired`], a [`Validator`] of StatefulSets: an Eirini app StatefulSet whose
//!   containers do not all set a memory limit is refused (the scheduler could not place it
//!   fairly, and one app could starve a cell);
//! - [`GreetingDefaults`], a [`Mutator`] of the custom resource [`Greeting`]: a greeting without
//!   a language gets `en`, and every greeting is marked with the digest of what was set.

use std::borrow::Cow;

use eirinix_core::deps::k8s_openapi::api::apps::v1::StatefulSet;
use eirinix_core::deps::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use eirinix_core::deps::kube::core::admission::AdmissionRequest;
use eirinix_core::deps::kube::core::{NamespaceResourceScope, ObjectMeta, Resource, TypeMeta};
use eirinix_core::{
    Context, ExtensionError, Mutation, Mutator, Validation, Validator, WebhookOverrides,
    async_trait,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Refuses Eirini app StatefulSets whose containers lack a memory limit.
pub struct MemoryLimitRequired;

#[async_trait]
impl Validator for MemoryLimitRequired {
    type Object = StatefulSet;

    fn name(&self) -> &str {
        "memory-limit"
    }

    async fn validate(
        &self,
        _ctx: &Context,
        request: &AdmissionRequest<StatefulSet>,
    ) -> Result<Validation, ExtensionError> {
        let Some(sts) = &request.object else {
            return Ok(Validation::allow());
        };
        let containers = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.as_slice())
            .unwrap_or_default();
        let unlimited: Vec<&str> = containers
            .iter()
            .filter(|c| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .is_none_or(|l| !l.contains_key("memory"))
            })
            .map(|c| c.name.as_str())
            .collect();
        if unlimited.is_empty() {
            Ok(Validation::allow())
        } else {
            Ok(Validation::deny(format!(
                "every container of an app needs a memory limit; missing in: {}",
                unlimited.join(", ")
            )))
        }
    }
}

/// A greeting, the custom resource [`GreetingDefaults`] mutates (`greetings.examples.eirinix.org`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Greeting {
    /// `apiVersion` and `kind` (the apiserver needs them on what it is sent).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub types: Option<TypeMeta>,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// What the greeting says.
    #[serde(default)]
    pub spec: GreetingSpec,
}

/// The fields of a [`Greeting`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct GreetingSpec {
    /// The text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its language (defaulted to `en`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

impl Greeting {
    /// A greeting named `name` (with its `apiVersion` and `kind` set).
    pub fn new(name: &str, spec: GreetingSpec) -> Self {
        Self {
            types: Some(TypeMeta::resource::<Greeting>()),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec,
        }
    }
}

impl Resource for Greeting {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Greeting".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "examples.eirinix.org".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "greetings".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The CustomResourceDefinition of [`Greeting`] (what `kubectl apply` would install).
pub fn greeting_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "greetings.examples.eirinix.org"},
        "spec": {
            "group": "examples.eirinix.org",
            "names": {"kind": "Greeting", "plural": "greetings", "singular": "greeting", "listKind": "GreetingList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "message": {"type": "string"},
                        "language": {"type": "string"}
                    }}
                }}}
            }]
        }
    })
}

/// The annotation [`GreetingDefaults`] sets on every greeting it admits.
pub const DEFAULTED: &str = "examples.eirinix.org/defaulted";

/// Gives greetings without a language the default one.
pub struct GreetingDefaults {
    /// The language set when a greeting has none.
    pub language: String,
}

#[async_trait]
impl Mutator for GreetingDefaults {
    type Object = Greeting;

    fn name(&self) -> &str {
        "greeting-defaults"
    }

    async fn mutate(
        &self,
        _ctx: &Context,
        _request: &AdmissionRequest<Greeting>,
        greeting: &Greeting,
    ) -> Result<Mutation, ExtensionError> {
        if greeting.spec.language.is_some() {
            return Ok(Mutation::unchanged());
        }
        let mut ops = Vec::new();
        if greeting.metadata.annotations.is_none() {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
        }
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", DEFAULTED.replace('/', "~1")), "value": "language"}));
        // `add` replaces a spec that is there and creates one that is not.
        let spec = GreetingSpec {
            language: Some(self.language.clone()),
            ..greeting.spec.clone()
        };
        ops.push(json!({"op": "add", "path": "/spec", "value": spec}));
        let patch: json_patch::Patch = serde_json::from_value(json!(ops))?;
        Ok(Mutation::patch(patch))
    }

    /// Greetings carry no Eirini labels: every greeting goes through this webhook.
    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides {
            object_selector: Some(LabelSelector::default()),
            ..Default::default()
        }
    }
}
