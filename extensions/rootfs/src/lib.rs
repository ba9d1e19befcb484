//! eirinix rootfs extension: roll every Eirini app onto the desired rootfs version, safely.
//!
//! - [`RootfsWebhook`]: app pods created while a version is desired get the
//!   `cloudfoundry.org/rootfs-version` label and, for images matching the rootfs pattern, the tag.
//! - The roller ([`run`], [`roll_once`], [`install`]): patches app StatefulSets' pod templates
//!   (label + image, JSON patch guarded by `test` operations) at most N at a time, behind an
//!   optional readiness gate, skipping opted-out apps, with Events and metrics.
//! - The pieces compose: [`plan::plan`] is pure, [`execute::roll_patch`] builds the patch,
//!   [`execute::Executor`] applies it.

#![warn(missing_docs)]

pub mod engine;
pub mod error;
pub mod execute;
pub mod gate;
pub mod image;
pub mod metrics;
pub mod options;
pub mod plan;
pub mod state;
pub mod webhook;

use eirinix_core::leader::Election;
use eirinix_core::{Context, ManagerBuilder};
use tokio_util::sync::CancellationToken;

pub use engine::RollReport;
pub use error::RootfsError;
pub use gate::GateStatus;
pub use image::ImagePattern;
pub use metrics::RootfsMetrics;
pub use options::{Desired, Gate, NamespacedName, ROOTFS_LABEL, RootfsOptions};
pub use plan::{Action, Plan};
pub use state::RootfsState;
pub use webhook::RootfsWebhook;

/// Long-running mode: follow the ConfigMap and roll app StatefulSets until `cancel` fires.
///
/// No leader election here: wrap it in [`eirinix_core::leader::LeaseLock::run_while_leader`] (or use
/// [`install`]) when more than one replica runs.
pub async fn run(
    options: RootfsOptions,
    client: kube::Client,
    cancel: CancellationToken,
) -> Result<(), RootfsError> {
    engine::run_with_state(RootfsState::new(options)?, client, cancel).await
}

/// One-shot mode for a Helm hook: roll until everything settled or `once_deadline` passes.
///
/// With `leader_lease` set, the roll runs as the holder of that Lease, so the servers' roller
/// ([`install`]) pauses meanwhile and the two never roll at once (`maxInFlight` holds): a live
/// holder is asked to hand over, and the Lease is released at the end. Without permission on
/// the Lease the roll goes ahead uncoordinated ([`RollReport::uncoordinated`], with a warning).
///
/// A report that is not [`RollReport::is_clean`] should end the hook with a non-zero exit code.
/// With `dry_run`, returns after one pass with the plan and changes nothing.
pub async fn roll_once(
    options: RootfsOptions,
    client: kube::Client,
) -> Result<RollReport, RootfsError> {
    engine::roll_once_with_state(RootfsState::new(options)?, client).await
}

/// Add rootfs to a manager: the webhook and, in background tasks, the ConfigMap, opt-out and
/// gate watchers (every replica) and the roller (the leader only, when `leader_lease` is set:
/// a [`ManagerBuilder::leader_task`] on that Lease, which a one-shot [`roll_once`] takes over
/// while it runs).
///
/// Returns the builder (serving [`RootfsState::metrics`] too) and the shared state.
pub fn install(
    builder: ManagerBuilder,
    options: RootfsOptions,
) -> Result<(ManagerBuilder, RootfsState), RootfsError> {
    let state = RootfsState::new(options)?;
    let s = state.clone();
    let metrics = state.metrics().clone();
    let builder = builder
        .extension(RootfsWebhook::new(state.clone()))
        .metrics_collector(metrics)
        .task("rootfs-config", {
            let s = s.clone();
            move |ctx, cancel| async move {
                if let Ok(client) = ctx.client() {
                    s.watch_config_map(client.clone(), cancel).await;
                }
            }
        })
        .task("rootfs-opt-outs", {
            let s = s.clone();
            move |ctx, cancel| async move {
                if let Ok(client) = ctx.client() {
                    s.watch_opt_outs(client.clone(), cancel).await;
                }
            }
        })
        .task("rootfs-gate", {
            let s = s.clone();
            move |ctx, cancel| async move {
                if let Ok(client) = ctx.client() {
                    s.watch_gate(client.clone(), cancel).await;
                }
            }
        });
    let lease = s.options().leader_lease.clone();
    let identity = s.options().reporter_instance.clone();
    let lease_duration = s.options().lease_duration;
    let roller = move |ctx: Context, cancel: CancellationToken| {
        let s = s.clone();
        async move {
            let Ok(client) = ctx.client().cloned() else {
                return;
            };
            if let Err(e) = engine::roll(s, client, cancel).await {
                tracing::error!(error = %e, "rootfs roller stopped");
            }
        }
    };
    let builder = match lease {
        None => builder.task("rootfs-roller", roller),
        Some(lease) => {
            let mut election = Election::new(lease.name)
                .namespace(lease.namespace)
                .lease_duration(lease_duration);
            if let Some(identity) = identity {
                election = election.identity(identity);
            }
            builder.leader_task("rootfs-roller", election, roller)
        }
    };
    Ok((builder, state))
}

/// `builder.install(options)?`: rootfs, as every stock extension is added.
impl eirinix_core::Install for RootfsOptions {
    type Error = RootfsError;

    fn install(self, builder: ManagerBuilder) -> Result<ManagerBuilder, RootfsError> {
        install(builder, self).map(|(builder, _)| builder)
    }
}
