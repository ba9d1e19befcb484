//! The canonical eirinix hello-world: every app container gets a `STICKY_MESSAGE` env var.

use eirinix_core::deps::k8s_openapi::api::core::v1::{EnvVar, Pod};
use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, Mutation, PodPatch, Request, async_trait,
    patch,
};

/// Injects `STICKY_MESSAGE=<message>` into every container of an app pod, once.
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
        if patch::is_marked(pod, self.name()) {
            return Ok(Mutation::unchanged());
        }
        let env = EnvVar {
            name: "STICKY_MESSAGE".into(),
            value: Some(self.message.clone()),
            ..Default::default()
        };
        let mut p = PodPatch::new(pod);
        for i in 0..pod.spec.as_ref().map_or(0, |s| s.containers.len()) {
            p.add_env(ContainerRef::App(i), &env)?;
        }
        p.mark(self.name());
        Ok(Mutation::patch(p.build()))
    }
}
