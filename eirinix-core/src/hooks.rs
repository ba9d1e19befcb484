//! Webhooks for any kind, behind one object-safe trait: [`Mutator`]s and [`Validator`]s of
//! different kinds are served, registered and measured like Pod [`crate::Extension`]s.

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::core::Resource;
use kube::core::admission::Operation;

use crate::decode::{ReviewError, decode_as};
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
