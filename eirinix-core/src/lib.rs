//! eirinix-core: build Kubernetes admission webhooks (mutating and validating), Pods first.
//!
//! Start from [`Manager::builder`]: implement [`Extension`] to mutate Pods, [`Mutator`] or
//! [`Validator`] for any other kind (a StatefulSet, a custom resource), add them, and get a TLS
//! webhook server, self-signed certificates that rotate on their own, the webhook
//! configurations registered and kept right, pod watchers and reconcilers, health and metrics.
//! Packaged extensions (the stock persi, ssh, logs and rootfs) implement [`Install`] and are
//! added with [`ManagerBuilder::install`]. Each piece is a module of its own.

#![warn(missing_docs)]

pub mod admission;
pub mod certs;
pub mod compat;
mod decode;
pub mod extension;
pub mod health;
mod hooks;
mod json_write;
pub mod leader;
pub mod manager;
pub mod metrics;
pub mod names;
mod object;
pub mod options;
pub mod patch;
mod patch_text;
mod publish;
pub mod reconciler;
pub mod registration;
pub mod review;
mod rotation;
pub mod scan;
pub mod server;
pub mod tls;
mod token_auth;
pub mod watcher;

pub use async_trait::async_trait;
pub use extension::{
    Context, Extension, ExtensionError, Mutation, Mutator, Request, Validation, Validator, Verdict,
    ViewExtension, WebhookOverrides,
};
pub use hooks::ResourceRule;
pub use manager::{Install, Manager, ManagerBuilder, NotReady, RunningManager};
pub use object::ObjectOnly;
pub use options::{FailurePolicy, Operation, ReinvocationPolicy, Settings, SideEffects};
pub use patch::{ContainerRef, PodPatch};
pub use patch_text::PatchText;
pub use publish::Published;
pub use rotation::RotationError;
pub use token_auth::TokenAuthError;
pub use watcher::{PodEvent, PodWatcher};

/// Re-exports extension authors need, at the versions eirinix uses.
pub mod deps {
    pub use json_patch;
    pub use k8s_openapi;
    pub use kube;
    pub use prometheus_client;
}
