//! eirinix ssh extension: `cf ssh`-style access into app instances without sshd in the image.
//!
//! Three parts: the webhook ([`SshInjector`]) wraps the app's command with the in-pod daemon
//! ([`daemon`], command line in [`sshd`]) and gives it per-app keys ([`keys`]); the proxy
//! ([`proxy`]) authenticates users with Kubernetes bearer tokens and relays their sessions.
//! The [`janitor`] removes key Secrets of deleted apps.

#![warn(missing_docs)]

pub mod daemon;
pub mod error;
pub mod janitor;
pub mod keys;
mod limits;
mod listener;
pub mod options;
pub mod proxy;
pub mod sshd;
pub mod webhook;

pub use daemon::{Daemon, DaemonConfig, run_daemon};
pub use error::{Result, SshError};
pub use janitor::{JanitorOptions, run_janitor};
pub use keys::{AppKeys, MasterKey};
pub use options::SshOptions;
pub use proxy::{Limits, PodIpResolver, PodResolver, Proxy, ProxyConfig, ProxyMetrics, run_proxy};
pub use webhook::{SshInjector, SshMetrics};

/// `builder.install(options)?`: the ssh webhook, its metrics and the janitor that removes the
/// key Secrets of apps that are gone, as every stock extension is added.
impl eirinix_core::Install for SshOptions {
    type Error = std::convert::Infallible;

    fn install(
        self,
        builder: eirinix_core::ManagerBuilder,
    ) -> std::result::Result<eirinix_core::ManagerBuilder, Self::Error> {
        let injector = SshInjector::new(self);
        let metrics = injector.metrics().clone();
        Ok(builder
            .extension(injector)
            .metrics_collector(metrics)
            .task("ssh-janitor", |ctx, cancel| {
                run_janitor(ctx, JanitorOptions::default(), cancel)
            }))
    }
}
