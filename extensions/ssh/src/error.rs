//! Errors of the ssh extension, daemon and proxy.

/// Anything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A key could not be generated, encoded or decoded.
    #[error("ssh key: {0}")]
    Key(#[from] russh::keys::ssh_key::Error),
    /// A key could not be parsed by russh.
    #[error("ssh key: {0}")]
    KeyFormat(#[from] russh::keys::Error),
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The app Secret exists but does not hold usable keys.
    #[error("Secret {namespace}/{name} is not a usable eirinix ssh Secret: {reason}")]
    BadSecret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An SSH protocol failure.
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    /// An I/O failure (sockets, processes, files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Invalid configuration (missing key, bad port...).
    #[error("configuration: {0}")]
    Config(String),
}

impl SshError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = SshError> = std::result::Result<T, E>;
