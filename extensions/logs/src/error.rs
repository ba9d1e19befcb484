//! Errors of the logs extension.

use std::path::PathBuf;

/// What can go wrong while configuring the extension or talking to sinks and the API.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// Invalid options.
    #[error("invalid logs options: {0}")]
    Config(String),
    /// A TLS file could not be read or parsed.
    #[error("TLS material {path}: {message}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Network I/O with a sink failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A gRPC transport (connection) failure.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A gRPC call failed.
    #[error("gRPC: {0}")]
    Grpc(Box<tonic::Status>),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A checkpoint could not be decoded.
    #[error("checkpoint entry {key:?}: {message}")]
    Checkpoint {
        /// The ConfigMap key.
        key: String,
        /// Why it is invalid.
        message: String,
    },
    /// A receiver broke its protocol (malformed or unexpected frame) or refused a message.
    #[error("{0}")]
    Protocol(String),
    /// A sink operation did not finish in time.
    #[error("{0} timed out")]
    Timeout(String),
}

impl From<tonic::Status> for LogsError {
    fn from(s: tonic::Status) -> Self {
        LogsError::Grpc(Box::new(s))
    }
}

impl LogsError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LogsError::Io {
            context: context.into(),
            source,
        }
    }
}
