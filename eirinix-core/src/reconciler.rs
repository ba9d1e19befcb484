//! Reconcilers: the hook for extensions that manage other objects, on `kube_runtime::Controller`.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::extension::{Context, ExtensionError};

/// Level-triggered reconciliation of one kind of object (e.g. StatefulSets for rootfs).
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The reconciled kind.
    type Object: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static;

    /// Name, for logs.
    fn name(&self) -> &str;

    /// The API to watch (namespaced or cluster-wide).
    fn api(&self, ctx: &Context) -> Result<Api<Self::Object>, ExtensionError>;

    /// Which objects to watch.
    fn config(&self) -> watcher::Config {
        watcher::Config::default()
    }

    /// Bring `object` to its desired state.
    async fn reconcile(
        &self,
        object: Arc<Self::Object>,
        ctx: &Context,
    ) -> Result<Action, ExtensionError>;

    /// What to do after a failed reconcile (default: retry in 30 s).
    fn on_error(&self, _object: &Self::Object, _error: &ExtensionError) -> Action {
        Action::requeue(Duration::from_secs(30))
    }
}

/// A failed reconcile, as reported by the controller.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(String);

struct Shared<R> {
    reconciler: Arc<R>,
    ctx: Context,
}

/// Run `r` on a Controller until cancelled.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) async fn run_reconciler<R: Reconciler>(
    r: Arc<R>,
    ctx: Context,
    cancel: CancellationToken,
) {
    let api = match r.api(&ctx) {
        Ok(api) => api,
        Err(e) => {
            tracing::error!(reconciler = r.name(), error = %e, "reconciler cannot start");
            return;
        }
    };
    let name = r.name().to_owned();
    let shared = Arc::new(Shared {
        reconciler: r.clone(),
        ctx,
    });
    let stop = cancel.clone();
    Controller::new(api, r.config())
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(
            |obj, shared: Arc<Shared<R>>| async move {
                shared
                    .reconciler
                    .reconcile(obj, &shared.ctx)
                    .await
                    .map_err(|e| ReconcileError(e.message()))
            },
            |obj, err, shared: Arc<Shared<R>>| {
                shared
                    .reconciler
                    .on_error(&obj, &ExtensionError::new(err.0.clone()))
            },
            shared,
        )
        .for_each(|res| {
            if let Err(e) = res {
                tracing::warn!(reconciler = %name, error = %e, "reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
}
