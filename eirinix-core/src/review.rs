//! Offline review: run an extension on a pod from YAML or JSON, with no cluster and no server.
//!
//! Extension authors unit-test with it; the operator binary exposes it as `eirinix review`.
//! The webhook's object selector (the Eirini app filter and `Settings::object_selector`) is
//! applied as the apiserver would: a pod it excludes is not sent to the extension
//! ([`Reviewed::sent`] is false). What needs a cluster is not evaluated offline: the
//! namespace selector (namespace labels) and CEL `matchConditions`.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, Operation};
use kube::core::{GroupVersionKind, GroupVersionResource, TypeMeta};

use crate::extension::{Context, Extension, Mutation};
use crate::options::Settings;
use crate::patch::PatchError;

/// Errors of an offline review.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfflineError {
    /// The input is neither a JSON nor a YAML Pod.
    #[error("input is not a Pod: {0}")]
    NotAPod(String),
    /// The extension failed.
    #[error("extension failed: {0}")]
    Extension(String),
    /// The extension's patch does not apply to the pod.
    #[error(transparent)]
    Patch(#[from] PatchError),
}

/// The result of an offline review.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// Whether the webhook's object selector lets the pod through to the extension; when
    /// false the extension was not called and the mutation is "unchanged".
    pub sent: bool,
    /// What the extension decided.
    pub mutation: Mutation,
    /// The pod after the patch (the input when unchanged or denied).
    pub pod: Pod,
}

impl Reviewed {
    /// The patch as JSON (`[]` when unchanged).
    pub fn patch_json(&self) -> serde_json::Value {
        self.mutation
            .as_patch()
            .and_then(|p| serde_json::to_value(p).ok())
            .unwrap_or_else(|| serde_json::Value::Array(Vec::new()))
    }
}

/// Parse a pod from JSON or YAML.
pub fn parse_pod(input: &str) -> Result<Pod, OfflineError> {
    let trimmed = input.trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| OfflineError::NotAPod(e.to_string()))
    } else {
        yaml_serde::from_str(input).map_err(|e| OfflineError::NotAPod(e.to_string()))
    }
}

/// A CREATE request for `pod`, as the apiserver would send it.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn create_request(pod: &Pod) -> AdmissionRequest<Pod> {
    AdmissionRequest {
        types: TypeMeta {
            api_version: crate::admission::API_VERSION.into(),
            kind: "AdmissionReview".into(),
        },
        uid: "offline-review".into(),
        kind: GroupVersionKind::gvk("", "v1", "Pod"),
        resource: GroupVersionResource::gvr("", "v1", "pods"),
        sub_resource: None,
        request_kind: Some(GroupVersionKind::gvk("", "v1", "Pod")),
        request_resource: Some(GroupVersionResource::gvr("", "v1", "pods")),
        request_sub_resource: None,
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone(),
        operation: Operation::Create,
        user_info: UserInfo {
            username: Some("offline-review".into()),
            ..Default::default()
        },
        object: None,
        old_object: None,
        dry_run: true,
        options: None,
    }
}

/// Run `extension` on `pod` with default settings and no cluster.
pub async fn review<E: Extension>(extension: E, pod: &Pod) -> Result<Reviewed, OfflineError> {
    review_with(Arc::new(extension), Arc::new(Settings::default()), pod).await
}

/// Run `extension` on `pod` with `settings` and no cluster; the patch is applied and checked.
pub async fn review_with(
    extension: Arc<dyn Extension>,
    settings: Arc<Settings>,
    pod: &Pod,
) -> Result<Reviewed, OfflineError> {
    // As registered: the extension's own selector replaces the manager's.
    let selector = extension
        .webhook()
        .object_selector
        .or_else(|| crate::registration::object_selector(&settings));
    if let Some(selector) = &selector
        && !selects(selector, pod.metadata.labels.as_ref())
    {
        return Ok(Reviewed {
            sent: false,
            mutation: Mutation::unchanged(),
            pod: pod.clone(),
        });
    }
    let ctx = Context::offline(settings);
    let request = create_request(pod);
    // Failures surface as errors here, not as the webhook's failure-policy answer.
    let mutation = extension
        .mutate(&ctx, &request, pod)
        .await
        .map_err(|e| OfflineError::Extension(e.message()))?;
    let patched = match mutation.as_patch() {
        Some(p) => crate::PodPatch::apply(pod, &p)?,
        None => pod.clone(),
    };
    Ok(Reviewed {
        sent: true,
        mutation,
        pod: patched,
    })
}

/// Whether `labels` satisfy a label selector, as the apiserver evaluates an object selector
/// (kube-core's `Selector`); one the apiserver would refuse (an unknown operator) selects nothing.
pub(crate) fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    use kube::core::{Selector, SelectorExt as _};
    let empty = std::collections::BTreeMap::new();
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels.unwrap_or(&empty)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_evaluate_like_the_apiserver() {
        let app = labels(&[("cloudfoundry.org/source_type", "APP"), ("x", "1")]);
        let by_label = LabelSelector {
            match_labels: Some(labels(&[("x", "1")])),
            ..Default::default()
        };
        assert!(selects(&by_label, Some(&app)));
        assert!(!selects(&by_label, None));
        assert!(selects(&expr("x", "In", &["1", "2"]), Some(&app)));
        assert!(!selects(&expr("x", "In", &["2"]), Some(&app)));
        assert!(selects(&expr("x", "NotIn", &["2"]), Some(&app)));
        assert!(
            selects(&expr("y", "NotIn", &["2"]), Some(&app)),
            "absent key is not in"
        );
        assert!(selects(&expr("x", "Exists", &[]), Some(&app)));
        assert!(!selects(&expr("x", "DoesNotExist", &[]), Some(&app)));
        assert!(
            !selects(&expr("x", "Gt", &["0"]), Some(&app)),
            "unknown operator"
        );
        assert!(
            selects(&LabelSelector::default(), None),
            "empty selects all"
        );
    }

    struct Mark;

    #[async_trait::async_trait]
    impl Extension for Mark {
        fn name(&self) -> &str {
            "mark"
        }
        async fn mutate(
            &self,
            _ctx: &Context,
            _req: &crate::Request,
            pod: &Pod,
        ) -> Result<Mutation, crate::ExtensionError> {
            let mut patch = crate::PodPatch::new(pod);
            patch.set_label("marked", "yes");
            Ok(Mutation::patch(patch.build()))
        }
    }

    #[tokio::test]
    async fn pods_the_object_selector_excludes_are_not_sent() {
        let mut pod =
            parse_pod(r#"{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c"}]}}"#).unwrap();
        let skipped = review(Mark, &pod).await.unwrap();
        assert!(!skipped.sent);
        assert!(skipped.patch_json().as_array().is_none_or(|a| a.is_empty()));

        pod.metadata.labels = Some(labels(&[("cloudfoundry.org/source_type", "APP")]));
        let reviewed = review(Mark, &pod).await.unwrap();
        assert!(reviewed.sent);
        assert_eq!(reviewed.pod.metadata.labels.unwrap()["marked"], "yes");

        let all = Settings {
            filter_eirini_apps: false,
            ..Default::default()
        };
        pod.metadata.labels = None;
        let reviewed = review_with(Arc::new(Mark), Arc::new(all), &pod)
            .await
            .unwrap();
        assert!(reviewed.sent, "without the app filter every pod is sent");
    }
}
