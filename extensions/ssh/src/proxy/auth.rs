//! Access to an instance: a TokenReview authenticates the user's token, SubjectAccessReviews
//! check that its user may `create pods/exec` in the app namespace (before any pod is looked up)
//! and on the target pod.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenReview, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::metrics::ProxyMetrics;
use super::refusal::Refusal;
use super::target::{Target, find_pod};

/// An authorized login: the Kubernetes user and the pod.
pub(super) struct Granted {
    /// Kubernetes user name.
    pub(super) user: String,
    /// Namespace of the pod.
    pub(super) namespace: String,
    /// The target pod.
    pub(super) pod: Pod,
}

/// Reviews tokens and access with the apiserver, counting the reviews it sends.
pub(super) struct Authorizer {
    client: kube::Client,
    /// Namespace of the apps; `None` looks in all namespaces.
    namespace: Option<String>,
    /// Audiences the tokens must carry (empty: the apiserver's default).
    audiences: Vec<String>,
    metrics: Arc<ProxyMetrics>,
}

impl Authorizer {
    /// Reviews through `client`, for apps in `namespace` (all when `None`).
    pub(super) fn new(
        client: kube::Client,
        namespace: Option<String>,
        audiences: Vec<String>,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        Self {
            client,
            namespace,
            audiences,
            metrics,
        }
    }

    async fn review_token(&self, token: &str) -> Result<UserInfo, Refusal> {
        let review = token_review(token, &self.audiences).map_err(|e| {
            tracing::warn!(error = %e, "building the TokenReview failed");
            Refusal::Internal
        })?;
        ProxyMetrics::inc(&self.metrics.token_reviews);
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Refusal::Internal
            })?;
        let status = reviewed.status.unwrap_or_default();
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(user),
            _ => {
                tracing::debug!(error = ?status.error, "token not authenticated");
                Err(Refusal::Unauthenticated)
            }
        }
    }

    /// May `user` `create pods/exec` in `namespace` (on `pod`, or on any pod when `None`)?
    async fn may_exec(
        &self,
        user: &UserInfo,
        namespace: &str,
        pod: Option<&str>,
    ) -> Result<bool, Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    verb: Some("create".into()),
                    group: Some(String::new()),
                    resource: Some("pods".into()),
                    subresource: Some("exec".into()),
                    name: pod.map(str::to_owned),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        ProxyMetrics::inc(&self.metrics.access_reviews);
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                Refusal::Internal
            })?;
        Ok(reviewed.status.is_some_and(|s| s.allowed))
    }

    /// Token, then the namespace, then the pod: no pod is looked up for a user who may not
    /// exec in the app namespace.
    pub(super) async fn authorize(&self, target: &Target, token: &str) -> Result<Granted, Refusal> {
        let user = self.review_token(token).await?;
        let username = user.username.clone().unwrap_or_default();
        if let Some(ns) = &self.namespace
            && !self.may_exec(&user, ns, None).await?
        {
            return Err(Refusal::ForbiddenNamespace {
                user: username,
                namespace: ns.clone(),
            });
        }
        let pod = find_pod(&self.client, self.namespace.as_deref(), target)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "listing app pods failed");
                Refusal::Internal
            })?
            .ok_or_else(|| Refusal::UnknownInstance(target.clone()))?;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        if !self.may_exec(&user, &namespace, Some(&pod_name)).await? {
            return Err(Refusal::Forbidden {
                user: username,
                namespace,
                pod: pod_name,
            });
        }
        Ok(Granted {
            user: username,
            namespace,
            pod,
        })
    }
}

/// Strip what people paste with a token (`bearer `, surrounding blanks).
pub(super) fn clean_token(password: &str) -> &str {
    let p = password.trim();
    match p.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => p[7..].trim_start(),
        _ => p,
    }
}

/// A TokenReview of `token` for `audiences` (the apiserver's default audiences when empty),
/// built from JSON: `TokenReviewSpec::token` is optional before Kubernetes 1.35, required after.
fn token_review(
    token: &str,
    audiences: &[String],
) -> Result<k8s_openapi::api::authentication::v1::TokenReview, serde_json::Error> {
    let mut spec = serde_json::json!({ "token": token });
    if !audiences.is_empty() {
        spec["audiences"] = serde_json::json!(audiences);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_cleaned() {
        assert_eq!(clean_token(" abc \n"), "abc");
        assert_eq!(clean_token("Bearer abc"), "abc");
        assert_eq!(clean_token("bearer  abc"), "abc");
        assert_eq!(clean_token("bear"), "bear");
    }
}
