//! Webhooks for any kind, behind one object-safe trait: [`Mutator`]s and [`Validator`]s of
//! different kinds are served, registered and measured like Pod [`crate::Extension`]s.

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::core::Resource;
use kube::core::admission::Operation;

use crate::admission::{ReviewError, decode_as};
use crate::extension::{Context, ExtensionError, Mutation, Mutator, Validator, WebhookOverrides};

/// The call a review leads to, ready to run: the extension's answer to come.
pub(crate) type Call = BoxFuture<'static, Result<Mutation, ExtensionError>>;

/// A decoded review of any kind: what logs and metrics need, and what to do with it.
pub(crate) struct Prepared {
    /// The request uid (the answer's).
    pub(crate) uid: String,
    /// Namespace of the object, if any.
    pub(crate) namespace: Option<String>,
    /// Name of the object (or its generateName).
    pub(crate) name: String,
    /// `Ok(None)`: nothing to ask, admitted as is; `Err`: the object is unusable (a 400 denial).
    pub(crate) call: Result<Option<Call>, String>,
}

/// Which configuration a webhook is registered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookType {
    /// A MutatingWebhookConfiguration entry.
    Mutating,
    /// A ValidatingWebhookConfiguration entry.
    Validating,
}

/// The resource a webhook's rule names: group, version and plural of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRule {
    /// API group (`""` for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name (`pods`, `statefulsets`...).
    pub resource: String,
    /// `Namespaced`, `Cluster` or `*` (both).
    pub scope: String,
}

impl ResourceRule {
    /// The rule of kind `K` (any scope: the kind's own decides).
    pub fn of<K: Resource<DynamicType = ()>>() -> Self {
        Self {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            resource: K::plural(&()).into_owned(),
            scope: "*".into(),
        }
    }

    /// The rule of Pod extensions: core `v1` `pods`, namespaced.
    pub fn pods() -> Self {
        Self {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            scope: "Namespaced".into(),
        }
    }
}

/// A webhook of any kind, type-erased for the server and the registration.
pub(crate) trait Hook: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn overrides(&self) -> WebhookOverrides;
    fn rule(&self) -> ResourceRule;
    fn hook_type(&self) -> HookType;
    /// Decode `body` for this webhook's kind; envelope errors are HTTP 400s.
    fn prepare(&self, ctx: &Context, body: &[u8]) -> Result<Prepared, ReviewError>;
}

fn object_name<K: Resource>(request: &kube::core::admission::AdmissionRequest<K>) -> String {
    request
        .object
        .as_ref()
        .and_then(|o| {
            let meta = o.meta();
            meta.name.clone().or_else(|| meta.generate_name.clone())
        })
        .unwrap_or_else(|| request.name.clone())
}

/// A [`Mutator`] as a [`Hook`].
pub(crate) struct MutatorHook<M>(pub(crate) Arc<M>);

impl<M: Mutator> Hook for MutatorHook<M> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn overrides(&self) -> WebhookOverrides {
        self.0.webhook()
    }

    fn rule(&self) -> ResourceRule {
        ResourceRule::of::<M::Object>()
    }

    fn hook_type(&self) -> HookType {
        HookType::Mutating
    }

    fn prepare(&self, ctx: &Context, body: &[u8]) -> Result<Prepared, ReviewError> {
        let (mut request, usable) = decode_as::<M::Object>(body)?;
        let (uid, namespace, name) = (
            request.uid.clone(),
            request.namespace.clone(),
            object_name(&request),
        );
        let call = if matches!(request.operation, Operation::Delete | Operation::Connect) {
            Ok(None)
        } else {
            usable.and_then(|()| {
                let object = request
                    .object
                    .take()
                    .ok_or_else(|| format!("{:?} request carries no object", request.operation))?;
                let (mutator, ctx) = (self.0.clone(), ctx.clone());
                let call: Call =
                    Box::pin(async move { mutator.mutate(&ctx, &request, &object).await });
                Ok(Some(call))
            })
        };
        Ok(Prepared {
            uid,
            namespace,
            name,
            call,
        })
    }
}

/// A [`Validator`] as a [`Hook`].
pub(crate) struct ValidatorHook<V>(pub(crate) Arc<V>);

