//! The webhook: app pods created while a version is desired get its label and, where their
//! image matches the rootfs pattern, its tag.

use eirinix_core::options::SOURCE_TYPE_LABEL;
use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, FailurePolicy, Mutation, PodPatch, Request,
    WebhookOverrides, async_trait,
};
use k8s_openapi::api::core::v1::Pod;

use crate::options::ROOTFS_LABEL;
use crate::plan::Key;
use crate::state::RootfsState;

/// The `rootfs` extension: labels app pods with the desired rootfs version and rewrites
/// matching rootfs images. Idempotent; skips opted-out apps and waits for the gate.
#[derive(Clone, Debug)]
pub struct RootfsWebhook {
    state: RootfsState,
}

impl RootfsWebhook {
    /// A webhook reading the desired version, gate and opt-outs from `state`.
    pub fn new(state: RootfsState) -> Self {
        Self { state }
    }

    /// The shared state.
    pub fn state(&self) -> &RootfsState {
        &self.state
    }

    fn opted_out(&self, pod: &Pod, namespace: &str) -> bool {
        if self
            .state
            .options()
            .opted_out(pod.metadata.annotations.as_ref())
        {
            return true;
        }
        pod.metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))
            .any(|o| {
                self.state.is_opted_out(&Key {
                    namespace: namespace.to_owned(),
                    name: o.name.clone(),
                })
            })
    }

    /// The patch for `pod` (empty when nothing to do); `namespace` completes owner lookups.
    pub fn patch_for(
        &self,
        pod: &Pod,
        namespace: Option<&str>,
    ) -> Result<json_patch::Patch, ExtensionError> {
        let empty = json_patch::Patch(Vec::new());
        let is_app = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SOURCE_TYPE_LABEL))
            .is_some_and(|v| v == "APP");
        let Some(desired) = self.state.desired() else {
            return Ok(empty);
        };
        if !is_app || !self.state.gate_open() {
            return Ok(empty);
        }
        // Pods in a CREATE review often have no namespace yet: the request carries it.
        let namespace = pod
            .metadata
            .namespace
            .as_deref()
            .or(namespace)
            .unwrap_or_default();
        if self.opted_out(pod, namespace) {
            return Ok(empty);
        }
        let mut p = PodPatch::new(pod);
        let current = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ROOTFS_LABEL));
        if current != Some(&desired.version) {
            p.set_label(ROOTFS_LABEL, &desired.version);
        }
        if let (Some(pattern), Some(spec)) = (&desired.pattern, pod.spec.as_ref()) {
            let inits = spec.init_containers.iter().flatten().enumerate();
            for (i, c) in inits {
                if let Some(to) = c
                    .image
                    .as_deref()
                    .and_then(|im| pattern.rewrite(im, &desired.version))
                {
                    p.set_image(ContainerRef::Init(i), &to)?;
                }
            }
            for (i, c) in spec.containers.iter().enumerate() {
                if let Some(to) = c
                    .image
                    .as_deref()
                    .and_then(|im| pattern.rewrite(im, &desired.version))
                {
                    p.set_image(ContainerRef::App(i), &to)?;
                }
            }
        }
        Ok(p.build())
    }
}

#[async_trait]
impl Extension for RootfsWebhook {
    fn name(&self) -> &str {
        "rootfs"
    }

    async fn mutate(
        &self,
        _ctx: &Context,
        request: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        let patch = self.patch_for(pod, request.namespace.as_deref())?;
        if !patch.0.is_empty() {
            self.state.metrics().webhook_mutation();
        }
        Ok(Mutation::patch(patch))
    }

    /// `Ignore`: if the webhook is down, pods start from their template's version and the
    /// roller converges them later; failing would stop every app from (re)starting.
    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides {
            failure_policy: Some(FailurePolicy::Ignore),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{Gate, RootfsOptions};
    use eirinix_core::review::review;
    use serde_json::json;

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "app-0", "namespace": "apps", "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "app", "uid": "u1"}]},
            "spec": {
                "initContainers": [{"name": "setup", "image": "reg/cf/cflinuxfs4:1.0"}],
                "containers": [
                    {"name": "opi", "image": "reg/cf/cflinuxfs4:1.0"},
                    {"name": "sidecar", "image": "reg/sidecar:1"}
                ]
            }
        }))
        .unwrap()
    }

    fn app() -> Pod {
        pod(json!({"cloudfoundry.org/source_type": "APP"}), json!({}))
    }

    fn webhook(gate: Gate) -> RootfsWebhook {
        RootfsWebhook::new(
            RootfsState::new(RootfsOptions {
                version: Some("2.0".into()),
                image_pattern: Some("reg/cf/cflinuxfs*".into()),
                gate,
                ..Default::default()
            })
            .unwrap(),
        )
    }

    fn images(p: &Pod) -> Vec<&str> {
        let spec = p.spec.as_ref().unwrap();
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| c.image.as_deref().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn app_pods_get_label_and_matching_images_once() {
        let w = webhook(Gate::None);
        let out = review(w.clone(), &app()).await.unwrap();
        assert_eq!(
            out.pod.metadata.labels.as_ref().unwrap()[ROOTFS_LABEL],
            "2.0"
        );
        assert_eq!(
            images(&out.pod),
            [
                "reg/cf/cflinuxfs4:2.0",
                "reg/cf/cflinuxfs4:2.0",
                "reg/sidecar:1"
            ]
        );
        let again = review(w.clone(), &out.pod).await.unwrap();
        assert_eq!(again.mutation, Mutation::unchanged(), "idempotent");
        assert!(
            eirinix_core::metrics::render(w.state().metrics().clone())
                .lines()
                .any(|l| l == "eirinix_rootfs_webhook_mutations_total 1")
        );
    }

    #[tokio::test]
    async fn other_pods_and_opted_out_apps_are_untouched() {
        let w = webhook(Gate::None);
        for p in [
            pod(json!({"cloudfoundry.org/source_type": "STG"}), json!({})),
            pod(json!(null), json!(null)),
            pod(
                json!({"cloudfoundry.org/source_type": "APP"}),
                json!({"eirinix.org/rootfs-opt-out": "true"}),
            ),
        ] {
            assert_eq!(
                review(w.clone(), &p).await.unwrap().mutation,
                Mutation::unchanged()
            );
        }
        // Opted out through its StatefulSet.
        let key = Key {
            namespace: "apps".into(),
            name: "app".into(),
        };
        w.state().set_opted_out(key.clone(), true);
        assert_eq!(
            review(w.clone(), &app()).await.unwrap().mutation,
            Mutation::unchanged()
        );
        w.state().set_opted_out(key, false);
        assert!(
            review(w.clone(), &app())
                .await
                .unwrap()
                .mutation
                .as_patch()
                .is_some()
        );
    }

    #[tokio::test]
    async fn nothing_desired_or_gate_closed_means_unchanged() {
        let w = webhook(Gate::Http {
            url: "http://127.0.0.1:1/".into(),
        });
        assert_eq!(
            review(w.clone(), &app()).await.unwrap().mutation,
            Mutation::unchanged(),
            "a gate never checked counts as closed"
        );
        w.state().set_gate_open(true);
        assert!(
            review(w.clone(), &app())
                .await
                .unwrap()
                .mutation
                .as_patch()
                .is_some()
        );
        w.state().set_desired(None);
        assert_eq!(
            review(w.clone(), &app()).await.unwrap().mutation,
            Mutation::unchanged()
        );
    }

    #[test]
    fn fails_open() {
        assert_eq!(
            webhook(Gate::None).webhook().failure_policy,
            Some(FailurePolicy::Ignore)
        );
    }
}
