//! Webhooks for any kind, behind one object-safe trait: [`Mutator`]s and [`Validator`]s of
//! different kinds are served, registered and measured like Pod [`crate::Extension`]s.

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::core::Resource;
use kube::core::admission::Operation;

use crate::decode::{ReviewError, decode_as, decode_view};
use crate::extension::{
    Context, ExtensionError, Mutation, Mutator, Validator, ViewExtension, WebhookOverrides,
};

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

/// Request uid, namespace and object name (or generateName) of `request`, for logs.
fn identity<K: Resource>(
    request: &kube::core::admission::AdmissionRequest<K>,
) -> (String, Option<String>, String) {
    let name = request
        .object
        .as_ref()
        .and_then(|o| {
            let meta = o.meta();
            meta.name.clone().or_else(|| meta.generate_name.clone())
        })
        .unwrap_or_else(|| request.name.clone());
    (request.uid.clone(), request.namespace.clone(), name)
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
        let (uid, namespace, name) = identity(&request);
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
        let (uid, namespace, name) = identity(&request);
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

/// A [`ViewExtension`] as a [`Hook`]: registered as Pod extensions are, answering from its view.
pub(crate) struct ViewHook<E>(pub(crate) Arc<E>);

impl<E: ViewExtension> Hook for ViewHook<E> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn overrides(&self) -> WebhookOverrides {
        self.0.webhook()
    }

    fn rule(&self) -> ResourceRule {
        ResourceRule::pods()
    }

    fn hook_type(&self) -> HookType {
        HookType::Mutating
    }

    fn prepare(&self, ctx: &Context, body: &[u8]) -> Result<Prepared, ReviewError> {
        let (request, view) = decode_view::<E::View>(body)?;
        let (uid, namespace, name) = identity(&*request);
        // Logs name the pod as the typed path does, if the view holds its name.
        let name = match view.as_ref().map(|v| self.0.pod_name(v)) {
            Ok(Some(pod_name)) => pod_name.to_owned(),
            _ => name,
        };
        let call = if matches!(request.operation, Operation::Delete | Operation::Connect) {
            Ok(None)
        } else {
            view.map(|view| {
                let (extension, ctx) = (self.0.clone(), ctx.clone());
                let call: Call =
                    Box::pin(async move { extension.mutate_view(&ctx, &request, &view).await });
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

    use k8s_openapi::api::core::v1::Pod;
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;
    use crate::admission::ExtensionHandler;
    use crate::extension::{Extension, Request};
    use crate::metrics::Metrics;
    use crate::options::{FailurePolicy, Settings};

    /// Warns with the first container's name: read from the view by the server, from the Pod
    /// by the typed path (which says so, to tell the paths apart).
    struct Names;

    #[derive(Deserialize)]
    struct View {
        spec: ViewSpec,
        #[serde(default)]
        metadata: ViewMeta,
    }

    #[derive(Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ViewMeta {
        generate_name: Option<String>,
    }

    #[derive(Deserialize)]
    struct ViewSpec {
        containers: Vec<Named>,
    }

    #[derive(Deserialize)]
    struct Named {
        name: String,
    }

    #[async_trait::async_trait]
    impl Extension for Names {
        fn name(&self) -> &str {
            "names"
        }
        async fn mutate(
            &self,
            _ctx: &Context,
            _request: &Request,
            pod: &Pod,
        ) -> Result<Mutation, ExtensionError> {
            let name = pod.spec.as_ref().map(|s| s.containers[0].name.clone());
            Ok(Mutation::unchanged().with_warning(format!("typed {name:?}")))
        }
    }

    #[async_trait::async_trait]
    impl ViewExtension for Names {
        type View = View;
        async fn mutate_view(
            &self,
            _ctx: &Context,
            request: &Request,
            view: &View,
        ) -> Result<Mutation, ExtensionError> {
            assert!(request.object.is_none() && request.old_object.is_none());
            let name = &view.spec.containers[0].name;
            Ok(Mutation::unchanged().with_warning(format!("view {name} {:?}", request.operation)))
        }
        fn pod_name<'v>(&self, view: &'v View) -> Option<&'v str> {
            view.metadata.generate_name.as_deref()
        }
    }

    fn review(operation: &str, name: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": name, "namespace": "ns", "operation": operation, "userInfo": {},
                "object": object, "oldObject": object,
            }
        }))
        .unwrap()
    }

    async fn answer(operation: &str, object: Value) -> Value {
        answer_body(&review(operation, "", object)).await
    }

    async fn answer_body(body: &[u8]) -> Value {
        let handler = ExtensionHandler::for_hook(
            Arc::new(ViewHook(Arc::new(Names))),
            FailurePolicy::Fail,
            Duration::from_secs(1),
            0,
        );
        let ctx = Context::offline(Arc::new(crate::options::Settings::default()));
        let out = handler
            .handle_body(&ctx, &Metrics::new(["names"]), body)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&out).unwrap()["response"].clone()
    }

    #[tokio::test]
    async fn a_view_extension_is_served_from_its_view_and_an_unusable_view_is_refused() {
        let pod = json!({"spec": {"containers": [{"name": "app", "image": 5}], "nodeName": []}});
        // Fields the view does not name are not typed: an image that is a number passes.
        let r = answer("CREATE", pod).await;
        assert_eq!(r["allowed"], true, "{r}");
        assert_eq!(r["warnings"][0], "view app Create");
        let r = answer("UPDATE", json!({"spec": {"containers": [{"name": "app"}]}})).await;
        assert_eq!(r["warnings"][0], "view app Update");
        // A deletion is admitted without asking the extension.
        let r = answer("DELETE", json!({"spec": {"containers": [{"name": "app"}]}})).await;
        assert_eq!(
            (r["allowed"].clone(), r.get("warnings")),
            (json!(true), None)
        );
        // The fields it names are typed: a name that is a number is a 400 with the reason.
        let r = answer("CREATE", json!({"spec": {"containers": [{"name": 5}]}})).await;
        assert_eq!(r["status"]["code"], 400, "{r}");
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("object does not decode as a Pod: invalid type"),
            "{message}"
        );
        let r = answer("CREATE", Value::Null).await;
        assert_eq!(r["status"]["message"], "Create request carries no object");
        // serde's derive reads a struct from an array too; a view is read only from an object.
        let r = answer("CREATE", json!([{"containers": [{"name": "app"}]}])).await;
        let message = r["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("expected a JSON object"), "{r}");
    }

    #[tokio::test]
    async fn a_pod_the_typed_decode_reads_is_read_by_the_view_as_the_typed_decode_reads_it() {
        // A field given twice: k8s-openapi keeps the last, serde's derive refuses it.
        let pod = json!({"spec": {"containers": [{"name": "first"}], "twice": 0}});
        let body = String::from_utf8(review("CREATE", "", pod)).unwrap();
        let body = body.replace(r#""twice":0"#, r#""containers":[{"name":"last"}]"#);
        let r = answer_body(body.as_bytes()).await;
        assert_eq!(r["warnings"][0], "view last Create", "{r}");
    }

    #[test]
    fn logs_name_the_pod_by_the_name_its_view_holds_else_by_the_requests() {
        let ctx = Context::offline(Arc::new(Settings::default()));
        let hook = ViewHook(Arc::new(Names));
        let containers = json!({"containers": [{"name": "app"}]});
        let generated = json!({"metadata": {"generateName": "web-"}, "spec": containers});
        let prepared = hook
            .prepare(&ctx, &review("CREATE", "", generated))
            .unwrap();
        assert_eq!(prepared.name, "web-");
        let named = json!({"spec": containers});
        let prepared = hook
            .prepare(&ctx, &review("CREATE", "web-0", named))
            .unwrap();
        assert_eq!(prepared.name, "web-0");
    }

    #[tokio::test]
    async fn the_typed_path_stays_for_callers_holding_a_pod() {
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "app"}]}})).unwrap();
        let ctx = Context::offline(Arc::new(Settings::default()));
        let request = crate::review::create_request(&pod);
        let m = Names.mutate(&ctx, &request, &pod).await.unwrap();
        assert_eq!(m.warnings, ["typed Some(\"app\")"]);
        assert_eq!(ViewHook(Arc::new(Names)).rule(), ResourceRule::pods());
    }
}