impl<V: Validator> Hook for ValidatorHook<V> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn overrides(&self) -> WebhookOverrides {
        self.0.webhook()
    }

    fn rule(&self) -> ResourceRule {
        ResourceRule::of::<V::Object>()
    }

    fn hook_type(&self) -> HookType {
        HookType::Validating
    }

    fn prepare(&self, ctx: &Context, body: &[u8]) -> Result<Prepared, ReviewError> {
        let (request, usable) = decode_as::<V::Object>(body)?;
        let (uid, namespace, name) = (
            request.uid.clone(),
            request.namespace.clone(),
            object_name(&request),
        );
        let call = if request.operation == Operation::Connect {
            Ok(None)
        } else {
            usable.map(|()| {
                let (validator, ctx) = (self.0.clone(), ctx.clone());
                let call: Call = Box::pin(async move {
                    validator.validate(&ctx, &request).await.map(Mutation::from)
                });
                Some(call)
            })
        };
        Ok(Prepared {
            uid,
            namespace,
            name,
            call,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::StatefulSet;
    use kube::core::admission::AdmissionRequest;
    use serde_json::{Value, json};

    use super::*;
    use crate::admission::ExtensionHandler;
    use crate::extension::Validation;
    use crate::metrics::Metrics;
    use crate::options::{FailurePolicy, Settings};

    /// Denies every StatefulSet whose (new or old) name is "bad"; says what it saw.
    struct NoBad;

    #[async_trait::async_trait]
    impl Validator for NoBad {
        type Object = StatefulSet;
        fn name(&self) -> &str {
            "no-bad"
        }
        async fn validate(
            &self,
            _ctx: &Context,
            request: &AdmissionRequest<StatefulSet>,
        ) -> Result<Validation, ExtensionError> {
            let name = |o: &Option<StatefulSet>| o.as_ref().and_then(|s| s.metadata.name.clone());
            let seen = format!(
                "object={:?} old={:?}",
                name(&request.object),
                name(&request.old_object)
            );
            Ok(
                if [name(&request.object), name(&request.old_object)].contains(&Some("bad".into()))
                {
                    Validation::deny(seen)
                } else {
                    Validation::allow().with_warning(seen)
                },
            )
        }
    }

    fn review(kind: Value, operation: &str, object: Value, old: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "kind": kind,
                "resource": {"group": "apps", "version": "v1", "resource": "statefulsets"},
                "namespace": "ns", "operation": operation, "userInfo": {},
                "object": object, "oldObject": old,
            }
        }))
        .unwrap()
    }

    fn sts_kind() -> Value {
        json!({"group": "apps", "version": "v1", "kind": "StatefulSet"})
    }

    async fn answer(body: &[u8]) -> Value {
        let handler = ExtensionHandler::for_hook(
            Arc::new(ValidatorHook(Arc::new(NoBad))),
            FailurePolicy::Fail,
            Duration::from_secs(1),
            0,
        );
        let ctx = Context::offline(Arc::new(Settings::default()));
        let out = handler
            .handle_body(&ctx, &Metrics::new(["no-bad"]), body)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&out).unwrap()["response"].clone()
    }

    #[tokio::test]
    async fn a_validator_sees_its_kind_and_the_old_object() {
        let sts = |name: &str| json!({"metadata": {"name": name}});
        let r = answer(&review(sts_kind(), "CREATE", sts("good"), Value::Null)).await;
        assert_eq!(r["allowed"], true);
        assert_eq!(r["warnings"][0], r#"object=Some("good") old=None"#);
        let r = answer(&review(sts_kind(), "CREATE", sts("bad"), Value::Null)).await;
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 403);
        // A deletion: only the old object, and the validator is asked.
        let r = answer(&review(sts_kind(), "DELETE", Value::Null, sts("bad"))).await;
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["message"], r#"object=None old=Some("bad")"#);
    }

    #[tokio::test]
    async fn another_kind_or_an_undecodable_object_is_refused_with_the_reason() {
        let pod = json!({"group": "", "version": "v1", "kind": "Pod"});
        let r = answer(&review(pod, "CREATE", json!({}), Value::Null)).await;
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        assert_eq!(r["status"]["message"], "object is a Pod, not a StatefulSet");
        let broken = json!({"metadata": {"name": 5}});
        let r = answer(&review(sts_kind(), "CREATE", broken, Value::Null)).await;
        assert_eq!(r["status"]["code"], 400);
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("object does not decode as a StatefulSet: "),
            "{message}"
        );
        let r = answer(&review(sts_kind(), "UPDATE", json!({}), json!([]))).await;
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("old object does not decode as a StatefulSet"),
            "{message}"
        );
    }

    #[test]
    fn rules_name_the_kinds_resource() {
        assert_eq!(
            ResourceRule::of::<StatefulSet>(),
            ResourceRule {
                group: "apps".into(),
                version: "v1".into(),
                resource: "statefulsets".into(),
                scope: "*".into(),
            }
        );
    }
}
