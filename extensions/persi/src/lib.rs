//! eirinix persi: persistent volumes for Eirini apps.
//!
//! * [`Persi`], an eirinix [`Extension`](eirinix_core::Extension): every volume binding in an
//!   app container's `VCAP_SERVICES` becomes a PVC volume and a mount at its `container_dir`.
//! * [`broker`], an Open Service Broker API server that provisions those PVCs and hands out
//!   the bindings (`cf create-service`, `cf bind-service`).
//! * [`vcap`], the `VCAP_SERVICES` reader, with errors that name container, binding and problem.

#![warn(missing_docs)]

pub mod broker;
mod extension;
pub mod names;
mod text;
pub mod vcap;
mod view;

pub use broker::{BrokerConfig, broker_router, serve_broker};
pub use extension::{
    ContainerRequests, NAME, Persi, PersiError, PersiOptions, VCAP_GROUP, VCAP_MATCH_CONDITION,
    VCAP_MATCH_CONDITION_NAME, build_patch,
};
pub use view::PersiPod;

/// `builder.install(persi)?`: persi is one webhook, served from its view of the pod ([`PersiPod`]).
impl eirinix_core::Install for Persi {
    type Error = std::convert::Infallible;

    fn install(
        self,
        builder: eirinix_core::ManagerBuilder,
    ) -> Result<eirinix_core::ManagerBuilder, Self::Error> {
        Ok(builder.view_extension(self))
    }
}
