//! The canonical eirinix hello-world: every app container gets a `STICKY_MESSAGE` env var.

use eirinix_core::deps::k8s_openapi::api::core::v1::{EnvVar, Pod};
use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, Mutation, PodPatch, Request, async_trait,
};

/// Sets `STICKY_MESSAGE=<message>` in every container of an app pod, exactly once.
pub struct StickyMessage {
    /// The message to inject.
    pub message: String,
}

#[async_trait]
impl Extension for StickyMessage {
    fn name(&self) -> &str {
        "sticky-message"
    }

    async fn mutate(
        &self,
        _: &Context,
        _: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        let env = EnvVar {
            name: "STICKY_MESSAGE".into(),
            value: Some(self.message.clone()),
            ..Default::default()
        };
        let mut p = PodPatch::new(pod);
        // Idempotent by the pod's own state: a reinvocation, a retry or a copied pod that
        // already has the value gets no operation; a stale or forged value is replaced.
        for i in 0..pod.spec.as_ref().map_or(0, |s| s.containers.len()) {
            p.set_env(ContainerRef::App(i), &env)?;
        }
        if p.is_empty() {
            return Ok(Mutation::unchanged());
        }
        Ok(Mutation::patch(p.build()))
    }
}
