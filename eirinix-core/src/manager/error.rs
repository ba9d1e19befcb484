//! What can go wrong: a configuration refused before anything starts, a failure while starting.

use crate::registration::RegistrationError;
use crate::rotation::RotationError;
use crate::server::BindError;

/// Invalid manager configuration, reported by [`ManagerBuilder::build`](super::ManagerBuilder::build) before anything starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An extension name is not a DNS-1123 label.
    #[error(
        "extension name {0:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)"
    )]
    InvalidName(String),
    /// Two extensions share a name (and so a path).
    #[error("two extensions are named {0:?}")]
    DuplicateName(String),
    /// Nothing to run.
    #[error("no extension, watcher or reconciler was added")]
    Empty,
    /// The fingerprint cannot prefix Kubernetes names.
    #[error("fingerprint {0:?} is not a DNS-1123 label")]
    InvalidFingerprint(String),
    /// Timeout outside what the apiserver accepts.
    #[error("timeoutSeconds must be between 1 and 30, got {0}")]
    InvalidTimeout(i32),
    /// URL mode without a host, or service mode without a name/namespace.
    #[error("webhook endpoint: {0}")]
    InvalidEndpoint(String),
    /// Certificate policy out of range.
    #[error("certificate policy: {0}")]
    InvalidCertPolicy(String),
    /// An apiserver client certificate to check, but no client CA to check it against.
    #[error(
        "the apiserver's client certificate is checked against the client CA: set the client CA file too"
    )]
    ClientCertWithoutCa,
}

/// A failure while starting or running the manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// A listening socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Certificates could not be set up.
    #[error("certificates: {0}")]
    Certificates(#[from] RotationError),
    /// The configuration could not be written.
    #[error("registration: {0}")]
    Registration(#[from] RegistrationError),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA for verifying client certificates could not be loaded.
    #[error("client certificate verification: {0}")]
    ClientCa(#[from] crate::tls::ClientCaError),
    /// Webhook token verification could not be set up.
    #[error("webhook token authentication: {0}")]
    TokenAuth(#[from] crate::token_auth::TokenAuthError),
    /// URL mode registration ahead of the server (split mode) with port 0: that port is only
    /// picked when the server starts, so there is no URL to register.
    #[error(
        "cannot register a URL with port 0: port 0 picks a free port when the server starts, so the server's port is not known yet; give the port the server will listen on (--port)"
    )]
    NoPortToRegister,
}
