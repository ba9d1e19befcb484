//! Errors of the rootfs extension.

/// Everything that can go wrong while planning, gating or rolling.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The options are inconsistent or out of range.
    #[error("invalid rootfs options: {0}")]
    InvalidOptions(String),
    /// A version (from a flag or the ConfigMap) cannot be a label value and image tag.
    #[error(
        "invalid rootfs version {0:?}: it must be a label value and an image tag: 1-63 characters of [A-Za-z0-9_.-], starting and ending with a letter or digit"
    )]
    InvalidVersion(String),
    /// An image pattern is empty or malformed.
    #[error("invalid image pattern {0:?}")]
    InvalidPattern(String),
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Lease shared with the servers' roller could not be taken for a one-shot roll.
    #[error("rootfs roller Lease {0}")]
    Lease(String),
    /// The StatefulSet watch did not deliver its first list in time (RBAC? apiserver down?).
    #[error("StatefulSet watch not synced: {0}")]
    NotSynced(String),
}
