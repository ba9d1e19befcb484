//! Offline review: run an extension on a pod from YAML or JSON, with no cluster and no server.
//!
//! Extension authors unit-test with it; the operator binary exposes it as `eirinix review`.

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
        serde_yaml::from_str(input).map_err(|e| OfflineError::NotAPod(e.to_string()))
    }
}

/// A CREATE request for `pod`, as the apiserver would send it.
pub fn create_request(pod: &Pod) -> AdmissionRequest<Pod> {
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
    let ctx = Context::offline(settings);
    let request = create_request(pod);
    // Failures surface as errors here, not as the webhook's failure-policy answer.
    let mutation = extension
        .mutate(&ctx, &request, pod)
        .await
        .map_err(|e| OfflineError::Extension(e.message()))?;
    let patched = match mutation.as_patch() {
        Some(p) => crate::patch::apply(pod, p)?,
        None => pod.clone(),
    };
    Ok(Reviewed {
        mutation,
        pod: patched,
    })
}
