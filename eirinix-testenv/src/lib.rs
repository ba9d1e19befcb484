#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod assets;
mod certs;
mod cluster;
mod control_plane;
pub mod eirini;
mod error;
mod image;
mod kubelet;
mod process;
mod stale;
pub mod support;

pub use assets::{
    ETCD_VERSION, KUBE_VERSION, PROVISION_HINT, assets_dir, check_assets, default_assets_dir,
};
pub use cluster::{
    APP_IMAGE, APP_UID, Cluster, ClusterBuilder, ExecOutput, NODE_NAME, STORAGE_CLASS, app_image,
};
pub use control_plane::{ControlPlane, ControlPlaneBuilder};
pub use error::Error;
pub use image::{ImageArchive, ImageBuilder};
pub use kubelet::{ContainerLog, FakeKubelet};
pub use process::spawn_tied;

/// Removes what test processes that died without cleaning up (e.g. SIGKILLed) left behind: the
/// processes and cgroups of their nodes, then their `eirinix-testenv-*` temp dirs.
///
/// Every [`ControlPlane`] and [`Cluster`] start does this already; exposed for custom harnesses.
pub fn remove_stale_dirs() {
    stale::reap();
}

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A fresh DNS-1123 label `<prefix>-<6 random chars>` (prefix sanitised), for namespaces,
/// node names and other objects that must not collide between tests.
pub fn unique_name(prefix: &str) -> String {
    let mut base: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    base.truncate(50);
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "test" } else { base };
    let suffix: String = (0..6)
        .map(|_| {
            let n = fastrand::u8(0..36);
            char::from_digit(u32::from(n), 36).unwrap_or('x')
        })
        .collect();
    format!("{base}-{suffix}")
}
